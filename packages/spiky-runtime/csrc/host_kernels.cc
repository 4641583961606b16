// Fused host kernels (bind_host_kernels, called from bindings.cc): the module
// spiky_runtime._core.host_kernels.
//
// What the numpy plan of a graph (spiky_ir.compile_plan) runs in one native call where numpy needs
// five to eleven: a layer norm, an eval-mode batch norm, a softmax, and erf (which numpy lacks).
// On the tiny tensors of a one-op graph each numpy call costs ~1 µs of dispatch, so a fused norm is
// ~10 µs of numpy against ~1 µs here. float32 and float64, C-contiguous operands; anything else is
// refused with a ValueError naming the operand, and the plan keeps its numpy steps for such graphs
// (it asks supports() first).
//
// Arithmetic follows the unfused plan's order in the operand type ((x - mean) * rstd, then * weight,
// then + bias; rstd = 1 / sqrt(var + eps)), so the batch norm is bit-identical to it. The layer norm
// accumulates its statistics in double (the plan's float32 pairwise sums differ from them by an ULP
// or so), the softmax uses the operand type's exp (numpy's SIMD exp may differ by an ULP), and erf is
// std::erf in double, as the plan's math.erf.

#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <cmath>
#include <cstddef>
#include <cstdint>
#include <optional>
#include <string>
#include <tuple>
#include <vector>

namespace py = pybind11;

