// Executor: the run path of a model on one device.
//   validate -> allocate input/output device buffers from the pool -> H2D -> driver execute
//   -> D2H -> buffers back to the pool (RAII: also on failure) -> record timings.
// Holds no Python; callers release the GIL around run().
#pragma once

#include <cstdint>
#include <optional>
#include <vector>

#include "driver.h"
#include "pool.h"
#include "stats.h"
#include "tensor_spec.h"

namespace spiky::runtime {

class Model;

class Executor {
 public:
  Executor(Driver& driver, MemoryPool& pool, RuntimeStats& stats)
      : driver_(driver), pool_(pool), stats_(stats) {}

  // inputs must match model.inputs() (checked: InvalidArgument naming the index);
  // outputs must be host memory matching model.outputs(), filled on return.
  void run(const Model& model, const std::vector<ConstTensor>& inputs,
           const std::vector<MutableTensor>& outputs, std::optional<std::int64_t> bucket);

 private:
  Driver& driver_;
  MemoryPool& pool_;
  RuntimeStats& stats_;
};

}  // namespace spiky::runtime
