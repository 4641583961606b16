// Padding and unpadding along each dim of 1-D..4-D tensors for every dtype, through the host
// driver's copy_strided / fill_strided primitives, against a per-element reference; the dtype
// table; the exact bits of fill values (float16 as numpy rounds float64, bfloat16 as ml_dtypes).
#include <cmath>
#include <cstring>
#include <limits>
#include <random>
#include <string>
#include <vector>

#include "bundle.h"
#include "check.h"
#include "errors.h"
#include "host_driver.h"
#include "strided.h"
#include "tensor_spec.h"

using namespace spiky::runtime;

namespace {

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
  for (DType dtype : all_dtypes()) {
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

// ---------------------------------------------------------------- dtypes and fill bits

namespace {

std::uint16_t bits16(double value, DType dtype) {
  const auto pattern = fill_pattern(value, dtype, "test: ");
  CHECK_EQ(pattern.size(), std::size_t{2});
  std::uint16_t bits = 0;
  std::memcpy(&bits, pattern.data(), 2);
  return bits;
}

// Exact values of 16-bit float bits, decoded independently of the encoders under test.
double half_value(std::uint16_t h) {
  const double sign = (h & 0x8000u) ? -1.0 : 1.0;
  const int exp = (h >> 10) & 0x1f;
  const int mant = h & 0x3ff;
  if (exp == 0x1f) return mant ? std::numeric_limits<double>::quiet_NaN() : sign * HUGE_VAL;
  if (exp == 0) return sign * std::ldexp(mant, -24);
  return sign * std::ldexp(mant + 1024, exp - 25);
}

double bfloat16_value(std::uint16_t b) {
  const std::uint32_t x = static_cast<std::uint32_t>(b) << 16;
  float f = 0;
  std::memcpy(&f, &x, sizeof(f));
  return f;
}

}  // namespace

TEST(dtype_table_has_every_dtype_once) {
  CHECK_EQ(all_dtypes().size(), kDTypeCount);
  for (std::size_t i = 0; i < all_dtypes().size(); ++i) {
    const DType d = all_dtypes()[i];
    CHECK_EQ(static_cast<std::size_t>(d), i);
    CHECK(parse_dtype(dtype_name(d), "") == d);
    CHECK(find_dtype(dtype_name(d)) == d);
  }
  CHECK_EQ(supported_dtype_names(),
           std::string("bool, int8, int16, int32, int64, uint8, float16, float32, float64, bfloat16"));
  CHECK_EQ(dtype_itemsize(DType::kBFloat16), std::size_t{2});
  CHECK_EQ(std::string(dtype_name(DType::kBFloat16)), std::string("bfloat16"));
  const TensorSpec spec({2, 3}, DType::kBFloat16);
  CHECK_EQ(spec.nbytes(), std::size_t{12});
  CHECK_EQ(spec.to_string(), std::string("(2, 3) bfloat16"));
  CHECK(spec != TensorSpec({2, 3}, DType::kFloat16));  // same size, different type
  CHECK(!find_dtype("uint16"));
  CHECK(!find_dtype("bf16"));
  CHECK_THROWS(parse_dtype("uint16", ""), InvalidArgument);
}

TEST(fill_patterns_16_bit_floats_exact_bits) {
  const double inf = std::numeric_limits<double>::infinity();
  const double nan = std::numeric_limits<double>::quiet_NaN();
  struct Case {
    double value;
    std::uint16_t f16;   // numpy: np.array(value).astype(np.float16) (one rounding)
    std::uint16_t bf16;  // ml_dtypes: np.array(value).astype(bfloat16) (through float32)
  };
  const Case cases[] = {
      {0.0, 0x0000, 0x0000},
      {-0.0, 0x8000, 0x8000},
      {1.0, 0x3c00, 0x3f80},
      {-2.5, 0xc100, 0xc020},
      {-inf, 0xfc00, 0xff80},
      {inf, 0x7c00, 0x7f80},
      {nan, 0x7e00, 0x7fc0},
      {std::copysign(nan, -1.0), 0xfe00, 0xffc0},
      {3.0, 0x4200, 0x4040},
      {0.1, 0x2e66, 0x3dcd},
      {1e9, 0x7c00, 0x4e6e},
      {1e30, 0x7c00, 0x714a},
      {1e39, 0x7c00, 0x7f80},
      {65504.0, 0x7bff, 0x4780},
      {65519.0, 0x7bff, 0x4780},
      {65520.0, 0x7c00, 0x4780},  // float16's top tie rounds to even: inf
      {1 + 0x1p-11, 0x3c00, 0x3f80},
      {1 + 0x3p-11, 0x3c02, 0x3f80},
      {1 + 0x1p-11 + 0x1p-40, 0x3c01, 0x3f80},  // through float32 it would tie: 0x3c00
      {1 + 0x1p-8, 0x3c04, 0x3f80},
      {1 + 0x3p-8, 0x3c0c, 0x3f82},
      {1 + 0x1p-8 + 0x1p-30, 0x3c04, 0x3f80},  // bfloat16 goes through float32, as ml_dtypes
      {0x1p-24, 0x0001, 0x3380},
      {0x1p-25, 0x0000, 0x3300},
      {0x3p-25, 0x0002, 0x33c0},
      {0x1p-14, 0x0400, 0x3880},
      {0x1p-14 - 0x1p-26, 0x0400, 0x3880},  // the largest subnormal carries into the first normal
      {1e-40, 0x0000, 0x0001},
      {-1e-300, 0x8000, 0x8000},
      {0x1.fefp127, 0x7c00, 0x7f7f},
      {0x1.ff8p127, 0x7c00, 0x7f80},
  };
  for (const auto& c : cases) {
    CHECK_EQ(bits16(c.value, DType::kFloat16), c.f16);
    CHECK_EQ(bits16(c.value, DType::kBFloat16), c.bf16);
  }
}

TEST(fill_patterns_round_trip_every_16_bit_float) {
  // Every finite and infinite bit pattern: its exact value converts back to the same bits.
  for (std::uint32_t b = 0; b <= 0xffffu; ++b) {
    const auto bits = static_cast<std::uint16_t>(b);
    const bool half_nan = (bits & 0x7c00u) == 0x7c00u && (bits & 0x3ffu);
    const bool bf16_nan = (bits & 0x7f80u) == 0x7f80u && (bits & 0x7fu);
    if (!half_nan) CHECK_EQ(bits16(half_value(bits), DType::kFloat16), bits);
    if (!bf16_nan) CHECK_EQ(bits16(bfloat16_value(bits), DType::kBFloat16), bits);
  }
}

TEST(fill_patterns_of_the_other_dtypes) {
  std::uint32_t f32 = 0;
  std::memcpy(&f32, fill_pattern(-std::numeric_limits<double>::infinity(), DType::kFloat32, "").data(), 4);
  CHECK_EQ(f32, 0xff800000u);
  double f64 = 0;
  std::memcpy(&f64, fill_pattern(0.1, DType::kFloat64, "").data(), 8);
  CHECK_EQ(f64, 0.1);
  CHECK_EQ(fill_pattern(1.0, DType::kBool, "").size(), std::size_t{1});
  CHECK_EQ(static_cast<int>(fill_pattern(-1, DType::kInt8, "")[0]), 0xff);
  CHECK_EQ(static_cast<int>(fill_pattern(255, DType::kUInt8, "")[0]), 0xff);
  for (DType d : all_dtypes()) CHECK_EQ(fill_pattern(0.0, d, "").size(), dtype_itemsize(d));
}