namespace spiky::runtime {

namespace {

// Above this many elements a kernel releases the GIL while it computes.
constexpr py::ssize_t kReleaseGilElements = 1 << 16;

enum class Kind { f32, f64 };

Kind kind_of(const py::array& a, const char* what) {
  if (a.dtype().is(py::dtype::of<float>())) return Kind::f32;
  if (a.dtype().is(py::dtype::of<double>())) return Kind::f64;
  throw py::value_error(std::string("host_kernels: ") + what + " is " +
                        py::str(a.dtype()).cast<std::string>() +
                        "; the fused host kernels take float32 or float64 (use the numpy steps for other types)");
}

void check_contiguous(const py::array& a, const char* what) {
  if (!(a.flags() & py::array::c_style)) {
    throw py::value_error(std::string("host_kernels: ") + what +
                          " is not C-contiguous; pass np.ascontiguousarray of it");
  }
}

// An operand that must have x's type and exactly `count` elements.
template <typename T>
const T* operand(const py::array& a, Kind want, py::ssize_t count, const char* what) {
  check_contiguous(a, what);
  if (kind_of(a, what) != want) {
    throw py::value_error(std::string("host_kernels: ") + what + " has another type than x");
  }
  if (a.size() != count) {
    throw py::value_error(std::string("host_kernels: ") + what + " has " + std::to_string(a.size()) +
                          " elements, expected " + std::to_string(count));
  }
  return static_cast<const T*>(a.data());
}

template <typename T>
const T* optional_operand(const std::optional<py::array>& a, Kind want, py::ssize_t count, const char* what) {
  return a ? operand<T>(*a, want, count, what) : nullptr;
}

std::vector<py::ssize_t> shape_of(const py::array& a) {
  return std::vector<py::ssize_t>(a.shape(), a.shape() + a.ndim());
}

// Runs fn with the GIL released when the work is large enough to be worth the switch.
template <typename Fn>
void compute(py::ssize_t elements, Fn&& fn) {
  if (elements >= kReleaseGilElements) {
    py::gil_scoped_release release;
    fn();
  } else {
    fn();
  }
}

// ---------------------------------------------------------------- layer norm

template <typename T>
py::tuple layer_norm_t(const py::array& x, Kind kind, int axes, const std::optional<py::array>& weight,
                       const std::optional<py::array>& bias, double eps) {
  const py::ssize_t rank = x.ndim();
  if (axes < 1 || axes > rank) {
    throw py::value_error("host_kernels.layer_norm: axes=" + std::to_string(axes) + " for a rank-" +
                          std::to_string(rank) + " x; normalize over 1 to " + std::to_string(rank) +
                          " trailing axes");
  }
  py::ssize_t row = 1;
  for (py::ssize_t d = rank - axes; d < rank; ++d) row *= x.shape(d);
  const py::ssize_t rows = row ? x.size() / row : 0;
  const T* w = optional_operand<T>(weight, kind, row, "weight");
  const T* b = optional_operand<T>(bias, kind, row, "bias");
  std::vector<py::ssize_t> stat_shape = shape_of(x);
  for (py::ssize_t d = rank - axes; d < rank; ++d) stat_shape[static_cast<std::size_t>(d)] = 1;
  py::array_t<T> out(shape_of(x)), mean(stat_shape), rstd(stat_shape);
  const T* in = static_cast<const T*>(x.data());
  T* y = out.mutable_data();
  T* m = mean.mutable_data();
  T* r = rstd.mutable_data();
  const T epsilon = static_cast<T>(eps);
  compute(x.size(), [&] {
    for (py::ssize_t i = 0; i < rows; ++i) {
      const T* xi = in + i * row;
      T* yi = y + i * row;
      double sum = 0.0;
      for (py::ssize_t j = 0; j < row; ++j) sum += static_cast<double>(xi[j]);
      const double mu = sum / static_cast<double>(row);
      double squares = 0.0;
      for (py::ssize_t j = 0; j < row; ++j) {
        const double d = static_cast<double>(xi[j]) - mu;
        squares += d * d;
      }
      const T mean_t = static_cast<T>(mu);
      const T rstd_t = T(1) / std::sqrt(static_cast<T>(squares / static_cast<double>(row)) + epsilon);
      m[i] = mean_t;
      r[i] = rstd_t;
      for (py::ssize_t j = 0; j < row; ++j) {
        T v = (xi[j] - mean_t) * rstd_t;
        if (w) v = v * w[j];
        if (b) v = v + b[j];
        yi[j] = v;
      }
    }
  });
  return py::make_tuple(out, mean, rstd);
}

py::tuple layer_norm(const py::array& x, int axes, const std::optional<py::array>& weight,
                     const std::optional<py::array>& bias, double eps) {
  check_contiguous(x, "x");
  return kind_of(x, "x") == Kind::f32 ? layer_norm_t<float>(x, Kind::f32, axes, weight, bias, eps)
                                      : layer_norm_t<double>(x, Kind::f64, axes, weight, bias, eps);
}

// ---------------------------------------------------------------- channel norm (batch norm, eval)

template <typename T>
py::array channel_norm_t(const py::array& x, Kind kind, const py::array& mean, const py::array& var,
                         const std::optional<py::array>& weight, const std::optional<py::array>& bias,
                         double eps) {
  if (x.ndim() < 2) {
    throw py::value_error("host_kernels.channel_norm: x has rank " + std::to_string(x.ndim()) +
                          "; it normalizes (N, C, ...) per channel C");
  }
  const py::ssize_t channels = x.shape(1);
  py::ssize_t inner = 1;
  for (py::ssize_t d = 2; d < x.ndim(); ++d) inner *= x.shape(d);
  const T* mu = operand<T>(mean, kind, channels, "mean");
  const T* v = operand<T>(var, kind, channels, "var");
  const T* w = optional_operand<T>(weight, kind, channels, "weight");
  const T* b = optional_operand<T>(bias, kind, channels, "bias");
  py::array_t<T> out(shape_of(x));
  const T* in = static_cast<const T*>(x.data());
  T* y = out.mutable_data();
  const py::ssize_t batch = x.shape(0);
  const T epsilon = static_cast<T>(eps);
  compute(x.size(), [&] {
    for (py::ssize_t c = 0; c < channels; ++c) {
      const T rstd = T(1) / std::sqrt(v[c] + epsilon);
      for (py::ssize_t n = 0; n < batch; ++n) {
        const py::ssize_t at = (n * channels + c) * inner;
        for (py::ssize_t k = 0; k < inner; ++k) {
          T value = (in[at + k] - mu[c]) * rstd;
          if (w) value = value * w[c];
          if (b) value = value + b[c];
          y[at + k] = value;
        }
      }
    }
  });
  return std::move(out);
}

py::array channel_norm(const py::array& x, const py::array& mean, const py::array& var,
                       const std::optional<py::array>& weight, const std::optional<py::array>& bias, double eps) {
  check_contiguous(x, "x");
  return kind_of(x, "x") == Kind::f32 ? channel_norm_t<float>(x, Kind::f32, mean, var, weight, bias, eps)
                                      : channel_norm_t<double>(x, Kind::f64, mean, var, weight, bias, eps);
}

// ---------------------------------------------------------------- softmax

template <typename T>
py::array softmax_t(const py::array& x, int axis) {
  const py::ssize_t rank = x.ndim();
  if (axis < 0 || axis >= rank) {
    throw py::value_error("host_kernels.softmax: axis=" + std::to_string(axis) + " for a rank-" +
                          std::to_string(rank) + " x; pass 0 to " + std::to_string(rank - 1));
  }
  py::ssize_t outer = 1, inner = 1;
  for (py::ssize_t d = 0; d < axis; ++d) outer *= x.shape(d);
  for (py::ssize_t d = axis + 1; d < rank; ++d) inner *= x.shape(d);
  const py::ssize_t length = x.shape(axis);
  py::array_t<T> out(shape_of(x));
  const T* in = static_cast<const T*>(x.data());
  T* y = out.mutable_data();
  compute(x.size(), [&] {
    for (py::ssize_t o = 0; o < outer; ++o) {
      for (py::ssize_t i = 0; i < inner; ++i) {
        const T* xi = in + o * length * inner + i;
        T* yi = y + o * length * inner + i;
        T peak = -INFINITY;
        bool nan = false;
        for (py::ssize_t j = 0; j < length; ++j) {
          const T v = xi[j * inner];
          if (std::isnan(v)) nan = true;
          if (v > peak) peak = v;
        }
        if (nan) peak = NAN;  // as numpy's maximum: a NaN anywhere makes every result NaN
        T total = 0;
        for (py::ssize_t j = 0; j < length; ++j) {
          const T e = std::exp(xi[j * inner] - peak);
          yi[j * inner] = e;
          total += e;
        }
        for (py::ssize_t j = 0; j < length; ++j) yi[j * inner] = yi[j * inner] / total;
      }
    }
  });
  return std::move(out);
}

py::array softmax(const py::array& x, int axis) {
  check_contiguous(x, "x");
  return kind_of(x, "x") == Kind::f32 ? softmax_t<float>(x, axis) : softmax_t<double>(x, axis);
}

// ---------------------------------------------------------------- erf

// erf of x computed in double and rounded to x's type (what the plan's math.erf and cast give).
template <typename T>
py::array erf_t(const py::array& x) {
  py::array_t<T> out(shape_of(x));
  const T* in = static_cast<const T*>(x.data());
  T* y = out.mutable_data();
  const py::ssize_t n = x.size();
  compute(n, [&] {
    for (py::ssize_t i = 0; i < n; ++i) y[i] = static_cast<T>(std::erf(static_cast<double>(in[i])));
  });
  return std::move(out);
}

py::array erf(const py::array& x) {
  check_contiguous(x, "x");
  return kind_of(x, "x") == Kind::f32 ? erf_t<float>(x) : erf_t<double>(x);
}

}  // namespace

void bind_host_kernels(py::module_& m) {
  py::module_ k = m.def_submodule(
      "host_kernels",
      "Fused host kernels for the numpy plan: layer_norm, channel_norm, softmax, erf (float32/float64, "
      "C-contiguous operands).");
  k.def("layer_norm", &layer_norm, py::arg("x"), py::arg("axes"), py::arg("weight"), py::arg("bias"),
        py::arg("eps"),
        "(y, mean, rstd) of a layer norm over x's last `axes` axes; mean and rstd keep those axes as 1. "
        "weight and bias (or None) have the normalized axes' element count.");
  k.def("channel_norm", &channel_norm, py::arg("x"), py::arg("mean"), py::arg("var"), py::arg("weight"),
        py::arg("bias"), py::arg("eps"),
        "Eval-mode batch norm of x (N, C, ...): (x - mean[c]) / sqrt(var[c] + eps) * weight[c] + bias[c].");
  k.def("softmax", &softmax, py::arg("x"), py::arg("axis"), "Softmax of x along axis (max subtracted first).");
  k.def("erf", &erf, py::arg("x"), "erf of each element, computed in double and rounded to x's type.");
}

}  // namespace spiky::runtime
