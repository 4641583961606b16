#include "worker.h"

#include <utility>

#include "timeline.h"

namespace spiky::runtime {

Worker::Worker(std::string name, Timeline* timeline)
    : name_(std::move(name)), state_(std::make_shared<State>()) {
  thread_ = std::thread([state = state_, name = name_, timeline] {
    if (timeline != nullptr) timeline->name_current_thread(name);
    loop(state);
  });
}

Worker::~Worker() {
  {
    std::lock_guard<std::mutex> lock(state_->mutex);
    state_->stop = true;
  }
  state_->cv.notify_all();
  if (std::this_thread::get_id() == thread_.get_id()) {
    thread_.detach();
  } else if (thread_.joinable()) {
    thread_.join();
  }
}

void Worker::post(std::function<void()> task) {
  {
    std::lock_guard<std::mutex> lock(state_->mutex);
    state_->tasks.push_back(std::move(task));
  }
  state_->cv.notify_one();
}

void Worker::loop(std::shared_ptr<State> state) {
  for (;;) {
    std::function<void()> task;
    {
      std::unique_lock<std::mutex> lock(state->mutex);
      state->cv.wait(lock, [&] { return state->stop || !state->tasks.empty(); });
      if (state->tasks.empty()) return;  // stop requested and drained
      task = std::move(state->tasks.front());
      state->tasks.pop_front();
    }
    try {
      task();
    }
    SPIKY_RETHROW_FORCED_UNWIND
    catch (...) {
      // Stages record their own errors in their call; nothing else may end the stream.
    }
  }
}

}  // namespace spiky::runtime
