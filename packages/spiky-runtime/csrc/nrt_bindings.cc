// Python face of the nrt driver (bind_nrt, called from bindings.cc):
//   Device.load_neff(neff, name, rank=None, world_size=None, input_names=None, output_names=None,
//                    inputs=None, outputs=None) -> Model
//   Model.input_names / Model.output_names     NEFF I/O names (None for host models)
//   Model.profile_start(ntff_path) / Model.profile_stop(ntff_path)
// and the translation of NrtError / NrtLoadError into spiky_runtime.errors classes carrying the
// status code, its name and the libnrt call.
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <cstring>
#include <memory>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "device.h"
#include "errors.h"
#include "model.h"
#include "nrt_api.h"
#include "nrt_driver.h"

namespace py = pybind11;

namespace spiky::runtime {
namespace {

void translate_nrt_exception(std::exception_ptr p) {
  if (!p) return;
  try {
    std::rethrow_exception(p);
  } catch (const NrtError& e) {
    py::object cls = py::module_::import("spiky_runtime.errors").attr("NrtError");
    py::object exc = cls(e.what(), e.status(), e.status_name(), e.call(), e.context());
    PyErr_SetObject(cls.ptr(), exc.ptr());
  } catch (const NrtLoadError& e) {
    py::object cls = py::module_::import("spiky_runtime.errors").attr("NrtLoadError");
    PyErr_SetString(cls.ptr(), e.what());
  }
  // Anything else propagates to the translator of bindings.cc.
}

NrtDriver* nrt_driver_of(const Model& model) {
  return dynamic_cast<NrtDriver*>(&model.device()->driver());
}

}  // namespace

void bind_nrt(py::module_& m) {
  // Registered after bindings.cc's translator, so tried before it.
  py::register_exception_translator(&translate_nrt_exception);

  auto device = py::reinterpret_borrow<py::class_<Device, std::shared_ptr<Device>>>(m.attr("Device"));
  device.def(
      "load_neff",
      [](Device& d, const py::bytes& neff, const std::string& name, std::optional<std::uint32_t> rank,
         std::optional<std::uint32_t> world_size, std::optional<std::vector<std::string>> input_names,
         std::optional<std::vector<std::string>> output_names, std::optional<std::vector<TensorSpec>> inputs,
         std::optional<std::vector<TensorSpec>> outputs) {
        ModelDescriptor desc;
        desc.name = name;
        const std::string_view view = neff;
        desc.neff = std::make_shared<const std::vector<std::byte>>(
            reinterpret_cast<const std::byte*>(view.data()), reinterpret_cast<const std::byte*>(view.data()) + view.size());
        desc.rank = rank;
        desc.world_size = world_size;
        desc.input_names = input_names.value_or(std::vector<std::string>{});
        desc.output_names = output_names.value_or(std::vector<std::string>{});
        desc.inputs = inputs.value_or(std::vector<TensorSpec>{});
        desc.outputs = outputs.value_or(std::vector<TensorSpec>{});
        py::gil_scoped_release release;
        return d.load_model(std::move(desc));
      },
      py::arg("neff"), py::arg("name"), py::kw_only(), py::arg("rank") = py::none(),
      py::arg("world_size") = py::none(), py::arg("input_names") = py::none(),
      py::arg("output_names") = py::none(), py::arg("inputs") = py::none(), py::arg("outputs") = py::none(),
      "Loads a compiled NEFF on this (nrt) device; inputs and outputs come from the NEFF.");

  auto model = py::reinterpret_borrow<py::class_<Model, std::shared_ptr<Model>>>(m.attr("Model"));
  model
      .def_property_readonly("input_names",
                             [](const Model& mo) -> std::optional<std::vector<std::string>> {
                               NrtDriver* nrt = nrt_driver_of(mo);
                               if (nrt == nullptr) return std::nullopt;
                               return nrt->input_names(mo.id());
                             })
      .def_property_readonly("output_names",
                             [](const Model& mo) -> std::optional<std::vector<std::string>> {
                               NrtDriver* nrt = nrt_driver_of(mo);
                               if (nrt == nullptr) return std::nullopt;
                               return nrt->output_names(mo.id());
                             })
      .def(
          "profile_start",
          [](const Model& mo, const std::string& ntff_path) {
            py::gil_scoped_release release;
            mo.device()->driver().profile_start(mo.id(), ntff_path);
          },
          py::arg("ntff_path"))
      .def(
          "profile_stop",
          [](const Model& mo, const std::string& ntff_path) {
            py::gil_scoped_release release;
            mo.device()->driver().profile_stop(ntff_path);
          },
          py::arg("ntff_path"));

}

}  // namespace spiky::runtime
