// DeviceTensor: a tensor that lives in device memory, possibly still being produced.
//
// The pipeline hands one out per output as soon as a call is submitted (outputs that stay
// on device); its ready event fires when the producing call has written it, or carries the
// call's error. It can be the input of a later call on the same device (no host round trip)
// and be read back with read(). Also created from host data by Device::to_device.
#pragma once

#include <memory>
#include <mutex>

#include "buffer.h"
#include "event.h"
#include "tensor_spec.h"

namespace spiky::runtime {

class Device;

class DeviceTensor {
 public:
  DeviceTensor(std::shared_ptr<Device> device, TensorSpec spec)
      : device_(std::move(device)), spec_(std::move(spec)) {}

  const TensorSpec& spec() const { return spec_; }
  const std::shared_ptr<Device>& device() const { return device_; }

  // Producer side: attach the memory, then mark ready (or failed).
  void set_buffer(std::shared_ptr<Buffer> buffer) {
    std::lock_guard<std::mutex> lock(mutex_);
    buffer_ = std::move(buffer);
  }
  void set_ready(std::exception_ptr error = nullptr) { ready_.set(std::move(error)); }

  bool is_ready() const { return ready_.is_set(); }
  // Blocks until produced; rethrows the producing call's error.
  void wait() const { ready_.wait(); }
  // Waits, then returns the memory (spec().nbytes() bytes, C-contiguous).
  std::shared_ptr<Buffer> buffer() const {
    wait();
    std::lock_guard<std::mutex> lock(mutex_);
    return buffer_;
  }
  // Waits, then copies the tensor to host memory of spec().nbytes() bytes.
  void read(void* dst) const {
    auto buf = buffer();
    if (spec_.nbytes()) buf->read(dst, spec_.nbytes(), 0);
  }

 private:
  std::shared_ptr<Device> device_;
  TensorSpec spec_;
  Event ready_;
  mutable std::mutex mutex_;
  std::shared_ptr<Buffer> buffer_;
};

}  // namespace spiky::runtime
