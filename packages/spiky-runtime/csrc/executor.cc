#include "executor.h"

#include <algorithm>
#include <string>
#include <utility>

#include "device.h"
#include "errors.h"
#include "model.h"
#include "strided.h"

namespace spiky::runtime {
namespace {

using Clock = Call::Clock;

double ms_between(Clock::time_point a, Clock::time_point b) {
  return std::chrono::duration<double, std::milli>(b - a).count();
}

// Zero-element tensors still get a (minimal) device buffer so every model argument has a
// valid handle; devices reject empty allocations.
std::size_t device_bytes(std::size_t nbytes) { return std::max<std::size_t>(nbytes, 1); }

// Adds the time from construction to destruction to a timing field.
class PhaseTimer {
 public:
  explicit PhaseTimer(double& sink) : sink_(sink), start_(Clock::now()) {}
  ~PhaseTimer() { sink_ += ms_between(start_, Clock::now()); }
  PhaseTimer(const PhaseTimer&) = delete;
  PhaseTimer& operator=(const PhaseTimer&) = delete;

 private:
  double& sink_;
  Clock::time_point start_;
};

}  // namespace

HostMemory allocate_host(std::size_t nbytes) {
  const std::size_t padded = (device_bytes(nbytes) + 63) / 64 * 64;
  HostMemory mem(std::aligned_alloc(64, padded));
  if (!mem) {
    throw OutOfMemory("host memory: cannot allocate " + std::to_string(nbytes) +
                      " bytes for call outputs; free host memory or use smaller batches");
  }
  return mem;
}

Call::Call(std::shared_ptr<const Model> model, std::optional<std::int64_t> bucket,
           std::vector<CallInput> inputs, std::shared_ptr<const FillPatterns> fill_patterns,
           std::vector<TensorSpec> output_specs, CallOptions options)
    : model_(std::move(model)),
      bucket_(bucket),
      inputs_(std::move(inputs)),
      fill_patterns_(std::move(fill_patterns)),
      output_specs_(std::move(output_specs)),
      options_(options) {
  if (!options_.to_host) {
    for (const auto& spec : output_specs_) {
      device_outputs_.push_back(std::make_shared<DeviceTensor>(model_->device(), spec));
    }
  }
}

Executor::~Executor() { shutdown(); }

// ---------------------------------------------------------------- stages

void Executor::upload(Call& call) {
  const Model& model = call.model();
  const std::string& name = model.name();
  const std::int64_t bucket = call.bucket().value_or(-1);
  call.in_blocks_.resize(call.inputs_.size());
  call.in_refs_.resize(call.inputs_.size());
  for (std::size_t i = 0; i < call.inputs_.size(); ++i) {
    CallInput& in = call.inputs_[i];
    const TensorSpec& padded = model.inputs()[i];
    const std::size_t itemsize = dtype_itemsize(padded.dtype());
    call.timings_.actual_elements += in.spec.numel();
    call.timings_.padded_elements += padded.numel();
    const bool same = in.spec.shape() == padded.shape();

    if (in.device) {
      // Device input: wait for its producer (rethrows its error), then use or pad it.
      in.device->wait();
      auto buf = in.device->buffer();
      const DeviceRef src = buf->block().ref();
      if (same) {
        call.in_refs_[i] = DeviceRef{src.handle, src.offset, device_bytes(padded.nbytes())};
        continue;  // `in.device` keeps the memory alive until execute is done
      }
      call.in_blocks_[i] = pool_.allocate(device_bytes(padded.nbytes()));
      const DeviceRef dst = call.in_blocks_[i]->ref();
      TimelineSpan span(timeline_, "pad", call.id(), name, bucket);
      PhaseTimer timer(call.timings_.pad_ms);
      const PadPlan plan =
          plan_pad(in.spec.shape(), padded.shape(), itemsize, (*call.fill_patterns_)[i]);
      if (plan.prefix) {
        driver_.copy(src.handle, src.offset, dst.handle, dst.offset, in.spec.nbytes());
      } else {
        driver_.copy_strided(src.handle, src.offset, dst.handle, dst.offset, plan.copy);
      }
      for (const auto& fill : plan.fills) driver_.fill_strided(dst.handle, dst.offset, fill);
      call.in_refs_[i] = dst;
      continue;
    }

    if (same && in.spec.nbytes()) {
      if (const auto lent = driver_.borrow_host(in.host, in.spec.nbytes())) {
        // Host memory is device memory here: the model reads the caller's buffer in place.
        // `keepalive` (pipelined calls) holds it until the call has executed.
        call.borrowed_.emplace_back(driver_, *lent);
        call.in_refs_[i] = DeviceRef{*lent, 0, in.spec.nbytes()};
        continue;
      }
    }
    call.in_blocks_[i] = pool_.allocate(device_bytes(padded.nbytes()));
    const DeviceRef dst = call.in_blocks_[i]->ref();
    call.in_refs_[i] = dst;
    if (same) {
      TimelineSpan span(timeline_, "H2D", call.id(), name, bucket);
      PhaseTimer timer(call.timings_.h2d_ms);
      write_input(call, span, dst, in);
    } else {
      const PadPlan plan =
          plan_pad(in.spec.shape(), padded.shape(), itemsize, (*call.fill_patterns_)[i]);
      if (plan.prefix) {
        // The actual bytes are the head of the padded layout: write them in place.
        {
          TimelineSpan span(timeline_, "H2D", call.id(), name, bucket);
          PhaseTimer timer(call.timings_.h2d_ms);
          write_input(call, span, dst, in);
        }
        TimelineSpan span(timeline_, "pad", call.id(), name, bucket);
        PhaseTimer timer(call.timings_.pad_ms);
        for (const auto& fill : plan.fills) driver_.fill_strided(dst.handle, dst.offset, fill);
      } else {
        // Inner dims padded: H2D into a compact staging buffer, strided copy on device.
        std::unique_ptr<Block> staging = pool_.allocate(device_bytes(in.spec.nbytes()));
        const DeviceRef st = staging->ref();
        {
          TimelineSpan span(timeline_, "H2D", call.id(), name, bucket);
          PhaseTimer timer(call.timings_.h2d_ms);
          write_input(call, span, st, in);
        }
        TimelineSpan span(timeline_, "pad", call.id(), name, bucket);
        PhaseTimer timer(call.timings_.pad_ms);
        driver_.copy_strided(st.handle, st.offset, dst.handle, dst.offset, plan.copy);
        for (const auto& fill : plan.fills) driver_.fill_strided(dst.handle, dst.offset, fill);
      }
    }
    in.host = nullptr;
    in.keepalive.reset();  // the host array may go now
  }
}

// H2D of one host input (its actual bytes) into `dst`; counted for the call and its span.
void Executor::write_input(Call& call, TimelineSpan& span, const DeviceRef& dst,
                           const CallInput& in) {
  const std::size_t nbytes = in.spec.nbytes();
  if (nbytes) driver_.write(dst.handle, dst.offset, in.host, nbytes);
  call.timings_.h2d_bytes += static_cast<std::int64_t>(nbytes);
  span.set_bytes(static_cast<std::int64_t>(nbytes));
}

// Input buffers go back to the pool; device inputs and borrowed host buffers are released.
void Executor::release_inputs(Call& call) {
  call.in_refs_.clear();
  call.in_blocks_.clear();
  call.borrowed_.clear();
  for (auto& in : call.inputs_) {
    in.device.reset();
    in.keepalive.reset();
  }
}

void Executor::execute(Call& call) {
  const Model& model = call.model();
  std::vector<DeviceRef> out_refs;
  call.out_blocks_.clear();
  call.out_host_.clear();
  call.out_host_.resize(model.outputs().size());
  for (std::size_t j = 0; j < model.outputs().size(); ++j) {
    const TensorSpec& spec = model.outputs()[j];
    if (call.options_.to_host && spec.nbytes() && call.output_specs_[j].shape() == spec.shape()) {
      // Host memory is device memory here: the model writes the array the call returns.
      HostMemory mem = allocate_host(spec.nbytes());
      if (const auto lent = driver_.borrow_host(mem.get(), spec.nbytes())) {
        call.borrowed_out_.emplace_back(driver_, *lent);
        call.out_host_[j] = std::move(mem);
        call.out_blocks_.push_back(nullptr);
        out_refs.push_back(DeviceRef{*lent, 0, spec.nbytes()});
        continue;
      }
    }
    call.out_blocks_.push_back(pool_.allocate(device_bytes(spec.nbytes())));
    out_refs.push_back(call.out_blocks_.back()->ref());
  }
  {
    TimelineSpan span(timeline_, "execute", call.id(), model.name(), call.bucket().value_or(-1));
    PhaseTimer timer(call.timings_.exec_ms);
    driver_.execute(model.id(), call.in_refs_, out_refs);
  }
  call.borrowed_out_.clear();
  release_inputs(call);  // consumed
}

void Executor::unpad(Call& call) {
  const Model& model = call.model();
  for (std::size_t j = 0; j < call.out_blocks_.size(); ++j) {
    const TensorSpec& padded = model.outputs()[j];
    const TensorSpec& actual = call.output_specs_[j];
    if (actual.shape() == padded.shape() || is_prefix_layout(actual.shape(), padded.shape())) {
      continue;  // the output is (the head of) the padded buffer as is
    }
    TimelineSpan span(timeline_, "unpad", call.id(), model.name(), call.bucket().value_or(-1));
    PhaseTimer timer(call.timings_.pad_ms);
    std::unique_ptr<Block> compact = pool_.allocate(device_bytes(actual.nbytes()));
    const DeviceRef src = call.out_blocks_[j]->ref();
    const DeviceRef dst = compact->ref();
    driver_.copy_strided(src.handle, src.offset, dst.handle, dst.offset,
                         plan_unpad(actual.shape(), padded.shape(), dtype_itemsize(actual.dtype())));
    call.out_blocks_[j] = std::move(compact);
  }
  if (!call.options_.to_host) {
    for (std::size_t j = 0; j < call.out_blocks_.size(); ++j) {
      const std::size_t nbytes = call.output_specs_[j].nbytes();
      call.device_outputs_[j]->set_buffer(std::make_shared<Buffer>(
          model.device(), std::move(call.out_blocks_[j]), nbytes));
    }
    call.out_blocks_.clear();
  }
}

void Executor::download(Call& call) {
  const Model& model = call.model();
  TimelineSpan span(timeline_, "D2H", call.id(), model.name(), call.bucket().value_or(-1));
  PhaseTimer timer(call.timings_.d2h_ms);
  std::int64_t moved = 0;  // outputs the model wrote in place move nothing
  for (std::size_t j = 0; j < call.out_blocks_.size(); ++j) {
    const TensorSpec& spec = call.output_specs_[j];
    if (!call.out_blocks_[j]) {  // written in place by the model (see execute)
      call.host_outputs_.push_back(HostArray{spec, std::move(call.out_host_[j])});
      continue;
    }
    HostMemory mem = allocate_host(spec.nbytes());
    const DeviceRef src = call.out_blocks_[j]->ref();
    if (spec.nbytes()) driver_.read(src.handle, src.offset, mem.get(), spec.nbytes());
    moved += static_cast<std::int64_t>(spec.nbytes());
    call.host_outputs_.push_back(HostArray{spec, std::move(mem)});
  }
  call.timings_.d2h_bytes += moved;
  span.set_bytes(moved);
  call.out_blocks_.clear();
  call.out_host_.clear();
}

void Executor::finish(Call& call, std::exception_ptr error) {
  // Everything the call still owns goes back before anyone is woken.
  release_inputs(call);
  call.borrowed_out_.clear();
  call.out_blocks_.clear();
  call.out_host_.clear();
  if (!error) {
    call.timings_.total_ms = ms_between(*call.first_start_, Clock::now());
    stats_.record_execution(call.timings_, call.bucket());
  } else {
    call.host_outputs_.clear();
  }
  for (auto& out : call.device_outputs_) out->set_ready(error);
  call.done_.set(error);
}

// ---------------------------------------------------------------- synchronous

// A call the driver can run in place: host outputs, and host inputs that are exactly the
// model's (no padding), so the outputs are the model's too.
bool Executor::runs_in_place(const Call& call) const {
  if (!call.options_.to_host || !driver_.executes_in_place()) return false;
  const Model& model = call.model();
  for (std::size_t i = 0; i < call.inputs_.size(); ++i) {
    if (call.inputs_[i].device || call.inputs_[i].spec != model.inputs()[i]) return false;
  }
  for (std::size_t j = 0; j < call.output_specs_.size(); ++j) {
    if (call.output_specs_[j] != model.outputs()[j]) return false;
  }
  return true;
}

void Executor::run_sync(Call& call) {
  call.set_id(next_call_++);
  if (runs_in_place(call)) {
    std::vector<ConstTensor> inputs;
    inputs.reserve(call.inputs_.size());
    for (const CallInput& in : call.inputs_) inputs.push_back(ConstTensor{in.spec, in.host});
    try {
      call.host_outputs_ = execute_in_place(call.model(), inputs, call.bucket(), call.id());
    }
    SPIKY_RETHROW_FORCED_UNWIND
    catch (...) {
      release_inputs(call);
      call.done_.set(std::current_exception());
      throw;
    }
    release_inputs(call);
    call.done_.set(nullptr);
    return;
  }
  call.first_start_ = Clock::now();
  try {
    TimelineSpan span(timeline_, "call", call.id(), call.model().name(), call.bucket().value_or(-1));
    upload(call);
    execute(call);
    unpad(call);
    if (call.options_.to_host) download(call);
  }
  SPIKY_RETHROW_FORCED_UNWIND
  catch (...) {
    finish(call, std::current_exception());
    throw;
  }
  finish(call, nullptr);
}

std::optional<std::vector<HostArray>> Executor::run_in_place(
    const Model& model, const std::vector<ConstTensor>& inputs, std::optional<std::int64_t> bucket) {
  if (!driver_.executes_in_place()) return std::nullopt;
  return execute_in_place(model, inputs, bucket, next_call_++);
}

std::vector<HostArray> Executor::execute_in_place(const Model& model,
                                                  const std::vector<ConstTensor>& inputs,
                                                  std::optional<std::int64_t> bucket,
                                                  std::uint64_t id) {
  const Clock::time_point start = Clock::now();
  const std::int64_t label = bucket.value_or(-1);
  ExecutionTimings timings;
  std::vector<HostArray> results;
  std::vector<MutableTensor> outputs;
  results.reserve(model.outputs().size());
  outputs.reserve(model.outputs().size());
  {
    TimelineSpan call_span(timeline_, "call", id, model.name(), label);
    for (const TensorSpec& spec : model.outputs()) {
      results.push_back(HostArray{spec, allocate_host(spec.nbytes())});
      outputs.push_back(MutableTensor{spec, results.back().data.get()});
    }
    TimelineSpan span(timeline_, "execute", id, model.name(), label);
    PhaseTimer timer(timings.exec_ms);
    driver_.execute_in_place(model.id(), inputs, outputs);
  }
  for (const ConstTensor& t : inputs) timings.actual_elements += t.spec.numel();
  timings.padded_elements = timings.actual_elements;
  timings.total_ms = ms_between(start, Clock::now());
  stats_.record_execution(timings, bucket);
  return results;
}

// ---------------------------------------------------------------- pipelined

void Executor::submit(const std::shared_ptr<Call>& call) {
  call->set_id(next_call_++);
  std::unique_lock<std::mutex> lock(mutex_);
  cv_.wait(lock, [this] { return inflight_ < kMaxInflight; });
  ++inflight_;
  if (!copy_) {
    copy_ = std::make_unique<Worker>("copy", &timeline_);
    exec_ = std::make_unique<Worker>("execute", &timeline_);
    down_ = std::make_unique<Worker>("download", &timeline_);
  }
  copy_->post([this, call] { upload_task(call); });
}

void Executor::release_slot() {
  {
    std::lock_guard<std::mutex> lock(mutex_);
    --slots_used_;
  }
  cv_.notify_all();
}

void Executor::upload_task(const std::shared_ptr<Call>& call) {
  {
    // Double buffering: wait until an earlier call's inputs were consumed by execute.
    std::unique_lock<std::mutex> lock(mutex_);
    cv_.wait(lock, [this] { return slots_used_ < kStagingDepth; });
    ++slots_used_;
  }
  call->first_start_ = Clock::now();
  try {
    upload(*call);
  }
  SPIKY_RETHROW_FORCED_UNWIND
  catch (...) {
    release_slot();
    finish(*call, std::current_exception());
    std::lock_guard<std::mutex> lock(mutex_);
    --inflight_;
    cv_.notify_all();
    return;
  }
  std::lock_guard<std::mutex> lock(mutex_);
  exec_->post([this, call] { execute_task(call); });
}

void Executor::execute_task(const std::shared_ptr<Call>& call) {
  std::exception_ptr error;
  try {
    execute(*call);
  }
  SPIKY_RETHROW_FORCED_UNWIND
  catch (...) {
    error = std::current_exception();
  }
  release_slot();
  if (!error) {
    try {
      unpad(*call);
      if (call->options_.to_host) {
        std::lock_guard<std::mutex> lock(mutex_);
        down_->post([this, call] { download_task(call); });
        return;
      }
    }
    SPIKY_RETHROW_FORCED_UNWIND
    catch (...) {
      error = std::current_exception();
    }
  }
  finish(*call, error);
  std::lock_guard<std::mutex> lock(mutex_);
  --inflight_;
  cv_.notify_all();
}

void Executor::download_task(const std::shared_ptr<Call>& call) {
  std::exception_ptr error;
  try {
    download(*call);
  }
  SPIKY_RETHROW_FORCED_UNWIND
  catch (...) {
    error = std::current_exception();
  }
  finish(*call, error);
  std::lock_guard<std::mutex> lock(mutex_);
  --inflight_;
  cv_.notify_all();
}

void Executor::synchronize() {
  std::unique_lock<std::mutex> lock(mutex_);
  cv_.wait(lock, [this] { return inflight_ == 0; });
}

void Executor::shutdown() {
  std::unique_ptr<Worker> copy;
  std::unique_ptr<Worker> exec;
  std::unique_ptr<Worker> down;
  {
    std::unique_lock<std::mutex> lock(mutex_);
    cv_.wait(lock, [this] { return inflight_ == 0; });
    copy = std::move(copy_);
    exec = std::move(exec_);
    down = std::move(down_);
  }
  // Joined outside the lock: a worker finishing its last task may still take it.
}

}  // namespace spiky::runtime
