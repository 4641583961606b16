#include "buffer.h"

#include <string>
#include <utility>

#include "device.h"
#include "errors.h"

namespace spiky::runtime {

Buffer::Buffer(std::shared_ptr<Device> device, std::unique_ptr<Block> block, std::size_t nbytes)
    : device_(std::move(device)), block_(std::move(block)), nbytes_(nbytes) {}

void Buffer::check_range(const char* what, std::size_t offset, std::size_t nbytes) const {
  if (offset > nbytes_ || nbytes > nbytes_ - offset) {
    throw InvalidArgument(std::string(what) + ": offset " + std::to_string(offset) + " + " +
                          std::to_string(nbytes) + " bytes = " + std::to_string(offset + nbytes) +
                          " exceeds the buffer size of " + std::to_string(nbytes_) +
                          " bytes; expected offset + nbytes <= " + std::to_string(nbytes_));
  }
}

void Buffer::write(const void* src, std::size_t nbytes, std::size_t offset) {
  check_range("Buffer.write", offset, nbytes);
  block_->with_ref("Buffer.write", [&](const DeviceRef& r) {
    device_->driver().write(r.handle, r.offset + offset, src, nbytes);
  });
}

void Buffer::read(void* dst, std::size_t nbytes, std::size_t offset) const {
  check_range("Buffer.read", offset, nbytes);
  block_->with_ref("Buffer.read", [&](const DeviceRef& r) {
    device_->driver().read(r.handle, r.offset + offset, dst, nbytes);
  });
}

void Buffer::copy_from(const Buffer& src, std::size_t src_offset, std::size_t dst_offset,
                       std::size_t nbytes) {
  if (src.device_ != device_) {
    throw InvalidArgument("Buffer.copy_from: source is on device " + src.device_->driver_name() +
                          ":" + std::to_string(src.device_->index()) + ", destination on " +
                          device_->driver_name() + ":" + std::to_string(device_->index()) +
                          "; expected buffers of the same device (copy through the host)");
  }
  src.check_range("Buffer.copy_from (source)", src_offset, nbytes);
  check_range("Buffer.copy_from (destination)", dst_offset, nbytes);
  if (&src == this) {
    block_->with_ref("Buffer.copy_from", [&](const DeviceRef& r) {
      device_->driver().copy(r.handle, r.offset + src_offset, r.handle, r.offset + dst_offset,
                             nbytes);
    });
    return;
  }
  src.block_->with_ref("Buffer.copy_from (source)", [&](const DeviceRef& s) {
    block_->with_ref("Buffer.copy_from (destination)", [&](const DeviceRef& d) {
      device_->driver().copy(s.handle, s.offset + src_offset, d.handle, d.offset + dst_offset,
                             nbytes);
    });
  });
}

}  // namespace spiky::runtime
