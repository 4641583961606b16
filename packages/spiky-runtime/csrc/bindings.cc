// pybind11 bindings: the only file of csrc/ that knows Python.
//
// Conventions:
//  - C++ exceptions become spiky_runtime.errors classes in the one translator below.
//  - The GIL is released (without_gil) around pool, driver and executor work; the only
//    code that runs Python while a model executes is the host executable wrapper
//    (make_host_executable), which re-acquires the GIL to call the user's function.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <array>
#include <chrono>
#include <condition_variable>
#include <mutex>
#include <cstring>
#include <thread>
#include <type_traits>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "buffer.h"
#include "bundle.h"
#include "call.h"
#include "device.h"
#include "device_tensor.h"
#include "errors.h"
#include "model.h"
#include "nrt_driver.h"
#include "pool.h"
#include "stats.h"
#include "tensor_spec.h"

#if defined(__GLIBCXX__)
#include <cxxabi.h>
#define SPIKY_HAVE_FORCED_UNWIND 1
#endif

namespace py = pybind11;
using namespace spiky::runtime;  // NOLINT(build/namespaces): bindings only

namespace spiky::runtime {
void bind_nrt(py::module_& m);  // nrt_bindings.cc: Device.load_neff, NTFF profiling, NrtError
}  // namespace spiky::runtime

namespace spiky::runtime {
void bind_c_abi(py::module_& m);  // c_abi.cc: the C allocator ABI for foreign tensors
void bind_host_kernels(py::module_& m);  // host_kernels.cc: fused kernels for the numpy plan
}  // namespace spiky::runtime

namespace {

// ---------------------------------------------------------------- the GIL

// Runs fn() with the GIL released and re-takes it afterwards.
// Not py::gil_scoped_release, because of daemon threads at interpreter exit: CPython
// (< 3.14) ends a daemon thread that asks for the GIL while the interpreter finalizes with
// pthread_exit, a forced unwind. Out of gil_scoped_release's noexcept destructor that
// aborts the process; through the caller's frames it would drop Python references
// without the GIL. So the forced unwind is caught here, at the innermost GIL boundary,
// and the thread is parked for good -- what CPython 3.14 itself does with such threads;
// process exit reclaims it.
template <typename Fn>
decltype(auto) without_gil(Fn&& fn) {
  PyThreadState* state = PyEval_SaveThread();
  try {
    if constexpr (std::is_void_v<std::invoke_result_t<Fn&>>) {
      fn();
      PyEval_RestoreThread(state);
    } else {
      decltype(auto) result = fn();
      PyEval_RestoreThread(state);
      return result;
    }
#ifdef SPIKY_HAVE_FORCED_UNWIND
  } catch (abi::__forced_unwind&) {
    for (;;) std::this_thread::sleep_for(std::chrono::hours(24));
#endif
  } catch (...) {
    PyEval_RestoreThread(state);
    throw;
  }
}

// ---------------------------------------------------------------- conversions

std::size_t to_size(std::int64_t value, const std::string& what) {
  if (value < 0) {
    throw InvalidArgument(what + " must be >= 0, got " + std::to_string(value));
  }
  return static_cast<std::size_t>(value);
}

std::string type_name(py::handle obj) {
  return py::str(py::type::handle_of(obj).attr("__name__"));
}

// ---------------------------------------------------------------- dtypes

// numpy has no bfloat16 of its own: the runtime's bfloat16 is ml_dtypes.bfloat16, a numpy
// extension dtype (ml_dtypes is a dependency of the package, needing only numpy). It is
// imported the first time a bfloat16 numpy dtype is needed (a bfloat16 spec's .dtype, a read,
// an output array), never when spiky_runtime is imported.
py::dtype import_bfloat16() {
  py::module_ ml_dtypes;
  try {
    ml_dtypes = py::module_::import("ml_dtypes");
  } catch (py::error_already_set& e) {
    throw Error(std::string("bfloat16 arrays need the ml_dtypes package (numpy has no bfloat16 of "
                            "its own); install it with 'pip install ml_dtypes' (importing it "
                            "failed: ") + e.what() + ")");
  }
  return py::dtype::from_args(ml_dtypes.attr("bfloat16"));
}

// numpy dtype objects per DType, made once (with the GIL held) and kept for the process:
// building them from names on every call showed up in per-call overhead.
py::dtype to_numpy(DType dtype) {
  static std::array<py::handle, kDTypeCount> cache{};
  py::handle& slot = cache.at(static_cast<std::size_t>(dtype));
  if (!slot) {  // never freed
    slot = (dtype == DType::kBFloat16 ? import_bfloat16() : py::dtype(dtype_name(dtype))).release();
  }
  return py::reinterpret_borrow<py::dtype>(slot);
}

// True when `dt` is ml_dtypes.bfloat16 (by numpy type number, registered when ml_dtypes is
// imported). Never imports ml_dtypes: before it is imported no array can be bfloat16.
bool is_bfloat16(const py::dtype& dt) {
  static int type_num = -1;  // guarded by the GIL
  if (type_num < 0) {
    PyObject* module = PyImport_GetModule(py::str("ml_dtypes").ptr());
    if (module == nullptr) {
      PyErr_Clear();
      return false;
    }
    const bool blocked = module == Py_None;  // sys.modules["ml_dtypes"] = None: imports fail
    Py_DECREF(module);
    if (blocked) return false;
    type_num = to_numpy(DType::kBFloat16).num();
  }
  return dt.num() == type_num;
}

// The common case without Python attribute calls: a native-order dtype we support, by
// kind and size. nullopt sends the caller to the checked path (and its error message).
std::optional<DType> fast_dtype(const py::dtype& dt) {
#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
  if (dt.byteorder() == '>') return std::nullopt;
#else
  if (dt.byteorder() == '<') return std::nullopt;
#endif
  const auto size = dt.itemsize();
  switch (dt.kind()) {
    case 'b': return size == 1 ? std::optional<DType>(DType::kBool) : std::nullopt;
    case 'u': return size == 1 ? std::optional<DType>(DType::kUInt8) : std::nullopt;
    case 'i':
      switch (size) {
        case 1: return DType::kInt8;
        case 2: return DType::kInt16;
        case 4: return DType::kInt32;
        case 8: return DType::kInt64;
        default: return std::nullopt;
      }
    case 'f':
      switch (size) {
        case 2: return DType::kFloat16;
        case 4: return DType::kFloat32;
        case 8: return DType::kFloat64;
        default: return std::nullopt;
      }
    case 'V':  // extension dtypes: ml_dtypes.bfloat16 has kind 'V'
      return size == 2 && is_bfloat16(dt) ? std::optional<DType>(DType::kBFloat16) : std::nullopt;
    default: return std::nullopt;
  }
}

DType dtype_of(const py::dtype& dt, const std::string& context) {
  if (const auto fast = fast_dtype(dt)) return *fast;
  const std::string name = py::str(dt.attr("name"));
  if (!dt.attr("isnative").cast<bool>()) {
    throw InvalidArgument(context + "dtype '" + std::string(py::str(dt.attr("str"))) +
                          "' has non-native byte order; expected native " + name +
                          " (use arr.astype(arr.dtype.newbyteorder('=')))");
  }
  return parse_dtype(name, context);
}

DType dtype_from_object(py::handle obj, const std::string& context) {
  // Names of the table first: "bfloat16" needs no numpy lookup (numpy knows it only once
  // ml_dtypes is imported).
  if (py::isinstance<py::str>(obj)) {
    if (const auto dtype = find_dtype(obj.cast<std::string>())) return *dtype;
  }
  py::dtype dt;
  try {
    dt = py::dtype::from_args(py::reinterpret_borrow<py::object>(obj));
  } catch (py::error_already_set&) {
    throw InvalidArgument(context + std::string(py::repr(obj)) +
                          " is not a numpy dtype; expected one of: " + supported_dtype_names());
  }
  return dtype_of(dt, context);
}

std::vector<py::ssize_t> np_shape(const TensorSpec& spec) {
  return {spec.shape().begin(), spec.shape().end()};
}

TensorSpec spec_of(const py::array& arr, const std::string& context) {
  std::vector<std::int64_t> shape(arr.shape(), arr.shape() + arr.ndim());
  return TensorSpec(std::move(shape), dtype_of(arr.dtype(), context));
}

// True when `arr` has exactly `spec`'s shape and dtype (no allocation on the hot path).
bool matches(const py::array& arr, const TensorSpec& spec) {
  const auto& shape = spec.shape();
  if (static_cast<std::size_t>(arr.ndim()) != shape.size()) return false;
  for (std::size_t d = 0; d < shape.size(); ++d) {
    if (arr.shape(static_cast<py::ssize_t>(d)) != shape[d]) return false;
  }
  const auto dtype = fast_dtype(arr.dtype());
  return dtype && *dtype == spec.dtype();
}

py::array c_contiguous(const py::array& arr) {
  if (arr.flags() & py::array::c_style) return arr;
  return py::module_::import("numpy").attr("ascontiguousarray")(arr).cast<py::array>();
}

py::tuple shape_tuple(const std::vector<std::int64_t>& shape) {
  py::tuple out(shape.size());
  for (std::size_t i = 0; i < shape.size(); ++i) out[i] = py::int_(shape[i]);
  return out;
}

// ---------------------------------------------------------------- host executables

bool python_finalizing() {
#if PY_VERSION_HEX >= 0x030D0000
  return Py_IsFinalizing() != 0;
#else
  return _Py_IsFinalizing() != 0;
#endif
}

// Owns a Python object on behalf of C++ code that may drop it without the GIL (a concurrent
// unload, a pipeline thread done with an input array) or after the interpreter is gone
// (then it is deliberately leaked).
class PyRef {
 public:
  explicit PyRef(py::object obj) : obj_(obj.release().ptr()) {}
  ~PyRef() {
    if (!Py_IsInitialized() || python_finalizing()) return;
    py::gil_scoped_acquire gil;
    Py_DECREF(obj_);
  }
  PyRef(const PyRef&) = delete;
  PyRef& operator=(const PyRef&) = delete;
  py::handle get() const { return obj_; }

