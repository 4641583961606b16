#include "model.h"

#include <utility>

#include "device.h"
#include "errors.h"

namespace spiky::runtime {

Model::Model(std::shared_ptr<Device> device, ModelId id, std::string name,
             std::vector<TensorSpec> inputs, std::vector<TensorSpec> outputs)
    : device_(std::move(device)),
      id_(id),
      name_(std::move(name)),
      inputs_(std::move(inputs)),
      outputs_(std::move(outputs)) {}

Model::~Model() {
  try {
    device_->driver().unload_model(id_);
  } catch (const Error&) {
    // Only an unknown id can fail, and this object is the id's sole owner: nothing to do.
  }
}

void Model::check_input_count(std::size_t count) const {
  if (count != inputs_.size()) {
    throw InvalidArgument(context() + "expected " + std::to_string(inputs_.size()) +
                          " inputs, got " + std::to_string(count));
  }
}

void Model::check_inputs(const std::vector<ConstTensor>& inputs) const {
  check_input_count(inputs.size());
  for (std::size_t i = 0; i < inputs.size(); ++i) {
    if (inputs[i].spec != inputs_[i]) {
      throw InvalidArgument(context() + "input " + std::to_string(i) + ": expected " +
                            inputs_[i].describe() + ", got " + inputs[i].spec.describe());
    }
  }
}

void Model::run(const std::vector<ConstTensor>& inputs, const std::vector<MutableTensor>& outputs,
                std::optional<std::int64_t> bucket) const {
  device_->executor().run(*this, inputs, outputs, bucket);
}

}  // namespace spiky::runtime
