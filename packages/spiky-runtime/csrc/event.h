// Event: a one-shot completion flag with an optional error, the synchronisation primitive of
// the pipeline (stage N+1 waits on stage N's event; Python waits on a call's event).
// wait() blocks the calling thread; callers that hold the GIL release it first.
#pragma once

#include <condition_variable>
#include <exception>
#include <mutex>

namespace spiky::runtime {

class Event {
 public:
  // First call wins; later calls are ignored (a failed stage may race with a teardown).
  void set(std::exception_ptr error = nullptr) {
    {
      std::lock_guard<std::mutex> lock(mutex_);
      if (done_) return;
      done_ = true;
      error_ = std::move(error);
    }
    cv_.notify_all();
  }
  // Blocks until set; rethrows the stored error, if any.
  void wait() const {
    std::unique_lock<std::mutex> lock(mutex_);
    cv_.wait(lock, [this] { return done_; });
    if (error_) std::rethrow_exception(error_);
  }
  bool is_set() const {
    std::lock_guard<std::mutex> lock(mutex_);
    return done_;
  }

 private:
  mutable std::mutex mutex_;
  mutable std::condition_variable cv_;
  bool done_ = false;
  std::exception_ptr error_;
};

}  // namespace spiky::runtime
