// The "nkipy" torch device: torch's PrivateUse1 backend over spiky-runtime's memory pool.
//
// Storage comes from the runtime through the C ABI of <spiky_runtime/c_abi.h> (shipped by
// spiky-runtime, found through spiky_runtime.get_include(); a capsule of function pointers
// per device), so this extension links torch only. Device addresses are opaque (not
// host-dereferenceable, as on Neuron): every byte moves through the ABI's copy functions.
//
// What runs "on the device" here is memory management, copies, fills and views; every other
// op goes through the CPU fallback at the bottom (copy in, run on CPU, copy out) with a
// one-time warning per op, or an error with SPIKY_DEVICE_FALLBACK=error. Compiled graphs
// (spiky.torch) run on the device without this fallback.
#include <torch/extension.h>

#include <ATen/EmptyTensor.h>
#include <ATen/InferSize.h>
#include <ATen/native/CPUFallback.h>
#include <ATen/native/Resize.h>
#include <ATen/detail/PrivateUse1HooksInterface.h>
#include <c10/core/Allocator.h>
#include <c10/core/impl/DeviceGuardImplInterface.h>

#include <algorithm>
#include <cstdlib>
#include <mutex>
#include <set>
#include <string>
#include <vector>

#include <spiky_runtime/c_abi.h>  // spiky_runtime.get_include()

