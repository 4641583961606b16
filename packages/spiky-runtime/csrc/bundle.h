// Bundle: the compiled buckets of one graph (bucket size -> loaded model) plus the dynamic
// dims of each input and output.
//
// Dynamic dims carry a symbol name ("s0"); every symbol of a bucket's model is compiled at the
// bucket size. A call reads each symbol's value from its inputs' shapes (equal wherever the
// symbol appears), takes the smallest bucket >= the largest value, writes the inputs into
// bucket-sized device buffers padded with zeros or the input's fill value, and unpads every
// output dim declared dynamic to its symbol's value (or leaves outputs padded on request).
// Which output dims to unpad is declared here, never guessed from sizes.
//
// Several independent symbols (batch and sequence): `bucket_sizes` gives each bucket id its own
// size per symbol ({id: {"s0": 4, "s1": 128}}); a call then takes the fitting bucket with the
// fewest padded elements (product of its symbol sizes). Without it every symbol of bucket b has
// size b, as above.
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "call.h"
#include "model.h"

namespace spiky::runtime {

class Device;

struct DynamicDim {
  std::size_t dim;
  std::string symbol;
};

class Bundle {
 public:
  // Throws InvalidArgument naming the bucket/input/dim when the models do not form one
  // family: same device, counts, dtypes and ranks; dynamic dims == the bucket size; static
  // dims equal across buckets; every output symbol used by some input.
  Bundle(std::string name, std::map<std::int64_t, std::shared_ptr<Model>> buckets,
         std::vector<std::vector<DynamicDim>> input_dims,
         std::vector<std::vector<DynamicDim>> output_dims, std::vector<double> fill_values,
         bool pipelined,
         std::map<std::int64_t, std::map<std::string, std::int64_t>> bucket_sizes = {});

  const std::string& name() const { return name_; }
  bool pipelined() const { return pipelined_; }
  const std::map<std::int64_t, std::shared_ptr<Model>>& buckets() const { return buckets_; }
  const std::vector<std::vector<DynamicDim>>& input_dims() const { return input_dims_; }
  const std::vector<std::vector<DynamicDim>>& output_dims() const { return output_dims_; }
  const std::vector<double>& fill_values() const { return fill_values_; }
  // The size of `symbol` in `bucket`: its entry in bucket_sizes, else the bucket id itself.
  std::int64_t symbol_size(std::int64_t bucket, const std::string& symbol) const;
  const std::map<std::int64_t, std::map<std::string, std::int64_t>>& bucket_sizes() const {
    return bucket_sizes_;
  }
  const std::shared_ptr<Device>& device() const;
  std::string context() const { return "bundle '" + name_ + "': "; }

  // The bucket a call with these input specs runs in (checks them first).
  std::int64_t select_bucket(const std::vector<TensorSpec>& inputs) const;
  // A ready-to-run call: inputs checked, bucket chosen, output shapes derived.
  std::shared_ptr<Call> make_call(std::vector<CallInput> inputs, CallOptions options) const;

 private:
  // Each symbol's size in `count` inputs whose specs `spec_at(i)` gives (checked against the
  // buckets' specs; a call's specs are read in place, not copied).
  template <typename SpecAt>
  std::map<std::string, std::int64_t> symbol_values(std::size_t count, const SpecAt& spec_at) const;
  // The bucket for these symbol values (select_bucket without the checks of the specs).
  std::int64_t bucket_for(const std::map<std::string, std::int64_t>& values) const;

  std::string name_;
  std::map<std::int64_t, std::shared_ptr<Model>> buckets_;
  std::vector<std::vector<DynamicDim>> input_dims_;
  std::vector<std::vector<DynamicDim>> output_dims_;
  std::vector<double> fill_values_;
  std::shared_ptr<const FillPatterns> fill_patterns_;
  bool pipelined_;
  std::map<std::int64_t, std::map<std::string, std::int64_t>> bucket_sizes_;
};

// The bytes of `value` as one element of `dtype`; InvalidArgument if not representable.
std::vector<std::byte> fill_pattern(double value, DType dtype, const std::string& context);

}  // namespace spiky::runtime
