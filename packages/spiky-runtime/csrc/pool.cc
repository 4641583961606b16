#include "pool.h"

#include <algorithm>
#include <iterator>
#include <utility>

#include "errors.h"

namespace spiky::runtime {

// ---------------------------------------------------------------- Block

Block::Block(std::shared_ptr<MemoryPool> pool, DeviceRef ref) : pool_(std::move(pool)), ref_(ref) {}

Block::~Block() { release(); }

bool Block::released() const {
  std::shared_lock<std::shared_mutex> lock(mutex_);
  return released_;
}

void Block::release() {
  std::unique_lock<std::shared_mutex> lock(mutex_);
  if (released_) return;
  released_ = true;
  pool_->give_back(ref_);
}

void Block::check_live(const char* what) const {
  if (released_) {
    throw Error(std::string(what) + ": the buffer was already freed");
  }
}

// ---------------------------------------------------------------- MemoryPool

MemoryPool::MemoryPool(std::shared_ptr<Driver> driver) : driver_(std::move(driver)) {}

MemoryPool::~MemoryPool() {
  // Blocks keep the pool alive, so every segment is wholly free here.
  for (const auto& [handle, segment] : segments_) {
    (void)segment;
    try {
      driver_->free(handle);
    } catch (const Error&) {
      // A driver that lost the handle already (device reset): nothing left to free.
    }
  }
}

std::size_t MemoryPool::round_size(std::size_t nbytes) {
  const std::size_t unit = nbytes > kLargeThreshold ? kLargeRound : kSmallRound;
  return (nbytes + unit - 1) / unit * unit;
}

void MemoryPool::set_split_large_blocks(bool enabled) {
  std::lock_guard<std::mutex> lock(mutex_);
  split_ = enabled;
}

bool MemoryPool::split_large_blocks() const {
  std::lock_guard<std::mutex> lock(mutex_);
  return split_;
}

void MemoryPool::erase_free(std::size_t size, const FreeKey& key) {
  auto [lo, hi] = free_.equal_range(size);
  for (auto it = lo; it != hi; ++it) {
    if (it->second == key) {
      free_.erase(it);
      return;
    }
  }
  throw Error("internal error: memory pool free list lost a block");
}

std::unique_ptr<Block> MemoryPool::allocate(std::size_t nbytes) {
  if (nbytes == 0) {
    throw InvalidArgument("allocate: nbytes must be > 0, got 0 (devices reject empty allocations)");
  }
  const std::size_t size = round_size(nbytes);
  {
    std::lock_guard<std::mutex> lock(mutex_);
    auto it = free_.lower_bound(size);
    const bool fits = it != free_.end();
    const bool whole = fits && it->first <= 2 * size;
    const bool split = fits && !whole && split_ && size > kLargeThreshold;
    if (whole || split) {
      const std::size_t piece_size = it->first;
      const auto [handle, offset] = it->second;
      free_.erase(it);
      Segment& seg = segments_.at(handle);
      Piece& piece = seg.pieces.at(offset);
      std::size_t taken = piece_size;
      if (split) {
        taken = size;
        piece.size = size;
        seg.pieces.emplace(offset + size, Piece{piece_size - size, true});
        free_.emplace(piece_size - size, FreeKey{handle, offset + size});
        ++stats_.num_splits;
      }
      piece.free = false;
      ++stats_.cache_hit_count;
      ++stats_.reuse_count;
      stats_.cached_bytes -= static_cast<std::int64_t>(taken);
      stats_.used_bytes += static_cast<std::int64_t>(taken);
      stats_.peak_used_bytes = std::max(stats_.peak_used_bytes, stats_.used_bytes);
      return std::make_unique<Block>(shared_from_this(), DeviceRef{handle, offset, taken});
    }
    ++stats_.cache_miss_count;
  }

  MemHandle handle = 0;
  try {
    handle = driver_->allocate(size);
  } catch (const DeviceOutOfMemory&) {
    std::vector<MemHandle> victims;
    {
      std::lock_guard<std::mutex> lock(mutex_);
      ++stats_.num_alloc_retries;
      std::size_t freed = 0;
      victims = take_cached_locked(0, &freed);
    }
    free_to_driver(victims);
    try {
      handle = driver_->allocate(size);
    } catch (const DeviceOutOfMemory&) {
      std::lock_guard<std::mutex> lock(mutex_);
      ++stats_.num_ooms;
      throw OutOfMemory(oom_message(nbytes, size));
    }
  }

  std::lock_guard<std::mutex> lock(mutex_);
  Segment seg;
  seg.size = size;
  seg.pieces.emplace(0, Piece{size, false});
  segments_.emplace(handle, std::move(seg));
  ++stats_.allocation_count;
  stats_.total_bytes += static_cast<std::int64_t>(size);
  stats_.used_bytes += static_cast<std::int64_t>(size);
  stats_.peak_used_bytes = std::max(stats_.peak_used_bytes, stats_.used_bytes);
  return std::make_unique<Block>(shared_from_this(), DeviceRef{handle, 0, size});
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

void MemoryPool::give_back(const DeviceRef& ref) {
  std::lock_guard<std::mutex> lock(mutex_);
  Segment& seg = segments_.at(ref.handle);
  auto it = seg.pieces.find(ref.offset);
  it->second.free = true;
  stats_.used_bytes -= static_cast<std::int64_t>(ref.nbytes);
  stats_.cached_bytes += static_cast<std::int64_t>(ref.nbytes);
  // Merge with the free neighbours of the same allocation (only split segments have any).
  auto next = std::next(it);
  if (next != seg.pieces.end() && next->second.free) {
    erase_free(next->second.size, FreeKey{ref.handle, next->first});
    it->second.size += next->second.size;
    seg.pieces.erase(next);
    ++stats_.num_merges;
  }
  if (it != seg.pieces.begin()) {
    auto prev = std::prev(it);
    if (prev->second.free) {
      erase_free(prev->second.size, FreeKey{ref.handle, prev->first});
      prev->second.size += it->second.size;
      seg.pieces.erase(it);
      it = prev;
      ++stats_.num_merges;
    }
  }
  free_.emplace(it->second.size, FreeKey{ref.handle, it->first});
}

std::vector<MemHandle> MemoryPool::take_cached_locked(std::size_t target_bytes,
                                                      std::size_t* freed) {
  std::vector<MemHandle> victims;
  *freed = 0;
  auto it = free_.end();
  while (it != free_.begin() && static_cast<std::size_t>(stats_.cached_bytes) > target_bytes) {
    --it;
    const auto [handle, offset] = it->second;
    const Segment& seg = segments_.at(handle);
    if (offset != 0 || it->first != seg.size) continue;  // a piece of a partly used segment
    const std::size_t size = it->first;
    victims.push_back(handle);
    *freed += size;
    stats_.cached_bytes -= static_cast<std::int64_t>(size);
    stats_.total_bytes -= static_cast<std::int64_t>(size);
    segments_.erase(handle);
    it = free_.erase(it);
  }
  return victims;
}

void MemoryPool::free_to_driver(const std::vector<MemHandle>& handles) {
  for (MemHandle h : handles) driver_->free(h);
}

std::size_t MemoryPool::clear_cache() { return trim(0); }

std::size_t MemoryPool::trim(std::size_t target_bytes) {
  std::size_t freed = 0;
  std::vector<MemHandle> victims;
  {
    std::lock_guard<std::mutex> lock(mutex_);
    victims = take_cached_locked(target_bytes, &freed);
  }
  free_to_driver(victims);
  return freed;
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
  stats_.num_splits = 0;
  stats_.num_merges = 0;
  stats_.peak_used_bytes = stats_.used_bytes;
}

}  // namespace spiky::runtime
