// MemoryPool: the caching allocator of one device, shared by the executor and (through
// the bindings) the torch allocator.
//
// Size classes: requests up to 1 MiB round up to a multiple of 512 bytes; larger ones to a
// multiple of 2 MiB. Few distinct sizes means freed blocks are found again.
// Reuse: best fit from the cache (smallest cached block >= the rounded size), but never a
// block more than twice the rounded size, so a small request cannot pin a huge block.
// Splitting (optional, off by default; set_split_large_blocks): a large request (> 1 MiB)
// whose best fit is more than twice its size takes the front of that block and leaves the
// rest cached; when a piece comes back it merges with free neighbours of the same driver
// allocation. Small requests never split. Only whole driver allocations go back to the
// driver, so clear()/trim() skip free pieces of an allocation that is still partly in use.
// On device OOM the pool frees its cache and retries once, then throws OutOfMemory with
// its numbers.
// Thread-safe: one mutex guards the cache and counters; driver allocations and frees run
// outside it (a concurrent allocation that hits a device OOM while another thread is
// freeing simply takes the retry path).
#pragma once

#include <cstddef>
#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <shared_mutex>
#include <string>
#include <unordered_map>
#include <vector>

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
  std::int64_t num_splits = 0;         // cached blocks split to serve a smaller request
  std::int64_t num_merges = 0;         // freed pieces merged with a free neighbour
};

class MemoryPool;

// One block handed out by the pool. Returning it (release() or destruction) puts it back
// into the cache. release() is idempotent; I/O after release throws.
class Block {
 public:
  Block(std::shared_ptr<MemoryPool> pool, DeviceRef ref);
  ~Block();
  Block(const Block&) = delete;
  Block& operator=(const Block&) = delete;

  // Rounded size actually held by this block.
  std::size_t size() const { return ref_.nbytes; }
  // For the sole owner of a block (the executor's scratch buffers); shared blocks go
  // through with_ref() so a concurrent release() cannot pull memory from under I/O.
  const DeviceRef& ref() const { return ref_; }
  bool released() const;
  void release();

  // Runs `fn(ref)` while guaranteeing the block is not released concurrently.
  template <typename Fn>
  auto with_ref(const char* what, Fn&& fn) const {
    std::shared_lock<std::shared_mutex> lock(mutex_);
    check_live(what);
    return fn(ref_);
  }

 private:
  void check_live(const char* what) const;

  std::shared_ptr<MemoryPool> pool_;
  const DeviceRef ref_;
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
  // Frees every cached whole allocation to the driver; returns the bytes freed.
  std::size_t clear_cache();
  // Frees cached allocations, largest first, until cached_bytes <= target; returns bytes
  // freed. Free pieces of a partly used split allocation cannot be freed and stay.
  std::size_t trim(std::size_t target_bytes);

  void set_split_large_blocks(bool enabled);
  bool split_large_blocks() const;

  PoolStats stats() const;
  // Zeroes the cumulative counters; peak restarts from the current use.
  void reset_counters();
  Driver& driver() { return *driver_; }

 private:
  friend class Block;
  struct Piece {
    std::size_t size;
    bool free;
  };
  // One driver allocation, cut into pieces by offset (one piece unless split).
  struct Segment {
    std::size_t size = 0;
    std::map<std::size_t, Piece> pieces;  // offset -> piece
  };
  using FreeKey = std::pair<MemHandle, std::size_t>;  // (handle, offset)

  void give_back(const DeviceRef& ref);
  void erase_free(std::size_t size, const FreeKey& key);  // caller holds mutex_
  // Unlinks whole free segments (largest first) until cached <= target; caller holds mutex_
  // and frees the returned handles after unlocking.
  std::vector<MemHandle> take_cached_locked(std::size_t target_bytes, std::size_t* freed);
  void free_to_driver(const std::vector<MemHandle>& handles);
  std::string oom_message(std::size_t requested, std::size_t rounded) const;

  std::shared_ptr<Driver> driver_;
  mutable std::mutex mutex_;
  std::unordered_map<MemHandle, Segment> segments_;
  std::multimap<std::size_t, FreeKey> free_;  // size -> free piece
  bool split_ = false;
  PoolStats stats_;
};

}  // namespace spiky::runtime
