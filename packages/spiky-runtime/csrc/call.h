// Call: one execution of a model with everything it owns on its way through the stages
//   upload (H2D + pad) -> execute -> unpad -> download (D2H)
// The executor runs the stages inline (synchronous mode) or on its copy and execute
// threads (pipelined mode); either way one thread touches a call at a time, handed over
// through the workers' queues.
#pragma once

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <memory>
#include <optional>
#include <utility>
#include <vector>

#include "device_tensor.h"
#include "driver.h"
#include "event.h"
#include "pool.h"
#include "stats.h"
#include "tensor_spec.h"

namespace spiky::runtime {

class Model;

struct HostFree {
  void operator()(void* p) const noexcept { std::free(p); }
};
using HostMemory = std::unique_ptr<void, HostFree>;
// Host memory of `nbytes` (at least 1 byte), 64-byte aligned. Throws OutOfMemory.
HostMemory allocate_host(std::size_t nbytes);

// Host memory lent to the driver (host driver): a caller's buffer as a model input (no H2D
// copy) or the call's host output array (no D2H copy); released when the call no longer
// needs it.
class BorrowedHost {
 public:
  BorrowedHost(Driver& driver, MemHandle handle) : driver_(&driver), handle_(handle) {}
  BorrowedHost(BorrowedHost&& other) noexcept
      : driver_(std::exchange(other.driver_, nullptr)), handle_(other.handle_) {}
  BorrowedHost& operator=(BorrowedHost&&) = delete;
  BorrowedHost(const BorrowedHost&) = delete;
  BorrowedHost& operator=(const BorrowedHost&) = delete;
  ~BorrowedHost() {
    if (driver_ != nullptr) driver_->release_borrowed(handle_);
  }

 private:
  Driver* driver_;
  MemHandle handle_;
};

// One input: host memory (kept alive by `keepalive` until uploaded, or until executed when
// the driver borrowed it) or a device tensor.
struct CallInput {
  TensorSpec spec;  // actual shape and dtype
  const void* host = nullptr;
  std::shared_ptr<void> keepalive;
  std::shared_ptr<DeviceTensor> device;
};

struct CallOptions {
  bool to_host = true;  // download outputs; false: outputs stay on device (DeviceTensor)
  bool unpad = true;    // false: outputs keep the bucket's padded shape
};

struct HostArray {
  TensorSpec spec;
  HostMemory data;
};

// Per input, the bytes of one element of its fill value (a bundle's, shared by its calls).
using FillPatterns = std::vector<std::vector<std::byte>>;

class Call {
 public:
  using Clock = std::chrono::steady_clock;

  Call(std::shared_ptr<const Model> model, std::optional<std::int64_t> bucket,
       std::vector<CallInput> inputs, std::shared_ptr<const FillPatterns> fill_patterns,
       std::vector<TensorSpec> output_specs, CallOptions options);

  const Model& model() const { return *model_; }
  std::optional<std::int64_t> bucket() const { return bucket_; }
  const CallOptions& options() const { return options_; }
  std::uint64_t id() const { return id_; }
  void set_id(std::uint64_t id) { id_ = id; }

  // Results. host_outputs() after done (to_host); device_outputs() right away (!to_host).
  Event& done() { return done_; }
  std::vector<HostArray>& host_outputs() { return host_outputs_; }
  const std::vector<std::shared_ptr<DeviceTensor>>& device_outputs() const {
    return device_outputs_;
  }

 private:
  friend class Executor;

  std::shared_ptr<const Model> model_;
  std::optional<std::int64_t> bucket_;
  std::vector<CallInput> inputs_;
  std::shared_ptr<const FillPatterns> fill_patterns_;  // the bundle's, shared by its calls
  std::vector<TensorSpec> output_specs_;               // after unpadding (or padded)
  CallOptions options_;
  std::uint64_t id_ = 0;

  // Stage state.
  std::vector<std::unique_ptr<Block>> in_blocks_;  // bucket-sized inputs this call owns
  std::vector<DeviceRef> in_refs_;
  std::vector<BorrowedHost> borrowed_;  // host inputs the driver runs on in place
  std::vector<std::unique_ptr<Block>> out_blocks_;  // results (padded, or unpadded copies)
  // Outputs the driver wrote straight into host arrays (to_host, not padded): out_blocks_[j]
  // is null and out_host_[j] holds the result.
  std::vector<HostMemory> out_host_;
  std::vector<BorrowedHost> borrowed_out_;
  std::vector<HostArray> host_outputs_;
  std::vector<std::shared_ptr<DeviceTensor>> device_outputs_;
  ExecutionTimings timings_;
  std::optional<Clock::time_point> first_start_;
  Event done_;
};

}  // namespace spiky::runtime