 private:
  PyObject* obj_;
};

// A Python exception raised by a host fn, carried through the engine (possibly to several
// waiters: a failed call fails its dependants) and raised again, as the same exception
// object, wherever it surfaces. py::error_already_set itself may be restored only once.
class PythonError : public Error {
 public:
  explicit PythonError(py::error_already_set& e)
      : Error(e.what()), value_(std::make_shared<PyRef>(e.value())) {}
  void restore() const {
    py::handle value = value_->get();
    PyErr_SetObject(reinterpret_cast<PyObject*>(Py_TYPE(value.ptr())), value.ptr());
  }

 private:
  std::shared_ptr<PyRef> value_;
};

// Keeps host fns from running across interpreter finalization. A thread inside a host fn
// when CPython finalizes is ended by a forced unwind at its next GIL acquisition, and the
// unwind would drop Python references without the GIL. So at exit (atexit, GIL released)
// the gate closes -- later calls raise instead of entering Python -- and waits for the
// threads inside to leave. Owned by the module (captured by its atexit hook and by every
// host executable), not a global.
class ExitGate {
 public:
  bool enter() {
    std::lock_guard<std::mutex> lock(mutex_);
    if (closed_) return false;
    ++active_;
    return true;
  }
  void leave() {
    {
      std::lock_guard<std::mutex> lock(mutex_);
      --active_;
    }
    cv_.notify_all();
  }
  // A host fn that never returns must not hang the exit: give up after `timeout`.
  void close_and_drain(std::chrono::seconds timeout) {
    std::unique_lock<std::mutex> lock(mutex_);
    closed_ = true;
    cv_.wait_for(lock, timeout, [this] { return active_ == 0; });
  }

 private:
  std::mutex mutex_;
  std::condition_variable cv_;
  int active_ = 0;
  bool closed_ = false;
};

class GateGuard {
 public:
  explicit GateGuard(ExitGate& gate) : gate_(gate) {}
  ~GateGuard() { gate_.leave(); }
  GateGuard(const GateGuard&) = delete;
  GateGuard& operator=(const GateGuard&) = delete;

