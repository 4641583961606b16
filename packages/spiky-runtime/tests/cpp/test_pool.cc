// MemoryPool: counts, rounding, best fit, split/merge, trim, clear, OOM retry, 8 threads.
#include <atomic>
#include <string>
#include <thread>
#include <vector>

#include "check.h"
#include "errors.h"
#include "host_driver.h"
#include "pool.h"

using namespace spiky::runtime;

namespace {

constexpr std::size_t MiB = std::size_t{1} << 20;

std::shared_ptr<MemoryPool> make_pool(std::size_t capacity = 0) {
  return std::make_shared<MemoryPool>(std::make_shared<HostDriver>(0, capacity));
}

void check_invariants(const PoolStats& s) {
  CHECK_EQ(s.total_bytes, s.used_bytes + s.cached_bytes);
  CHECK(s.used_bytes >= 0);
  CHECK(s.cached_bytes >= 0);
}

}  // namespace

TEST(pool_rounding) {
  CHECK_EQ(MemoryPool::round_size(1), 512u);
  CHECK_EQ(MemoryPool::round_size(513), 1024u);
  CHECK_EQ(MemoryPool::round_size(MiB), MiB);
  CHECK_EQ(MemoryPool::round_size(MiB + 1), 2 * MiB);
  CHECK_EQ(MemoryPool::round_size(3 * MiB), 4 * MiB);
}

TEST(pool_reuse_hit_miss_counts) {
  auto pool = make_pool();
  auto a = pool->allocate(1000);
  auto s = pool->stats();
  CHECK_EQ(s.cache_miss_count, 1);
  CHECK_EQ(s.cache_hit_count, 0);
  CHECK_EQ(s.allocation_count, 1);
  a.reset();
  s = pool->stats();
  CHECK_EQ(s.cached_bytes, 1024);
  auto b = pool->allocate(900);
  s = pool->stats();
  CHECK_EQ(s.cache_hit_count, 1);
  CHECK_EQ(s.reuse_count, 1);
  CHECK_EQ(s.allocation_count, 1);
  CHECK_EQ(s.used_bytes, 1024);
  CHECK_EQ(s.peak_used_bytes, 1024);
  check_invariants(s);
  auto c = pool->allocate(512);  // nothing cached: a miss
  CHECK_EQ(pool->stats().cache_miss_count, 2);
  CHECK_EQ(pool->stats().peak_used_bytes, 1536);
}

TEST(pool_best_fit_never_oversized_without_split) {
  auto pool = make_pool();
  pool->allocate(1024).reset();
  pool->allocate(8 * MiB).reset();
  auto small = pool->allocate(512);  // 1024 is within 2x -> reused
  CHECK_EQ(small->size(), 1024u);
  auto tiny = pool->allocate(512);  // 8 MiB is far too big -> fresh allocation
  CHECK_EQ(tiny->size(), 512u);
  CHECK_EQ(pool->stats().cached_bytes, static_cast<std::int64_t>(8 * MiB));
  auto large = pool->allocate(2 * MiB);  // 8 MiB > 2 x 2 MiB and splitting is off
  CHECK_EQ(large->size(), 2 * MiB);
  CHECK_EQ(pool->stats().num_splits, 0);
}

TEST(pool_split_and_merge) {
  auto pool = make_pool();
  pool->set_split_large_blocks(true);
  pool->allocate(8 * MiB).reset();
  auto a = pool->allocate(2 * MiB);
  auto b = pool->allocate(2 * MiB);
  auto s = pool->stats();
  CHECK_EQ(s.allocation_count, 1);  // both carved from the cached 8 MiB block
  CHECK_EQ(s.num_splits, 2);
  CHECK_EQ(s.used_bytes, static_cast<std::int64_t>(4 * MiB));
  CHECK_EQ(s.cached_bytes, static_cast<std::int64_t>(4 * MiB));
  CHECK_EQ(a->ref().handle, b->ref().handle);
  CHECK(a->ref().offset != b->ref().offset);
  check_invariants(s);
  // A partly used allocation cannot go back to the driver.
  CHECK_EQ(pool->clear_cache(), 0u);
  CHECK_EQ(pool->stats().total_bytes, static_cast<std::int64_t>(8 * MiB));
  a.reset();
  b.reset();
  s = pool->stats();
  CHECK_EQ(s.num_merges, 2);  // a with the tail, then b with both
  CHECK_EQ(s.cached_bytes, static_cast<std::int64_t>(8 * MiB));
  CHECK_EQ(pool->clear_cache(), 8 * MiB);  // merged whole again: freed
  CHECK_EQ(pool->stats().total_bytes, 0);
  // Small requests never split a large block.
  pool->allocate(8 * MiB).reset();
  auto small = pool->allocate(4096);
  CHECK_EQ(pool->stats().num_splits, 2);
  CHECK_EQ(pool->stats().allocation_count, 3);
}

