#include "device.h"

#include <algorithm>
#include <cstdlib>
#include <map>
#include <mutex>
#include <utility>

#include "buffer.h"
#include "device_tensor.h"
#include "errors.h"
#include "host_driver.h"
#include "model.h"
#include "nrt_driver.h"

namespace spiky::runtime {
namespace {

struct DriverEntry {
  const char* name;
  const char* capacity_env;  // env var with the default capacity in bytes
  int (*count)();
  std::shared_ptr<Driver> (*create)(int index, std::size_t capacity_bytes);
};

// The drivers this build knows.
const DriverEntry kDrivers[] = {
    {"host", "SPIKY_HOST_CAPACITY_BYTES", [] { return 1; },
     [](int index, std::size_t capacity) -> std::shared_ptr<Driver> {
       return std::make_shared<HostDriver>(index, capacity);
     }},
    // One device per visible NeuronCore; libnrt is loaded (NrtLoadError) on first use.
    {"nrt", "SPIKY_NRT_CAPACITY_BYTES", [] { return NrtRuntime::instance()->visible_cores(); },
     [](int index, std::size_t capacity) -> std::shared_ptr<Driver> {
       return std::make_shared<NrtDriver>(index, capacity);
     }},
};

const DriverEntry& find_driver(const std::string& name) {
  for (const auto& entry : kDrivers) {
    if (name == entry.name) return entry;
  }
  std::string valid;
  for (const auto& entry : kDrivers) {
    if (!valid.empty()) valid += ", ";
    valid += std::string("'") + entry.name + "'";
  }
  throw InvalidArgument("unknown driver '" + name + "'; valid drivers: " + valid);
}

std::size_t env_capacity(const char* var) {
  const char* raw = std::getenv(var);
  if (raw == nullptr || *raw == '\0') return 0;
  const std::string text(raw);
  if (text.find_first_not_of("0123456789") != std::string::npos || text.size() > 19) {
    throw InvalidArgument(std::string(var) + "='" + text +
                          "' is not a byte count; expected a non-negative integer"
                          " (0 = unlimited)");
  }
  return static_cast<std::size_t>(std::stoull(text));
}

struct Registry {
  std::mutex mutex;
  std::map<std::pair<std::string, int>, std::shared_ptr<Device>> devices;
};

Registry& registry() {
  static Registry instance;
  return instance;
}

}  // namespace

std::vector<std::string> Device::driver_names() {
  std::vector<std::string> names;
  for (const auto& entry : kDrivers) names.emplace_back(entry.name);
  return names;
}

int Device::device_count(const std::string& driver) { return find_driver(driver).count(); }

std::shared_ptr<Device> Device::get(const std::string& driver, int index,
                                    std::optional<std::int64_t> capacity_bytes) {
  const DriverEntry& entry = find_driver(driver);
  const int count = entry.count();
  if (index < 0 || index >= count) {
    throw InvalidArgument("Device: index " + std::to_string(index) + " is out of range for driver '" +
                          driver + "'; expected 0 <= index < " + std::to_string(count));
  }
  if (capacity_bytes && *capacity_bytes < 0) {
    throw InvalidArgument("Device: capacity_bytes must be >= 0 (0 = unlimited), got " +
                          std::to_string(*capacity_bytes));
  }
  Registry& reg = registry();
  std::lock_guard<std::mutex> lock(reg.mutex);
  auto key = std::make_pair(driver, index);
  auto it = reg.devices.find(key);
  if (it != reg.devices.end()) {
    if (capacity_bytes) {
      it->second->driver().set_capacity_bytes(static_cast<std::size_t>(*capacity_bytes));
    }
    return it->second;
  }
  const std::size_t capacity = capacity_bytes ? static_cast<std::size_t>(*capacity_bytes)
                                              : env_capacity(entry.capacity_env);
  auto device = std::make_shared<Device>(entry.create(index, capacity));
  reg.devices.emplace(std::move(key), device);
  return device;
}

void Device::clear_registry() {
  std::map<std::pair<std::string, int>, std::shared_ptr<Device>> victims;
  {
    Registry& reg = registry();
    std::lock_guard<std::mutex> lock(reg.mutex);
    victims.swap(reg.devices);
  }
  for (auto& [key, device] : victims) {
    device->executor().shutdown();
    // Cached blocks go back to the driver now, while its runtime is open (nrt closes next),
    // even when Python objects keep the device alive past the registry.
    device->pool().clear_cache();
  }
}

Device::Device(std::shared_ptr<Driver> driver)
    : driver_(std::move(driver)),
      pool_(std::make_shared<MemoryPool>(driver_)),
      executor_(*driver_, *pool_, stats_, timeline_) {}

std::shared_ptr<DeviceTensor> Device::to_device(const ConstTensor& host) {
  const std::size_t nbytes = host.spec.nbytes();
  auto buffer = std::make_shared<Buffer>(shared_from_this(),
                                         pool_->allocate(std::max<std::size_t>(nbytes, 1)), nbytes);
  if (nbytes) buffer->write(host.data, nbytes, 0);
  auto tensor = std::make_shared<DeviceTensor>(shared_from_this(), host.spec);
  tensor->set_buffer(std::move(buffer));
  tensor->set_ready();
  return tensor;
}

std::shared_ptr<Buffer> Device::allocate(std::size_t nbytes) {
  return std::make_shared<Buffer>(shared_from_this(), pool_->allocate(nbytes), nbytes);
}

std::shared_ptr<Model> Device::load_model(ModelDescriptor descriptor) {
  std::string name = descriptor.name;
  std::vector<TensorSpec> inputs = descriptor.inputs;
  std::vector<TensorSpec> outputs = descriptor.outputs;
  const ModelId id = driver_->load_model(std::move(descriptor));
  if (auto io = driver_->loaded_io(id)) {  // nrt: the NEFF's I/O, found at load
    inputs = std::move(io->inputs);
    outputs = std::move(io->outputs);
  }
  return std::make_shared<Model>(shared_from_this(), id, std::move(name), std::move(inputs),
                                 std::move(outputs));
}

StatsSnapshot Device::stats_snapshot() const {
  StatsSnapshot s = stats_.snapshot();
  const TransferCounts t = driver_->transfers();
  s.total_h2d_bytes = t.h2d_bytes;
  s.total_d2h_bytes = t.d2h_bytes;
  s.total_h2d_transfers = t.h2d_transfers;
  s.total_d2h_transfers = t.d2h_transfers;
  return s;
}

void Device::reset_stats() {
  stats_.reset();
  driver_->reset_transfers();
  pool_->reset_counters();
}

}  // namespace spiky::runtime
