#include "strided.h"

#include <algorithm>
#include <cstring>
#include <string>

#include "errors.h"
#include "tensor_spec.h"

namespace spiky::runtime {
namespace {

bool any_zero(const std::vector<std::int64_t>& shape) {
  return std::any_of(shape.begin(), shape.end(), [](std::int64_t d) { return d == 0; });
}

std::size_t extent_of(const std::vector<std::int64_t>& shape,
                      const std::vector<std::int64_t>& strides, std::size_t elem) {
  if (any_zero(shape)) return 0;
  std::size_t last = 0;
  for (std::size_t d = 0; d < shape.size(); ++d) {
    last += static_cast<std::size_t>(shape[d] - 1) * static_cast<std::size_t>(strides[d]);
  }
  return last + elem;
}

// Folds trailing dims whose strides are contiguous on every side into one row of `row`
// bytes; returns the number of outer dims left to iterate.
std::size_t coalesce(const std::vector<std::int64_t>& shape,
                     const std::vector<const std::vector<std::int64_t>*>& strides,
                     std::size_t elem, std::size_t* row) {
  std::size_t outer = shape.size();
  *row = elem;
  while (outer > 0) {
    const std::size_t d = outer - 1;
    bool contiguous = true;
    for (const auto* s : strides) contiguous = contiguous && (*s)[d] == static_cast<std::int64_t>(*row);
    if (!contiguous) break;
    *row *= static_cast<std::size_t>(shape[d]);
    --outer;
  }
  return outer;
}

// Calls fn(index offsets...) for every index of the first `outer` dims (odometer order).
template <typename Fn>
void for_each_row(const std::vector<std::int64_t>& shape, std::size_t outer, Fn&& fn) {
  std::vector<std::int64_t> idx(outer, 0);
  for (;;) {
    fn(idx);
    std::size_t d = outer;
    while (d > 0) {
      --d;
      if (++idx[d] < shape[d]) break;
      idx[d] = 0;
      if (d == 0) return;
    }
    if (outer == 0) return;
  }
}

std::ptrdiff_t dot(const std::vector<std::int64_t>& idx, const std::vector<std::int64_t>& strides) {
  std::ptrdiff_t off = 0;
  for (std::size_t d = 0; d < idx.size(); ++d) off += idx[d] * strides[d];
  return off;
}

void check_same_rank(const std::vector<std::int64_t>& actual,
                     const std::vector<std::int64_t>& padded) {
  if (actual.size() != padded.size()) {
    throw InvalidArgument("padding: actual shape " + TensorSpec::shape_to_string(actual) +
                          " and padded shape " + TensorSpec::shape_to_string(padded) +
                          " differ in rank; expected the same number of dims");
  }
  for (std::size_t d = 0; d < actual.size(); ++d) {
    if (actual[d] > padded[d]) {
      throw InvalidArgument("padding: dim " + std::to_string(d) + " of actual shape " +
                            TensorSpec::shape_to_string(actual) + " exceeds the padded shape " +
                            TensorSpec::shape_to_string(padded) +
                            "; expected actual <= padded in every dim");
    }
  }
}

}  // namespace

bool StridedCopy::empty() const { return any_zero(shape) || elem_bytes == 0; }
std::size_t StridedCopy::src_extent() const { return extent_of(shape, src_strides, elem_bytes); }
std::size_t StridedCopy::dst_extent() const { return extent_of(shape, dst_strides, elem_bytes); }

bool StridedFill::empty() const { return any_zero(shape) || pattern.empty(); }
std::size_t StridedFill::extent() const {
  const std::size_t e = extent_of(shape, strides, pattern.size());
  return e == 0 ? 0 : offset + e;
}

std::vector<std::int64_t> contiguous_strides(const std::vector<std::int64_t>& shape,
                                             std::size_t itemsize) {
  std::vector<std::int64_t> strides(shape.size());
  std::int64_t s = static_cast<std::int64_t>(itemsize);
  for (std::size_t d = shape.size(); d-- > 0;) {
    strides[d] = s;
    s *= std::max<std::int64_t>(shape[d], 1);
  }
  return strides;
}

void copy_strided(std::byte* dst, const std::byte* src, const StridedCopy& op) {
  if (op.empty()) return;
  std::size_t row = 0;
  const std::size_t outer = coalesce(op.shape, {&op.src_strides, &op.dst_strides}, op.elem_bytes, &row);
  for_each_row(op.shape, outer, [&](const std::vector<std::int64_t>& idx) {
    std::memcpy(dst + dot(idx, op.dst_strides), src + dot(idx, op.src_strides), row);
  });
}

void fill_strided(std::byte* dst, const StridedFill& op) {
  if (op.empty()) return;
  std::size_t row = 0;
  const std::size_t outer = coalesce(op.shape, {&op.strides}, op.pattern.size(), &row);
  const bool zero = std::all_of(op.pattern.begin(), op.pattern.end(),
                                [](std::byte b) { return b == std::byte{0}; });
  std::vector<std::byte> line;
  if (!zero) {
    line.resize(row);
    for (std::size_t i = 0; i < row; i += op.pattern.size()) {
      std::memcpy(line.data() + i, op.pattern.data(), op.pattern.size());
    }
  }
  std::byte* base = dst + op.offset;
  for_each_row(op.shape, outer, [&](const std::vector<std::int64_t>& idx) {
    std::byte* p = base + dot(idx, op.strides);
    if (zero) {
      std::memset(p, 0, row);
    } else {
      std::memcpy(p, line.data(), row);
    }
  });
}

void for_each_copy_row(const StridedCopy& op,
                       const std::function<void(std::size_t, std::size_t, std::size_t)>& fn) {
  if (op.empty()) return;
  std::size_t row = 0;
  const std::size_t outer = coalesce(op.shape, {&op.src_strides, &op.dst_strides}, op.elem_bytes, &row);
  for_each_row(op.shape, outer, [&](const std::vector<std::int64_t>& idx) {
    fn(static_cast<std::size_t>(dot(idx, op.src_strides)),
       static_cast<std::size_t>(dot(idx, op.dst_strides)), row);
  });
}

void for_each_fill_row(const StridedFill& op,
                       const std::function<void(std::size_t, std::size_t)>& fn) {
  if (op.empty()) return;
  std::size_t row = 0;
  const std::size_t outer = coalesce(op.shape, {&op.strides}, op.pattern.size(), &row);
  for_each_row(op.shape, outer, [&](const std::vector<std::int64_t>& idx) {
    fn(op.offset + static_cast<std::size_t>(dot(idx, op.strides)), row);
  });
}

bool is_prefix_layout(const std::vector<std::int64_t>& actual,
                      const std::vector<std::int64_t>& padded) {
  if (actual.size() != padded.size()) return false;
  std::size_t d = 0;
  while (d < actual.size() && actual[d] == padded[d] && padded[d] == 1) ++d;
  if (d == actual.size()) return true;
  // d: the first dim that is not a unit dim shared by both; everything after must match.
  for (std::size_t j = d + 1; j < actual.size(); ++j) {
    if (actual[j] != padded[j]) return any_zero(actual);
  }
  return true;
}

PadPlan plan_pad(const std::vector<std::int64_t>& actual, const std::vector<std::int64_t>& padded,
                 std::size_t itemsize, const std::vector<std::byte>& fill_pattern) {
  check_same_rank(actual, padded);
  PadPlan plan;
  const auto dst_strides = contiguous_strides(padded, itemsize);
  plan.copy = StridedCopy{actual, contiguous_strides(actual, itemsize), dst_strides, itemsize};
  plan.prefix = is_prefix_layout(actual, padded);
  // The padding region {i : exists d, i[d] >= actual[d]} split by the first such d: box d has
  // dims < d inside actual, dim d in [actual[d], padded[d]), dims > d anywhere in padded.
  for (std::size_t d = 0; d < actual.size(); ++d) {
    if (actual[d] == padded[d]) continue;
    StridedFill fill;
    fill.shape.assign(actual.begin(), actual.begin() + static_cast<std::ptrdiff_t>(d));
    fill.shape.push_back(padded[d] - actual[d]);
    fill.shape.insert(fill.shape.end(), padded.begin() + static_cast<std::ptrdiff_t>(d) + 1,
                      padded.end());
    fill.strides = dst_strides;
    fill.offset = static_cast<std::size_t>(actual[d] * dst_strides[d]);
    fill.pattern = fill_pattern;
    if (!fill.empty()) plan.fills.push_back(std::move(fill));
  }
  return plan;
}

StridedCopy plan_unpad(const std::vector<std::int64_t>& actual,
                       const std::vector<std::int64_t>& padded, std::size_t itemsize) {
  check_same_rank(actual, padded);
  return StridedCopy{actual, contiguous_strides(padded, itemsize),
                     contiguous_strides(actual, itemsize), itemsize};
}

}  // namespace spiky::runtime
