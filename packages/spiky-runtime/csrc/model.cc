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

std::vector<HostArray> Model::run(const std::vector<ConstTensor>& inputs,
                                  std::optional<std::int64_t> bucket) const {
  check_inputs(inputs);
  if (auto in_place = device_->executor().run_in_place(*this, inputs, bucket)) return std::move(*in_place);
  std::vector<CallInput> call_inputs;
  auto fills = std::make_shared<const FillPatterns>(inputs.size());  // nothing is padded
  for (const auto& t : inputs) call_inputs.push_back(CallInput{t.spec, t.data, nullptr, nullptr});
  Call call(shared_from_this(), bucket, std::move(call_inputs), std::move(fills), outputs_,
            CallOptions{});
  device_->executor().run_sync(call);
  return std::move(call.host_outputs());
}

}  // namespace spiky::runtime
