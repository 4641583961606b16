#include "bundle.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <optional>
#include <set>
#include <utility>

#include "device.h"
#include "errors.h"

namespace spiky::runtime {
namespace {

template <typename T>
std::vector<std::byte> bytes_of(T value) {
  std::vector<std::byte> out(sizeof(T));
  std::memcpy(out.data(), &value, sizeof(T));
  return out;
}

template <typename T>
std::vector<std::byte> integer_pattern(double value, const std::string& context, DType dtype) {
  if (!std::isfinite(value) || std::floor(value) != value ||
      value < static_cast<double>(std::numeric_limits<T>::min()) ||
      value > static_cast<double>(std::numeric_limits<T>::max())) {
    throw InvalidArgument(context + "fill value " + std::to_string(value) +
                          " is not representable as " + dtype_name(dtype) +
                          "; expected an integer in range");
  }
  return bytes_of(static_cast<T>(value));
}

// IEEE binary16 bits of a double, rounded to nearest even in one step (numpy's float64 ->
// float16 cast does the same; going through float first would round twice). Overflow gives
// inf, NaN a quiet NaN with the sign and the top payload bits.
std::uint16_t half_bits(double value) {
  std::uint64_t x = 0;
  std::memcpy(&x, &value, sizeof(x));
  const auto sign = static_cast<std::uint16_t>((x >> 48) & 0x8000u);
  const auto exp = static_cast<int>((x >> 52) & 0x7ffu);
  const std::uint64_t mant = x & ((std::uint64_t{1} << 52) - 1);
  if (exp == 0x7ff) {
    if (mant == 0) return static_cast<std::uint16_t>(sign | 0x7c00u);
    return static_cast<std::uint16_t>(sign | 0x7e00u | (mant >> 42));
  }
  // Rounds `sig` right by `shift` bits to nearest even.
  auto round_shift = [](std::uint64_t sig, int shift) {
    std::uint64_t out = sig >> shift;
    const std::uint64_t rem = sig & ((std::uint64_t{1} << shift) - 1);
    const std::uint64_t mid = std::uint64_t{1} << (shift - 1);
    if (rem > mid || (rem == mid && (out & 1u))) ++out;
    return out;
  };
  const int e = exp - 1023 + 15;  // biased binary16 exponent
  if (e >= 0x1f) return static_cast<std::uint16_t>(sign | 0x7c00u);  // overflow -> inf
  if (e <= 0) {
    // Subnormal binary16 (units of 2^-24), or zero. Double subnormals are far below that.
    if (exp == 0) return sign;
    const int shift = 1051 - exp;  // sig * 2^(exp-1075) / 2^-24
    if (shift > 63) return sign;
    const std::uint64_t sig = mant | (std::uint64_t{1} << 52);
    return static_cast<std::uint16_t>(sign | round_shift(sig, shift));  // may carry to 0x0400
  }
  const std::uint64_t bits = (static_cast<std::uint64_t>(e) << 52 | mant);
  // The exponent rides above the mantissa, so a carry out of the mantissa bumps it (to inf
  // at the top): the right result.
  return static_cast<std::uint16_t>(sign | round_shift(bits, 42));
}

// bfloat16 bits of a double as ml_dtypes (and torch) convert it: to float first, then to the
// top 16 bits rounded to nearest even. Overflow gives inf, NaN the quiet NaN 0x7fc0 with the
// sign.
std::uint16_t bfloat16_bits(double value) {
  const auto f = static_cast<float>(value);
  std::uint32_t x = 0;
  std::memcpy(&x, &f, sizeof(x));
  if (std::isnan(f)) return static_cast<std::uint16_t>((x >> 16 & 0x8000u) | 0x7fc0u);
  const std::uint32_t bias = 0x7fffu + ((x >> 16) & 1u);
  return static_cast<std::uint16_t>((x + bias) >> 16);  // a carry bumps the exponent (to inf)
}

}  // namespace

std::vector<std::byte> fill_pattern(double value, DType dtype, const std::string& context) {
  switch (dtype) {
    case DType::kBool:
      if (value != 0.0 && value != 1.0) {
        throw InvalidArgument(context + "fill value " + std::to_string(value) +
                              " is not a bool; expected 0 or 1");
      }
      return bytes_of(static_cast<std::uint8_t>(value != 0.0));
    case DType::kInt8: return integer_pattern<std::int8_t>(value, context, dtype);
    case DType::kInt16: return integer_pattern<std::int16_t>(value, context, dtype);
    case DType::kInt32: return integer_pattern<std::int32_t>(value, context, dtype);
    case DType::kInt64: {
      // 2^63 is not an int64 although the double compare below would let it through.
      if (value >= 9223372036854775808.0) {
        throw InvalidArgument(context + "fill value " + std::to_string(value) +
                              " is not representable as int64; expected an integer in range");
      }
      return integer_pattern<std::int64_t>(value, context, dtype);
    }
    case DType::kUInt8: return integer_pattern<std::uint8_t>(value, context, dtype);
    case DType::kFloat16: return bytes_of(half_bits(value));
    case DType::kFloat32: return bytes_of(static_cast<float>(value));
    case DType::kFloat64: return bytes_of(value);
    case DType::kBFloat16: return bytes_of(bfloat16_bits(value));
  }
  throw Error("internal error: DType without a fill pattern");
}

Bundle::Bundle(std::string name, std::map<std::int64_t, std::shared_ptr<Model>> buckets,
               std::vector<std::vector<DynamicDim>> input_dims,
               std::vector<std::vector<DynamicDim>> output_dims, std::vector<double> fill_values,
               bool pipelined, std::map<std::int64_t, std::map<std::string, std::int64_t>> bucket_sizes)
    : name_(std::move(name)),
      buckets_(std::move(buckets)),
      input_dims_(std::move(input_dims)),
      output_dims_(std::move(output_dims)),
      fill_values_(std::move(fill_values)),
      pipelined_(pipelined),
      bucket_sizes_(std::move(bucket_sizes)) {
  const std::string ctx = context();
  if (buckets_.empty()) throw InvalidArgument(ctx + "needs at least one bucket, got none");
  const Model& first = *buckets_.begin()->second;
  if (input_dims_.size() != first.inputs().size()) {
    throw InvalidArgument(ctx + "input_dims has " + std::to_string(input_dims_.size()) +
                          " entries; expected one per model input (" +
                          std::to_string(first.inputs().size()) + ")");
  }
  if (output_dims_.size() != first.outputs().size()) {
    throw InvalidArgument(ctx + "output_dims has " + std::to_string(output_dims_.size()) +
                          " entries; expected one per model output (" +
                          std::to_string(first.outputs().size()) + ")");
  }
  if (fill_values_.empty()) fill_values_.assign(first.inputs().size(), 0.0);
  if (fill_values_.size() != first.inputs().size()) {
    throw InvalidArgument(ctx + "fill_values has " + std::to_string(fill_values_.size()) +
                          " entries; expected one per model input (" +
                          std::to_string(first.inputs().size()) + ") or none");
  }
  std::set<std::string> input_symbols;
  for (const auto& dims : input_dims_) {
    for (const auto& d : dims) input_symbols.insert(d.symbol);
  }
  for (std::size_t j = 0; j < output_dims_.size(); ++j) {
    for (const auto& d : output_dims_[j]) {
      if (!input_symbols.count(d.symbol)) {
        throw InvalidArgument(ctx + "output " + std::to_string(j) + " dim " +
                              std::to_string(d.dim) + " uses symbol '" + d.symbol +
                              "' that no input has; its size could not be known");
      }
    }
  }

  if (!bucket_sizes_.empty()) {
    for (const auto& [bucket, model] : buckets_) {
      auto it = bucket_sizes_.find(bucket);
      if (it == bucket_sizes_.end()) {
        throw InvalidArgument(ctx + "bucket " + std::to_string(bucket) +
                              " has no entry in bucket_sizes; give every bucket its symbol sizes");
      }
      for (const auto& symbol : input_symbols) {
        auto size = it->second.find(symbol);
        if (size == it->second.end() || size->second < 0) {
          throw InvalidArgument(ctx + "bucket_sizes[" + std::to_string(bucket) +
                                "] lacks a non-negative size for symbol '" + symbol + "'");
        }
      }
    }
    for (const auto& entry : bucket_sizes_) {
      if (!buckets_.count(entry.first)) {
        throw InvalidArgument(ctx + "bucket_sizes names bucket " + std::to_string(entry.first) +
                              " that has no model");
      }
    }
  }

  // Every bucket's model must be the same graph specialised to that bucket size.
  auto check_family = [&](const std::vector<TensorSpec>& specs,
                          const std::vector<TensorSpec>& ref_specs,
                          const std::vector<std::vector<DynamicDim>>& dyn, const char* kind,
                          std::int64_t bucket, const Model& model) {
    if (specs.size() != ref_specs.size()) {
      throw InvalidArgument(ctx + "bucket " + std::to_string(bucket) + " (model '" +
                            model.name() + "') has " + std::to_string(specs.size()) + " " + kind +
                            "s, expected " + std::to_string(ref_specs.size()));
    }
    for (std::size_t i = 0; i < specs.size(); ++i) {
      const std::string where = ctx + "bucket " + std::to_string(bucket) + " (model '" +
                                model.name() + "') " + kind + " " + std::to_string(i) + ": ";
      const auto& shape = specs[i].shape();
      if (specs[i].dtype() != ref_specs[i].dtype() || shape.size() != ref_specs[i].shape().size()) {
        throw InvalidArgument(where + specs[i].describe() + " differs in dtype or rank from " +
                              ref_specs[i].describe() + " of the other buckets");
      }
      std::vector<bool> dynamic(shape.size(), false);
      for (const auto& d : dyn[i]) {
        if (d.dim >= shape.size()) {
          throw InvalidArgument(where + "dynamic dim " + std::to_string(d.dim) +
                                " is out of range for " + specs[i].describe());
        }
        dynamic[d.dim] = true;
        const std::int64_t expected = symbol_size(bucket, d.symbol);
        if (shape[d.dim] != expected) {
          throw InvalidArgument(where + "dynamic dim " + std::to_string(d.dim) + " ('" +
                                d.symbol + "') is " + std::to_string(shape[d.dim]) +
                                "; expected the bucket size " + std::to_string(expected));
        }
      }
      for (std::size_t k = 0; k < shape.size(); ++k) {
        if (!dynamic[k] && shape[k] != ref_specs[i].shape()[k]) {
          throw InvalidArgument(where + "static dim " + std::to_string(k) + " is " +
                                std::to_string(shape[k]) + " but " +
                                std::to_string(ref_specs[i].shape()[k]) +
                                " in the other buckets; declare it dynamic or fix the models");
        }
      }
    }
  };
  for (const auto& [bucket, model] : buckets_) {
    if (!model) throw InvalidArgument(ctx + "bucket " + std::to_string(bucket) + " has no model");
    if (bucket < 0) {
      throw InvalidArgument(ctx + "bucket size " + std::to_string(bucket) + " is negative");
    }
    if (model->device() != first.device()) {
      throw InvalidArgument(ctx + "bucket " + std::to_string(bucket) +
                            " is loaded on another device; load every bucket on one device");
    }
    check_family(model->inputs(), first.inputs(), input_dims_, "input", bucket, *model);
    check_family(model->outputs(), first.outputs(), output_dims_, "output", bucket, *model);
  }
  FillPatterns patterns;
  for (std::size_t i = 0; i < fill_values_.size(); ++i) {
    patterns.push_back(fill_pattern(fill_values_[i], first.inputs()[i].dtype(),
                                    ctx + "input " + std::to_string(i) + ": "));
  }
  fill_patterns_ = std::make_shared<const FillPatterns>(std::move(patterns));
}

const std::shared_ptr<Device>& Bundle::device() const { return buckets_.begin()->second->device(); }

std::int64_t Bundle::symbol_size(std::int64_t bucket, const std::string& symbol) const {
  auto it = bucket_sizes_.find(bucket);
  if (it == bucket_sizes_.end()) return bucket;
  auto size = it->second.find(symbol);
  return size == it->second.end() ? bucket : size->second;
}

template <typename SpecAt>
std::map<std::string, std::int64_t> Bundle::symbol_values(std::size_t count,
                                                          const SpecAt& spec_at) const {
  const Model& first = *buckets_.begin()->second;
  if (count != first.inputs().size()) {
    throw InvalidArgument(context() + "expected " + std::to_string(first.inputs().size()) +
                          " inputs, got " + std::to_string(count));
  }
  std::map<std::string, std::int64_t> values;
  for (std::size_t i = 0; i < count; ++i) {
    const TensorSpec& ref = first.inputs()[i];
    const TensorSpec& spec = spec_at(i);
    const auto& shape = spec.shape();
    // Error messages only: built when something is wrong, not on every call.
    auto where = [&] { return context() + "input " + std::to_string(i) + ": "; };
    if (spec.dtype() != ref.dtype() || shape.size() != ref.shape().size()) {
      throw InvalidArgument(where() + "expected dtype " + dtype_name(ref.dtype()) + " and " +
                            std::to_string(ref.shape().size()) + " dims, got " + spec.describe());
    }
    const std::vector<DynamicDim>& dims = input_dims_[i];
    for (const auto& d : dims) {
      auto [it, inserted] = values.emplace(d.symbol, shape[d.dim]);
      if (!inserted && it->second != shape[d.dim]) {
        throw InvalidArgument(where() + "dim " + std::to_string(d.dim) + " ('" + d.symbol +
                              "') is " + std::to_string(shape[d.dim]) + " but '" + d.symbol +
                              "' is " + std::to_string(it->second) +
                              " in an earlier input; expected equal sizes");
      }
    }
    for (std::size_t k = 0; k < shape.size(); ++k) {
      if (shape[k] == ref.shape()[k]) continue;
      const bool dynamic = std::any_of(dims.begin(), dims.end(),
                                       [k](const DynamicDim& d) { return d.dim == k; });
      if (!dynamic) {
        throw InvalidArgument(where() + "static dim " + std::to_string(k) + " is " +
                              std::to_string(shape[k]) + ", expected " +
                              std::to_string(ref.shape()[k]) + " (shape " +
                              TensorSpec::shape_to_string(shape) + " vs compiled " +
                              TensorSpec::shape_to_string(ref.shape()) + ")");
      }
    }
  }
  return values;
}

std::int64_t Bundle::select_bucket(const std::vector<TensorSpec>& inputs) const {
  return bucket_for(symbol_values(
      inputs.size(), [&](std::size_t i) -> const TensorSpec& { return inputs[i]; }));
}

std::int64_t Bundle::bucket_for(const std::map<std::string, std::int64_t>& values) const {
  if (bucket_sizes_.empty()) {
    std::int64_t need = 0;
    std::string worst;
    for (const auto& [symbol, value] : values) {
      if (value > need) {
        need = value;
        worst = symbol;
      }
    }
    auto it = buckets_.lower_bound(need);
    if (it == buckets_.end()) {
      throw InvalidArgument(context() + "no bucket fits: '" + worst + "' = " + std::to_string(need) +
                            " exceeds the largest bucket " +
                            std::to_string(buckets_.rbegin()->first) + "; compile a bucket >= " +
                            std::to_string(need));
    }
    return it->first;
  }
  // Per-symbol sizes: the fitting bucket with the fewest padded elements, then the lowest id.
  std::optional<std::int64_t> best;
  double best_volume = 0.0;
  for (const auto& [bucket, model] : buckets_) {
    double volume = 1.0;
    bool fits = true;
    for (const auto& [symbol, value] : values) {
      const std::int64_t size = symbol_size(bucket, symbol);
      fits = fits && value <= size;
      volume *= static_cast<double>(size);
    }
    if (fits && (!best || volume < best_volume)) {
      best = bucket;
      best_volume = volume;
    }
  }
  if (!best) {
    std::string sizes;
    for (const auto& [symbol, value] : values) {
      sizes += (sizes.empty() ? "" : ", ") + symbol + "=" + std::to_string(value);
    }
    throw InvalidArgument(context() + "no bucket fits sizes {" + sizes +
                          "}; compile a bucket at least that large in every symbol");
  }
  return *best;
}

std::shared_ptr<Call> Bundle::make_call(std::vector<CallInput> inputs, CallOptions options) const {
  const std::map<std::string, std::int64_t> values =
      symbol_values(inputs.size(), [&](std::size_t i) -> const TensorSpec& { return inputs[i].spec; });
  const std::int64_t bucket = bucket_for(values);
  const std::shared_ptr<Model>& model = buckets_.at(bucket);
  for (std::size_t i = 0; i < inputs.size(); ++i) {
    if (inputs[i].device && inputs[i].device->device() != model->device()) {
      throw InvalidArgument(context() + "input " + std::to_string(i) +
                            " is a device tensor of another device; copy it through the host");
    }
  }
  std::vector<TensorSpec> outputs;
  for (std::size_t j = 0; j < model->outputs().size(); ++j) {
    std::vector<std::int64_t> shape = model->outputs()[j].shape();
    if (options.unpad) {
      for (const auto& d : output_dims_[j]) shape[d.dim] = values.at(d.symbol);
    }
    outputs.emplace_back(std::move(shape), model->outputs()[j].dtype());
  }
  return std::make_shared<Call>(model, bucket, std::move(inputs), fill_patterns_,
                                std::move(outputs), options);
}

}  // namespace spiky::runtime
