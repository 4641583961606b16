#include "host_driver.h"

#include <cstdlib>
#include <cstring>
#include <string>
#include <utility>

#include "errors.h"

namespace spiky::runtime {
namespace {

// 64 bytes: a cache line, and enough for any numpy view over device memory.
constexpr std::size_t kAlignment = 64;

std::string range_error(const char* what, std::size_t offset, std::size_t nbytes,
                        std::size_t size) {
  return std::string(what) + ": range [" + std::to_string(offset) + ", " +
         std::to_string(offset) + " + " + std::to_string(nbytes) +
         ") is outside the device allocation of " + std::to_string(size) + " bytes";
}

}  // namespace

void HostDriver::FreeDeleter::operator()(void* p) const noexcept { std::free(p); }

HostDriver::HostDriver(int index, std::size_t capacity_bytes)
    : index_(index), capacity_bytes_(capacity_bytes) {}

HostDriver::~HostDriver() = default;

std::size_t HostDriver::capacity_bytes() const {
  std::lock_guard<std::mutex> lock(mutex_);
  return capacity_bytes_;
}

void HostDriver::set_capacity_bytes(std::size_t capacity) {
  std::lock_guard<std::mutex> lock(mutex_);
  capacity_bytes_ = capacity;
}

MemHandle HostDriver::allocate(std::size_t nbytes) {
  if (nbytes == 0) throw InvalidArgument("host driver: cannot allocate 0 bytes");
  {
    // Reserve first so concurrent allocations cannot overshoot the capacity together.
    std::lock_guard<std::mutex> lock(mutex_);
    if (capacity_bytes_ != 0 && allocated_bytes_ + nbytes > capacity_bytes_) {
      throw DeviceOutOfMemory("host driver " + std::to_string(index_) + ": cannot allocate " +
                              std::to_string(nbytes) + " bytes; " +
                              std::to_string(allocated_bytes_) + " of " +
                              std::to_string(capacity_bytes_) + " bytes in use");
    }
    allocated_bytes_ += nbytes;
  }
  const std::size_t padded = (nbytes + kAlignment - 1) / kAlignment * kAlignment;
  std::unique_ptr<void, FreeDeleter> data(std::aligned_alloc(kAlignment, padded));
  std::lock_guard<std::mutex> lock(mutex_);
  if (!data) {
    allocated_bytes_ -= nbytes;
    throw DeviceOutOfMemory("host driver " + std::to_string(index_) +
                            ": the system allocator refused " + std::to_string(nbytes) +
                            " bytes");
  }
  const MemHandle handle = next_handle_++;
  allocations_.emplace(handle, Allocation{std::move(data), nbytes});
  return handle;
}

void HostDriver::free(MemHandle handle) {
  Allocation victim;
  {
    std::lock_guard<std::mutex> lock(mutex_);
    auto it = allocations_.find(handle);
    if (it == allocations_.end()) {
      throw InvalidArgument("host driver: free of unknown memory handle " +
                            std::to_string(handle));
    }
    victim = std::move(it->second);
    allocations_.erase(it);
    allocated_bytes_ -= victim.nbytes;
  }
  // `victim` releases the memory here, outside the lock.
}

std::size_t HostDriver::allocation_size(MemHandle handle) const {
  return region(handle, 0, 0, "host driver").nbytes;
}

HostDriver::Region HostDriver::region(MemHandle handle, std::size_t offset,
                                      std::size_t nbytes, const char* what) const {
  std::lock_guard<std::mutex> lock(mutex_);
  Region found{nullptr, 0};
  if (auto it = allocations_.find(handle); it != allocations_.end()) {
    found = Region{static_cast<std::byte*>(it->second.data.get()), it->second.nbytes};
  } else if (auto b = borrowed_.find(handle); b != borrowed_.end()) {
    found = b->second;
  } else {
    throw InvalidArgument(std::string(what) + ": unknown memory handle " +
                          std::to_string(handle));
  }
  if (offset > found.nbytes || nbytes > found.nbytes - offset) {
    throw InvalidArgument(range_error(what, offset, nbytes, found.nbytes));
  }
  return found;
}

std::optional<MemHandle> HostDriver::borrow_host(const void* data, std::size_t nbytes) {
  std::lock_guard<std::mutex> lock(mutex_);
  const MemHandle handle = next_handle_++;
  // Inputs are only read; outputs are host arrays the executor allocated for the call.
  borrowed_.emplace(handle, Region{static_cast<std::byte*>(const_cast<void*>(data)), nbytes});
  return handle;
}

void HostDriver::release_borrowed(MemHandle handle) {
  std::lock_guard<std::mutex> lock(mutex_);
  borrowed_.erase(handle);
}

void HostDriver::write(MemHandle dst, std::size_t dst_offset, const void* src,
                       std::size_t nbytes) {
  Region r = region(dst, dst_offset, nbytes, "host driver write");
  if (nbytes) {
    std::memcpy(r.data + dst_offset, src, nbytes);
    count_h2d(nbytes);
  }
}

void HostDriver::read(MemHandle src, std::size_t src_offset, void* dst, std::size_t nbytes) {
  Region r = region(src, src_offset, nbytes, "host driver read");
  if (nbytes) {
    std::memcpy(dst, r.data + src_offset, nbytes);
    count_d2h(nbytes);
  }
}

void HostDriver::copy(MemHandle src, std::size_t src_offset, MemHandle dst,
                      std::size_t dst_offset, std::size_t nbytes) {
  Region s = region(src, src_offset, nbytes, "host driver copy (source)");
  Region d = region(dst, dst_offset, nbytes, "host driver copy (destination)");
  // memmove: source and destination may be the same allocation.
  if (nbytes) std::memmove(d.data + dst_offset, s.data + src_offset, nbytes);
}

void HostDriver::copy_strided(MemHandle src, std::size_t src_offset, MemHandle dst,
                              std::size_t dst_offset, const StridedCopy& op) {
  if (op.empty()) return;
  Region s = region(src, src_offset, op.src_extent(), "host driver copy_strided (source)");
  Region d = region(dst, dst_offset, op.dst_extent(), "host driver copy_strided (destination)");
  spiky::runtime::copy_strided(d.data + dst_offset, s.data + src_offset, op);
}

void HostDriver::fill_strided(MemHandle dst, std::size_t dst_offset, const StridedFill& op) {
  if (op.empty()) return;
  Region d = region(dst, dst_offset, op.extent(), "host driver fill_strided");
  spiky::runtime::fill_strided(d.data + dst_offset, op);
}

ModelId HostDriver::load_model(ModelDescriptor descriptor) {
  if (!descriptor.host_executable || !*descriptor.host_executable) {
    throw InvalidArgument("host driver: model '" + descriptor.name +
                          "' has no host executable; the host driver runs only host models");
  }
  auto shared = std::make_shared<const ModelDescriptor>(std::move(descriptor));
  std::lock_guard<std::mutex> lock(mutex_);
  const ModelId id = next_model_++;
  models_.emplace(id, std::move(shared));
  return id;
}

void HostDriver::unload_model(ModelId model) {
  std::shared_ptr<const ModelDescriptor> victim;
  {
    std::lock_guard<std::mutex> lock(mutex_);
    auto it = models_.find(model);
    if (it == models_.end()) {
      throw InvalidArgument("host driver: unload of unknown model id " + std::to_string(model));
    }
    victim = std::move(it->second);
    models_.erase(it);
  }
  // The executable may own foreign resources (a Python callable): drop it outside the lock.
}

std::shared_ptr<const ModelDescriptor> HostDriver::find_model(ModelId model, std::size_t inputs,
                                                              std::size_t outputs) const {
  std::shared_ptr<const ModelDescriptor> desc;
  {
    std::lock_guard<std::mutex> lock(mutex_);
    auto it = models_.find(model);
    if (it == models_.end()) {
      throw InvalidArgument("host driver: execute of unknown model id " + std::to_string(model));
    }
    desc = it->second;
  }
  if (inputs != desc->inputs.size() || outputs != desc->outputs.size()) {
    throw InvalidArgument("host driver: model '" + desc->name + "' takes " +
                          std::to_string(desc->inputs.size()) + " inputs and " +
                          std::to_string(desc->outputs.size()) + " outputs, got " +
                          std::to_string(inputs) + " and " + std::to_string(outputs));
  }
  return desc;
}

void HostDriver::execute_in_place(ModelId model, const std::vector<ConstTensor>& inputs,
                                  const std::vector<MutableTensor>& outputs) {
  const std::shared_ptr<const ModelDescriptor> desc = find_model(model, inputs.size(), outputs.size());
  auto check = [&](const TensorSpec& got, const TensorSpec& want, const char* what, std::size_t i) {
    if (got != want) {
      throw InvalidArgument("host driver: model '" + desc->name + "' " + what + " " +
                            std::to_string(i) + " expects " + want.describe() + ", got " +
                            got.describe());
    }
  };
  for (std::size_t i = 0; i < inputs.size(); ++i) check(inputs[i].spec, desc->inputs[i], "input", i);
  for (std::size_t i = 0; i < outputs.size(); ++i) check(outputs[i].spec, desc->outputs[i], "output", i);
  (*desc->host_executable)(inputs, outputs);  // no lock held, as in execute
}

void HostDriver::execute(ModelId model, const std::vector<DeviceRef>& inputs,
                         const std::vector<DeviceRef>& outputs) {
  const std::shared_ptr<const ModelDescriptor> desc = find_model(model, inputs.size(), outputs.size());
  auto check_ref = [&](const DeviceRef& ref, const TensorSpec& spec, const char* what,
                       std::size_t i) {
    if (ref.nbytes < spec.nbytes()) {
      throw InvalidArgument("host driver: model '" + desc->name + "' " + what + " " +
                            std::to_string(i) + " needs " + std::to_string(spec.nbytes()) +
                            " bytes (" + spec.describe() + "), the buffer holds " +
                            std::to_string(ref.nbytes));
    }
  };
  for (std::size_t i = 0; i < inputs.size(); ++i) check_ref(inputs[i], desc->inputs[i], "input", i);
  for (std::size_t i = 0; i < outputs.size(); ++i) {
    check_ref(outputs[i], desc->outputs[i], "output", i);
  }
  std::vector<ConstTensor> in;
  in.reserve(inputs.size());
  for (std::size_t i = 0; i < inputs.size(); ++i) {
    const TensorSpec& spec = desc->inputs[i];
    Region r = region(inputs[i].handle, inputs[i].offset, spec.nbytes(),
                      "host driver execute (input)");
    in.push_back(ConstTensor{spec, r.data + inputs[i].offset});
  }
  std::vector<MutableTensor> out;
  out.reserve(outputs.size());
  for (std::size_t i = 0; i < outputs.size(); ++i) {
    const TensorSpec& spec = desc->outputs[i];
    Region r = region(outputs[i].handle, outputs[i].offset, spec.nbytes(),
                      "host driver execute (output)");
    out.push_back(MutableTensor{spec, r.data + outputs[i].offset});
  }
  // No lock held: the executable may take as long as it likes and may call back in.
  (*desc->host_executable)(in, out);
}

}  // namespace spiky::runtime
