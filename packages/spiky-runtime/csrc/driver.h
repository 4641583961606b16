// The device interface. Everything above it (pool, executor, bindings) is the same code
// for every driver; a driver only moves bytes, holds models and runs them.
//
// Contract for implementations:
//  - all methods are thread-safe;
//  - failures are thrown as the types of errors.h (a C-API driver converts its status
//    codes in one place); allocate() throws DeviceOutOfMemory when the device is full;
//  - no method calls back into Python except HostExecutable, which owns that concern.
#pragma once

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "errors.h"
#include "strided.h"
#include "tensor_spec.h"

namespace spiky::runtime {

// Opaque device-memory and model identifiers; 0 is never a valid value.
using MemHandle = std::uint64_t;
using ModelId = std::uint64_t;

// A byte range of one device allocation: what the pool hands out (a block may be a slice
// of a larger allocation when the pool splits) and what models execute on. On nrt a
// DeviceRef maps to nrt_tensor_allocate_slice(handle, offset, nbytes).
struct DeviceRef {
  MemHandle handle = 0;
  std::size_t offset = 0;
  std::size_t nbytes = 0;
};

// A model executable that runs on the host: reads its inputs and writes every byte of its
// outputs (whose specs are the model's output specs). Used by the host driver.
using HostExecutable =
    std::function<void(const std::vector<ConstTensor>& inputs,
                       const std::vector<MutableTensor>& outputs)>;

// What a driver needs to load a model. The host driver requires `host_executable` and takes
// `inputs`/`outputs` as the model's specs. The nrt driver requires `neff` and discovers the
// I/O from it (nrt_get_model_tensor_info): `input_names`/`output_names`, when given, fix the
// model's I/O order by NEFF name; `inputs`/`outputs`, when given, are checked against the
// NEFF (same shape; same dtype, or bool declared where the NEFF says uint8); `rank` and
// `world_size` (both or neither) select nrt_load_collectives.
struct ModelDescriptor {
  std::string name;
  std::vector<TensorSpec> inputs;
  std::vector<TensorSpec> outputs;
  std::shared_ptr<const HostExecutable> host_executable;
  std::shared_ptr<const std::vector<std::byte>> neff;
  std::vector<std::string> input_names;
  std::vector<std::string> output_names;
  std::optional<std::uint32_t> rank;
  std::optional<std::uint32_t> world_size;
};

// Bytes a driver moved between host memory and the device, and in how many transfers.
struct TransferCounts {
  std::int64_t h2d_bytes = 0;
  std::int64_t d2h_bytes = 0;
  std::int64_t h2d_transfers = 0;
  std::int64_t d2h_transfers = 0;
};

// The inputs and outputs of a loaded model as the driver found them in its compiled image.
struct LoadedIo {
  std::vector<TensorSpec> inputs;
  std::vector<TensorSpec> outputs;
};

class Driver {
 public:
  virtual ~Driver() = default;
  Driver() = default;
  Driver(const Driver&) = delete;
  Driver& operator=(const Driver&) = delete;

  virtual std::string name() const = 0;
  virtual int index() const = 0;
  // Bytes the device may hold in total; 0 = unlimited.
  virtual std::size_t capacity_bytes() const = 0;
  virtual void set_capacity_bytes(std::size_t capacity) = 0;

  virtual MemHandle allocate(std::size_t nbytes) = 0;
  virtual void free(MemHandle handle) = 0;
  virtual std::size_t allocation_size(MemHandle handle) const = 0;

  // Host -> device, device -> host and device -> device copies; offsets in bytes,
  // bounds-checked against the allocation.
  virtual void write(MemHandle dst, std::size_t dst_offset, const void* src,
                     std::size_t nbytes) = 0;
  virtual void read(MemHandle src, std::size_t src_offset, void* dst, std::size_t nbytes) = 0;
  virtual void copy(MemHandle src, std::size_t src_offset, MemHandle dst,
                    std::size_t dst_offset, std::size_t nbytes) = 0;
  // Device-side strided copy and fill (padding, unpadding). Offsets are added to the
  // strided addresses; the whole extent is bounds-checked before any byte moves. A C-API
  // driver implements them row by row: copy_strided with one nrt_tensor_copy per contiguous
  // row, fill_strided with nrt_tensor_memset (zero pattern) or nrt_tensor_write of a host
  // row holding the repeated pattern.
  virtual void copy_strided(MemHandle src, std::size_t src_offset, MemHandle dst,
                            std::size_t dst_offset, const StridedCopy& op) = 0;
  virtual void fill_strided(MemHandle dst, std::size_t dst_offset, const StridedFill& op) = 0;