 private:
  ExitGate& gate_;
};

// Per host executable: the last view of each input (see make_host_executable), and the staging
// memory of inputs copied into memory of the model's own. Its Python objects are dropped with the
// GIL held, or leaked at interpreter exit (as PyRef does).
struct ViewCache {
  ViewCache() = default;
  ViewCache(const ViewCache&) = delete;
  ViewCache& operator=(const ViewCache&) = delete;
  ~ViewCache() {
    if (views.empty()) return;
    if (!Py_IsInitialized() || python_finalizing()) {
      for (auto& entry : views) {  // the interpreter is going: leak
        entry.view.release();
        entry.staged_view.release();
      }
      return;
    }
    py::gil_scoped_acquire gil;
    views.clear();
  }
  struct FreeDeleter {
    void operator()(void* p) const noexcept { std::free(p); }
  };
  struct Entry {
    const void* data = nullptr;  // where the input was at the last call
    std::optional<TensorSpec> spec;
    py::object view;  // a view of `data`, or None
    // Staging (stage_bytes): a copy of the input in memory of our own, 64-byte aligned, and
    // the one view of it, handed to fn whenever the input was copied there.
    std::unique_ptr<void, FreeDeleter> staging;
    std::size_t staging_bytes = 0;
    py::object staged_view;
    bool staged = false;     // the last call passed staged_view
    int calls_in_place = 0;  // calls in a row that found the input at `data`
  };
  std::vector<Entry> views;
  // Held from the staging copies until the outputs are copied out, so that a concurrent call of
  // the same model (fn releases the GIL) never overwrites memory fn is reading. A call that finds
  // it taken does not stage.
  std::mutex staging_mutex;
};

// The view to hand fn for input `t` when it sits at a new address and is small: a copy in the
// entry's staging memory, always the same view object (fn may keep per-address state, such as
// XLA:CPU's buffer aliasing that memory). Null when it cannot be staged.
py::object staged_view(ViewCache::Entry& entry, const ConstTensor& t) {
  const std::size_t nbytes = t.spec.nbytes();
  if (!entry.staging || entry.staging_bytes != nbytes || !entry.staged_view ||
      !entry.spec || !(*entry.spec == t.spec)) {
    constexpr std::size_t kAlignment = 64;
    const std::size_t padded = (nbytes + kAlignment - 1) / kAlignment * kAlignment;
    entry.staging.reset(std::aligned_alloc(kAlignment, padded ? padded : kAlignment));
    if (!entry.staging) return py::object();
    entry.staging_bytes = nbytes;
    py::array view(to_numpy(t.spec.dtype()), np_shape(t.spec), entry.staging.get(), py::none());
    py::detail::array_proxy(view.ptr())->flags &= ~py::detail::npy_api::NPY_ARRAY_WRITEABLE_;
    entry.staged_view = std::move(view);
  }
  if (nbytes) std::memcpy(entry.staging.get(), t.data, nbytes);
  return entry.staged_view;
}

// Runs fn(list of read-only input views) and copies its outputs into the output memory
// after checking count, shape and dtype against the model's output specs.
//
// stage_bytes > 0: an input of at most that many bytes that is not where it was at the last call
// is copied into memory of the model's own (one block per input, reused), and fn gets the same
// view of that memory at every such call. For fns that keep state per input address: XLA:CPU
// aliases an input's memory once and reuses that buffer while the input stays there, where an
// input in new memory costs a device put (~3 µs in Python) -- a backward's saved activations
// arrive in new memory at every step. An input found where the last call had it is passed as
// itself (weights stay put).
//
// packed (output index -> byte offset): fn returns the other outputs in order, then one C-contiguous
// uint8 buffer holding each packed output at its offset (XLA:CPU's packed results: one buffer for
// dozens of small outputs instead of a numpy view each).
HostExecutable make_host_executable(py::object fn, std::string name,
                                   std::shared_ptr<ExitGate> gate, std::size_t stage_bytes,
                                   std::vector<std::optional<std::size_t>> packed) {
  auto ref = std::make_shared<PyRef>(std::move(fn));
  // The view made for each input at the last call, with its address: an input at the same
  // address (weights, reused pool blocks) gets the same view object again, so a host fn can
  // tell an unchanged input by identity (XlaCpuExecutable reuses its XLA buffer) and no view
  // is built. Touched only with the GIL held; released with the executable.
  auto views_cache = std::make_shared<ViewCache>();
  std::size_t packed_count = 0;
  for (const auto& offset : packed) packed_count += offset.has_value();
  return [ref, gate, views_cache, stage_bytes, packed = std::move(packed), packed_count,
          name = std::move(name)](const std::vector<ConstTensor>& inputs,
                                  const std::vector<MutableTensor>& outputs) {
    // Error messages only: built when something is wrong, not on every call.
    auto model_ctx = [&] { return "model '" + name + "': "; };
    if (!gate->enter()) {
      throw Error(model_ctx() + "the Python interpreter is exiting; host models no longer run");
    }
    GateGuard guard(*gate);  // declared before the GIL: leaves after releasing it
    // Taken before the GIL (never waited for while holding it), released after it.
    std::unique_lock<std::mutex> staging_lock;
    if (stage_bytes) staging_lock = std::unique_lock<std::mutex>(views_cache->staging_mutex, std::try_to_lock);
    const bool may_stage = staging_lock.owns_lock();
    py::gil_scoped_acquire gil;
    py::list views;
    auto& cached = views_cache->views;
    if (cached.size() != inputs.size()) cached.resize(inputs.size());
    for (std::size_t i = 0; i < inputs.size(); ++i) {
      const auto& t = inputs[i];
      auto& entry = cached[i];
      const bool moved = entry.data != t.data || !entry.spec || !(*entry.spec == t.spec);
      entry.calls_in_place = moved ? 0 : entry.calls_in_place + 1;
      // Staged when it moved, and kept staged until it has stayed in place for kSettle calls:
      // memory that alternates between a few places (pool blocks) stays staged.
      constexpr int kSettle = 3;
      if (may_stage && entry.spec && t.spec.nbytes() <= stage_bytes &&
          (moved || (entry.staged && entry.calls_in_place < kSettle))) {
        py::object view = staged_view(entry, t);
        if (view) {
          entry.data = t.data;
          entry.spec = t.spec;
          entry.view = py::object();  // made when the input settles at this address
          entry.staged = true;
          views.append(view);
          continue;
        }
      }
      if (moved || !entry.view) {
        // Zero-copy view of device memory; valid only during a call that passes this address
        // (the buffer returns to the pool afterwards), hence read-only and not to be kept by fn.
        py::array view(to_numpy(t.spec.dtype()), np_shape(t.spec), t.data, py::none());
        py::detail::array_proxy(view.ptr())->flags &= ~py::detail::npy_api::NPY_ARRAY_WRITEABLE_;
        entry.data = t.data;
        entry.spec = t.spec;
        entry.view = std::move(view);
      }
      entry.staged = false;
      views.append(entry.view);
    }
    // Raw C API call: a thread ended by CPython's finalization (forced unwind while
    // re-taking the GIL inside fn) must stop right here, before any pybind11 destructor
    // would drop a reference without the GIL.
    PyObject* raw = nullptr;
#ifdef SPIKY_HAVE_FORCED_UNWIND
    try {
      raw = PyObject_CallOneArg(ref->get().ptr(), views.ptr());
    } catch (abi::__forced_unwind&) {
      for (;;) std::this_thread::sleep_for(std::chrono::hours(24));
    }
#else
    raw = PyObject_CallOneArg(ref->get().ptr(), views.ptr());
#endif
    if (raw == nullptr) {
      py::error_already_set e;
      throw PythonError(e);
    }
    py::object result = py::reinterpret_steal<py::object>(raw);
    if (py::isinstance<py::array>(result) || !py::isinstance<py::sequence>(result) ||
        py::isinstance<py::str>(result)) {
      throw InvalidArgument(model_ctx() + "host fn must return a sequence (list or tuple) of numpy "
                            "arrays, one per output; got " + type_name(result));
    }
    auto seq = result.cast<py::sequence>();
    const std::size_t expected = packed_count ? outputs.size() - packed_count + 1 : outputs.size();
    if (seq.size() != expected) {
      throw InvalidArgument(model_ctx() + "host fn returned " + std::to_string(seq.size()) + " outputs, expected " +
                            std::to_string(expected) +
                            (packed_count ? " (" + std::to_string(outputs.size() - packed_count) +
                                                " outputs, then the buffer of the " +
                                                std::to_string(packed_count) + " packed ones)"
                                          : std::string()));
    }
    py::array buffer_array;  // the packed outputs' buffer, kept alive while they are copied out
    if (packed_count) {
      py::object last = seq[expected - 1];
      const bool is_array = py::isinstance<py::array>(last);
      if (is_array) buffer_array = last.cast<py::array>();
      if (!is_array || !(buffer_array.flags() & py::array::c_style) || buffer_array.itemsize() != 1) {
        throw InvalidArgument(model_ctx() + "host fn's last result must be the packed outputs' buffer, a "
                              "C-contiguous numpy array of bytes (uint8); got " + type_name(last));
      }
    }
    const auto* buffer = packed_count ? static_cast<const std::byte*>(buffer_array.data()) : nullptr;
    const std::size_t buffer_bytes = packed_count ? static_cast<std::size_t>(buffer_array.nbytes()) : 0;
    std::size_t position = 0;  // next unpacked result
    for (std::size_t i = 0; i < outputs.size(); ++i) {
      const std::size_t nbytes = outputs[i].spec.nbytes();
      if (packed_count && packed[i].has_value()) {
        const std::size_t offset = *packed[i];
        if (offset > buffer_bytes || nbytes > buffer_bytes - offset) {
          throw InvalidArgument(model_ctx() + "output " + std::to_string(i) + ": packed at bytes [" +
                                std::to_string(offset) + ", " + std::to_string(offset + nbytes) +
                                ") of a buffer of " + std::to_string(buffer_bytes) + " bytes");
        }
        if (nbytes) std::memcpy(outputs[i].data, buffer + offset, nbytes);
        continue;
      }
      py::object item = seq[position++];
      auto arr = py::isinstance<py::array>(item)
                     ? item.cast<py::array>()
                     : py::module_::import("numpy").attr("asarray")(item).cast<py::array>();
      if (!matches(arr, outputs[i].spec)) {  // the slow path builds the message
        const std::string out_ctx = model_ctx() + "output " + std::to_string(i) + ": ";
        const TensorSpec got = spec_of(arr, out_ctx + "host fn returned ");
        throw InvalidArgument(out_ctx + "host fn returned " + got.describe() + ", expected " +
                              outputs[i].spec.describe());
      }
      arr = c_contiguous(arr);
      const void* src = arr.data();
      // Dropping the GIL costs more than copying a small output; only large copies let
      // other Python threads run meanwhile.
      constexpr std::size_t kReleaseGilBytes = 256 * 1024;
      if (nbytes >= kReleaseGilBytes) {
        without_gil([&] { std::memcpy(outputs[i].data, src, nbytes); });
      } else if (nbytes) {
        std::memcpy(outputs[i].data, src, nbytes);
      }
    }
  };
}

// ---------------------------------------------------------------- errors

void set_python_error(const char* cls, const char* message) {
  py::object type = py::module_::import("spiky_runtime.errors").attr(cls);
  PyErr_SetString(type.ptr(), message);
}

void translate_exception(std::exception_ptr p) {
  if (!p) return;
  try {
    std::rethrow_exception(p);
  } catch (const PythonError& e) {
    e.restore();
  } catch (const OutOfMemory& e) {
    set_python_error("OutOfMemoryError", e.what());
  } catch (const DeviceOutOfMemory& e) {
    set_python_error("OutOfMemoryError", e.what());
  } catch (const InvalidArgument& e) {
    set_python_error("InvalidArgumentError", e.what());
  } catch (const Error& e) {
    set_python_error("SpikyRuntimeError", e.what());
  }
}

// ---------------------------------------------------------------- stats dicts

py::dict memory_stats(const PoolStats& s, bool full) {
  py::dict d;
  d["used_bytes"] = s.used_bytes;
  d["cached_bytes"] = s.cached_bytes;
  d["total_bytes"] = s.total_bytes;
  d["allocation_count"] = s.allocation_count;
  d["reuse_count"] = s.reuse_count;
  d["cache_hit_count"] = s.cache_hit_count;
  d["cache_miss_count"] = s.cache_miss_count;
  if (full) {
    d["peak_used_bytes"] = s.peak_used_bytes;
    d["num_ooms"] = s.num_ooms;
    d["num_alloc_retries"] = s.num_alloc_retries;
  }
  return d;
}

std::string device_label(const Device& d) {
  return d.driver_name() + ":" + std::to_string(d.index());
}

// ---------------------------------------------------------------- calls

// A numpy array that takes ownership of call output memory (no copy).
py::array to_numpy_array(HostArray&& host) {
  void* data = host.data.release();
  py::capsule owner(data, [](void* p) { std::free(p); });
  return py::array(to_numpy(host.spec.dtype()), np_shape(host.spec), data, owner);
}

// Converts a Python sequence of numpy arrays / DeviceTensors into call inputs. With
// `keep` the inputs hold their arrays until uploaded (pipelined calls outlive this frame).
std::vector<CallInput> call_inputs(const py::object& arrays, const std::string& context,
                                   bool keep, std::vector<py::array>* holders) {
  if (py::isinstance<py::array>(arrays) || !py::isinstance<py::sequence>(arrays)) {
    throw InvalidArgument(context + "takes a sequence (list or tuple) of numpy arrays or "
                          "DeviceTensors, got " + type_name(arrays));
  }
  auto seq = arrays.cast<py::sequence>();
  std::vector<CallInput> inputs;
  for (std::size_t i = 0; i < seq.size(); ++i) {
    // Error messages only: built when something is wrong, not on every call.
    auto ctx = [&] { return context + "input " + std::to_string(i) + ": "; };
    py::object item = seq[i];
    if (py::isinstance<DeviceTensor>(item)) {
      auto tensor = item.cast<std::shared_ptr<DeviceTensor>>();
      inputs.push_back(CallInput{tensor->spec(), nullptr, nullptr, tensor});
      continue;
    }
    if (!py::isinstance<py::array>(item)) {
      throw InvalidArgument(ctx() + "expected a numpy.ndarray or DeviceTensor, got " +
                            type_name(item));
    }
    py::array arr = c_contiguous(item.cast<py::array>());
    const auto fast = fast_dtype(arr.dtype());
    CallInput in{fast ? TensorSpec(std::vector<std::int64_t>(arr.shape(), arr.shape() + arr.ndim()), *fast)
                      : spec_of(arr, ctx()),
                 arr.data(), nullptr, nullptr};
    if (keep) in.keepalive = std::make_shared<PyRef>(arr);
    holders->push_back(std::move(arr));
    inputs.push_back(std::move(in));
  }
  return inputs;
}

// Python face of a submitted call: waits without the GIL, converts results once.
class Future {
 public:
  explicit Future(std::shared_ptr<Call> call) : call_(std::move(call)) {}
  bool done() const { return call_->done().is_set(); }
  void wait() const {
    without_gil([&] { call_->done().wait(); });
  }
  // Host outputs: waits, raises the call's error. Device outputs: returned at once (they may
  // still be pending; their wait()/numpy() block and raise).
  py::list result() {
    if (call_->options().to_host) wait();
    if (!cached_) {
      py::list out;
      if (call_->options().to_host) {
        for (auto& host : call_->host_outputs()) out.append(to_numpy_array(std::move(host)));
        call_->host_outputs().clear();
      } else {
        for (const auto& t : call_->device_outputs()) out.append(py::cast(t));
      }
      cached_ = out;
    }
    return py::reinterpret_borrow<py::list>(*cached_);
  }
  const Call& call() const { return *call_; }

