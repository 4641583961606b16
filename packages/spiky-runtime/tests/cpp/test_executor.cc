// Bundles through the executor with C++ host executables: bucket choice, padding on device,
// the pipelined stream (100 distinct inputs, device-resident chains, errors), stats, trace.
#include <cstring>
#include <stdexcept>
#include <string>
#include <vector>

#include "bundle.h"
#include "check.h"
#include "device.h"
#include "errors.h"
#include "host_driver.h"
#include "model.h"

using namespace spiky::runtime;

namespace {

// y = 2 * x + 1 elementwise over a (b, 3) float32 input; s = row sums (b,).
std::shared_ptr<Model> affine_model(const std::shared_ptr<Device>& dev, std::int64_t b) {
  ModelDescriptor desc;
  desc.name = "affine" + std::to_string(b);
  desc.inputs = {TensorSpec({b, 3}, DType::kFloat32)};
  desc.outputs = {TensorSpec({b, 3}, DType::kFloat32), TensorSpec({b}, DType::kFloat32)};
  desc.host_executable = std::make_shared<const HostExecutable>(
      [b](const std::vector<ConstTensor>& in, const std::vector<MutableTensor>& out) {
        const float* x = static_cast<const float*>(in[0].data);
        float* y = static_cast<float*>(out[0].data);
        float* s = static_cast<float*>(out[1].data);
        for (std::int64_t r = 0; r < b; ++r) {
          s[r] = 0;
          for (int c = 0; c < 3; ++c) {
            y[r * 3 + c] = 2 * x[r * 3 + c] + 1;
            s[r] += x[r * 3 + c];
          }
        }
        if (b == 64) throw std::runtime_error("bucket 64 always fails");
      });
  return dev->load_model(std::move(desc));
}

std::shared_ptr<Device> make_device() {
  return std::make_shared<Device>(std::make_shared<HostDriver>(0, 0));
}

Bundle make_bundle(const std::shared_ptr<Device>& dev, bool pipelined) {
  std::map<std::int64_t, std::shared_ptr<Model>> buckets;
  for (std::int64_t b : {4, 16, 64}) buckets[b] = affine_model(dev, b);
  return Bundle("affine", std::move(buckets), {{DynamicDim{0, "s0"}}},
                {{DynamicDim{0, "s0"}}, {DynamicDim{0, "s0"}}}, {0.0}, pipelined);
}

std::vector<float> input_for(int i, std::int64_t rows) {
  std::vector<float> x(static_cast<std::size_t>(rows * 3));
  for (std::size_t k = 0; k < x.size(); ++k) x[k] = static_cast<float>(i * 1000 + static_cast<int>(k));
  return x;
}

void check_outputs(Call& call, const std::vector<float>& x, std::int64_t rows) {
  auto& outs = call.host_outputs();
  CHECK_EQ(outs.size(), 2u);
  CHECK(outs[0].spec.shape() == std::vector<std::int64_t>({rows, 3}));
  CHECK(outs[1].spec.shape() == std::vector<std::int64_t>({rows}));
  const float* y = static_cast<const float*>(outs[0].data.get());
  const float* s = static_cast<const float*>(outs[1].data.get());
  for (std::int64_t r = 0; r < rows; ++r) {
    float sum = 0;
    for (int c = 0; c < 3; ++c) {
      CHECK_EQ(y[r * 3 + c], 2 * x[static_cast<std::size_t>(r * 3 + c)] + 1);
      sum += x[static_cast<std::size_t>(r * 3 + c)];
    }
    CHECK_EQ(s[r], sum);
  }
}

}  // namespace

TEST(bundle_picks_smallest_fitting_bucket) {
  auto dev = make_device();
  Bundle bundle = make_bundle(dev, false);
  CHECK_EQ(bundle.select_bucket({TensorSpec({1, 3}, DType::kFloat32)}), 4);
  CHECK_EQ(bundle.select_bucket({TensorSpec({4, 3}, DType::kFloat32)}), 4);
  CHECK_EQ(bundle.select_bucket({TensorSpec({5, 3}, DType::kFloat32)}), 16);
  CHECK_THROWS(bundle.select_bucket({TensorSpec({65, 3}, DType::kFloat32)}), InvalidArgument);
  CHECK_THROWS(bundle.select_bucket({TensorSpec({5, 4}, DType::kFloat32)}), InvalidArgument);
  CHECK_THROWS(bundle.select_bucket({TensorSpec({5, 3}, DType::kInt32)}), InvalidArgument);
}

