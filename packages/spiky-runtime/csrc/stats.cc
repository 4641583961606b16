#include "stats.h"

#include <algorithm>
#include <sstream>

namespace spiky::runtime {

void RuntimeStats::record_execution(const ExecutionTimings& t,
                                    std::optional<std::int64_t> bucket) {
  std::lock_guard<std::mutex> lock(mutex_);
  data_.min_execution_time_ms = data_.total_executions == 0
                                    ? t.total_ms
                                    : std::min(data_.min_execution_time_ms, t.total_ms);
  data_.max_execution_time_ms = std::max(data_.max_execution_time_ms, t.total_ms);
  ++data_.total_executions;
  data_.total_execution_time_ms += t.total_ms;
  data_.total_h2d_time_ms += t.h2d_ms;
  data_.total_exec_time_ms += t.exec_ms;
  data_.total_d2h_time_ms += t.d2h_ms;
  data_.total_pad_time_ms += t.pad_ms;
  data_.call_h2d_bytes += t.h2d_bytes;
  data_.call_d2h_bytes += t.d2h_bytes;
  pad_ratio_sum_ += t.actual_elements > 0 ? static_cast<double>(t.padded_elements) /
                                               static_cast<double>(t.actual_elements)
                                         : 1.0;
  data_.pad_ratio = pad_ratio_sum_ / static_cast<double>(data_.total_executions);
  if (bucket) ++data_.bucket_hits[*bucket];
}

void RuntimeStats::record_compile() {
  std::lock_guard<std::mutex> lock(mutex_);
  ++data_.total_compile_count;
}

void RuntimeStats::reset() {
  std::lock_guard<std::mutex> lock(mutex_);
  data_ = StatsSnapshot{};
  pad_ratio_sum_ = 0.0;
}

StatsSnapshot RuntimeStats::snapshot() const {
  std::lock_guard<std::mutex> lock(mutex_);
  return data_;
}

double StatsSnapshot::mean_h2d_bytes_per_call() const {
  return total_executions ? static_cast<double>(call_h2d_bytes) / static_cast<double>(total_executions)
                          : 0.0;
}

double StatsSnapshot::mean_d2h_bytes_per_call() const {
  return total_executions ? static_cast<double>(call_d2h_bytes) / static_cast<double>(total_executions)
                          : 0.0;
}

std::string StatsSnapshot::to_string() const {
  std::ostringstream os;
  os.setf(std::ios::fixed);
  os.precision(3);
  os << "RuntimeStats(total_executions=" << total_executions
     << ", total_compile_count=" << total_compile_count << ", bucket_hits={";
  bool first = true;
  for (const auto& [bucket, hits] : bucket_hits) {
    if (!first) os << ", ";
    first = false;
    os << bucket << ": " << hits;
  }
  os << "}, total_execution_time_ms=" << total_execution_time_ms
     << ", min_execution_time_ms=" << min_execution_time_ms
     << ", max_execution_time_ms=" << max_execution_time_ms
     << ", total_h2d_time_ms=" << total_h2d_time_ms
     << ", total_exec_time_ms=" << total_exec_time_ms
     << ", total_d2h_time_ms=" << total_d2h_time_ms
     << ", total_pad_time_ms=" << total_pad_time_ms << ", pad_ratio=" << pad_ratio
     << ", total_h2d_bytes=" << total_h2d_bytes << ", total_d2h_bytes=" << total_d2h_bytes
     << ", total_h2d_transfers=" << total_h2d_transfers
     << ", total_d2h_transfers=" << total_d2h_transfers << ", call_h2d_bytes=" << call_h2d_bytes
     << ", call_d2h_bytes=" << call_d2h_bytes;
  os.precision(1);
  os << ", mean_h2d_bytes_per_call=" << mean_h2d_bytes_per_call()
     << ", mean_d2h_bytes_per_call=" << mean_d2h_bytes_per_call() << ")";
  return os.str();
}

}  // namespace spiky::runtime
