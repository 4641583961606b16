#include "tensor_spec.h"

#include <array>
#include <limits>
#include <sstream>
#include <utility>

#include "errors.h"

namespace spiky::runtime {
namespace {

struct DTypeInfo {
  DType dtype;
  const char* name;
  std::size_t itemsize;
};

// One table: adding a dtype touches this line list, the enum and kDTypeCount; fill_pattern
// (bundle.cc) and the bindings' numpy mapping (bindings.cc) then say what is missing.
constexpr std::array<DTypeInfo, kDTypeCount> kDTypes{{
    {DType::kBool, "bool", 1},
    {DType::kInt8, "int8", 1},
    {DType::kInt16, "int16", 2},
    {DType::kInt32, "int32", 4},
    {DType::kInt64, "int64", 8},
    {DType::kUInt8, "uint8", 1},
    {DType::kFloat16, "float16", 2},
    {DType::kFloat32, "float32", 4},
    {DType::kFloat64, "float64", 8},
    {DType::kBFloat16, "bfloat16", 2},
}};

constexpr bool table_is_dense() {
  for (std::size_t i = 0; i < kDTypes.size(); ++i) {
    if (static_cast<std::size_t>(kDTypes[i].dtype) != i) return false;
  }
  return true;
}
static_assert(table_is_dense(), "kDTypes must list every DType once, in enum order");

const DTypeInfo& info(DType dtype) {
  const auto index = static_cast<std::size_t>(dtype);
  if (index >= kDTypes.size()) throw Error("internal error: DType value without a table entry");
  return kDTypes[index];
}

}  // namespace

const std::vector<DType>& all_dtypes() {
  static const std::vector<DType> dtypes = [] {
    std::vector<DType> out;
    for (const auto& entry : kDTypes) out.push_back(entry.dtype);
    return out;
  }();
  return dtypes;
}

std::size_t dtype_itemsize(DType dtype) { return info(dtype).itemsize; }

const char* dtype_name(DType dtype) { return info(dtype).name; }

std::string supported_dtype_names() {
  std::string out;
  for (const auto& entry : kDTypes) {
    if (!out.empty()) out += ", ";
    out += entry.name;
  }
  return out;
}

std::optional<DType> find_dtype(const std::string& name) {
  for (const auto& entry : kDTypes) {
    if (name == entry.name) return entry.dtype;
  }
  return std::nullopt;
}

DType parse_dtype(const std::string& name, const std::string& context) {
  if (const auto dtype = find_dtype(name)) return *dtype;
  throw InvalidArgument(context + "unsupported dtype '" + name +
                        "'; expected one of: " + supported_dtype_names());
}

TensorSpec::TensorSpec(std::vector<std::int64_t> shape, DType dtype)
    : shape_(std::move(shape)), dtype_(dtype) {
  std::int64_t numel = 1;
  for (std::size_t i = 0; i < shape_.size(); ++i) {
    if (shape_[i] < 0) {
      throw InvalidArgument("TensorSpec: dim " + std::to_string(i) + " of shape " +
                            shape_to_string(shape_) + " is negative; expected dims >= 0");
    }
    if (shape_[i] != 0 && numel > std::numeric_limits<std::int64_t>::max() / shape_[i]) {
      throw InvalidArgument("TensorSpec: shape " + shape_to_string(shape_) +
                            " has more elements than fit in int64");
    }
    numel *= shape_[i];
  }
  numel_ = numel;
  nbytes_ = static_cast<std::size_t>(numel) * dtype_itemsize(dtype_);
}

std::string TensorSpec::shape_to_string(const std::vector<std::int64_t>& shape) {
  std::ostringstream os;
  os << "(";
  for (std::size_t i = 0; i < shape.size(); ++i) {
    if (i) os << ", ";
    os << shape[i];
  }
  if (shape.size() == 1) os << ",";
  os << ")";
  return os.str();
}

std::string TensorSpec::to_string() const {
  return shape_to_string(shape_) + " " + dtype_name(dtype_);
}

std::string TensorSpec::describe() const {
  return "shape " + shape_to_string(shape_) + " dtype " + dtype_name(dtype_);
}

}  // namespace spiky::runtime
