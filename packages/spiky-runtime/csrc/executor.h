// Executor: runs calls on one device, synchronously or through the device's stream.
//
// Stages of a call (call.h):
//   upload   H2D of host inputs into bucket-sized device buffers, then pad on device
//            (strided copy + fills, strided.h) -- or take a device tensor as is
//   execute  driver execute on the padded buffers; input buffers go back to the pool
//   unpad    strided copy of the actual region of each output (skipped when the actual
//            bytes are a prefix of the padded ones or unpadding is off)
//   download D2H of the outputs into host memory (only when the call wants host outputs)
//
// Synchronous mode (run_sync) runs the four stages on the calling thread. Pipelined mode
// (submit) is one stream per device, stream-ordered, on three workers: "copy" runs uploads
// (H2D + pad), "execute" runs execute + unpad, "download" runs downloads (D2H), each in
// submission order. At most `staging_depth` (2: double buffering) calls hold uploaded inputs
// at once, so the upload of call N+1 overlaps the execution of call N, and the download of
// call N-1 overlaps both (the host link is full duplex: PCIe carries H2D and D2H at once). A
// call whose outputs stay on device never reaches the download worker. submit() blocks while `max_inflight` calls are
// unfinished (back-pressure). Both modes do the same work with the same code and record the
// same stats. Holds no Python; callers release the GIL around run_sync/submit/synchronize.
#pragma once

#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <memory>
#include <mutex>
#include <optional>
#include <vector>

#include "call.h"
#include "driver.h"
#include "pool.h"
#include "stats.h"
#include "timeline.h"
#include "worker.h"

namespace spiky::runtime {

class Model;

class Executor {
 public:
  static constexpr int kStagingDepth = 2;
  static constexpr int kMaxInflight = 4;

  Executor(Driver& driver, MemoryPool& pool, RuntimeStats& stats, Timeline& timeline)
      : driver_(driver), pool_(pool), stats_(stats), timeline_(timeline) {}
  ~Executor();
  Executor(const Executor&) = delete;
  Executor& operator=(const Executor&) = delete;

  // Runs every stage on this thread; throws the first error (the call is then done with it).
  void run_sync(Call& call);
  // The synchronous path of drivers that execute in place (Driver::executes_in_place, the
  // host driver), for unpadded host inputs and host outputs: the model reads `inputs` where
  // they are and writes the arrays returned, with no Call, pool block or borrowed handle in
  // between. Same stats as run_sync; timeline spans "call" and "execute". nullopt when the
  // driver does not execute in place (the caller then takes run_sync).
  std::optional<std::vector<HostArray>> run_in_place(const Model& model,
                                                     const std::vector<ConstTensor>& inputs,
                                                     std::optional<std::int64_t> bucket);
  // Queues the call on the stream and returns; call->done() fires when it finished.
  void submit(const std::shared_ptr<Call>& call);
  // Blocks until every submitted call has finished.
  void synchronize();
  // synchronize() then stops the workers (they restart on the next submit).
  void shutdown();

 private:
  bool runs_in_place(const Call& call) const;
  std::vector<HostArray> execute_in_place(const Model& model, const std::vector<ConstTensor>& inputs,
                                          std::optional<std::int64_t> bucket, std::uint64_t id);
  void upload(Call& call);
  void write_input(Call& call, TimelineSpan& span, const DeviceRef& dst, const CallInput& in);
  void execute(Call& call);
  void unpad(Call& call);
  void download(Call& call);
  void finish(Call& call, std::exception_ptr error);
  static void release_inputs(Call& call);
  void prepare_outputs(Call& call);

  void upload_task(const std::shared_ptr<Call>& call);
  void execute_task(const std::shared_ptr<Call>& call);
  void download_task(const std::shared_ptr<Call>& call);
  void release_slot();

  Driver& driver_;
  MemoryPool& pool_;
  RuntimeStats& stats_;
  Timeline& timeline_;
  std::atomic<std::uint64_t> next_call_{1};

  std::mutex mutex_;  // guards everything below
  std::condition_variable cv_;
  int inflight_ = 0;
  int slots_used_ = 0;
  std::unique_ptr<Worker> copy_;
  std::unique_ptr<Worker> exec_;
  std::unique_ptr<Worker> down_;
};

}  // namespace spiky::runtime
