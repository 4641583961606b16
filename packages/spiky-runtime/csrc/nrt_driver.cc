#include "nrt_driver.h"

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <optional>
#include <utility>

#include "errors.h"

namespace spiky::runtime {
namespace {

// NEFF dtypes and the TensorSpec dtype each travels as. Those without one (fp8, u16/u32/u64)
// make a NEFF that spiky_runtime reports at load.
struct NrtDtypeName {
  int code;
  const char* name;
  std::optional<DType> dtype;
};

constexpr NrtDtypeName kNrtDtypes[] = {
    {NRT_DTYPE_F32, "float32", DType::kFloat32}, {NRT_DTYPE_F16, "float16", DType::kFloat16},
    {NRT_DTYPE_BF16, "bfloat16", DType::kBFloat16}, {NRT_DTYPE_I8, "int8", DType::kInt8},
    {NRT_DTYPE_U8, "uint8", DType::kUInt8},      {NRT_DTYPE_I16, "int16", DType::kInt16},
    {NRT_DTYPE_U16, "uint16", std::nullopt},     {NRT_DTYPE_I32, "int32", DType::kInt32},
    {NRT_DTYPE_U32, "uint32", std::nullopt},     {NRT_DTYPE_I64, "int64", DType::kInt64},
    {NRT_DTYPE_U64, "uint64", std::nullopt},     {NRT_DTYPE_FP8_E3, "float8_e3m4", std::nullopt},
    {NRT_DTYPE_FP8_E4, "float8_e4m3", std::nullopt}, {NRT_DTYPE_FP8_E5, "float8_e5m2", std::nullopt},
};

const NrtDtypeName* find_nrt_dtype(int code) {
  for (const auto& entry : kNrtDtypes) {
    if (entry.code == code) return &entry;
  }
  return nullptr;
}

std::string range_error(const char* what, std::size_t offset, std::size_t nbytes,
                        std::size_t size) {
  return std::string(what) + ": range [" + std::to_string(offset) + ", " +
         std::to_string(offset) + " + " + std::to_string(nbytes) +
         ") is outside the device allocation of " + std::to_string(size) + " bytes";
}

std::string tensor_name(int vnc, MemHandle handle) {
  return "spiky_nc" + std::to_string(vnc) + "_" + std::to_string(handle);
}

std::string quoted(const std::string& s) { return "'" + s + "'"; }

// Where the process's runtime lives (the only global state of the driver).
struct RuntimeSlot {
  std::mutex mutex;
  std::shared_ptr<NrtRuntime> runtime;
};

RuntimeSlot& runtime_slot() {
  static RuntimeSlot slot;
  return slot;
}

}  // namespace

// ---------------------------------------------------------------- RAII over libnrt handles

// One nrt_tensor_t (an allocation or a slice); nrt_tensor_free on destruction.
class NrtDriver::Tensor {
 public:
  Tensor(std::shared_ptr<NrtRuntime> runtime, NrtTensor* raw, std::string name, std::size_t size)
      : runtime_(std::move(runtime)), raw_(raw), name_(std::move(name)), size_(size) {}
  ~Tensor() {
    if (raw_ != nullptr && !runtime_->closed()) runtime_->api().nrt_tensor_free(&raw_);
  }
  Tensor(const Tensor&) = delete;
  Tensor& operator=(const Tensor&) = delete;

  NrtTensor* get() const { return raw_; }
  std::size_t size() const { return size_; }
  const std::string& name() const { return name_; }
  std::string context() const { return "tensor " + quoted(name_); }

 private:
  std::shared_ptr<NrtRuntime> runtime_;
  NrtTensor* raw_;
  std::string name_;
  std::size_t size_;
};

namespace {

// nrt_tensor_set_t, destroyed with nrt_destroy_tensor_set.
class TensorSet {
 public:
  TensorSet(const std::shared_ptr<NrtRuntime>& runtime, const std::string& context)
      : runtime_(runtime) {
    check_nrt("nrt_allocate_tensor_set", runtime_->api().nrt_allocate_tensor_set(&raw_), context);
  }
  ~TensorSet() {
    if (raw_ != nullptr && !runtime_->closed()) runtime_->api().nrt_destroy_tensor_set(&raw_);
  }
  TensorSet(const TensorSet&) = delete;
  TensorSet& operator=(const TensorSet&) = delete;
  NrtTensorSet* get() const { return raw_; }

