// MemoryPool: the caching allocator of one device, shared by the executor and (through
// the bindings) the torch allocator.
//
// Size classes: requests up to 1 MiB round up to a multiple of 512 bytes; larger ones to a
// multiple of 2 MiB. Few distinct sizes means freed blocks are found again.
// Reuse: best fit from the cache (smallest cached block >= the rounded size), but never a
// block more than twice the rounded size, so a small request cannot pin a huge block.
// Blocks are never split or merged. On device OOM the pool frees its whole cache and
// retries once, then throws OutOfMemory with its numbers.
// Thread-safe: one mutex guards the cache and counters; driver allocation runs outside it.
#pragma once

#include <cstddef>
#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <shared_mutex>
#include <string>

#include "driver.h"

namespace spiky::runtime {

struct PoolStats {
  std::int64_t used_bytes = 0;         // handed out now (rounded sizes)
  std::int64_t cached_bytes = 0;       // held in the cache now
  std::int64_t total_bytes = 0;        // held from the driver now (= used + cached)
  std::int64_t allocation_count = 0;   // driver allocations
  std::int64_t reuse_count = 0;        // allocations served from the cache
  std::int64_t cache_hit_count = 0;    // cache lookups that found a block
  std::int64_t cache_miss_count = 0;   // cache lookups that found none
  std::int64_t peak_used_bytes = 0;
  std::int64_t num_ooms = 0;           // OutOfMemory raised to the caller
  std::int64_t num_alloc_retries = 0;  // free-cache-and-retry after a device OOM
};

class MemoryPool;

// One block handed out by the pool. Returning it (release() or destruction) puts it back
// into the cache. release() is idempotent; I/O after release throws.
class Block {
 public:
  Block(std::shared_ptr<MemoryPool> pool, MemHandle handle, std::size_t size);
  ~Block();
  Block(const Block&) = delete;
  Block& operator=(const Block&) = delete;

  // Rounded size actually held by this block.
  std::size_t size() const { return size_; }
  // For the sole owner of a block (the executor's scratch buffers); shared blocks go
  // through with_handle() so a concurrent release() cannot pull memory from under I/O.
  MemHandle handle() const { return handle_; }
  bool released() const;
  void release();

  // Runs `fn(handle)` while guaranteeing the block is not released concurrently.
  template <typename Fn>
  auto with_handle(const char* what, Fn&& fn) const {
    std::shared_lock<std::shared_mutex> lock(mutex_);
    check_live(what);
    return fn(handle_);
  }

 private:
  void check_live(const char* what) const;

  std::shared_ptr<MemoryPool> pool_;
  const MemHandle handle_;
  const std::size_t size_;
  mutable std::shared_mutex mutex_;
  bool released_ = false;
};

class MemoryPool : public std::enable_shared_from_this<MemoryPool> {
 public:
  static constexpr std::size_t kSmallRound = 512;
  static constexpr std::size_t kLargeThreshold = std::size_t{1} << 20;  // 1 MiB
  static constexpr std::size_t kLargeRound = std::size_t{2} << 20;      // 2 MiB

  explicit MemoryPool(std::shared_ptr<Driver> driver);
  ~MemoryPool();
  MemoryPool(const MemoryPool&) = delete;
  MemoryPool& operator=(const MemoryPool&) = delete;

  static std::size_t round_size(std::size_t nbytes);

  // nbytes must be > 0. Throws OutOfMemory (after one free-cache retry) when full.
  std::unique_ptr<Block> allocate(std::size_t nbytes);
  // Frees every cached block to the driver; returns the bytes freed.
  std::size_t clear_cache();
  // Frees cached blocks, largest first, until cached_bytes <= target; returns bytes freed.
  std::size_t trim(std::size_t target_bytes);

  PoolStats stats() const;
  // Zeroes the cumulative counters; peak restarts from the current use.
  void reset_counters();
  Driver& driver() { return *driver_; }

 private:
  friend class Block;
  void give_back(MemHandle handle, std::size_t size);
  std::size_t free_cached_locked(std::size_t target_bytes);  // caller holds mutex_
  std::string oom_message(std::size_t requested, std::size_t rounded) const;

  std::shared_ptr<Driver> driver_;
  mutable std::mutex mutex_;
  std::multimap<std::size_t, MemHandle> cache_;  // size -> handle
  PoolStats stats_;
};

}  // namespace spiky::runtime