namespace {

// ---------------------------------------------------------------- devices

constexpr int kMaxDevices = 64;
const SpikyAllocatorV1* g_abi[kMaxDevices] = {};  // per device index, set once by register_device
int g_device_count = 0;
thread_local c10::DeviceIndex t_current_device = 0;

const SpikyAllocatorV1& abi_for(c10::DeviceIndex index) {
  TORCH_CHECK(index >= 0 && index < g_device_count && g_abi[index] != nullptr,
              "nkipy device ", static_cast<int>(index), " does not exist; device_count() is ",
              g_device_count);
  return *g_abi[index];
}

// Turns an ABI status into a torch error (OOM as torch.OutOfMemoryError).
void check(int status, const char* err, const char* what) {
  if (status == SPIKY_ABI_OK) return;
  if (status == SPIKY_ABI_OUT_OF_MEMORY) {
    TORCH_CHECK_WITH(OutOfMemoryError, false, "nkipy ", what, ": ", err);
  }
  TORCH_CHECK(false, "nkipy ", what, ": ", err);
}

struct AllocationContext {
  const SpikyAllocatorV1* abi;
  std::uint64_t handle;
};

void free_allocation(void* ctx) {
  auto* context = static_cast<AllocationContext*>(ctx);
  char err[512] = {0};
  // A failing free cannot throw out of a deleter; the memory stays with the runtime.
  (void)context->abi->free(context->abi->ctx, context->handle, err, sizeof(err));
  delete context;
}

// ---------------------------------------------------------------- allocator

c10::DataPtr make_data_ptr(const SpikyAllocatorV1& abi, void* ptr, std::uint64_t handle,
                           c10::DeviceIndex index) {
  return c10::DataPtr(ptr, new AllocationContext{&abi, handle}, &free_allocation,
                      c10::Device(c10::DeviceType::PrivateUse1, index));
}

struct NkipyAllocator final : c10::Allocator {
  c10::DataPtr allocate(size_t nbytes) override {
    const c10::DeviceIndex index = t_current_device;
    const SpikyAllocatorV1& abi = abi_for(index);
    void* ptr = nullptr;
    std::uint64_t handle = 0;
    char err[1024] = {0};
    check(abi.allocate(abi.ctx, nbytes, &ptr, &handle, err, sizeof(err)), err, "allocate");
    return make_data_ptr(abi, ptr, handle, index);
  }
  c10::DeleterFnPtr raw_deleter() const override { return nullptr; }
  void copy_data(void* dest, const void* src, std::size_t count) const override {
    const SpikyAllocatorV1& abi = abi_for(t_current_device);
    char err[1024] = {0};
    check(abi.copy_d2d(abi.ctx, dest, src, count, err, sizeof(err)), err, "copy_data");
  }
};

NkipyAllocator g_allocator;

// ---------------------------------------------------------------- device guard and hooks

struct NkipyGuardImpl final : c10::impl::DeviceGuardImplInterface {
  static constexpr c10::DeviceType kType = c10::DeviceType::PrivateUse1;
  c10::DeviceType type() const override { return kType; }
  c10::Device exchangeDevice(c10::Device d) const override {
    c10::Device old = getDevice();
    setDevice(d);
    return old;
  }
  c10::Device getDevice() const override { return c10::Device(kType, t_current_device); }
  void setDevice(c10::Device d) const override {
    TORCH_CHECK(d.type() == kType, "expected an nkipy device, got ", d);
    if (d.index() >= 0) {
      abi_for(d.index());
      t_current_device = d.index();
    }
  }
  void uncheckedSetDevice(c10::Device d) const noexcept override {
    if (d.index() >= 0) t_current_device = d.index();
  }
  c10::Stream getStream(c10::Device d) const override {
    return c10::Stream(c10::Stream::DEFAULT, d);
  }
  c10::Stream getDefaultStream(c10::Device d) const override { return getStream(d); }
  c10::Stream exchangeStream(c10::Stream s) const override { return s; }
  c10::DeviceIndex deviceCount() const noexcept override {
    return static_cast<c10::DeviceIndex>(g_device_count);
  }
  // One stream per device, and every access waits for its producer: events are trivially
  // complete (the autograd engine records and waits on them between devices).
  void record(void** event, const c10::Stream&, const c10::DeviceIndex,
              const c10::EventFlag) const override {
    *event = reinterpret_cast<void*>(1);
  }
  void block(void*, const c10::Stream&) const override {}
  bool queryEvent(void*) const override { return true; }
  void destroyEvent(void*, const c10::DeviceIndex) const noexcept override {}
  bool queryStream(const c10::Stream&) const override { return true; }
  void synchronizeStream(const c10::Stream& s) const override { synchronizeDevice(s.device_index()); }
  void synchronizeEvent(void*) const override {}
  void synchronizeDevice(const c10::DeviceIndex index) const override {
    const SpikyAllocatorV1& abi = abi_for(index < 0 ? t_current_device : index);
    char err[1024] = {0};
    check(abi.synchronize(abi.ctx, err, sizeof(err)), err, "synchronize");
  }
  void recordDataPtrOnStream(const c10::DataPtr&, const c10::Stream&) const override {}
};

C10_REGISTER_GUARD_IMPL(PrivateUse1, NkipyGuardImpl);

struct NkipyHooks final : at::PrivateUse1HooksInterface {
  bool isBuilt() const override { return true; }
  bool isAvailable() const override { return g_device_count > 0; }
  bool hasPrimaryContext(c10::DeviceIndex index) const override {
    return index >= 0 && index < g_device_count;
  }
  c10::DeviceIndex deviceCount() const override {
    return static_cast<c10::DeviceIndex>(g_device_count);
  }
  void setCurrentDevice(c10::DeviceIndex index) const override {
    abi_for(index);
    t_current_device = index;
  }
  c10::DeviceIndex getCurrentDevice() const override { return t_current_device; }
  c10::DeviceIndex exchangeDevice(c10::DeviceIndex index) const override {
    const c10::DeviceIndex old = t_current_device;
    setCurrentDevice(index);
    return old;
  }
  c10::DeviceIndex maybeExchangeDevice(c10::DeviceIndex index) const override {
    return exchangeDevice(index);
  }
  at::Device getDeviceFromPtr(void*) const override {
    return c10::Device(c10::DeviceType::PrivateUse1, t_current_device);
  }
  bool isPinnedPtr(const void*) const override { return false; }
  const at::Generator& getDefaultGenerator(c10::DeviceIndex) const override {
    // Random ops run through the CPU fallback and draw from the CPU generator.
    return at::detail::getDefaultCPUGenerator();
  }
  void resizePrivateUse1Bytes(const c10::Storage& storage, size_t newsize) const override;
};

// ---------------------------------------------------------------- copies

const SpikyAllocatorV1& abi_of(const at::Tensor& t) { return abi_for(t.device().index()); }

// Bytes spanned by a (non-negative-strided) view, from its first element.
std::int64_t span_bytes(const at::Tensor& t) {
  if (t.numel() == 0) return 0;
  std::int64_t last = 0;
  for (std::int64_t d = 0; d < t.dim(); ++d) last += (t.size(d) - 1) * t.stride(d);
  return (last + 1) * static_cast<std::int64_t>(t.element_size());
}

at::Tensor host_staging(const at::Tensor& device_view) {
  const std::int64_t bytes = span_bytes(device_view);
  at::Tensor flat = at::empty({bytes / static_cast<std::int64_t>(device_view.element_size())},
                              device_view.options().device(at::kCPU));
  return flat.as_strided(device_view.sizes(), device_view.strides(), 0);
}

// A CPU tensor with the values (and strides) of a device view: D2H of the bytes it spans.
at::Tensor read_to_host(const at::Tensor& src) {
  at::Tensor host = host_staging(src);
  const std::int64_t bytes = span_bytes(src);
  if (bytes == 0) return host;
  const SpikyAllocatorV1& abi = abi_of(src);
  char err[1024] = {0};
  check(abi.copy_d2h(abi.ctx, host.data_ptr(), src.const_data_ptr(), static_cast<size_t>(bytes), err,
                     sizeof(err)),
        err, "copy to host");
  return host;
}

// Writes CPU values into a device view (any strides; bytes between its elements keep their values).
void write_from_host(const at::Tensor& dst, const at::Tensor& src) {
  const std::int64_t bytes = span_bytes(dst);
  if (bytes == 0) return;
  const SpikyAllocatorV1& abi = abi_of(dst);
  char err[1024] = {0};
  at::Tensor host;
  if (dst.is_contiguous()) {
    host = src.to(dst.scalar_type()).expand(dst.sizes()).contiguous();
  } else {
    host = read_to_host(dst);  // the bytes between the view's elements must survive
    host.copy_(src);
  }
  check(abi.copy_h2d(abi.ctx, dst.data_ptr(), host.const_data_ptr(), static_cast<size_t>(bytes), err,
                     sizeof(err)),
        err, "copy to device");
}

at::Tensor nkipy_copy_from(const at::Tensor& self, const at::Tensor& dst, bool /*non_blocking*/) {
  TORCH_CHECK(self.sizes() == dst.sizes() || self.numel() == dst.numel() || self.dim() <= dst.dim(),
              "nkipy copy: cannot copy ", self.sizes(), " into ", dst.sizes());
  const bool src_dev = self.is_privateuseone();
  const bool dst_dev = dst.is_privateuseone();
  if (src_dev && dst_dev) {
    const bool same_layout = self.scalar_type() == dst.scalar_type() && self.sizes() == dst.sizes() &&
                             self.is_contiguous() && dst.is_contiguous() &&
                             self.device() == dst.device();
    if (same_layout) {
      const std::int64_t bytes = span_bytes(self);
      if (bytes == 0) return dst;
      const SpikyAllocatorV1& abi = abi_of(dst);
      char err[1024] = {0};
      check(abi.copy_d2d(abi.ctx, dst.data_ptr(), self.const_data_ptr(), static_cast<size_t>(bytes),
                         err, sizeof(err)),
            err, "copy on device");
      return dst;
    }
    // Strided or converting device copies go through host staging (no device kernels yet).
    write_from_host(dst, read_to_host(self));
    return dst;
  }
  if (dst_dev) {
    write_from_host(dst, self);
    return dst;
  }
  TORCH_CHECK(src_dev, "nkipy copy called without an nkipy tensor");
  dst.copy_(read_to_host(self));
  return dst;
}

at::Tensor nkipy_copy_from_and_resize(const at::Tensor& self, const at::Tensor& dst) {
  if (dst.sizes() != self.sizes()) dst.resize_(self.sizes());
  return nkipy_copy_from(self, dst, false);
}

// ---------------------------------------------------------------- factories, views, resize

at::Tensor nkipy_empty(c10::IntArrayRef size, std::optional<at::ScalarType> dtype,
                       std::optional<at::Layout> layout, std::optional<at::Device> device,
                       std::optional<bool> /*pin_memory*/,
                       std::optional<at::MemoryFormat> memory_format) {
  TORCH_CHECK(!layout.has_value() || *layout == at::kStrided, "nkipy tensors are strided");
  c10::DeviceGuard guard(device.value_or(c10::Device(c10::DeviceType::PrivateUse1, t_current_device)));
  const c10::DispatchKeySet keys(c10::DispatchKey::PrivateUse1);
  return at::detail::empty_generic(size, &g_allocator, keys, c10::dtype_or_default(dtype),
                                   memory_format);
}

at::Tensor nkipy_empty_strided(c10::IntArrayRef size, c10::IntArrayRef stride,
                               std::optional<at::ScalarType> dtype, std::optional<at::Layout> layout,
                               std::optional<at::Device> device, std::optional<bool> /*pin_memory*/) {
  TORCH_CHECK(!layout.has_value() || *layout == at::kStrided, "nkipy tensors are strided");
  c10::DeviceGuard guard(device.value_or(c10::Device(c10::DeviceType::PrivateUse1, t_current_device)));
  const c10::DispatchKeySet keys(c10::DispatchKey::PrivateUse1);
  return at::detail::empty_strided_generic(size, stride, &g_allocator, keys,
                                           c10::dtype_or_default(dtype));
}

// Grows a storage to `nbytes`: a new pool block, the old bytes copied on device.
void resize_storage(const c10::Storage& storage, size_t nbytes) {
  if (nbytes <= storage.nbytes()) return;
  TORCH_CHECK(storage.resizable(), "nkipy: trying to resize a storage that is not resizable");
  const c10::DeviceIndex index = storage.device().index();
  c10::DeviceGuard guard(storage.device());
  c10::DataPtr fresh = g_allocator.allocate(nbytes);
  const size_t old = storage.nbytes();
  if (old > 0 && storage.data() != nullptr) {
    const SpikyAllocatorV1& abi = abi_for(index);
    char err[1024] = {0};
    check(abi.copy_d2d(abi.ctx, fresh.get(), storage.data(), old, err, sizeof(err)), err,
          "resize copy");
  }
  storage.unsafeGetStorageImpl()->set_data_ptr_noswap(std::move(fresh));
  storage.unsafeGetStorageImpl()->set_nbytes(nbytes);
}

void NkipyHooks::resizePrivateUse1Bytes(const c10::Storage& storage, size_t newsize) const {
  resize_storage(storage, newsize);
}

const at::Tensor& nkipy_resize_(const at::Tensor& self, c10::IntArrayRef size,
                                std::optional<at::MemoryFormat> memory_format) {
  auto* impl = self.unsafeGetTensorImpl();
  impl->set_sizes_contiguous(size);
  const auto format = memory_format.value_or(at::MemoryFormat::Contiguous);
  if (format != at::MemoryFormat::Preserve) impl->empty_tensor_restride(format);
  const size_t needed = at::detail::computeStorageNbytes(
      self.sizes(), self.strides(), self.element_size(), static_cast<size_t>(self.storage_offset()));
  if (self.numel() > 0) resize_storage(self.storage(), needed);
  return self;
}

at::Tensor nkipy_as_strided(const at::Tensor& self, c10::IntArrayRef size, c10::IntArrayRef stride,
                            std::optional<std::int64_t> storage_offset) {
  return at::native::as_strided_tensorimpl(self, size, stride, storage_offset);
}

at::Tensor nkipy_view(const at::Tensor& self, c10::IntArrayRef size) {
  return at::native::view(self, size);
}

at::Tensor nkipy_reshape_alias(const at::Tensor& self, c10::IntArrayRef size, c10::IntArrayRef stride) {
  return at::native::_reshape_alias(self, size, stride);
}

at::Tensor& nkipy_fill_(at::Tensor& self, const at::Scalar& value) {
  // A fill is written from the host, as a memset would be on Neuron.
  write_from_host(self, at::full({}, value, self.options().device(at::kCPU)));
  return self;
}

at::Tensor& nkipy_zero_(at::Tensor& self) { return nkipy_fill_(self, 0); }

// ---------------------------------------------------------------- CPU fallback

enum class FallbackMode { kWarn, kError };

FallbackMode fallback_mode() {
  const char* env = std::getenv("SPIKY_DEVICE_FALLBACK");
  return env != nullptr && std::string(env) == "error" ? FallbackMode::kError : FallbackMode::kWarn;
}

std::mutex g_warned_mutex;
std::set<std::string> g_warned;

void nkipy_fallback(const c10::OperatorHandle& op, torch::jit::Stack* stack) {
  const auto& name = op.schema().operator_name();
  const std::string op_name = name.overload_name.empty() ? name.name : name.name + "." + name.overload_name;
  TORCH_CHECK(fallback_mode() != FallbackMode::kError, "spiky: ", op_name,
              " is not implemented on the nkipy device and SPIKY_DEVICE_FALLBACK=error forbids the "
              "CPU fallback; compile the code with torch.compile(backend=\"nkipy\") or unset "
              "SPIKY_DEVICE_FALLBACK");
  bool first = false;
  {
    std::lock_guard<std::mutex> lock(g_warned_mutex);
    first = g_warned.insert(op_name).second;
  }
  if (first) {
    TORCH_WARN("spiky: ", op_name, " is not implemented on the nkipy device; it runs on the CPU "
               "(inputs copied in, results copied out). Set SPIKY_DEVICE_FALLBACK=error to make "
               "this an error.");
  }
  at::native::cpu_fallback(op, stack);
}

// ---------------------------------------------------------------- Python entry points

void register_device(py::capsule capsule) {
  TORCH_CHECK(std::string(capsule.name()) == SPIKY_ALLOCATOR_CAPSULE_NAME,
              "register_device: expected a '", SPIKY_ALLOCATOR_CAPSULE_NAME, "' capsule, got '",
              capsule.name(), "'");
  const auto* abi = capsule.get_pointer<SpikyAllocatorV1>();
  TORCH_CHECK(abi->abi_version == SPIKY_ALLOCATOR_ABI_VERSION,
              "spiky-runtime allocator ABI version ", abi->abi_version, " but this extension was "
              "built for version ", SPIKY_ALLOCATOR_ABI_VERSION, "; reinstall spiky-torch and spiky-runtime together");
  TORCH_CHECK(abi->struct_size >= sizeof(SpikyAllocatorV1), "spiky-runtime allocator ABI struct is ",
              abi->struct_size, " bytes, expected at least ", sizeof(SpikyAllocatorV1));
  const int index = abi->device_index;
  TORCH_CHECK(index >= 0 && index < kMaxDevices, "device index ", index, " out of range");
  TORCH_CHECK(index <= g_device_count, "nkipy devices must be registered in order: got ", index,
              " with ", g_device_count, " registered");
  if (g_abi[index] != nullptr) return;  // idempotent
  capsule.inc_ref();  // tensors may be freed as late as interpreter exit: keep the ABI for good
  g_abi[index] = abi;
  g_device_count = std::max(g_device_count, index + 1);
}

// A device tensor owning the memory at a capsule address (from adopt_device_tensor), no copy.
at::Tensor tensor_from_pointer(std::int64_t ptr, std::int64_t nbytes, std::vector<std::int64_t> shape,
                               at::ScalarType dtype, std::int64_t device_index) {
  const auto index = static_cast<c10::DeviceIndex>(device_index);
  const SpikyAllocatorV1& abi = abi_for(index);
  void* address = reinterpret_cast<void*>(ptr);
  c10::Storage storage(c10::Storage::use_byte_size_t(), static_cast<size_t>(nbytes),
                       make_data_ptr(abi, address, static_cast<std::uint64_t>(ptr), index),
                       &g_allocator, /*resizable=*/true);
  at::Tensor out = at::detail::make_tensor<c10::TensorImpl>(
      std::move(storage), c10::DispatchKeySet(c10::DispatchKey::PrivateUse1), c10::scalarTypeToTypeMeta(dtype));
  out.unsafeGetTensorImpl()->set_sizes_contiguous(shape);
  return out;
}

std::vector<std::string> fallback_ops_warned() {
  std::lock_guard<std::mutex> lock(g_warned_mutex);
  return {g_warned.begin(), g_warned.end()};
}

// `param.data = t` between the CPU and the nkipy device (torch's Module.to, FSDP2 moving a CPU
// model onto its mesh's device). torch's own check knows dense CPU/CUDA/... but leaves private
// backends to say which types they can take the metadata of: plain dense CPU and nkipy tensors.
bool nkipy_has_compatible_shallow_copy_type(const at::Tensor& self, const at::Tensor& from) {
  const auto dense = [](const at::Tensor& t) {
    const c10::DispatchKeySet keys = t.key_set();
    return keys.has(c10::DispatchKey::Dense) &&
           (keys.has_backend(c10::BackendComponent::CPUBit) ||
            keys.has_backend(c10::BackendComponent::PrivateUse1Bit)) &&
           !keys.has(c10::DispatchKey::Sparse) && !keys.has(c10::DispatchKey::SparseCsr);
  };
  if (self.key_set() == from.key_set()) return true;
  return dense(self) && dense(from);
}

}  // namespace