 private:
  std::shared_ptr<NrtRuntime> runtime_;
  NrtTensorSet* raw_ = nullptr;
};

// nrt_tensor_info_array_t, freed with nrt_free_model_tensor_info.
class TensorInfo {
 public:
  TensorInfo(const std::shared_ptr<NrtRuntime>& runtime, NrtModel* model,
             const std::string& context)
      : runtime_(runtime) {
    check_nrt("nrt_get_model_tensor_info", runtime_->api().nrt_get_model_tensor_info(model, &raw_),
              context);
  }
  ~TensorInfo() {
    if (raw_ != nullptr && !runtime_->closed()) runtime_->api().nrt_free_model_tensor_info(raw_);
  }
  TensorInfo(const TensorInfo&) = delete;
  TensorInfo& operator=(const TensorInfo&) = delete;
  std::uint64_t size() const { return raw_->tensor_count; }
  const NrtTensorInfo& operator[](std::uint64_t i) const { return raw_->entries()[i]; }

 private:
  std::shared_ptr<NrtRuntime> runtime_;
  NrtTensorInfoArray* raw_ = nullptr;
};

}  // namespace

// One loaded NEFF: nrt_unload on destruction (unless unload() already ran).
class NrtDriver::LoadedModel {
 public:
  LoadedModel(std::shared_ptr<NrtRuntime> runtime, NrtModel* raw, std::string name)
      : runtime_(std::move(runtime)), raw_(raw), name_(std::move(name)) {}
  ~LoadedModel() {
    if (raw_ != nullptr && !runtime_->closed()) (void)runtime_->api().nrt_unload(raw_);
  }
  LoadedModel(const LoadedModel&) = delete;
  LoadedModel& operator=(const LoadedModel&) = delete;

  void unload() {
    NrtModel* raw = std::exchange(raw_, nullptr);
    if (raw != nullptr && !runtime_->closed()) {
      check_nrt("nrt_unload", runtime_->api().nrt_unload(raw), context());
    }
  }
  NrtModel* get() const { return raw_; }
  std::string context() const { return "model " + quoted(name_); }
  const std::string& name() const { return name_; }

  std::vector<NrtIo> inputs;
  std::vector<NrtIo> outputs;

