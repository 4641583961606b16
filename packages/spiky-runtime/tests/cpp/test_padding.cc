// Padding and unpadding along each dim of 1-D..4-D tensors for every dtype, through the host
// driver's copy_strided / fill_strided primitives, against a per-element reference.
#include <cstring>
#include <random>
#include <vector>

#include "bundle.h"
#include "check.h"
#include "errors.h"
#include "host_driver.h"
#include "strided.h"
#include "tensor_spec.h"

using namespace spiky::runtime;

namespace {

const DType kAllDTypes[] = {DType::kBool,  DType::kInt8,    DType::kInt16,
                            DType::kInt32, DType::kInt64,   DType::kUInt8,
                            DType::kFloat16, DType::kFloat32, DType::kFloat64};

std::int64_t numel(const std::vector<std::int64_t>& shape) {
  std::int64_t n = 1;
  for (auto d : shape) n *= d;
  return n;
}

// Unravels a flat row-major index of `shape`.
std::vector<std::int64_t> unravel(std::int64_t flat, const std::vector<std::int64_t>& shape) {
  std::vector<std::int64_t> idx(shape.size());
  for (std::size_t d = shape.size(); d-- > 0;) {
    idx[d] = flat % shape[d];
    flat /= shape[d];
  }
  return idx;
}

std::int64_t ravel(const std::vector<std::int64_t>& idx, const std::vector<std::int64_t>& shape) {
  std::int64_t flat = 0;
  for (std::size_t d = 0; d < shape.size(); ++d) flat = flat * shape[d] + idx[d];
  return flat;
}

// Pads `actual`-shaped random data to `padded` on a host driver, checks every element, then
// unpads and checks the round trip.
void check_pad_round_trip(const std::vector<std::int64_t>& actual,
                          const std::vector<std::int64_t>& padded, DType dtype, double fill) {
  const std::size_t item = dtype_itemsize(dtype);
  const auto pattern = fill_pattern(fill, dtype, "test: ");
  HostDriver driver(0, 0);
  const std::size_t src_bytes = static_cast<std::size_t>(numel(actual)) * item;
  const std::size_t dst_bytes = static_cast<std::size_t>(numel(padded)) * item;
  std::vector<std::byte> src(src_bytes);
  std::mt19937 rng(static_cast<unsigned>(src_bytes * 31 + dst_bytes));
  for (auto& b : src) b = static_cast<std::byte>(rng() & 0xff);
  const MemHandle hs = driver.allocate(std::max<std::size_t>(src_bytes, 1));
  const MemHandle hd = driver.allocate(std::max<std::size_t>(dst_bytes, 1));
  const MemHandle hb = driver.allocate(std::max<std::size_t>(src_bytes, 1));
  driver.write(hs, 0, src.data(), src_bytes);
  // Garbage in the destination: every padded byte must be written by the plan.
  std::vector<std::byte> junk(dst_bytes, std::byte{0x5a});
  driver.write(hd, 0, junk.data(), dst_bytes);

  const PadPlan plan = plan_pad(actual, padded, item, pattern);
  driver.copy_strided(hs, 0, hd, 0, plan.copy);
  for (const auto& f : plan.fills) driver.fill_strided(hd, 0, f);

  std::vector<std::byte> out(dst_bytes);
  driver.read(hd, 0, out.data(), dst_bytes);
  for (std::int64_t flat = 0; flat < numel(padded); ++flat) {
    const auto idx = unravel(flat, padded);
    bool inside = true;
    for (std::size_t d = 0; d < idx.size(); ++d) inside = inside && idx[d] < actual[d];
    const std::byte* got = out.data() + flat * static_cast<std::int64_t>(item);
    const std::byte* want =
        inside ? src.data() + ravel(idx, actual) * static_cast<std::int64_t>(item) : pattern.data();
    CHECK(std::memcmp(got, want, item) == 0);
  }
  // The prefix fast path is right exactly when the actual bytes are the head of the padded ones.
  if (plan.prefix && src_bytes) CHECK(std::memcmp(out.data(), src.data(), src_bytes) == 0);

  driver.copy_strided(hd, 0, hb, 0, plan_unpad(actual, padded, item));
  std::vector<std::byte> back(src_bytes);
  driver.read(hb, 0, back.data(), src_bytes);
  CHECK(back == src);
  driver.free(hs);
  driver.free(hd);
  driver.free(hb);
}

}  // namespace