TORCH_LIBRARY_IMPL(aten, PrivateUse1, m) {
  m.impl("_has_compatible_shallow_copy_type", nkipy_has_compatible_shallow_copy_type);
  m.impl("empty.memory_format", nkipy_empty);
  m.impl("empty_strided", nkipy_empty_strided);
  m.impl("_copy_from", nkipy_copy_from);
  m.impl("_copy_from_and_resize", nkipy_copy_from_and_resize);
  m.impl("resize_", nkipy_resize_);
  m.impl("as_strided", nkipy_as_strided);
  m.impl("view", nkipy_view);
  m.impl("_reshape_alias", nkipy_reshape_alias);
  m.impl("fill_.Scalar", nkipy_fill_);
  m.impl("zero_", nkipy_zero_);
}

TORCH_LIBRARY_IMPL(_, PrivateUse1, m) {
  m.fallback(torch::CppFunction::makeFromBoxedFunction<&nkipy_fallback>());
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "The nkipy torch device (PrivateUse1) over spiky-runtime's memory pool.";
  static NkipyHooks hooks;
  at::RegisterPrivateUse1HooksInterface(&hooks);
  m.def("register_device", &register_device, py::arg("capsule"),
        "Registers a spiky-runtime allocator capsule as the nkipy device of its index (idempotent).");
  m.def("device_count", [] { return g_device_count; });
  m.def("current_device", [] { return static_cast<int>(t_current_device); });
  m.def("set_device", [](int index) {
    abi_for(static_cast<c10::DeviceIndex>(index));
    t_current_device = static_cast<c10::DeviceIndex>(index);
  });
  m.def("tensor_from_pointer", &tensor_from_pointer, py::arg("ptr"), py::arg("nbytes"),
        py::arg("shape"), py::arg("dtype"), py::arg("device_index"));
  m.def("fallback_ops_warned", &fallback_ops_warned);
}
