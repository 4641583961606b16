// Strided byte boxes: the kernels and plans behind on-device padding and unpadding.
//
// A box is an N-d grid of equal-size elements addressed by per-dim byte strides. Padding an
// input from its actual shape A to its bucket shape B is one strided copy (the A-box of the
// compact source into the B-layout destination) plus at most one fill per padded dim; unpadding
// is one strided copy the other way. The host driver runs these kernels over its memory;
// a device driver runs the same plans with its own primitives (nrt: one nrt_tensor_copy /
// nrt_tensor_memset / nrt_tensor_write per contiguous row, see driver.h).
#pragma once

#include <cstddef>
#include <cstdint>
#include <functional>
#include <vector>

namespace spiky::runtime {

// dst[i0..ik] = src[i0..ik] for every index of `shape`, elements of `elem_bytes` bytes.
struct StridedCopy {
  std::vector<std::int64_t> shape;
  std::vector<std::int64_t> src_strides;  // bytes
  std::vector<std::int64_t> dst_strides;  // bytes
  std::size_t elem_bytes = 0;

  bool empty() const;
  // One past the last byte touched on each side (0 when empty).
  std::size_t src_extent() const;
  std::size_t dst_extent() const;
};

// dst[i0..ik] = pattern for every index of `shape`; the pattern is one element.
struct StridedFill {
  std::vector<std::int64_t> shape;
  std::vector<std::int64_t> strides;  // bytes
  std::size_t offset = 0;             // bytes, from the start of the destination
  std::vector<std::byte> pattern;     // one element

  bool empty() const;
  std::size_t extent() const;  // offset + one past the last byte touched (0 when empty)
};

// Byte strides of a C-contiguous tensor.
std::vector<std::int64_t> contiguous_strides(const std::vector<std::int64_t>& shape,
                                             std::size_t itemsize);

// Kernels over plain memory (host driver, tests). Both coalesce the innermost contiguous
// dims into one memcpy/memset-sized row, so padding only the outer dim is one memcpy.
void copy_strided(std::byte* dst, const std::byte* src, const StridedCopy& op);
void fill_strided(std::byte* dst, const StridedFill& op);

// The same walks for drivers that move bytes with their own primitives (nrt: one
// nrt_tensor_copy / memset / write per row). fn gets byte offsets of one contiguous row (the
// trailing contiguous dims coalesced) and its length; nothing is called for an empty op.
void for_each_copy_row(const StridedCopy& op,
                       const std::function<void(std::size_t src_offset, std::size_t dst_offset,
                                                std::size_t row_bytes)>& fn);
// dst_offset includes op.offset; row_bytes is a whole number of pattern elements.
void for_each_fill_row(const StridedFill& op,
                       const std::function<void(std::size_t dst_offset, std::size_t row_bytes)>& fn);

// Padding an `actual`-shaped compact tensor into a `padded`-shaped compact tensor.
struct PadPlan {
  StridedCopy copy;                // compact actual -> padded layout
  std::vector<StridedFill> fills;  // the padding region, disjoint boxes, one per padded dim
  bool prefix = false;             // the actual layout is a byte prefix of the padded layout
};

// Throws InvalidArgument if ranks differ or actual[d] > padded[d] for some d.
PadPlan plan_pad(const std::vector<std::int64_t>& actual, const std::vector<std::int64_t>& padded,
                 std::size_t itemsize, const std::vector<std::byte>& fill_pattern);
// The copy that takes the actual region out of a padded tensor into a compact one.
StridedCopy plan_unpad(const std::vector<std::int64_t>& actual,
                       const std::vector<std::int64_t>& padded, std::size_t itemsize);
// True when the row-major bytes of `actual` are the first bytes of `padded`'s: only one dim
// differs and every dim before it has size 1 (e.g. padding the outermost dim).
bool is_prefix_layout(const std::vector<std::int64_t>& actual,
                      const std::vector<std::int64_t>& padded);

}  // namespace spiky::runtime
