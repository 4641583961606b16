// The host driver: "device memory" is host memory owned by the driver and a model is a
// HostExecutable. It is the default wherever no Neuron device exists, and the reference
// the other drivers are tested against.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <mutex>
#include <unordered_map>

#include "driver.h"

namespace spiky::runtime {

class HostDriver final : public Driver {
 public:
  // capacity_bytes == 0 means unlimited. The capacity makes device OOM reproducible.
  HostDriver(int index, std::size_t capacity_bytes);
  ~HostDriver() override;

  std::string name() const override { return "host"; }
  int index() const override { return index_; }
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

  std::optional<MemHandle> borrow_host(const void* data, std::size_t nbytes) override;
  void release_borrowed(MemHandle handle) override;

  ModelId load_model(ModelDescriptor descriptor) override;
  void unload_model(ModelId model) override;
  bool executes_in_place() const override { return true; }
  void execute_in_place(ModelId model, const std::vector<ConstTensor>& inputs,
                        const std::vector<MutableTensor>& outputs) override;
  void execute(ModelId model, const std::vector<DeviceRef>& inputs,
               const std::vector<DeviceRef>& outputs) override;

 private:
  // The loaded model `model`, checked to take that many inputs and outputs.
  std::shared_ptr<const ModelDescriptor> find_model(ModelId model, std::size_t inputs,
                                                    std::size_t outputs) const;
  struct FreeDeleter {
    void operator()(void* p) const noexcept;
  };
  struct Allocation {
    std::unique_ptr<void, FreeDeleter> data;
    std::size_t nbytes;
  };
  struct Region {
    std::byte* data;
    std::size_t nbytes;
  };

  // Resolves a handle and checks [offset, offset + nbytes) lies inside it.
  Region region(MemHandle handle, std::size_t offset, std::size_t nbytes,
                const char* what) const;

  const int index_;
  mutable std::mutex mutex_;
  std::size_t capacity_bytes_;
  std::size_t allocated_bytes_ = 0;
  MemHandle next_handle_ = 1;
  ModelId next_model_ = 1;
  std::unordered_map<MemHandle, Allocation> allocations_;
  std::unordered_map<MemHandle, Region> borrowed_;  // callers' host buffers (not owned)
  std::unordered_map<ModelId, std::shared_ptr<const ModelDescriptor>> models_;
};

}  // namespace spiky::runtime
