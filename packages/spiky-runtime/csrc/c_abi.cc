// The C ABI of spiky_runtime/c_abi.h (in src/spiky_runtime/include/: package data, so
// consumers build against spiky_runtime.get_include()) and its three Python entry points
// (bind_c_abi):
//   allocator_capsule(device)                      -> PyCapsule of a SpikyAllocatorV1
//   device_tensor_from_pointer(capsule, ptr, shape, dtype) -> DeviceTensor sharing the memory
//   adopt_device_tensor(capsule, tensor)          -> device address owning the tensor's memory
// The last two let a compiled call take a foreign tensor's memory as an input and hand its
// (possibly still pending) outputs back as foreign tensors, without copies.
//
// Each capsule owns an AddressTable: device address -> DeviceTensor (the memory, possibly
// still being produced by a pipelined call). Create one capsule per device and keep it: the
// addresses of one table mean nothing to another.
#include "spiky_runtime/c_abi.h"

#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <algorithm>
#include <cstdio>
#include <cstring>
#include <exception>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <utility>
#include <vector>

#include "buffer.h"
#include "device.h"
#include "device_tensor.h"
#include "errors.h"
#include "tensor_spec.h"

namespace py = pybind11;

namespace spiky::runtime {
namespace {

constexpr std::uintptr_t kAlign = 512;
// Device addresses start high and are never reused, so a stale address cannot alias a new
// allocation (2^64 bytes of address space do not run out).
constexpr std::uintptr_t kFirstAddress = std::uintptr_t{1} << 40;

// Releases the GIL for the duration of a blocking call when this thread holds it (a torch op
// called from Python holds it; a pipelined host model needs it to make progress).
class GilRelease {
 public:
  GilRelease() : state_(Py_IsInitialized() && PyGILState_Check() ? PyEval_SaveThread() : nullptr) {}
  ~GilRelease() {
    if (state_ != nullptr) PyEval_RestoreThread(state_);
  }
  GilRelease(const GilRelease&) = delete;
  GilRelease& operator=(const GilRelease&) = delete;

 private:
  PyThreadState* state_;
};

class AddressTable {
 public:
  explicit AddressTable(std::shared_ptr<Device> device) : device_(std::move(device)) {
    abi_.abi_version = SPIKY_ALLOCATOR_ABI_VERSION;
    abi_.struct_size = sizeof(SpikyAllocatorV1);
    abi_.ctx = this;
    abi_.device_index = device_->index();
    driver_name_ = device_->driver_name();
    abi_.driver_name = driver_name_.c_str();
    abi_.allocate = &AddressTable::c_allocate;
    abi_.free = &AddressTable::c_free;
    abi_.copy_h2d = &AddressTable::c_copy_h2d;
    abi_.copy_d2h = &AddressTable::c_copy_d2h;
    abi_.copy_d2d = &AddressTable::c_copy_d2d;
    abi_.synchronize = &AddressTable::c_synchronize;
  }

  SpikyAllocatorV1* abi() { return &abi_; }
  const std::shared_ptr<Device>& device() const { return device_; }

  // Registers a tensor (ready or pending) under a fresh address; returns the address.
  std::uintptr_t insert(std::shared_ptr<DeviceTensor> tensor, std::size_t nbytes) {
    std::lock_guard<std::mutex> lock(mutex_);
    const std::uintptr_t address = next_;
    const std::uintptr_t span = (std::max<std::size_t>(nbytes, 1) + kAlign - 1) / kAlign * kAlign;
    next_ += span + kAlign;  // a gap: one-past-the-end never lands in the next allocation
    entries_.emplace(address, Entry{std::move(tensor), nbytes});
    return address;
  }

  std::uintptr_t allocate(std::size_t nbytes) {
    std::shared_ptr<Buffer> buffer;
    {
      GilRelease nogil;
      buffer = device_->allocate(std::max<std::size_t>(nbytes, 1));
    }
    auto tensor = std::make_shared<DeviceTensor>(
        device_, TensorSpec({static_cast<std::int64_t>(nbytes)}, DType::kUInt8));
    tensor->set_buffer(std::move(buffer));
    tensor->set_ready();
    return insert(std::move(tensor), nbytes);
  }

  void free(std::uintptr_t address) {
    std::shared_ptr<DeviceTensor> dropped;  // released outside the lock
    std::lock_guard<std::mutex> lock(mutex_);
    auto it = entries_.find(address);
    if (it == entries_.end()) {
      throw InvalidArgument("free: " + hex(address) + " is not a live allocation of device " +
                            label());
    }
    dropped = std::move(it->second.tensor);
    entries_.erase(it);
  }