  // Drivers whose device memory is host memory may run a model directly on host memory: a
  // caller's buffer as a read-only input (no H2D copy), or the host array a call returns as
  // an output the model writes (no D2H copy). Returns a handle for `data` valid until
  // release_borrowed(handle), or nullopt when the driver cannot (nrt: device memory is not
  // host-addressable, every input and output is copied).
  virtual std::optional<MemHandle> borrow_host(const void* /*data*/, std::size_t /*nbytes*/) {
    return std::nullopt;
  }
  virtual void release_borrowed(MemHandle /*handle*/) {}

  // The synchronous fast path of drivers whose device memory is host memory
  // (executes_in_place): runs `model` with the caller's arrays as its inputs, read in place,
  // and writes its outputs into `outputs` (host memory the caller owns), with no device
  // handle in between. Each spec must be the model's. Others (nrt) throw InvalidArgument.
  virtual bool executes_in_place() const { return false; }
  virtual void execute_in_place(ModelId /*model*/, const std::vector<ConstTensor>& /*inputs*/,
                                const std::vector<MutableTensor>& /*outputs*/) {
    throw InvalidArgument(name() + " driver: models run on device memory only");
  }

  virtual ModelId load_model(ModelDescriptor descriptor) = 0;
  virtual void unload_model(ModelId model) = 0;
  // Runs a loaded model on device buffers holding its inputs; fills its output buffers.
  // Each ref must hold at least the byte size of its spec. Blocking; may run concurrently
  // with copies of other buffers.
  virtual void execute(ModelId model, const std::vector<DeviceRef>& inputs,
                       const std::vector<DeviceRef>& outputs) = 0;

  // The I/O a driver discovered when loading `model` (nrt); nullopt when the descriptor's
  // specs are the model's (host).
  virtual std::optional<LoadedIo> loaded_io(ModelId /*model*/) const { return std::nullopt; }

  // NTFF device profiling of the executions of one model between start and stop (nrt:
  // nrt_profile_start/stop; stop writes the file). Drivers without it throw InvalidArgument.
  virtual void profile_start(ModelId /*model*/, const std::string& /*ntff_path*/) {
    throw InvalidArgument(no_profiling());
  }
  virtual void profile_stop(const std::string& /*ntff_path*/) { throw InvalidArgument(no_profiling()); }

  // Host <-> device traffic since construction or the last reset_transfers(). Drivers count a
  // transfer where bytes really cross (nrt: every nrt_tensor_write/read, padding rows written
  // from the host included; host: write/read copies, never borrowed memory, which moves 0 bytes).
  TransferCounts transfers() const {
    TransferCounts t;
    t.h2d_bytes = h2d_bytes_.load(std::memory_order_relaxed);
    t.d2h_bytes = d2h_bytes_.load(std::memory_order_relaxed);
    t.h2d_transfers = h2d_transfers_.load(std::memory_order_relaxed);
    t.d2h_transfers = d2h_transfers_.load(std::memory_order_relaxed);
    return t;
  }
  void reset_transfers() {
    h2d_bytes_.store(0, std::memory_order_relaxed);
    d2h_bytes_.store(0, std::memory_order_relaxed);
    h2d_transfers_.store(0, std::memory_order_relaxed);
    d2h_transfers_.store(0, std::memory_order_relaxed);
  }

 protected:
  void count_h2d(std::size_t nbytes) {
    h2d_bytes_.fetch_add(static_cast<std::int64_t>(nbytes), std::memory_order_relaxed);
    h2d_transfers_.fetch_add(1, std::memory_order_relaxed);
  }
  void count_d2h(std::size_t nbytes) {
    d2h_bytes_.fetch_add(static_cast<std::int64_t>(nbytes), std::memory_order_relaxed);
    d2h_transfers_.fetch_add(1, std::memory_order_relaxed);
  }

 private:
  std::atomic<std::int64_t> h2d_bytes_{0};
  std::atomic<std::int64_t> d2h_bytes_{0};
  std::atomic<std::int64_t> h2d_transfers_{0};
  std::atomic<std::int64_t> d2h_transfers_{0};

  std::string no_profiling() const {
    return "driver '" + name() + "' has no NTFF profiling; NTFF needs Neuron (the nrt driver)";
  }
};

}  // namespace spiky::runtime
