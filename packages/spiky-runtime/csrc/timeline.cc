#include "timeline.h"

#include <sstream>

namespace spiky::runtime {
namespace {

void json_string(std::ostringstream& os, const std::string& s) {
  os << '"';
  for (char c : s) {
    switch (c) {
      case '"': os << "\\\""; break;
      case '\\': os << "\\\\"; break;
      case '\n': os << "\\n"; break;
      default:
        if (static_cast<unsigned char>(c) < 0x20) {
          static const char* hex = "0123456789abcdef";
          os << "\\u00" << hex[(c >> 4) & 0xf] << hex[c & 0xf];
        } else {
          os << c;
        }
    }
  }
  os << '"';
}

double micros(Timeline::Clock::duration d) {
  return std::chrono::duration<double, std::micro>(d).count();
}

}  // namespace

void Timeline::start() {
  std::lock_guard<std::mutex> lock(mutex_);
  events_.clear();
  origin_ = Clock::now();
  enabled_.store(true, std::memory_order_relaxed);
}

int Timeline::tid_locked(std::thread::id id) {
  auto it = tids_.find(id);
  if (it != tids_.end()) return it->second;
  const int tid = static_cast<int>(tids_.size()) + 1;
  tids_.emplace(id, tid);
  names_.emplace(tid, "caller " + std::to_string(++callers_));
  return tid;
}

void Timeline::name_current_thread(const std::string& name) {
  std::lock_guard<std::mutex> lock(mutex_);
  const int tid = tid_locked(std::this_thread::get_id());
  names_[tid] = name;
}

void Timeline::record(const char* name, Clock::time_point begin, Clock::time_point end,
                      std::uint64_t call_id, const std::string& model, std::int64_t bucket,
                      std::int64_t bytes) {
  if (!enabled()) return;
  std::lock_guard<std::mutex> lock(mutex_);
  const int tid = tid_locked(std::this_thread::get_id());
  events_.push_back(Event{name, begin, end, tid, call_id, model, bucket, bytes});
}

std::string Timeline::stop() {
  std::lock_guard<std::mutex> lock(mutex_);
  enabled_.store(false, std::memory_order_relaxed);
  std::ostringstream os;
  os.setf(std::ios::fixed);
  os.precision(3);
  os << "{\"displayTimeUnit\": \"ms\", \"traceEvents\": [\n";
  os << "{\"name\": \"process_name\", \"ph\": \"M\", \"pid\": 1, \"tid\": 0, "
        "\"args\": {\"name\": \"spiky_runtime\"}}";
  for (const auto& [tid, name] : names_) {
    os << ",\n{\"name\": \"thread_name\", \"ph\": \"M\", \"pid\": 1, \"tid\": " << tid
       << ", \"args\": {\"name\": ";
    json_string(os, name);
    os << "}}";
  }
  for (const Event& e : events_) {
    os << ",\n{\"name\": ";
    json_string(os, e.name);
    os << ", \"cat\": \"runtime\", \"ph\": \"X\", \"pid\": 1, \"tid\": " << e.tid
       << ", \"ts\": " << micros(e.begin - origin_) << ", \"dur\": " << micros(e.end - e.begin)
       << ", \"args\": {\"call\": " << e.call_id << ", \"model\": ";
    json_string(os, e.model);
    os << ", \"bucket\": " << e.bucket;
    if (e.bytes >= 0) os << ", \"bytes\": " << e.bytes;
    os << "}}";
  }
  os << "\n]}\n";
  events_.clear();
  return os.str();
}

}  // namespace spiky::runtime
