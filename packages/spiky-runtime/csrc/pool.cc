#include "pool.h"

#include <algorithm>
#include <iterator>
#include <utility>

#include "errors.h"

namespace spiky::runtime {

// ---------------------------------------------------------------- Block

Block::Block(std::shared_ptr<MemoryPool> pool, MemHandle handle, std::size_t size)
    : pool_(std::move(pool)), handle_(handle), size_(size) {}

Block::~Block() { release(); }

bool Block::released() const {
  std::shared_lock<std::shared_mutex> lock(mutex_);
  return released_;
}

void Block::release() {
  std::unique_lock<std::shared_mutex> lock(mutex_);
  if (released_) return;
  released_ = true;
  pool_->give_back(handle_, size_);
}

void Block::check_live(const char* what) const {
  if (released_) {
    throw Error(std::string(what) + ": the buffer was already freed");
  }
}

// ---------------------------------------------------------------- MemoryPool

MemoryPool::MemoryPool(std::shared_ptr<Driver> driver) : driver_(std::move(driver)) {}

MemoryPool::~MemoryPool() {
  // Blocks keep the pool alive, so only cached blocks remain here.
  for (const auto& [size, handle] : cache_) {
    (void)size;
    driver_->free(handle);
  }
}

std::size_t MemoryPool::round_size(std::size_t nbytes) {
  const std::size_t unit = nbytes > kLargeThreshold ? kLargeRound : kSmallRound;
  return (nbytes + unit - 1) / unit * unit;
}

std::unique_ptr<Block> MemoryPool::allocate(std::size_t nbytes) {
  if (nbytes == 0) {
    throw InvalidArgument("allocate: nbytes must be > 0, got 0 (devices reject empty allocations)");
  }
  const std::size_t size = round_size(nbytes);
  {
    std::lock_guard<std::mutex> lock(mutex_);
    auto it = cache_.lower_bound(size);
    if (it != cache_.end() && it->first <= 2 * size) {
      const std::size_t block_size = it->first;
      const MemHandle handle = it->second;
      cache_.erase(it);
      ++stats_.cache_hit_count;
      ++stats_.reuse_count;
      stats_.cached_bytes -= static_cast<std::int64_t>(block_size);
      stats_.used_bytes += static_cast<std::int64_t>(block_size);
      stats_.peak_used_bytes = std::max(stats_.peak_used_bytes, stats_.used_bytes);
      return std::make_unique<Block>(shared_from_this(), handle, block_size);
    }
    ++stats_.cache_miss_count;
  }

  MemHandle handle = 0;
  try {
    handle = driver_->allocate(size);
  } catch (const DeviceOutOfMemory&) {
    {
      std::lock_guard<std::mutex> lock(mutex_);
      ++stats_.num_alloc_retries;
      free_cached_locked(0);
    }
    try {
      handle = driver_->allocate(size);
    } catch (const DeviceOutOfMemory&) {
      std::lock_guard<std::mutex> lock(mutex_);
      ++stats_.num_ooms;
      throw OutOfMemory(oom_message(nbytes, size));
    }
  }

  std::lock_guard<std::mutex> lock(mutex_);
  ++stats_.allocation_count;
  stats_.total_bytes += static_cast<std::int64_t>(size);
  stats_.used_bytes += static_cast<std::int64_t>(size);
  stats_.peak_used_bytes = std::max(stats_.peak_used_bytes, stats_.used_bytes);
  return std::make_unique<Block>(shared_from_this(), handle, size);
}

std::string MemoryPool::oom_message(std::size_t requested, std::size_t rounded) const {
  const std::size_t capacity = driver_->capacity_bytes();
  return "out of memory on device " + driver_->name() + ":" + std::to_string(driver_->index()) +
         ": requested " + std::to_string(requested) + " bytes (rounded to " +
         std::to_string(rounded) + "); used " + std::to_string(stats_.used_bytes) +
         " bytes, cached " + std::to_string(stats_.cached_bytes) + " bytes, total " +
         std::to_string(stats_.total_bytes) + " bytes, capacity " +
         (capacity == 0 ? std::string("unlimited") : std::to_string(capacity) + " bytes") +
         ". The cache was freed and the allocation retried; free buffers you no longer need"
         " or raise capacity_bytes.";
}

void MemoryPool::give_back(MemHandle handle, std::size_t size) {
  std::lock_guard<std::mutex> lock(mutex_);
  cache_.emplace(size, handle);
  stats_.used_bytes -= static_cast<std::int64_t>(size);
  stats_.cached_bytes += static_cast<std::int64_t>(size);
}

std::size_t MemoryPool::free_cached_locked(std::size_t target_bytes) {
  // Frees under the pool lock so total_bytes never disagrees with the driver; frees are
  // cheap compared to allocations, which do run outside the lock.
  std::size_t freed = 0;
  while (!cache_.empty() && static_cast<std::size_t>(stats_.cached_bytes) > target_bytes) {
    auto largest = std::prev(cache_.end());
    driver_->free(largest->second);
    freed += largest->first;
    stats_.cached_bytes -= static_cast<std::int64_t>(largest->first);
    stats_.total_bytes -= static_cast<std::int64_t>(largest->first);
    cache_.erase(largest);
  }
  return freed;
}

std::size_t MemoryPool::clear_cache() {
  std::lock_guard<std::mutex> lock(mutex_);
  return free_cached_locked(0);
}

std::size_t MemoryPool::trim(std::size_t target_bytes) {
  std::lock_guard<std::mutex> lock(mutex_);
  return free_cached_locked(target_bytes);
}

PoolStats MemoryPool::stats() const {
  std::lock_guard<std::mutex> lock(mutex_);
  return stats_;
}

void MemoryPool::reset_counters() {
  std::lock_guard<std::mutex> lock(mutex_);
  stats_.allocation_count = 0;
  stats_.reuse_count = 0;
  stats_.cache_hit_count = 0;
  stats_.cache_miss_count = 0;
  stats_.num_ooms = 0;
  stats_.num_alloc_retries = 0;
  stats_.peak_used_bytes = stats_.used_bytes;
}

}  // namespace spiky::runtime