  // The tensor holding [address, address + nbytes) and the offset of `address` in it.
  std::pair<std::shared_ptr<DeviceTensor>, std::size_t> resolve(std::uintptr_t address,
                                                                 std::size_t nbytes,
                                                                 const char* what) const {
    std::lock_guard<std::mutex> lock(mutex_);
    auto it = entries_.upper_bound(address);
    if (it != entries_.begin()) {
      --it;
      const std::size_t offset = address - it->first;
      if (offset <= it->second.nbytes && nbytes <= it->second.nbytes - offset) {
        return {it->second.tensor, offset};
      }
      if (offset < std::max<std::size_t>(it->second.nbytes, 1)) {
        throw InvalidArgument(std::string(what) + ": " + std::to_string(nbytes) + " bytes at " +
                              hex(address) + " run past the end of its allocation (" +
                              std::to_string(it->second.nbytes) + " bytes at " + hex(it->first) +
                              ")");
      }
    }
    throw InvalidArgument(std::string(what) + ": " + hex(address) +
                          " is not inside a live allocation of device " + label());
  }

  void copy_h2d(std::uintptr_t dst, const void* src, std::size_t nbytes) {
    if (nbytes == 0) return;
    auto [tensor, offset] = resolve(dst, nbytes, "copy_h2d");
    GilRelease nogil;
    tensor->buffer()->write(src, nbytes, offset);
  }

  void copy_d2h(void* dst, std::uintptr_t src, std::size_t nbytes) {
    if (nbytes == 0) return;
    auto [tensor, offset] = resolve(src, nbytes, "copy_d2h");
    GilRelease nogil;
    tensor->buffer()->read(dst, nbytes, offset);
  }

  void copy_d2d(std::uintptr_t dst, std::uintptr_t src, std::size_t nbytes) {
    if (nbytes == 0) return;
    auto [src_tensor, src_offset] = resolve(src, nbytes, "copy_d2d (source)");
    auto [dst_tensor, dst_offset] = resolve(dst, nbytes, "copy_d2d (destination)");
    GilRelease nogil;
    auto src_buffer = src_tensor->buffer();
    dst_tensor->buffer()->copy_from(*src_buffer, src_offset, dst_offset, nbytes);
  }

  void synchronize() {
    GilRelease nogil;
    device_->synchronize();
  }

  std::string label() const { return driver_name_ + ":" + std::to_string(device_->index()); }
  static std::string hex(std::uintptr_t address) {
    char text[32];
    std::snprintf(text, sizeof(text), "0x%llx", static_cast<unsigned long long>(address));
    return text;
  }

 private:
  struct Entry {
    std::shared_ptr<DeviceTensor> tensor;
    std::size_t nbytes;
  };

  // Runs fn, converting exceptions into a status and message (the C boundary).
  template <typename Fn>
  static int guarded(char* err, std::size_t err_len, Fn&& fn) {
    auto fail = [&](int status, const char* message) {
      if (err != nullptr && err_len > 0) {
        std::strncpy(err, message, err_len - 1);
        err[err_len - 1] = '\0';
      }
      return status;
    };
    try {
      fn();
      return SPIKY_ABI_OK;
    } catch (const OutOfMemory& e) {
      return fail(SPIKY_ABI_OUT_OF_MEMORY, e.what());
    } catch (const DeviceOutOfMemory& e) {
      return fail(SPIKY_ABI_OUT_OF_MEMORY, e.what());
    } catch (const std::exception& e) {
      return fail(SPIKY_ABI_ERROR, e.what());
    } catch (...) {
      return fail(SPIKY_ABI_ERROR, "unknown error in the spiky-runtime C ABI");
    }
  }
  static AddressTable& self(void* ctx) { return *static_cast<AddressTable*>(ctx); }
  static std::uintptr_t addr(const void* p) { return reinterpret_cast<std::uintptr_t>(p); }

