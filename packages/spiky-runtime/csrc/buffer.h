// Buffer: a block of device memory from the pool, with bounds-checked host<->device and
// device<->device copies. Freed explicitly (free(), idempotent) or when the last owner
// drops it; either way the block goes back to the device's pool cache.
#pragma once

#include <cstddef>
#include <memory>

#include "pool.h"

namespace spiky::runtime {

class Device;

class Buffer {
 public:
  Buffer(std::shared_ptr<Device> device, std::unique_ptr<Block> block, std::size_t nbytes);

  // Requested size (the pool may hold a larger rounded block; I/O is checked against this).
  std::size_t nbytes() const { return nbytes_; }
  const std::shared_ptr<Device>& device() const { return device_; }
  bool freed() const { return block_->released(); }

  void write(const void* src, std::size_t nbytes, std::size_t offset);
  void read(void* dst, std::size_t nbytes, std::size_t offset) const;
  void copy_from(const Buffer& src, std::size_t src_offset, std::size_t dst_offset,
                 std::size_t nbytes);
  void free() { block_->release(); }
  // The pool block (device ref) behind this buffer, for device-side work by the executor.
  const Block& block() const { return *block_; }

 private:
  void check_range(const char* what, std::size_t offset, std::size_t nbytes) const;

  std::shared_ptr<Device> device_;
  std::unique_ptr<Block> block_;
  std::size_t nbytes_;
};

}  // namespace spiky::runtime