TEST(pool_split_pieces_do_not_overlap) {
  auto driver = std::make_shared<HostDriver>(0, 0);
  auto pool = std::make_shared<MemoryPool>(driver);
  pool->set_split_large_blocks(true);
  pool->allocate(16 * MiB).reset();
  std::vector<std::unique_ptr<Block>> blocks;
  for (int i = 0; i < 4; ++i) blocks.push_back(pool->allocate(3 * MiB));  // 4 MiB each
  for (int i = 0; i < 4; ++i) {
    const std::vector<unsigned char> data(4 * MiB, static_cast<unsigned char>(i + 1));
    driver->write(blocks[i]->ref().handle, blocks[i]->ref().offset, data.data(), data.size());
  }
  for (int i = 0; i < 4; ++i) {
    std::vector<unsigned char> back(4 * MiB);
    driver->read(blocks[i]->ref().handle, blocks[i]->ref().offset, back.data(), back.size());
    for (unsigned char c : back) CHECK_EQ(static_cast<int>(c), i + 1);
  }
}

TEST(pool_trim_largest_first) {
  auto pool = make_pool();
  for (std::size_t n : {std::size_t{512}, std::size_t{1024}, std::size_t{4096}, 2 * MiB}) {
    pool->allocate(n).reset();
  }
  CHECK_EQ(pool->trim(10 * MiB), 0u);
  CHECK_EQ(pool->trim(2000), 2 * MiB + 4096);
  CHECK_EQ(pool->stats().cached_bytes, 1536);
  CHECK_EQ(pool->trim(0), 1536u);
  CHECK_EQ(pool->stats().total_bytes, 0);
}

TEST(pool_clear_keeps_used) {
  auto pool = make_pool();
  auto keep = pool->allocate(512);
  pool->allocate(1024).reset();
  pool->allocate(4096).reset();
  CHECK_EQ(pool->clear_cache(), 1024u + 4096u);
  auto s = pool->stats();
  CHECK_EQ(s.used_bytes, 512);
  CHECK_EQ(s.total_bytes, 512);
  CHECK_EQ(pool->clear_cache(), 0u);
}

TEST(pool_oom_retry_then_error) {
  auto pool = make_pool(4 * MiB);
  pool->allocate(2 * MiB).reset();
  auto big = pool->allocate(3 * MiB);  // 2 cached + 4 > 4: OOM, cache freed, retry works
  auto s = pool->stats();
  CHECK_EQ(s.num_alloc_retries, 1);
  CHECK_EQ(s.num_ooms, 0);
  CHECK_EQ(s.cached_bytes, 0);
  std::string message;
  try {
    pool->allocate(1000);
  } catch (const OutOfMemory& e) {
    message = e.what();
  }
  CHECK(message.find("requested 1000 bytes") != std::string::npos);
  CHECK(message.find("capacity 4194304 bytes") != std::string::npos);
  CHECK(message.find("used 4194304 bytes") != std::string::npos);
  CHECK_EQ(pool->stats().num_ooms, 1);
  big.reset();
  auto ok = pool->allocate(1000);  // usable again
  CHECK_EQ(ok->size(), 1024u);
  CHECK_THROWS(pool->allocate(0), InvalidArgument);
}

TEST(pool_concurrent_8_threads) {
  for (bool split : {false, true}) {
    auto pool = make_pool();
    pool->set_split_large_blocks(split);
    const std::size_t sizes[] = {512, 1000, 4096, 70000, MiB + 3, 5 * MiB};
    std::atomic<int> errors{0};
    std::vector<std::thread> threads;
    for (int t = 0; t < 8; ++t) {
      threads.emplace_back([&, t] {
        try {
          std::vector<std::unique_ptr<Block>> held;
          for (int i = 0; i < 400; ++i) {
            held.push_back(pool->allocate(sizes[(t + i) % 6]));
            if (held.size() > 3) held.erase(held.begin());
            if (i % 97 == 0) pool->trim(MiB);
          }
        } catch (...) {
          ++errors;
        }
      });
    }
    for (auto& th : threads) th.join();
    CHECK_EQ(errors.load(), 0);
    auto s = pool->stats();
    CHECK_EQ(s.used_bytes, 0);
    check_invariants(s);
    CHECK_EQ(s.cache_hit_count + s.cache_miss_count, 8 * 400);
    CHECK_EQ(s.reuse_count, s.cache_hit_count);
    CHECK_EQ(s.allocation_count, s.cache_miss_count);
    pool->clear_cache();
    CHECK_EQ(pool->stats().total_bytes, 0);
  }
}