  static int c_allocate(void* ctx, std::size_t nbytes, void** ptr, std::uint64_t* handle,
                        char* err, std::size_t err_len) {
    return guarded(err, err_len, [&] {
      const std::uintptr_t address = self(ctx).allocate(nbytes);
      *ptr = reinterpret_cast<void*>(address);
      *handle = address;
    });
  }
  static int c_free(void* ctx, std::uint64_t handle, char* err, std::size_t err_len) {
    return guarded(err, err_len, [&] { self(ctx).free(static_cast<std::uintptr_t>(handle)); });
  }
  static int c_copy_h2d(void* ctx, void* dst, const void* src, std::size_t nbytes, char* err,
                        std::size_t err_len) {
    return guarded(err, err_len, [&] { self(ctx).copy_h2d(addr(dst), src, nbytes); });
  }
  static int c_copy_d2h(void* ctx, void* dst, const void* src, std::size_t nbytes, char* err,
                        std::size_t err_len) {
    return guarded(err, err_len, [&] { self(ctx).copy_d2h(dst, addr(src), nbytes); });
  }
  static int c_copy_d2d(void* ctx, void* dst, const void* src, std::size_t nbytes, char* err,
                        std::size_t err_len) {
    return guarded(err, err_len, [&] { self(ctx).copy_d2d(addr(dst), addr(src), nbytes); });
  }
  static int c_synchronize(void* ctx, char* err, std::size_t err_len) {
    return guarded(err, err_len, [&] { self(ctx).synchronize(); });
  }

  std::shared_ptr<Device> device_;
  std::string driver_name_;
  SpikyAllocatorV1 abi_{};
  mutable std::mutex mutex_;
  std::map<std::uintptr_t, Entry> entries_;
  std::uintptr_t next_ = kFirstAddress;
};

AddressTable& table_of(const py::capsule& capsule) {
  if (std::strcmp(capsule.name(), SPIKY_ALLOCATOR_CAPSULE_NAME) != 0) {
    throw InvalidArgument(std::string("expected a capsule from allocator_capsule(), got one named '") +
                          capsule.name() + "'");
  }
  return *static_cast<AddressTable*>(capsule.get_pointer<SpikyAllocatorV1>()->ctx);
}

}  // namespace

void bind_c_abi(py::module_& m) {
  m.def(
      "allocator_capsule",
      [](std::shared_ptr<Device> device) {
        // The table lives as long as the capsule; consumers keep the capsule for good (their
        // tensors may be freed as late as interpreter exit).
        auto* table = new AddressTable(std::move(device));  // NOLINT: owned by the capsule
        return py::capsule(table->abi(), SPIKY_ALLOCATOR_CAPSULE_NAME, [](PyObject* cap) {
          auto* abi = static_cast<SpikyAllocatorV1*>(
              PyCapsule_GetPointer(cap, SPIKY_ALLOCATOR_CAPSULE_NAME));
          if (abi != nullptr) delete static_cast<AddressTable*>(abi->ctx);  // NOLINT
        });
      },
      py::arg("device"),
      "A PyCapsule of the device's C allocator ABI (c_abi.h); keep one per device.");
  m.def(
      "device_tensor_from_pointer",
      [](const py::capsule& capsule, std::int64_t ptr, std::vector<std::int64_t> shape,
         const std::string& dtype) {
        AddressTable& table = table_of(capsule);
        TensorSpec spec(std::move(shape), parse_dtype(dtype, "device_tensor_from_pointer: "));
        auto [source, offset] = table.resolve(static_cast<std::uintptr_t>(ptr), spec.nbytes(),
                                              "device_tensor_from_pointer");
        if (offset != 0) {
          throw InvalidArgument("device_tensor_from_pointer: " +
                                AddressTable::hex(static_cast<std::uintptr_t>(ptr)) + " is " +
                                std::to_string(offset) +
                                " bytes into its allocation; expected the start of one "
                                "(make the tensor contiguous first)");
        }
        if (source->spec() == spec) return source;  // possibly pending: no wait
        auto tensor = std::make_shared<DeviceTensor>(table.device(), spec);
        {
          py::gil_scoped_release nogil;
          tensor->set_buffer(source->buffer());  // waits for a pending producer
        }
        tensor->set_ready();
        return tensor;
      },
      py::arg("capsule"), py::arg("ptr"), py::arg("shape"), py::arg("dtype"),
      "The memory at a capsule address (start of an allocation) as a DeviceTensor; no copy.");
  m.def(
      "adopt_device_tensor",
      [](const py::capsule& capsule, std::shared_ptr<DeviceTensor> tensor) {
        AddressTable& table = table_of(capsule);
        if (tensor->device() != table.device()) {
          throw InvalidArgument("adopt_device_tensor: the tensor is on device " +
                                tensor->device()->driver_name() + ":" +
                                std::to_string(tensor->device()->index()) + ", the capsule on " +
                                table.label());
        }
        const std::size_t nbytes = tensor->spec().nbytes();
        return static_cast<std::int64_t>(table.insert(std::move(tensor), nbytes));
      },
      py::arg("capsule"), py::arg("tensor"),
      "Registers a (possibly pending) DeviceTensor under a new capsule address; free() drops it.");
}

}  // namespace spiky::runtime