TEST(pipelined_100_distinct_inputs_and_sync_agree) {
  for (bool pipelined : {false, true}) {
    auto dev = make_device();
    Bundle bundle = make_bundle(dev, pipelined);
    std::vector<std::vector<float>> inputs;
    std::vector<std::shared_ptr<Call>> calls;
    for (int i = 0; i < 100; ++i) {
      const std::int64_t rows = 1 + i % 16;
      inputs.push_back(input_for(i, rows));
      auto call = bundle.make_call(
          {CallInput{TensorSpec({rows, 3}, DType::kFloat32), inputs.back().data(), nullptr, nullptr}},
          CallOptions{});
      if (pipelined) {
        dev->executor().submit(call);
      } else {
        dev->executor().run_sync(*call);
      }
      calls.push_back(call);
    }
    dev->synchronize();
    for (int i = 0; i < 100; ++i) {
      calls[static_cast<std::size_t>(i)]->done().wait();
      check_outputs(*calls[static_cast<std::size_t>(i)], inputs[static_cast<std::size_t>(i)], 1 + i % 16);
    }
    const StatsSnapshot s = dev->stats().snapshot();
    CHECK_EQ(s.total_executions, 100);
    CHECK_EQ(s.bucket_hits.at(4) + s.bucket_hits.at(16), 100);
    CHECK(s.pad_ratio > 1.0);
    CHECK(s.total_exec_time_ms > 0.0);
    CHECK(s.min_execution_time_ms <= s.max_execution_time_ms);
    CHECK_EQ(dev->pool().stats().used_bytes, 0);
  }
}

TEST(pipelined_device_chain_and_errors) {
  auto dev = make_device();
  Bundle bundle = make_bundle(dev, true);
  const auto x = input_for(7, 3);
  auto first = bundle.make_call(
      {CallInput{TensorSpec({3, 3}, DType::kFloat32), x.data(), nullptr, nullptr}},
      CallOptions{false, true});
  dev->executor().submit(first);
  // The second call consumes the first one's device output before it is even ready.
  auto second = bundle.make_call({CallInput{first->device_outputs()[0]->spec(), nullptr, nullptr,
                                            first->device_outputs()[0]}},
                                 CallOptions{});
  dev->executor().submit(second);
  second->done().wait();
  const float* y = static_cast<const float*>(second->host_outputs()[0].data.get());
  for (std::size_t k = 0; k < 9; ++k) CHECK_EQ(y[k], 2 * (2 * x[k] + 1) + 1);

  // A failing call fails its dependants and leaves the stream usable.
  const auto big = input_for(1, 40);  // bucket 64 throws
  auto bad = bundle.make_call(
      {CallInput{TensorSpec({40, 3}, DType::kFloat32), big.data(), nullptr, nullptr}},
      CallOptions{false, true});
  dev->executor().submit(bad);
  auto dependant = bundle.make_call({CallInput{bad->device_outputs()[0]->spec(), nullptr, nullptr,
                                               bad->device_outputs()[0]}},
                                    CallOptions{});
  dev->executor().submit(dependant);
  CHECK_THROWS(bad->done().wait(), std::runtime_error);
  CHECK_THROWS(dependant->done().wait(), std::runtime_error);
  CHECK_THROWS(bad->device_outputs()[1]->wait(), std::runtime_error);
  auto again = bundle.make_call(
      {CallInput{TensorSpec({3, 3}, DType::kFloat32), x.data(), nullptr, nullptr}}, CallOptions{});
  dev->executor().submit(again);
  again->done().wait();
  check_outputs(*again, x, 3);
  dev->synchronize();
  CHECK_EQ(dev->stats().snapshot().total_executions, 3);
}

TEST(timeline_records_pipeline_tracks) {
  auto dev = make_device();
  Bundle bundle = make_bundle(dev, true);
  dev->timeline().start();
  const auto x = input_for(1, 10);
  for (int i = 0; i < 4; ++i) {
    dev->executor().submit(bundle.make_call(
        {CallInput{TensorSpec({10, 3}, DType::kFloat32), x.data(), nullptr, nullptr}},
        CallOptions{}));
  }
  dev->synchronize();
  const std::string json = dev->timeline().stop();
  for (const char* needle : {"\"copy\"", "\"execute\"", "\"download\"", "\"H2D\"", "\"pad\"",
                             "\"D2H\"", "\"bytes\": 120",
                             "\"name\": \"execute\", \"cat\""}) {
    CHECK(json.find(needle) != std::string::npos);
  }
  CHECK(!dev->timeline().enabled());
}
