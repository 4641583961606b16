// Worker: one named thread running tasks in FIFO order -- a stream of the pipeline
// (the device's "copy", "execute" and "download" threads).
//
// Tasks catch their own errors (a stage stores them in its call); anything escaping a task is
// dropped so the stream stays alive. Destruction drains the queue and joins, except on the
// worker's own thread (the last owner of a device can be a task): then the thread is detached
// and exits after the current task, touching only state it co-owns.
#pragma once

#include <condition_variable>
#include <deque>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <thread>

#if defined(__GLIBCXX__)
#include <cxxabi.h>
// A thread asking for the GIL while CPython finalizes is ended with a forced unwind; it
// must propagate, never be swallowed by a catch (...).
#define SPIKY_RETHROW_FORCED_UNWIND \
  catch (abi::__forced_unwind&) {   \
    throw;                          \
  }
#else
#define SPIKY_RETHROW_FORCED_UNWIND
#endif

namespace spiky::runtime {

class Timeline;

class Worker {
 public:
  // `timeline` (may be null) learns the thread's name for its trace track.
  Worker(std::string name, Timeline* timeline);
  ~Worker();
  Worker(const Worker&) = delete;
  Worker& operator=(const Worker&) = delete;

  void post(std::function<void()> task);
  const std::string& name() const { return name_; }

 private:
  struct State {
    std::mutex mutex;
    std::condition_variable cv;
    std::deque<std::function<void()>> tasks;
    bool stop = false;
  };
  static void loop(std::shared_ptr<State> state);

  std::string name_;
  std::shared_ptr<State> state_;
  std::thread thread_;
};

}  // namespace spiky::runtime
