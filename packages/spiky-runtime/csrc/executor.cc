#include "executor.h"

#include <algorithm>
#include <chrono>
#include <memory>
#include <string>

#include "errors.h"
#include "model.h"

namespace spiky::runtime {
namespace {

using Clock = std::chrono::steady_clock;

double ms_between(Clock::time_point a, Clock::time_point b) {
  return std::chrono::duration<double, std::milli>(b - a).count();
}

// Zero-element tensors still get a (minimal) device buffer so every model argument has
// a valid handle; devices reject empty allocations.
std::size_t device_bytes(const TensorSpec& spec) { return std::max<std::size_t>(spec.nbytes(), 1); }

}  // namespace

void Executor::run(const Model& model, const std::vector<ConstTensor>& inputs,
                   const std::vector<MutableTensor>& outputs, std::optional<std::int64_t> bucket) {
  const auto start = Clock::now();
  model.check_inputs(inputs);
  if (outputs.size() != model.outputs().size()) {
    throw InvalidArgument(model.context() + "expected " + std::to_string(model.outputs().size()) +
                          " output arrays, got " + std::to_string(outputs.size()));
  }
  for (std::size_t i = 0; i < outputs.size(); ++i) {
    if (outputs[i].spec != model.outputs()[i]) {
      throw InvalidArgument(model.context() + "output " + std::to_string(i) + ": expected " +
                            model.outputs()[i].describe() + ", got " +
                            outputs[i].spec.describe());
    }
  }

  // Scratch buffers owned here alone; they return to the pool when this scope ends,
  // including when the driver or the model throws.
  std::vector<std::unique_ptr<Block>> in_blocks;
  std::vector<std::unique_ptr<Block>> out_blocks;
  std::vector<MemHandle> in_handles;
  std::vector<MemHandle> out_handles;
  for (const auto& t : inputs) {
    in_blocks.push_back(pool_.allocate(device_bytes(t.spec)));
    in_handles.push_back(in_blocks.back()->handle());
  }
  for (const auto& t : outputs) {
    out_blocks.push_back(pool_.allocate(device_bytes(t.spec)));
    out_handles.push_back(out_blocks.back()->handle());
  }

  const auto h2d_start = Clock::now();
  for (std::size_t i = 0; i < inputs.size(); ++i) {
    driver_.write(in_handles[i], 0, inputs[i].data, inputs[i].spec.nbytes());
  }
  const auto exec_start = Clock::now();
  driver_.execute(model.id(), in_handles, out_handles);
  const auto d2h_start = Clock::now();
  for (std::size_t i = 0; i < outputs.size(); ++i) {
    driver_.read(out_handles[i], 0, outputs[i].data, outputs[i].spec.nbytes());
  }
  const auto d2h_end = Clock::now();
  in_blocks.clear();
  out_blocks.clear();
  const auto end = Clock::now();

  ExecutionTimings t;
  t.h2d_ms = ms_between(h2d_start, exec_start);
  t.exec_ms = ms_between(exec_start, d2h_start);
  t.d2h_ms = ms_between(d2h_start, d2h_end);
  t.total_ms = ms_between(start, end);
  stats_.record_execution(t, bucket);
}

}  // namespace spiky::runtime
