// The nrt driver: the engine's Driver interface over the Neuron Runtime C API (libnrt.so.1).
//
// One NrtRuntime per process (the documented runtime singleton): libnrt is dlopen'ed on first
// use (NrtApi), nrt_init runs once when the first nrt device opens (the runtime takes the
// cores named by NEURON_RT_VISIBLE_CORES / NEURON_RT_NUM_CORES), nrt_close runs once at exit.
// One NrtDriver per visible NeuronCore (`index` = the vnc argument of libnrt).
//
// Memory: a MemHandle is one nrt_tensor_allocate'd device tensor. Pool refs (a handle, an
// offset and a size) become nrt_tensor_allocate_slice views only where libnrt needs a tensor
// of exact size: the tensor sets of an execution. RESOURCE from nrt_tensor_allocate is thrown
// as DeviceOutOfMemory, so the pool frees its cache and retries; every other status is an
// NrtError (nrt_api.h, check_nrt). Every libnrt handle is owned by an RAII object; after
// nrt_close no handle is released into the closed runtime.
//
// Models: a NEFF is loaded with nrt_load (or nrt_load_collectives when rank and world size
// are given), its I/O discovered with nrt_get_model_tensor_info and bound by NEFF name
// ("x", "output0", "cache.must_alias_input", ...). execute() checks every buffer against the
// NEFF's byte size before it calls nrt_execute.
#pragma once

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <mutex>
#include <string>
#include <unordered_map>
#include <vector>

#include "driver.h"
#include "nrt_api.h"

namespace spiky::runtime {

class NrtRuntime {
 public:
  // The process's runtime. Loads libnrt on the first call (throws NrtLoadError when it cannot;
  // a later call tries again); the same object afterwards. Does not initialise it.
  static std::shared_ptr<NrtRuntime> instance();

  NrtRuntime();  // loads libnrt; use instance()
  ~NrtRuntime();
  NrtRuntime(const NrtRuntime&) = delete;
  NrtRuntime& operator=(const NrtRuntime&) = delete;

  const NrtApi& api() const { return api_; }
  // Visible NeuronCores (nrt_get_visible_nc_count; before init libnrt reads the environment).
  int visible_cores() const;
  // nrt_init once per process; throws NrtError when it fails (a later call tries again). The
  // first success registers the exit hook that closes the runtime.
  void ensure_initialized();
  bool initialized() const;
  // True once nrt_close ran: handles are then gone with the runtime and are not released.
  bool closed() const { return closed_.load(std::memory_order_acquire); }
  // nrt_close if initialised and still open; idempotent.
  void close() noexcept;

 private:
  NrtApi api_;
  mutable std::mutex mutex_;
  bool initialized_ = false;
  std::atomic<bool> closed_{false};
};

// Closes the process's runtime if one was initialised. The Python bindings call it at
// interpreter exit right after dropping the device registry; a std::atexit hook (registered
// once, at nrt_init) covers programs without Python. Idempotent.
void nrt_close_at_exit() noexcept;

// One NEFF input or output as nrt_get_model_tensor_info reported it. `absent`: a declared tensor
// with zero elements that the NEFF does not have (the compiler drops such tensors); it is never
// bound to a tensor set, and an output of it is the empty array of its declared spec.
struct NrtIo {
  std::string name;
  TensorSpec spec;
  int nrt_dtype;
  std::size_t nbytes;
  bool absent = false;
};

class NrtDriver final : public Driver {
 public:
  // Opens NeuronCore `vnc` (an index into the visible cores), initialising the runtime.
  // capacity_bytes: a software limit on device bytes this driver allocates (0 = unlimited);
  // the device's own limit shows up as RESOURCE.
  NrtDriver(int vnc, std::size_t capacity_bytes);
  ~NrtDriver() override;

  std::string name() const override { return "nrt"; }
  int index() const override { return vnc_; }
  std::size_t capacity_bytes() const override;
  void set_capacity_bytes(std::size_t capacity) override;

  MemHandle allocate(std::size_t nbytes) override;
  void free(MemHandle handle) override;
  std::size_t allocation_size(MemHandle handle) const override;

  void write(MemHandle dst, std::size_t dst_offset, const void* src,
             std::size_t nbytes) override;
  void read(MemHandle src, std::size_t src_offset, void* dst, std::size_t nbytes) override;
  void copy(MemHandle src, std::size_t src_offset, MemHandle dst, std::size_t dst_offset,
            std::size_t nbytes) override;
  void copy_strided(MemHandle src, std::size_t src_offset, MemHandle dst, std::size_t dst_offset,
                    const StridedCopy& op) override;
  void fill_strided(MemHandle dst, std::size_t dst_offset, const StridedFill& op) override;

  ModelId load_model(ModelDescriptor descriptor) override;
  void unload_model(ModelId model) override;
  void execute(ModelId model, const std::vector<DeviceRef>& inputs,
               const std::vector<DeviceRef>& outputs) override;
  std::optional<LoadedIo> loaded_io(ModelId model) const override;

  void profile_start(ModelId model, const std::string& ntff_path) override;
  void profile_stop(const std::string& ntff_path) override;

  // The NEFF names of a loaded model's inputs and outputs, in the model's order.
  std::vector<std::string> input_names(ModelId model) const;
  std::vector<std::string> output_names(ModelId model) const;

 private:
  class Tensor;
  class LoadedModel;
  struct Region {
    std::shared_ptr<Tensor> tensor;
    std::size_t size;
  };

  Region region(MemHandle handle, std::size_t offset, std::size_t nbytes, const char* what) const;
  std::shared_ptr<LoadedModel> model(ModelId id, const char* what) const;

  std::shared_ptr<NrtRuntime> runtime_;
  const int vnc_;
  mutable std::mutex mutex_;
  std::size_t capacity_bytes_;
  std::size_t allocated_bytes_ = 0;
  MemHandle next_handle_ = 1;
  ModelId next_model_ = 1;
  std::unordered_map<MemHandle, std::shared_ptr<Tensor>> tensors_;
  std::unordered_map<ModelId, std::shared_ptr<LoadedModel>> models_;
};

}  // namespace spiky::runtime