 private:
  std::shared_ptr<Call> call_;
  std::optional<py::list> cached_;
};

Future submit_call(const Bundle& bundle, const py::object& arrays, bool to_host, bool unpad) {
  std::vector<py::array> holders;
  const bool pipelined = bundle.pipelined();
  auto call = bundle.make_call(call_inputs(arrays, bundle.context(), pipelined, &holders),
                               CallOptions{to_host, unpad});
  Executor& executor = bundle.device()->executor();
  if (pipelined) {
    without_gil([&] { executor.submit(call); });
  } else {
    without_gil([&] {
      try {
        executor.run_sync(*call);
      } catch (const std::exception&) {
        // Stored in the call (done() carries it); result() raises it, as in pipelined mode.
      }
    });
  }
  return Future(std::move(call));
}

std::vector<DynamicDim> dynamic_dims(const py::handle& obj, const std::string& context) {
  std::vector<DynamicDim> out;
  if (obj.is_none()) return out;
  if (!py::isinstance<py::dict>(obj)) {
    throw InvalidArgument(context + "expected a dict {dim: symbol}, got " + type_name(obj));
  }
  for (auto item : obj.cast<py::dict>()) {
    const auto dim = item.first.cast<std::int64_t>();
    out.push_back(DynamicDim{to_size(dim, context + "dim"), py::str(item.second)});
  }
  return out;
}

std::vector<std::vector<DynamicDim>> dims_list(const py::object& obj, std::size_t count,
                                               const std::string& context) {
  if (obj.is_none()) return std::vector<std::vector<DynamicDim>>(count);
  std::vector<std::vector<DynamicDim>> out;
  auto seq = obj.cast<py::sequence>();
  for (std::size_t i = 0; i < seq.size(); ++i) {
    out.push_back(dynamic_dims(seq[i], context + "[" + std::to_string(i) + "]: "));
  }
  return out;
}

}  // namespace

