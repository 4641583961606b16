// Model: a model loaded into one device's driver. Unloads itself when the last owner
// drops it. run() goes through the device's Executor.
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "call.h"
#include "driver.h"
#include "tensor_spec.h"

namespace spiky::runtime {

class Device;

class Model : public std::enable_shared_from_this<Model> {
 public:
  Model(std::shared_ptr<Device> device, ModelId id, std::string name,
        std::vector<TensorSpec> inputs, std::vector<TensorSpec> outputs);
  ~Model();
  Model(const Model&) = delete;
  Model& operator=(const Model&) = delete;

  const std::string& name() const { return name_; }
  const std::vector<TensorSpec>& inputs() const { return inputs_; }
  const std::vector<TensorSpec>& outputs() const { return outputs_; }
  ModelId id() const { return id_; }
  const std::shared_ptr<Device>& device() const { return device_; }

  // "model 'name': " -- the prefix of every error about this model.
  std::string context() const { return "model '" + name_ + "': "; }
  // Throws InvalidArgument naming the model and the index when count/shape/dtype differ.
  void check_input_count(std::size_t count) const;
  void check_inputs(const std::vector<ConstTensor>& inputs) const;

  // Host arrays in (checked against inputs()), host arrays out, synchronously on the calling
  // thread; `bucket` only labels the run in the stats. See Executor::run_sync.
  std::vector<HostArray> run(const std::vector<ConstTensor>& inputs,
                             std::optional<std::int64_t> bucket) const;

 private:
  std::shared_ptr<Device> device_;
  ModelId id_;
  std::string name_;
  std::vector<TensorSpec> inputs_;
  std::vector<TensorSpec> outputs_;
};

}  // namespace spiky::runtime
