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

#include <chrono>
#include <cstring>
#include <thread>
#include <type_traits>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "buffer.h"
#include "device.h"
#include "errors.h"
#include "model.h"
#include "pool.h"
#include "stats.h"
#include "tensor_spec.h"

#if defined(__GLIBCXX__)
#include <cxxabi.h>
#define SPIKY_HAVE_FORCED_UNWIND 1
#endif

namespace py = pybind11;
using namespace spiky::runtime;  // NOLINT(build/namespaces): bindings only

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

DType dtype_of(const py::dtype& dt, const std::string& context) {
  const std::string name = py::str(dt.attr("name"));
  if (!dt.attr("isnative").cast<bool>()) {
    throw InvalidArgument(context + "dtype '" + std::string(py::str(dt.attr("str"))) +
                          "' has non-native byte order; expected native " + name +
                          " (use arr.astype(arr.dtype.newbyteorder('=')))");
  }
  return parse_dtype(name, context);
}

DType dtype_from_object(py::handle obj, const std::string& context) {
  py::dtype dt;
  try {
    dt = py::dtype::from_args(py::reinterpret_borrow<py::object>(obj));
  } catch (py::error_already_set&) {
    throw InvalidArgument(context + std::string(py::repr(obj)) +
                          " is not a numpy dtype; expected one of: " + supported_dtype_names());
  }
  return dtype_of(dt, context);
}

py::dtype to_numpy(DType dtype) { return py::dtype(dtype_name(dtype)); }

std::vector<py::ssize_t> np_shape(const TensorSpec& spec) {
  return {spec.shape().begin(), spec.shape().end()};
}

TensorSpec spec_of(const py::array& arr, const std::string& context) {
  std::vector<std::int64_t> shape(arr.shape(), arr.shape() + arr.ndim());
  return TensorSpec(std::move(shape), dtype_of(arr.dtype(), context));
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

// Owns a Python callable on behalf of C++ code that may drop it without the GIL (a
// concurrent unload) or after the interpreter is gone (then it is deliberately leaked).
class PyCallableRef {
 public:
  explicit PyCallableRef(py::object fn) : fn_(fn.release().ptr()) {}
  ~PyCallableRef() {
    if (!Py_IsInitialized()) return;
    py::gil_scoped_acquire gil;
    Py_DECREF(fn_);
  }
  PyCallableRef(const PyCallableRef&) = delete;
  PyCallableRef& operator=(const PyCallableRef&) = delete;
  py::handle get() const { return fn_; }

 private:
  PyObject* fn_;
};

// Runs fn(list of read-only input views) and copies its outputs into the output memory
// after checking count, shape and dtype against the model's output specs.
HostExecutable make_host_executable(py::object fn, std::string name) {
  auto ref = std::make_shared<PyCallableRef>(std::move(fn));
  return [ref, name = std::move(name)](const std::vector<ConstTensor>& inputs,
                                       const std::vector<MutableTensor>& outputs) {
    const std::string ctx = "model '" + name + "': ";
    py::gil_scoped_acquire gil;
    py::list views;
    for (const auto& t : inputs) {
      // Zero-copy view of device memory; valid only during this call (the buffer returns
      // to the pool afterwards), hence read-only and not to be kept by fn.
      py::array view(to_numpy(t.spec.dtype()), np_shape(t.spec), t.data, py::none());
      view.attr("flags").attr("writeable") = false;
      views.append(view);
    }
    py::object result = ref->get()(views);
    if (py::isinstance<py::array>(result) || !py::isinstance<py::sequence>(result) ||
        py::isinstance<py::str>(result)) {
      throw InvalidArgument(ctx + "host fn must return a sequence (list or tuple) of numpy "
                            "arrays, one per output; got " + type_name(result));
    }
    auto seq = result.cast<py::sequence>();
    if (seq.size() != outputs.size()) {
      throw InvalidArgument(ctx + "host fn returned " + std::to_string(seq.size()) +
                            " outputs, expected " + std::to_string(outputs.size()));
    }
    py::object asarray = py::module_::import("numpy").attr("asarray");
    for (std::size_t i = 0; i < outputs.size(); ++i) {
      const std::string out_ctx = ctx + "output " + std::to_string(i) + ": ";
      auto arr = asarray(seq[i]).cast<py::array>();
      const TensorSpec got = spec_of(arr, out_ctx + "host fn returned ");
      if (got != outputs[i].spec) {
        throw InvalidArgument(out_ctx + "host fn returned " + got.describe() + ", expected " +
                              outputs[i].spec.describe());
      }
      arr = c_contiguous(arr);
      const void* src = arr.data();
      const std::size_t nbytes = got.nbytes();
      if (nbytes) without_gil([&] { std::memcpy(outputs[i].data, src, nbytes); });
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

}  // namespace

PYBIND11_MODULE(_core, m) {
  m.doc() = "Native engine of spiky_runtime (drivers, memory pool, executor, stats).";
  py::register_exception_translator(&translate_exception);
  // Host models hold Python callables: drop the device registry while Python still runs.
  py::module_::import("atexit").attr("register")(
      py::cpp_function([] { Device::clear_registry(); }));

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
          [](Device& d, py::object fn, std::vector<TensorSpec> inputs,
             std::vector<TensorSpec> outputs, std::string name) {
            if (!PyCallable_Check(fn.ptr())) {
              throw InvalidArgument("load_host_model: fn of model '" + name +
                                    "' must be callable, got " + type_name(fn));
            }
            ModelDescriptor desc;
            desc.name = name;
            desc.inputs = std::move(inputs);
            desc.outputs = std::move(outputs);
            desc.host_executable =
                std::make_shared<const HostExecutable>(make_host_executable(std::move(fn), name));
            return d.load_model(std::move(desc));
          },
          py::arg("fn"), py::arg("inputs"), py::arg("outputs"), py::arg("name"))
      .def("stats", [](Device& d) { return d.stats().snapshot(); })
      .def("record_compile", [](Device& d) { d.stats().record_compile(); })
      .def("reset_stats", &Device::reset_stats)
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
            for (std::size_t i = 0; i < seq.size(); ++i) {
              const std::string ctx = model.context() + "input " + std::to_string(i) + ": ";
              py::object item = seq[i];
              if (!py::isinstance<py::array>(item)) {
                throw InvalidArgument(ctx + "expected a numpy.ndarray with " +
                                      model.inputs()[i].describe() + ", got " + type_name(item));
              }
              keep.push_back(c_contiguous(item.cast<py::array>()));
              inputs.push_back(ConstTensor{spec_of(keep.back(), ctx), keep.back().data()});
            }
            model.check_inputs(inputs);
            py::list results;
            std::vector<MutableTensor> outputs;
            for (const TensorSpec& spec : model.outputs()) {
              py::array out(to_numpy(spec.dtype()), np_shape(spec));
              outputs.push_back(MutableTensor{spec, out.mutable_data()});
              results.append(out);
            }
            without_gil([&] { model.run(inputs, outputs, bucket); });
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
}
