// Timeline: an opt-in recorder of runtime phases, exported as Chrome/Perfetto trace JSON
// (load it in chrome://tracing or ui.perfetto.dev).
//
// One track per thread: the pipeline's "copy", "execute" and "download" workers name themselves; a
// caller thread running a synchronous call gets "caller N". Events are complete ("X")
// events named H2D, pad, execute, unpad, D2H, plus a "call" span around each synchronous
// call, with args {call, model, bucket}; H2D and D2H events also carry {bytes}: what that
// transfer moved over the host <-> device link. Off by default: when off, recording costs one
// relaxed atomic load per phase. One timeline per device.
#pragma once

#include <atomic>
#include <chrono>
#include <cstdint>
#include <map>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

namespace spiky::runtime {

class Timeline {
 public:
  using Clock = std::chrono::steady_clock;

  bool enabled() const { return enabled_.load(std::memory_order_relaxed); }
  // Drops earlier events and starts recording.
  void start();
  // Stops recording; returns the trace of everything recorded since start() as JSON.
  std::string stop();
  // Names the calling thread's track (kept across start/stop).
  void name_current_thread(const std::string& name);
  // bytes < 0: the event is not a transfer (no "bytes" arg).
  void record(const char* name, Clock::time_point begin, Clock::time_point end,
              std::uint64_t call_id, const std::string& model, std::int64_t bucket,
              std::int64_t bytes = -1);

 private:
  struct Event {
    const char* name;
    Clock::time_point begin;
    Clock::time_point end;
    int tid;
    std::uint64_t call_id;
    std::string model;
    std::int64_t bucket;
    std::int64_t bytes;
  };
  int tid_locked(std::thread::id id);  // caller holds mutex_

  std::atomic<bool> enabled_{false};
  std::mutex mutex_;
  Clock::time_point origin_ = Clock::now();
  std::vector<Event> events_;
  std::map<std::thread::id, int> tids_;
  std::map<int, std::string> names_;
  int callers_ = 0;
};

// Records [construction, destruction) as one event if the timeline was on at construction.
class TimelineSpan {
 public:
  TimelineSpan(Timeline& timeline, const char* name, std::uint64_t call_id,
               const std::string& model, std::int64_t bucket)
      : timeline_(timeline.enabled() ? &timeline : nullptr),
        name_(name),
        call_id_(call_id),
        model_(model),
        bucket_(bucket) {
    if (timeline_ != nullptr) begin_ = Timeline::Clock::now();
  }
  ~TimelineSpan() {
    if (timeline_ != nullptr) {
      timeline_->record(name_, begin_, Timeline::Clock::now(), call_id_, model_, bucket_, bytes_);
    }
  }
  // Marks the span as a transfer of `bytes` (shown as the event's "bytes" arg).
  void set_bytes(std::int64_t bytes) { bytes_ = bytes; }
  TimelineSpan(const TimelineSpan&) = delete;
  TimelineSpan& operator=(const TimelineSpan&) = delete;

 private:
  Timeline* timeline_;
  const char* name_;
  std::uint64_t call_id_;
  const std::string& model_;
  std::int64_t bucket_;
  std::int64_t bytes_ = -1;
  Timeline::Clock::time_point begin_;
};

}  // namespace spiky::runtime