PYBIND11_MODULE(_core, m) {
  m.doc() = "Native engine of spiky_runtime (drivers, memory pool, executor, stats).";
  py::register_exception_translator(&translate_exception);
  // Host models hold Python callables: drop the device registry while Python still runs.
  // Pipeline threads finish their calls first (they may need the GIL: it is released here).
  auto gate = std::make_shared<ExitGate>();
  py::module_::import("atexit").attr("register")(py::cpp_function([gate] {
    without_gil([&] {
      gate->close_and_drain(std::chrono::seconds(10));
      Device::clear_registry();
      nrt_close_at_exit();  // after the devices' models and buffers went back to libnrt
    });
  }));

  m.def("device_count", &Device::device_count, py::arg("driver") = "host",
        "Number of devices the driver can open (host: 1).");
  m.def("driver_names", &Device::driver_names, "Names of the drivers in this build.");

  py::class_<TensorSpec>(m, "TensorSpec", "Shape and dtype of one model input or output.")
      .def(py::init([](std::vector<std::int64_t> shape, const py::object& dtype) {
             return TensorSpec(std::move(shape), dtype_from_object(dtype, "TensorSpec: "));
           }),
           py::arg("shape"), py::arg("dtype"))
      .def_property_readonly("shape", [](const TensorSpec& s) { return shape_tuple(s.shape()); })
      .def_property_readonly("dtype", [](const TensorSpec& s) { return to_numpy(s.dtype()); })
      .def_property_readonly("nbytes", &TensorSpec::nbytes)
      .def("__eq__",
           [](const TensorSpec& a, const py::object& b) {
             return py::isinstance<TensorSpec>(b) && a == b.cast<const TensorSpec&>();
           })
      .def("__hash__",
           [](const TensorSpec& s) {
             return py::hash(py::make_tuple(shape_tuple(s.shape()), dtype_name(s.dtype())));
           })
      .def("__repr__", [](const TensorSpec& s) {
        return "TensorSpec(shape=" + TensorSpec::shape_to_string(s.shape()) + ", dtype=" +
               dtype_name(s.dtype()) + ")";
      });

  py::class_<StatsSnapshot>(m, "RuntimeStats", "Snapshot of a device's execution statistics.")
      .def_readonly("total_executions", &StatsSnapshot::total_executions)
      .def_readonly("total_compile_count", &StatsSnapshot::total_compile_count)
      .def_readonly("bucket_hits", &StatsSnapshot::bucket_hits)
      .def_readonly("total_execution_time_ms", &StatsSnapshot::total_execution_time_ms)
      .def_readonly("min_execution_time_ms", &StatsSnapshot::min_execution_time_ms)
      .def_readonly("max_execution_time_ms", &StatsSnapshot::max_execution_time_ms)
      .def_readonly("total_h2d_time_ms", &StatsSnapshot::total_h2d_time_ms)
      .def_readonly("total_exec_time_ms", &StatsSnapshot::total_exec_time_ms)
      .def_readonly("total_d2h_time_ms", &StatsSnapshot::total_d2h_time_ms)
      .def_readonly("total_pad_time_ms", &StatsSnapshot::total_pad_time_ms)
      .def_readonly("pad_ratio", &StatsSnapshot::pad_ratio)
      .def_readonly("total_h2d_bytes", &StatsSnapshot::total_h2d_bytes)
      .def_readonly("total_d2h_bytes", &StatsSnapshot::total_d2h_bytes)
      .def_readonly("total_h2d_transfers", &StatsSnapshot::total_h2d_transfers)
      .def_readonly("total_d2h_transfers", &StatsSnapshot::total_d2h_transfers)
      .def_readonly("call_h2d_bytes", &StatsSnapshot::call_h2d_bytes)
      .def_readonly("call_d2h_bytes", &StatsSnapshot::call_d2h_bytes)
      .def_property_readonly("mean_h2d_bytes_per_call", &StatsSnapshot::mean_h2d_bytes_per_call)
      .def_property_readonly("mean_d2h_bytes_per_call", &StatsSnapshot::mean_d2h_bytes_per_call)
      .def("__repr__", &StatsSnapshot::to_string);

  py::class_<Device, std::shared_ptr<Device>>(m, "Device", "A device: driver, pool and stats.")
      .def(py::init([](const std::string& driver, int index,
                       std::optional<std::int64_t> capacity_bytes) {
             return Device::get(driver, index, capacity_bytes);
           }),
           py::arg("driver") = "host", py::arg("index") = 0,
           py::arg("capacity_bytes") = py::none())
      .def_property_readonly("driver_name", &Device::driver_name)
      .def_property_readonly("index", &Device::index)
      .def_property_readonly("capacity_bytes", &Device::capacity_bytes)
      .def(
          "allocate",
          [](Device& d, std::int64_t nbytes) {
            if (nbytes <= 0) {
              throw InvalidArgument("Device.allocate: nbytes must be > 0, got " +
                                    std::to_string(nbytes));
            }
            return without_gil([&] { return d.allocate(static_cast<std::size_t>(nbytes)); });
          },
          py::arg("nbytes"))
      .def("memory_stats", [](Device& d) { return memory_stats(d.pool().stats(), false); })
      .def("memory_stats_full", [](Device& d) { return memory_stats(d.pool().stats(), true); })
      .def("clear_cache",
           [](Device& d) {
             return without_gil([&] { return d.pool().clear_cache(); });
           })
      .def(
          "trim",
          [](Device& d, std::int64_t target_bytes) {
            const std::size_t target = to_size(target_bytes, "Device.trim: target_bytes");
            return without_gil([&] { return d.pool().trim(target); });
          },
          py::arg("target_bytes"))
      .def(
          "load_host_model",
          [gate](Device& d, py::object fn, std::vector<TensorSpec> inputs,
             std::vector<TensorSpec> outputs, std::string name, std::int64_t stage_bytes,
             std::map<std::int64_t, std::int64_t> packed) {
            if (!PyCallable_Check(fn.ptr())) {
              throw InvalidArgument("load_host_model: fn of model '" + name +
                                    "' must be callable, got " + type_name(fn));
            }
            std::vector<std::optional<std::size_t>> offsets(outputs.size());
            for (const auto& [index, offset] : packed) {
              if (index < 0 || static_cast<std::size_t>(index) >= outputs.size()) {
                throw InvalidArgument("load_host_model: packed output " + std::to_string(index) +
                                      " of model '" + name + "' is not one of its " +
                                      std::to_string(outputs.size()) + " outputs");
              }
              offsets[static_cast<std::size_t>(index)] = to_size(offset, "load_host_model: packed offset");
            }
            ModelDescriptor desc;
            desc.name = name;
            desc.inputs = std::move(inputs);
            desc.outputs = std::move(outputs);
            desc.host_executable =
                std::make_shared<const HostExecutable>(make_host_executable(
                    std::move(fn), name, gate, to_size(stage_bytes, "load_host_model: stage_bytes"),
                    std::move(offsets)));
            return d.load_model(std::move(desc));
          },
          py::arg("fn"), py::arg("inputs"), py::arg("outputs"), py::arg("name"), py::kw_only(),
          py::arg("stage_bytes") = 0, py::arg("packed") = std::map<std::int64_t, std::int64_t>())
      .def("stats", [](Device& d) { return d.stats_snapshot(); })
      .def("record_compile", [](Device& d) { d.stats().record_compile(); })
      .def("reset_stats", &Device::reset_stats)
      .def("synchronize", [](Device& d) { without_gil([&] { d.synchronize(); }); })
      .def(
          "to_device",
          [](Device& d, const py::array& arr) {
            py::array data = c_contiguous(arr);
            const ConstTensor host{spec_of(data, "Device.to_device: "), data.data()};
            return without_gil([&] { return d.to_device(host); });
          },
          py::arg("array"))
      .def("start_trace", [](Device& d) { d.timeline().start(); })
      .def("stop_trace",
           [](Device& d) {
             return without_gil([&] { return d.timeline().stop(); });
           })
      .def_property_readonly("tracing", [](Device& d) { return d.timeline().enabled(); })
      .def_property(
          "split_large_blocks", [](Device& d) { return d.pool().split_large_blocks(); },
          [](Device& d, bool on) { d.pool().set_split_large_blocks(on); })
      .def("__eq__",
           [](const Device& a, const py::object& b) {
             return py::isinstance<Device>(b) && &a == &b.cast<const Device&>();
           })
      .def("__hash__", [](const Device& d) { return std::hash<const Device*>{}(&d); })
      .def("__repr__", [](const Device& d) {
        return "Device(driver='" + d.driver_name() + "', index=" + std::to_string(d.index()) +
               ", capacity_bytes=" + std::to_string(d.capacity_bytes()) + ")";
      });

  py::class_<Buffer, std::shared_ptr<Buffer>>(m, "Buffer", "Device memory from the pool.")
      .def_property_readonly("nbytes", &Buffer::nbytes)
      .def_property_readonly("device", &Buffer::device)
      .def(
          "write",
          [](Buffer& b, const py::array& src, std::int64_t offset) {
            const std::size_t off = to_size(offset, "Buffer.write: offset");
            py::array data = c_contiguous(src);
            const void* ptr = data.data();
            const auto nbytes = static_cast<std::size_t>(data.nbytes());
            without_gil([&] { b.write(ptr, nbytes, off); });
          },
          py::arg("src"), py::arg("offset") = 0)
      .def(
          "read",
          [](const Buffer& b, const py::object& dtype, std::vector<std::int64_t> shape,
             std::int64_t offset) {
            const std::size_t off = to_size(offset, "Buffer.read: offset");
            const TensorSpec spec(std::move(shape), dtype_from_object(dtype, "Buffer.read: "));
            py::array out(to_numpy(spec.dtype()), np_shape(spec));
            void* ptr = out.mutable_data();
            without_gil([&] { b.read(ptr, spec.nbytes(), off); });
            return out;
          },
          py::arg("dtype"), py::arg("shape"), py::arg("offset") = 0)
      .def(
          "copy_from",
          [](Buffer& b, const Buffer& src, std::int64_t src_offset, std::int64_t dst_offset,
             std::optional<std::int64_t> nbytes) {
            const std::size_t so = to_size(src_offset, "Buffer.copy_from: src_offset");
            const std::size_t dof = to_size(dst_offset, "Buffer.copy_from: dst_offset");
            const std::size_t n = nbytes ? to_size(*nbytes, "Buffer.copy_from: nbytes")
                                         : (so <= src.nbytes() ? src.nbytes() - so : 0);
            without_gil([&] { b.copy_from(src, so, dof, n); });
          },
          py::arg("src"), py::arg("src_offset") = 0, py::arg("dst_offset") = 0,
          py::arg("nbytes") = py::none())
      .def("free",
           [](Buffer& b) {
             without_gil([&] { b.free(); });
           })
      .def("__repr__", [](const Buffer& b) {
        return "Buffer(nbytes=" + std::to_string(b.nbytes()) + ", device=" +
               device_label(*b.device()) + (b.freed() ? ", freed" : "") + ")";
      });

  py::class_<DeviceTensor, std::shared_ptr<DeviceTensor>>(
      m, "DeviceTensor", "A tensor in device memory, possibly still being produced by a call.")
      .def_property_readonly("shape",
                             [](const DeviceTensor& t) { return shape_tuple(t.spec().shape()); })
      .def_property_readonly("dtype", [](const DeviceTensor& t) { return to_numpy(t.spec().dtype()); })
      .def_property_readonly("nbytes", [](const DeviceTensor& t) { return t.spec().nbytes(); })
      .def_property_readonly("device", &DeviceTensor::device)
      .def("ready", &DeviceTensor::is_ready)
      .def("wait", [](const DeviceTensor& t) { without_gil([&] { t.wait(); }); })
      .def("numpy",
           [](const DeviceTensor& t) {
             py::array out(to_numpy(t.spec().dtype()), np_shape(t.spec()));
             void* ptr = out.mutable_data();
             without_gil([&] { t.read(ptr); });
             return out;
           })
      .def("__repr__", [](const DeviceTensor& t) {
        return "DeviceTensor(shape=" + TensorSpec::shape_to_string(t.spec().shape()) +
               ", dtype=" + dtype_name(t.spec().dtype()) + ", device=" + device_label(*t.device()) +
               (t.is_ready() ? "" : ", pending") + ")";
      });

  py::class_<Future>(m, "Future", "A submitted bundle call.")
      .def("done", &Future::done)
      .def("wait", &Future::wait)
      .def("result", &Future::result)
      .def_property_readonly("bucket", [](const Future& f) { return f.call().bucket(); })
      .def("__repr__", [](const Future& f) {
        return "Future(bucket=" + std::to_string(f.call().bucket().value_or(-1)) +
               (f.done() ? ", done" : ", pending") + ")";
      });

  py::class_<Bundle, std::shared_ptr<Bundle>>(
      m, "Bundle", "The buckets of one graph: picks a bucket per call, pads and unpads on device.")
      .def(py::init([](const py::dict& buckets, const py::object& input_dims,
                       const py::object& output_dims, std::optional<std::vector<double>> fill_values,
                       std::string name, bool pipelined,
                       std::optional<std::map<std::int64_t, std::map<std::string, std::int64_t>>>
                           bucket_sizes) {
             std::map<std::int64_t, std::shared_ptr<Model>> models;
             for (auto item : buckets) {
               if (!py::isinstance<Model>(item.second)) {
                 throw InvalidArgument("Bundle '" + name + "': bucket " +
                                       std::string(py::str(item.first)) + " maps to " +
                                       type_name(item.second) + ", expected a Model");
               }
               models.emplace(item.first.cast<std::int64_t>(),
                              item.second.cast<std::shared_ptr<Model>>());
             }
             std::size_t n_in = 0;
             std::size_t n_out = 0;
             if (!models.empty()) {
               n_in = models.begin()->second->inputs().size();
               n_out = models.begin()->second->outputs().size();
             }
             const std::string ctx = "Bundle '" + name + "': ";
             return std::make_shared<Bundle>(
                 name, std::move(models), dims_list(input_dims, n_in, ctx + "input_dims"),
                 dims_list(output_dims, n_out, ctx + "output_dims"),
                 fill_values.value_or(std::vector<double>{}), pipelined,
                 bucket_sizes.value_or(std::map<std::int64_t, std::map<std::string, std::int64_t>>{}));
           }),
           py::arg("buckets"), py::arg("input_dims") = py::none(),
           py::arg("output_dims") = py::none(), py::arg("fill_values") = py::none(),
           py::arg("name") = "bundle", py::arg("pipelined") = false,
           py::arg("bucket_sizes") = py::none())
      .def(
          "bucket_sizes",
          [](const Bundle& b, std::int64_t bucket) {
            if (!b.buckets().count(bucket)) {
              throw InvalidArgument(b.context() + "no bucket " + std::to_string(bucket));
            }
            std::map<std::string, std::int64_t> out;
            for (const auto& dims : b.input_dims()) {
              for (const auto& d : dims) out[d.symbol] = b.symbol_size(bucket, d.symbol);
            }
            return out;
          },
          py::arg("bucket"))
      .def_property_readonly("name", &Bundle::name)
      .def_property_readonly("pipelined", &Bundle::pipelined)
      .def_property_readonly("device", &Bundle::device)
      .def_property_readonly("buckets",
                             [](const Bundle& b) {
                               std::vector<std::int64_t> out;
                               for (const auto& entry : b.buckets()) out.push_back(entry.first);
                               return out;
                             })
      .def("model", [](const Bundle& b, std::int64_t bucket) {
             auto it = b.buckets().find(bucket);
             if (it == b.buckets().end()) {
               throw InvalidArgument(b.context() + "no bucket " + std::to_string(bucket));
             }
             return it->second;
           }, py::arg("bucket"))
      .def(
          "select_bucket",
          [](const Bundle& b, const std::vector<TensorSpec>& specs) { return b.select_bucket(specs); },
          py::arg("specs"))
      .def("submit", &submit_call, py::arg("arrays"), py::arg("to_host") = true,
           py::arg("unpad") = true)
      .def(
          "run",
          [](const Bundle& b, const py::object& arrays, bool unpad) {
            return submit_call(b, arrays, true, unpad).result();
          },
          py::arg("arrays"), py::arg("unpad") = true)
      .def("__repr__", [](const Bundle& b) {
        std::string out = "Bundle(name='" + b.name() + "', buckets=[";
        bool first = true;
        for (const auto& entry : b.buckets()) {
          out += (first ? "" : ", ") + std::to_string(entry.first);
          first = false;
        }
        return out + "], pipelined=" + (b.pipelined() ? "True" : "False") + ", device=" +
               device_label(*b.device()) + ")";
      });

  py::class_<Model, std::shared_ptr<Model>>(m, "Model", "A model loaded on a device.")
      .def_property_readonly("name", &Model::name)
      .def_property_readonly("inputs", &Model::inputs)
      .def_property_readonly("outputs", &Model::outputs)
      .def_property_readonly("device", &Model::device)
      .def(
          "run",
          [](const Model& model, const py::object& arrays, std::optional<std::int64_t> bucket) {
            if (py::isinstance<py::array>(arrays) || !py::isinstance<py::sequence>(arrays)) {
              throw InvalidArgument(model.context() +
                                    "run() takes a sequence (list or tuple) of numpy arrays, got " +
                                    type_name(arrays));
            }
            auto seq = arrays.cast<py::sequence>();
            model.check_input_count(seq.size());
            std::vector<py::array> keep;
            std::vector<ConstTensor> inputs;
            keep.reserve(seq.size());
            inputs.reserve(seq.size());
            for (std::size_t i = 0; i < seq.size(); ++i) {
              // Error messages only: built when something is wrong, not on every call.
              auto ctx = [&] { return model.context() + "input " + std::to_string(i) + ": "; };
              const TensorSpec& want = model.inputs()[i];
              py::object item = seq[i];
              if (!py::isinstance<py::array>(item)) {
                throw InvalidArgument(ctx() + "expected a numpy.ndarray with " + want.describe() +
                                      ", got " + type_name(item));
              }
              keep.push_back(c_contiguous(item.cast<py::array>()));
              // The model's spec when the array has it (Model::run checks the others).
              inputs.push_back(ConstTensor{matches(keep.back(), want) ? want : spec_of(keep.back(), ctx()),
                                           keep.back().data()});
            }
            std::vector<HostArray> outs =
                without_gil([&] { return model.run(inputs, bucket); });
            py::list results;
            for (auto& host : outs) results.append(to_numpy_array(std::move(host)));
            return results;
          },
          py::arg("arrays"), py::arg("bucket") = py::none())
      .def("__repr__", [](const Model& model) {
        std::string out = "Model(name='" + model.name() + "', inputs=[";
        for (std::size_t i = 0; i < model.inputs().size(); ++i) {
          out += (i ? ", " : "") + model.inputs()[i].to_string();
        }
        out += "], outputs=[";
        for (std::size_t i = 0; i < model.outputs().size(); ++i) {
          out += (i ? ", " : "") + model.outputs()[i].to_string();
        }
        return out + "], device=" + device_label(*model.device()) + ")";
      });

  bind_nrt(m);
  bind_c_abi(m);
  bind_host_kernels(m);
}
