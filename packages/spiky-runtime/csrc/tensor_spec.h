// Element types and tensor descriptions shared by drivers, executor and bindings.
#pragma once

#include <cstddef>
#include <cstdint>
#include <optional>
#include <string>
#include <vector>

namespace spiky::runtime {

// The element types the runtime moves and checks. Names follow numpy; bfloat16 is the
// `ml_dtypes.bfloat16` numpy extension dtype (numpy has none of its own).
enum class DType : std::uint8_t {
  kBool,
  kInt8,
  kInt16,
  kInt32,
  kInt64,
  kUInt8,
  kFloat16,
  kFloat32,
  kFloat64,
  kBFloat16,
};

// Number of DType values (the enum is dense from 0): sizes per-dtype caches.
inline constexpr std::size_t kDTypeCount = 10;
static_assert(static_cast<std::size_t>(DType::kBFloat16) + 1 == kDTypeCount,
              "kDTypeCount is the last DType + 1");

// Every DType, in table order (for tests and per-dtype loops).
const std::vector<DType>& all_dtypes();

std::size_t dtype_itemsize(DType dtype);
const char* dtype_name(DType dtype);
// The DType named `name` ("float32", "bfloat16", ...), or nullopt.
std::optional<DType> find_dtype(const std::string& name);
// Parses a numpy dtype name ("float32", ...); throws InvalidArgument naming the value
// and listing the supported names. `context` prefixes the message (may be empty).
DType parse_dtype(const std::string& name, const std::string& context);
// "bool, int8, ..., float64, bfloat16" for error messages.
std::string supported_dtype_names();

// Shape + dtype of one tensor. Dims are validated non-negative on construction.
class TensorSpec {
 public:
  TensorSpec(std::vector<std::int64_t> shape, DType dtype);

  const std::vector<std::int64_t>& shape() const { return shape_; }
  DType dtype() const { return dtype_; }
  // Computed once at construction: the call path asks for them per tensor, per stage.
  std::int64_t numel() const { return numel_; }
  std::size_t nbytes() const { return nbytes_; }
  // "(2, 3) float32"
  std::string to_string() const;
  // "shape (2, 3) dtype float32", for error messages
  std::string describe() const;
  static std::string shape_to_string(const std::vector<std::int64_t>& shape);

  bool operator==(const TensorSpec& other) const {
    return dtype_ == other.dtype_ && shape_ == other.shape_;
  }
  bool operator!=(const TensorSpec& other) const { return !(*this == other); }

 private:
  std::vector<std::int64_t> shape_;
  DType dtype_;
  std::int64_t numel_ = 1;
  std::size_t nbytes_ = 0;
};

// Host memory described by a spec: what the executor moves in and out of a model.
struct ConstTensor {
  TensorSpec spec;
  const void* data;
};

struct MutableTensor {
  TensorSpec spec;
  void* data;
};

}  // namespace spiky::runtime
