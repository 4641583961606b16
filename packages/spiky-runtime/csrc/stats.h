// Execution statistics of one device: counts and per-phase timings of model runs.
// Thread-safe; snapshot() returns a copy so callers never see a half-updated record.
#pragma once

#include <cstdint>
#include <map>
#include <mutex>
#include <optional>
#include <string>

namespace spiky::runtime {

struct StatsSnapshot {
  std::int64_t total_executions = 0;
  std::int64_t total_compile_count = 0;
  std::map<std::int64_t, std::int64_t> bucket_hits;  // bucket -> runs
  double total_execution_time_ms = 0.0;  // whole run() calls, allocation included
  double min_execution_time_ms = 0.0;    // 0 until the first run
  double max_execution_time_ms = 0.0;
  double total_h2d_time_ms = 0.0;
  double total_exec_time_ms = 0.0;
  double total_d2h_time_ms = 0.0;
  double total_pad_time_ms = 0.0;        // padding inputs and unpadding outputs on device
  // Mean over executions of (input elements after padding) / (input elements given):
  // 1.0 when nothing is padded; 0 until the first run.
  double pad_ratio = 0.0;
  // Host <-> device traffic of the device's driver since the last reset: every byte that crossed
  // (calls, to_device, reads of device tensors, padding rows written from the host), and the
  // number of transfers. Borrowed host memory (host driver) moves 0 bytes.
  std::int64_t total_h2d_bytes = 0;
  std::int64_t total_d2h_bytes = 0;
  std::int64_t total_h2d_transfers = 0;
  std::int64_t total_d2h_transfers = 0;
  // The part of it moved by the recorded executions (their uploads and downloads).
  std::int64_t call_h2d_bytes = 0;
  std::int64_t call_d2h_bytes = 0;

  // call_*_bytes / total_executions (0 before the first execution).
  double mean_h2d_bytes_per_call() const;
  double mean_d2h_bytes_per_call() const;
  std::string to_string() const;
};

// One call, as recorded when it completes (whatever thread finishes it).
struct ExecutionTimings {
  double h2d_ms = 0.0;
  double pad_ms = 0.0;  // pad + unpad
  double exec_ms = 0.0;
  double d2h_ms = 0.0;
  double total_ms = 0.0;  // first stage start to last stage end
  std::int64_t actual_elements = 0;
  std::int64_t padded_elements = 0;
  std::int64_t h2d_bytes = 0;  // bytes this call wrote host -> device
  std::int64_t d2h_bytes = 0;  // bytes this call read device -> host
};

class RuntimeStats {
 public:
  void record_execution(const ExecutionTimings& t, std::optional<std::int64_t> bucket);
  void record_compile();
  void reset();
  StatsSnapshot snapshot() const;

 private:
  mutable std::mutex mutex_;
  StatsSnapshot data_;
  double pad_ratio_sum_ = 0.0;
};

}  // namespace spiky::runtime