 private:
  std::shared_ptr<NrtRuntime> runtime_;
  NrtModel* raw_;
  std::string name_;
};

// ---------------------------------------------------------------- NrtRuntime

std::shared_ptr<NrtRuntime> NrtRuntime::instance() {
  RuntimeSlot& slot = runtime_slot();
  std::lock_guard<std::mutex> lock(slot.mutex);
  if (!slot.runtime) slot.runtime = std::make_shared<NrtRuntime>();
  return slot.runtime;
}

NrtRuntime::NrtRuntime() = default;

NrtRuntime::~NrtRuntime() { close(); }

int NrtRuntime::visible_cores() const {
  std::uint32_t count = 0;
  check_nrt("nrt_get_visible_nc_count", api_.nrt_get_visible_nc_count(&count),
            "the visible NeuronCores (NEURON_RT_VISIBLE_CORES / NEURON_RT_NUM_CORES)");
  return static_cast<int>(count);
}

void NrtRuntime::ensure_initialized() {
  std::lock_guard<std::mutex> lock(mutex_);
  if (closed()) {
    throw Error("the Neuron Runtime of this process was closed (at exit); it cannot be "
                "initialised again in the same process");
  }
  if (initialized_) return;
  const char* cores = std::getenv("NEURON_RT_VISIBLE_CORES");
  check_nrt("nrt_init", api_.nrt_init(kNrtFrameworkNone, "", ""),
            std::string("the Neuron Runtime (") + api_.path() +
                ", NEURON_RT_VISIBLE_CORES=" + (cores != nullptr ? cores : "unset") +
                "); EXEC_NC_BUSY means another process owns these cores");
  initialized_ = true;
  static std::once_flag hook;
  std::call_once(hook, [] { std::atexit([] { nrt_close_at_exit(); }); });
}

bool NrtRuntime::initialized() const {
  std::lock_guard<std::mutex> lock(mutex_);
  return initialized_;
}

void NrtRuntime::close() noexcept {
  std::lock_guard<std::mutex> lock(mutex_);
  if (!initialized_ || closed()) return;
  closed_.store(true, std::memory_order_release);
  api_.nrt_close();
}

void nrt_close_at_exit() noexcept {
  std::shared_ptr<NrtRuntime> runtime;
  {
    RuntimeSlot& slot = runtime_slot();
    std::lock_guard<std::mutex> lock(slot.mutex);
    runtime = slot.runtime;
  }
  if (runtime) runtime->close();
}

// ---------------------------------------------------------------- NrtDriver: memory

NrtDriver::NrtDriver(int vnc, std::size_t capacity_bytes)
    : runtime_(NrtRuntime::instance()), vnc_(vnc), capacity_bytes_(capacity_bytes) {
  runtime_->ensure_initialized();
  const int visible = runtime_->visible_cores();
  if (vnc < 0 || vnc >= visible) {
    std::uint32_t total = 0;
    check_nrt("nrt_get_total_nc_count", runtime_->api().nrt_get_total_nc_count(&total), "the NeuronCores");
    throw InvalidArgument("nrt driver: NeuronCore " + std::to_string(vnc) + " is not visible; this process sees " +
                          std::to_string(visible) + " of the " + std::to_string(total) +
                          " NeuronCores (NEURON_RT_VISIBLE_CORES)");
  }
}

NrtDriver::~NrtDriver() {
  // Models before tensors; both release their libnrt handles in their destructors.
  models_.clear();
  tensors_.clear();
}

std::size_t NrtDriver::capacity_bytes() const {
  std::lock_guard<std::mutex> lock(mutex_);
  return capacity_bytes_;
}

void NrtDriver::set_capacity_bytes(std::size_t capacity) {
  std::lock_guard<std::mutex> lock(mutex_);
  capacity_bytes_ = capacity;
}

MemHandle NrtDriver::allocate(std::size_t nbytes) {
  if (nbytes == 0) throw InvalidArgument("nrt driver: cannot allocate 0 bytes (libnrt rejects them)");
  MemHandle handle = 0;
  {
    // Reserve first so concurrent allocations cannot overshoot the capacity together.
    std::lock_guard<std::mutex> lock(mutex_);
    if (capacity_bytes_ != 0 && allocated_bytes_ + nbytes > capacity_bytes_) {
      throw DeviceOutOfMemory("nrt driver " + std::to_string(vnc_) + ": cannot allocate " +
                              std::to_string(nbytes) + " bytes; " +
                              std::to_string(allocated_bytes_) + " of " +
                              std::to_string(capacity_bytes_) + " bytes in use");
    }
    allocated_bytes_ += nbytes;
    handle = next_handle_++;
  }
  const std::string name = tensor_name(vnc_, handle);
  NrtTensor* raw = nullptr;
  const int status =
      runtime_->api().nrt_tensor_allocate(kNrtPlacementDevice, vnc_, nbytes, name.c_str(), &raw);
  if (status != NRT_SUCCESS) {
    {
      std::lock_guard<std::mutex> lock(mutex_);
      allocated_bytes_ -= nbytes;
    }
    const std::string context =
        quoted(name) + " (" + std::to_string(nbytes) + " bytes on NeuronCore " + std::to_string(vnc_) + ")";
    // The device is full: the pool frees its cache and retries.
    if (status == NRT_RESOURCE) throw DeviceOutOfMemory(format_nrt_error("nrt_tensor_allocate", status, context));
    check_nrt("nrt_tensor_allocate", status, context);
  }
  auto tensor = std::make_shared<Tensor>(runtime_, raw, name, nbytes);
  std::lock_guard<std::mutex> lock(mutex_);
  tensors_.emplace(handle, std::move(tensor));
  return handle;
}

void NrtDriver::free(MemHandle handle) {
  std::shared_ptr<Tensor> victim;
  {
    std::lock_guard<std::mutex> lock(mutex_);
    auto it = tensors_.find(handle);
    if (it == tensors_.end()) {
      throw InvalidArgument("nrt driver: free of unknown memory handle " + std::to_string(handle));
    }
    victim = std::move(it->second);
    tensors_.erase(it);
  }
  std::lock_guard<std::mutex> lock(mutex_);
  allocated_bytes_ -= victim->size();
  // `victim` frees the tensor when the last user (an in-flight copy) drops it.
}

std::size_t NrtDriver::allocation_size(MemHandle handle) const {
  return region(handle, 0, 0, "nrt driver").size;
}

NrtDriver::Region NrtDriver::region(MemHandle handle, std::size_t offset, std::size_t nbytes,
                                    const char* what) const {
  std::shared_ptr<Tensor> tensor;
  {
    std::lock_guard<std::mutex> lock(mutex_);
    auto it = tensors_.find(handle);
    if (it == tensors_.end()) {
      throw InvalidArgument(std::string(what) + ": unknown memory handle " + std::to_string(handle));
    }
    tensor = it->second;
  }
  const std::size_t size = tensor->size();
  if (offset > size || nbytes > size - offset) {
    throw InvalidArgument(range_error(what, offset, nbytes, size));
  }
  return Region{std::move(tensor), size};
}

void NrtDriver::write(MemHandle dst, std::size_t dst_offset, const void* src, std::size_t nbytes) {
  Region r = region(dst, dst_offset, nbytes, "nrt driver write");
  if (nbytes == 0) return;
  check_nrt("nrt_tensor_write", runtime_->api().nrt_tensor_write(r.tensor->get(), src, dst_offset, nbytes),
            r.tensor->context());
  count_h2d(nbytes);
}

void NrtDriver::read(MemHandle src, std::size_t src_offset, void* dst, std::size_t nbytes) {
  Region r = region(src, src_offset, nbytes, "nrt driver read");
  if (nbytes == 0) return;
  check_nrt("nrt_tensor_read", runtime_->api().nrt_tensor_read(r.tensor->get(), dst, src_offset, nbytes),
            r.tensor->context());
  count_d2h(nbytes);
}

void NrtDriver::copy(MemHandle src, std::size_t src_offset, MemHandle dst, std::size_t dst_offset,
                     std::size_t nbytes) {
  Region s = region(src, src_offset, nbytes, "nrt driver copy (source)");
  Region d = region(dst, dst_offset, nbytes, "nrt driver copy (destination)");
  if (nbytes == 0) return;
  check_nrt("nrt_tensor_copy",
            runtime_->api().nrt_tensor_copy(s.tensor->get(), src_offset, d.tensor->get(), dst_offset, nbytes),
            s.tensor->context() + " -> " + d.tensor->context());
}

void NrtDriver::copy_strided(MemHandle src, std::size_t src_offset, MemHandle dst,
                             std::size_t dst_offset, const StridedCopy& op) {
  if (op.empty()) return;
  Region s = region(src, src_offset, op.src_extent(), "nrt driver copy_strided (source)");
  Region d = region(dst, dst_offset, op.dst_extent(), "nrt driver copy_strided (destination)");
  const NrtApi& api = runtime_->api();
  for_each_copy_row(op, [&](std::size_t so, std::size_t dof, std::size_t row) {
    check_nrt("nrt_tensor_copy",
              api.nrt_tensor_copy(s.tensor->get(), src_offset + so, d.tensor->get(), dst_offset + dof, row),
              s.tensor->context() + " -> " + d.tensor->context() + " (strided row)");
  });
}

void NrtDriver::fill_strided(MemHandle dst, std::size_t dst_offset, const StridedFill& op) {
  if (op.empty()) return;
  Region d = region(dst, dst_offset, op.extent(), "nrt driver fill_strided");
  const NrtApi& api = runtime_->api();
  // A pattern of one repeated byte (zero, -1 as int) is a memset; others write a host row.
  const bool one_byte = std::all_of(op.pattern.begin(), op.pattern.end(),
                                    [&](std::byte b) { return b == op.pattern.front(); });
  std::vector<std::byte> line;
  for_each_fill_row(op, [&](std::size_t off, std::size_t row) {
    if (one_byte) {
      check_nrt("nrt_tensor_memset",
                api.nrt_tensor_memset(d.tensor->get(), dst_offset + off,
                                      static_cast<int>(op.pattern.front()), row),
                d.tensor->context() + " (padding)");
      return;
    }
    if (line.size() != row) {
      line.resize(row);
      for (std::size_t i = 0; i < row; i += op.pattern.size()) {
        std::copy(op.pattern.begin(), op.pattern.end(), line.begin() + static_cast<std::ptrdiff_t>(i));
      }
    }
    check_nrt("nrt_tensor_write", api.nrt_tensor_write(d.tensor->get(), line.data(), dst_offset + off, row),
              d.tensor->context() + " (padding)");
    count_h2d(row);  // a fill value that is not one repeated byte crosses PCIe row by row
  });
}

// ---------------------------------------------------------------- NrtDriver: models

namespace {

// The model spec of a NEFF tensor, checked against the caller's declaration if any.
TensorSpec io_spec(const NrtTensorInfo& info, const std::string& ctx, const TensorSpec* declared) {
  const NrtDtypeName* dt = find_nrt_dtype(info.dtype);
  if (dt == nullptr || !dt->dtype) {
    throw InvalidArgument(ctx + "has NRT dtype " + (dt ? dt->name : "code " + std::to_string(info.dtype)) +
                          ", which spiky_runtime cannot represent; supported: " + supported_dtype_names());
  }
  std::vector<std::int64_t> shape;
  for (std::uint32_t i = 0; i < info.ndim; ++i) shape.push_back(info.shape[i]);
  TensorSpec spec(std::move(shape), *dt->dtype);
  if (spec.nbytes() != info.size) {
    throw InvalidArgument(ctx + "is " + std::to_string(info.size) + " bytes in the NEFF, but its shape and dtype (" +
                          spec.to_string() + ") make " + std::to_string(spec.nbytes()) +
                          "; the NEFF's tensor table is inconsistent: recompile the model");
  }
  if (declared != nullptr) {
    const bool bool_as_u8 = declared->dtype() == DType::kBool && spec.dtype() == DType::kUInt8;
    const bool dtype_differs = declared->dtype() != spec.dtype() && !bool_as_u8;
    if (declared->shape() != spec.shape() || dtype_differs) {
      // bfloat16 and float16 have the same size but different bits: never bind one as the other.
      const std::string what =
          dtype_differs ? std::string("the dtypes differ (NEFF ") + dtype_name(spec.dtype()) + ", declared " +
                              dtype_name(declared->dtype()) + ")"
                        : std::string("the shapes differ");
      throw InvalidArgument(ctx + "is " + spec.to_string() + " (" + std::to_string(info.size) +
                            " bytes) in the NEFF, but the caller declared " + declared->to_string() + " (" +
                            std::to_string(declared->nbytes()) + " bytes): " + what + "; declare " +
                            spec.to_string() + " as the NEFF has it, or recompile the model for " +
                            declared->to_string());
    }
    return *declared;  // bool stays bool for the caller; the bytes are the same
  }
  return spec;
}

// Orders the NEFF tensors of one kind by the caller's names (if given) and checks them.
std::vector<NrtIo> order_io(std::vector<std::pair<const NrtTensorInfo*, std::string>> found,
                            const std::vector<std::string>& names, const std::vector<TensorSpec>& declared,
                            const std::string& model_ctx, const char* kind) {
  std::string available;
  for (const auto& f : found) available += (available.empty() ? "" : ", ") + quoted(f.second);
  if (available.empty()) available = "none";
  // nullptr: a declared zero-element tensor the NEFF does not have (the compiler drops those).
  std::vector<const NrtTensorInfo*> chosen;
  if (names.empty()) {
    for (const auto& f : found) chosen.push_back(f.first);
  } else {
    if (!declared.empty() && declared.size() != names.size()) {
      throw InvalidArgument(model_ctx + ": the caller names " + std::to_string(names.size()) + " " + kind +
                            "s and declares " + std::to_string(declared.size()));
    }
    std::size_t bound = 0;
    for (std::size_t i = 0; i < names.size(); ++i) {
      const std::string& name = names[i];
      auto it = std::find_if(found.begin(), found.end(), [&](const auto& f) { return f.second == name; });
      if (it == found.end()) {
        if (!declared.empty() && declared[i].numel() == 0) {
          chosen.push_back(nullptr);
          continue;
        }
        throw InvalidArgument(model_ctx + ": the NEFF has no " + kind + " " + quoted(name) + "; its " + kind +
                              "s are " + available);
      }
      chosen.push_back(it->first);
      ++bound;
    }
    if (bound != found.size()) {
      throw InvalidArgument(model_ctx + ": the caller names " + std::to_string(bound) + " " + kind +
                            "s, the NEFF has " + std::to_string(found.size()) + " (" + available + ")");
    }
  }
  if (!declared.empty() && declared.size() != chosen.size()) {
    throw InvalidArgument(model_ctx + ": the caller declared " + std::to_string(declared.size()) + " " + kind +
                          "s, the NEFF has " + std::to_string(chosen.size()) + " (" + available + ")");
  }
  std::vector<NrtIo> out;
  for (std::size_t i = 0; i < chosen.size(); ++i) {
    if (chosen[i] == nullptr) {
      out.push_back(NrtIo{names[i], declared[i], -1, 0, true});
      continue;
    }
    const NrtTensorInfo& info = *chosen[i];
    std::string name(info.name, strnlen(info.name, kNrtTensorNameMax));
    const std::string ctx = model_ctx + " " + kind + " " + quoted(name) + " ";
    TensorSpec spec = io_spec(info, ctx, declared.empty() ? nullptr : &declared[i]);
    out.push_back(NrtIo{std::move(name), std::move(spec), info.dtype, info.size});
  }
  return out;
}

}  // namespace

ModelId NrtDriver::load_model(ModelDescriptor descriptor) {
  const std::string ctx = "model " + quoted(descriptor.name);
  if (!descriptor.neff || descriptor.neff->empty()) {
    throw InvalidArgument("nrt driver: " + ctx + " has no NEFF; the nrt driver runs compiled NEFFs "
                          "(Device.load_neff), not host models");
  }
  if (descriptor.rank.has_value() != descriptor.world_size.has_value()) {
    throw InvalidArgument("nrt driver: " + ctx + ": give both rank and world_size (a NEFF with "
                          "collectives) or neither");
  }
  const NrtApi& api = runtime_->api();
  const auto& neff = *descriptor.neff;
  NrtModel* raw = nullptr;
  if (descriptor.rank) {
    check_nrt("nrt_load_collectives",
              api.nrt_load_collectives(neff.data(), neff.size(), vnc_, -1, *descriptor.rank,
                                       *descriptor.world_size, &raw),
              ctx + " (rank " + std::to_string(*descriptor.rank) + " of " +
                  std::to_string(*descriptor.world_size) + ", NeuronCore " + std::to_string(vnc_) + ")");
  } else {
    const int status = api.nrt_load(neff.data(), neff.size(), vnc_, -1, &raw);
    check_nrt("nrt_load", status,
              ctx + " (" + std::to_string(neff.size()) + " bytes, NeuronCore " + std::to_string(vnc_) + ")" +
                  (status == NRT_INVALID ? "; a NEFF with collectives must be loaded with rank and world_size" : ""));
  }
  auto loaded = std::make_shared<LoadedModel>(runtime_, raw, descriptor.name);  // unloads on any throw below

  std::vector<std::pair<const NrtTensorInfo*, std::string>> ins, outs;
  TensorInfo info(runtime_, raw, ctx);
  for (std::uint64_t i = 0; i < info.size(); ++i) {
    const NrtTensorInfo& entry = info[i];
    std::string name(entry.name, strnlen(entry.name, kNrtTensorNameMax));
    if (entry.usage == kNrtUsageInput) {
      ins.emplace_back(&entry, std::move(name));
    } else if (entry.usage == kNrtUsageOutput) {
      outs.emplace_back(&entry, std::move(name));
    } else {
      throw InvalidArgument("nrt driver: " + ctx + ": tensor " + quoted(name) + " has usage " +
                            std::to_string(entry.usage) + "; expected 0 (input) or 1 (output)");
    }
  }
  loaded->inputs = order_io(std::move(ins), descriptor.input_names, descriptor.inputs, ctx, "input");
  loaded->outputs = order_io(std::move(outs), descriptor.output_names, descriptor.outputs, ctx, "output");

  std::lock_guard<std::mutex> lock(mutex_);
  const ModelId id = next_model_++;
  models_.emplace(id, std::move(loaded));
  return id;
}

std::shared_ptr<NrtDriver::LoadedModel> NrtDriver::model(ModelId id, const char* what) const {
  std::lock_guard<std::mutex> lock(mutex_);
  auto it = models_.find(id);
  if (it == models_.end()) {
    throw InvalidArgument(std::string("nrt driver: ") + what + " of unknown model id " + std::to_string(id));
  }
  return it->second;
}

void NrtDriver::unload_model(ModelId id) {
  std::shared_ptr<LoadedModel> victim;
  {
    std::lock_guard<std::mutex> lock(mutex_);
    auto it = models_.find(id);
    if (it == models_.end()) {
      throw InvalidArgument("nrt driver: unload of unknown model id " + std::to_string(id));
    }
    victim = std::move(it->second);
    models_.erase(it);
  }
  victim->unload();
}

std::optional<LoadedIo> NrtDriver::loaded_io(ModelId id) const {
  auto m = model(id, "loaded_io");
  LoadedIo io;
  for (const auto& in : m->inputs) io.inputs.push_back(in.spec);
  for (const auto& out : m->outputs) io.outputs.push_back(out.spec);
  return io;
}

std::vector<std::string> NrtDriver::input_names(ModelId id) const {
  std::vector<std::string> names;
  for (const auto& in : model(id, "input_names")->inputs) names.push_back(in.name);
  return names;
}

std::vector<std::string> NrtDriver::output_names(ModelId id) const {
  std::vector<std::string> names;
  for (const auto& out : model(id, "output_names")->outputs) names.push_back(out.name);
  return names;
}

void NrtDriver::execute(ModelId id, const std::vector<DeviceRef>& inputs,
                        const std::vector<DeviceRef>& outputs) {
  auto m = model(id, "execute");
  const std::string ctx = m->context();
  if (inputs.size() != m->inputs.size() || outputs.size() != m->outputs.size()) {
    throw InvalidArgument("nrt driver: " + ctx + " takes " + std::to_string(m->inputs.size()) + " inputs and " +
                          std::to_string(m->outputs.size()) + " outputs, got " + std::to_string(inputs.size()) +
                          " and " + std::to_string(outputs.size()));
  }
  // Sizes first, so a mismatch is reported by name before libnrt sees anything.
  auto check = [&](const DeviceRef& ref, const NrtIo& io, const char* kind) {
    if (ref.nbytes < io.nbytes) {
      throw InvalidArgument("nrt driver: " + ctx + " " + kind + " " + quoted(io.name) + ": the buffer holds " +
                            std::to_string(ref.nbytes) + " bytes, the NEFF expects " + std::to_string(io.nbytes) +
                            " (" + io.spec.to_string() + "); nrt_execute would return EXEC_BAD_INPUT");
    }
  };
  for (std::size_t i = 0; i < inputs.size(); ++i) check(inputs[i], m->inputs[i], "input");
  for (std::size_t i = 0; i < outputs.size(); ++i) check(outputs[i], m->outputs[i], "output");

  const NrtApi& api = runtime_->api();
  // Exact-size views of the pool blocks; they must outlive the sets (declared after them).
  std::vector<std::shared_ptr<Tensor>> slices;
  std::vector<Region> held;  // the allocations stay alive until nrt_execute returns
  auto bind = [&](TensorSet& set, const DeviceRef& ref, const NrtIo& io, const char* kind) {
    Region r = region(ref.handle, ref.offset, io.nbytes, "nrt driver execute");
    const std::string io_ctx = ctx + " " + kind + " " + quoted(io.name);
    NrtTensor* raw = nullptr;
    check_nrt("nrt_tensor_allocate_slice",
              api.nrt_tensor_allocate_slice(r.tensor->get(), ref.offset, io.nbytes, io.name.c_str(), &raw), io_ctx);
    slices.push_back(std::make_shared<Tensor>(runtime_, raw, io.name, io.nbytes));
    check_nrt("nrt_add_tensor_to_tensor_set", api.nrt_add_tensor_to_tensor_set(set.get(), io.name.c_str(), raw),
              io_ctx);
    held.push_back(std::move(r));
  };
  TensorSet in_set(runtime_, ctx + " inputs");
  TensorSet out_set(runtime_, ctx + " outputs");
  for (std::size_t i = 0; i < inputs.size(); ++i) {
    if (!m->inputs[i].absent) bind(in_set, inputs[i], m->inputs[i], "input");
  }
  for (std::size_t i = 0; i < outputs.size(); ++i) {
    if (!m->outputs[i].absent) bind(out_set, outputs[i], m->outputs[i], "output");
  }
  check_nrt("nrt_execute", api.nrt_execute(m->get(), in_set.get(), out_set.get()), ctx);
  // Destruction runs in reverse declaration order: the sets go before the slices in them.
}

void NrtDriver::profile_start(ModelId id, const std::string& ntff_path) {
  auto m = model(id, "profile_start");
  check_nrt("nrt_profile_start", runtime_->api().nrt_profile_start(m->get(), ntff_path.c_str()),
            m->context() + " (ntff " + quoted(ntff_path) + ")");
}

void NrtDriver::profile_stop(const std::string& ntff_path) {
  check_nrt("nrt_profile_stop", runtime_->api().nrt_profile_stop(ntff_path.c_str()), "ntff " + quoted(ntff_path));
}

}  // namespace spiky::runtime
