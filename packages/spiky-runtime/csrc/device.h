// Device: one driver instance with its memory pool, executor and statistics.
//
// Per-process registry: Device::get(driver, index) returns the same Device for the same
// (driver, index) for the life of the process, so every Python Device object, the torch
// allocator and the executor share one pool and one set of stats -- the way a CUDA
// context is per device, not per handle. This registry is the only global state of the
// runtime; clear_registry() drops it (the bindings call it at interpreter exit, before
// static destructors, because host models hold Python callables).
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "driver.h"
#include "executor.h"
#include "pool.h"
#include "stats.h"
#include "timeline.h"

namespace spiky::runtime {

class Buffer;
class DeviceTensor;
class Model;

class Device : public std::enable_shared_from_this<Device> {
 public:
  // Registry lookup / creation. capacity_bytes: nullopt keeps the current capacity of an
  // existing device, or on creation reads the driver's env default
  // (SPIKY_HOST_CAPACITY_BYTES for "host"), else unlimited; a value (0 = unlimited)
  // sets the capacity of the shared device for later allocations.
  static std::shared_ptr<Device> get(const std::string& driver, int index,
                                     std::optional<std::int64_t> capacity_bytes);
  static int device_count(const std::string& driver);
  static std::vector<std::string> driver_names();
  // Finishes the work in flight on every registered device, stops their pipeline threads,
  // returns their cached memory to the drivers and drops the registry. Called at interpreter
  // exit (with the GIL released).
  static void clear_registry();

  explicit Device(std::shared_ptr<Driver> driver);
  Device(const Device&) = delete;
  Device& operator=(const Device&) = delete;

  std::string driver_name() const { return driver_->name(); }
  int index() const { return driver_->index(); }
  std::size_t capacity_bytes() const { return driver_->capacity_bytes(); }

  std::shared_ptr<Buffer> allocate(std::size_t nbytes);
  std::shared_ptr<Model> load_model(ModelDescriptor descriptor);
  // Resets the execution stats and the pool's cumulative counters (current byte counts
  // stay: they describe memory that is still held).
  void reset_stats();
  // The execution stats plus the driver's host <-> device traffic, as one snapshot.
  StatsSnapshot stats_snapshot() const;
  // Blocks until every call submitted to this device's stream has finished.
  void synchronize() { executor_.synchronize(); }
  // Copies host memory to a new device tensor (synchronous H2D through the pool).
  std::shared_ptr<DeviceTensor> to_device(const ConstTensor& host);

  Driver& driver() { return *driver_; }
  MemoryPool& pool() { return *pool_; }
  RuntimeStats& stats() { return stats_; }
  Executor& executor() { return executor_; }
  Timeline& timeline() { return timeline_; }

 private:
  std::shared_ptr<Driver> driver_;
  std::shared_ptr<MemoryPool> pool_;
  RuntimeStats stats_;
  Timeline timeline_;
  Executor executor_;  // last: its threads use the members above until it is destroyed
};

}  // namespace spiky::runtime