TEST(pad_unpad_each_dim_1d_to_4d_every_dtype) {
  const std::vector<std::int64_t> base = {5, 4, 3, 6};
  int cases = 0;
  for (DType dtype : kAllDTypes) {
    const double fill = dtype == DType::kBool ? 1.0 : -3.0 + (dtype == DType::kUInt8 ? 10.0 : 0.0);
    for (std::size_t rank = 1; rank <= 4; ++rank) {
      const std::vector<std::int64_t> padded(base.begin(), base.begin() + static_cast<std::ptrdiff_t>(rank));
      for (std::size_t d = 0; d < rank; ++d) {
        for (std::int64_t cut : {std::int64_t{1}, padded[d] - 1}) {
          auto actual = padded;
          actual[d] = cut;
          check_pad_round_trip(actual, padded, dtype, fill);
          check_pad_round_trip(actual, padded, dtype, 0.0);
          ++cases;
        }
      }
      auto all = padded;  // every dim padded at once
      for (auto& x : all) x = std::max<std::int64_t>(1, x - 2);
      check_pad_round_trip(all, padded, dtype, fill);
      check_pad_round_trip(padded, padded, dtype, fill);  // nothing to pad
      std::vector<std::int64_t> empty = padded;
      empty[0] = 0;
      check_pad_round_trip(empty, padded, dtype, fill);  // all padding
    }
  }
  CHECK(cases > 100);
}

TEST(prefix_layout_rule) {
  CHECK(is_prefix_layout({2, 3}, {4, 3}));
  CHECK(!is_prefix_layout({2, 3}, {2, 5}));
  CHECK(is_prefix_layout({1, 3, 4}, {1, 5, 4}));
  CHECK(is_prefix_layout({1, 3}, {2, 3}));
  CHECK(!is_prefix_layout({1, 3}, {2, 4}));
  CHECK(is_prefix_layout({0, 3}, {2, 4}));
  CHECK(is_prefix_layout({}, {}));
}

TEST(pad_plan_rejects_bad_shapes) {
  CHECK_THROWS(plan_pad({3}, {2}, 4, {std::byte{0}}), InvalidArgument);
  CHECK_THROWS(plan_pad({3, 1}, {3}, 4, {std::byte{0}}), InvalidArgument);
}

TEST(strided_ops_are_bounds_checked) {
  HostDriver driver(0, 0);
  const MemHandle h = driver.allocate(64);
  StridedCopy op{{4, 4}, {16, 4}, {16, 4}, 4};  // 64 bytes: fits
  driver.copy_strided(h, 0, h, 0, op);
  CHECK_THROWS(driver.copy_strided(h, 4, h, 0, op), InvalidArgument);
  StridedFill fill{{2, 4}, {32, 4}, 40, {std::byte{1}, std::byte{2}, std::byte{3}, std::byte{4}}};
  CHECK_THROWS(driver.fill_strided(h, 0, fill), InvalidArgument);  // 40 + 48 > 64
  driver.free(h);
}

TEST(fill_patterns) {
  CHECK_THROWS(fill_pattern(1.5, DType::kInt32, ""), InvalidArgument);
  CHECK_THROWS(fill_pattern(300, DType::kUInt8, ""), InvalidArgument);
  CHECK_THROWS(fill_pattern(2, DType::kBool, ""), InvalidArgument);
  const auto h = fill_pattern(1.0, DType::kFloat16, "");
  std::uint16_t bits = 0;
  std::memcpy(&bits, h.data(), 2);
  CHECK_EQ(bits, 0x3c00);
  std::memcpy(&bits, fill_pattern(-2.5, DType::kFloat16, "").data(), 2);
  CHECK_EQ(bits, 0xc100);
  std::memcpy(&bits, fill_pattern(1e9, DType::kFloat16, "").data(), 2);
  CHECK_EQ(bits, 0x7c00);
  std::int64_t v = 0;
  std::memcpy(&v, fill_pattern(-7, DType::kInt64, "").data(), 8);
  CHECK_EQ(v, -7);
}
