// The Neuron Runtime C API (libnrt.so.1), loaded at run time.
//
// No Neuron header and no link-time dependency: the ABI below is declared from
// docs/neuron-interfaces.md, the library is dlopen'ed and every symbol Spiky uses is resolved
// up front, so a missing library or symbol is reported once, by name, when the nrt driver
// starts, never as a crash in the middle of a run. The nrt driver owns one NrtApi per process
// (the documented runtime singleton) and converts every NRT_STATUS into an NrtError in one
// place (check_nrt).
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "errors.h"

namespace spiky::runtime {

// ---- the ABI ------------------------------------------------------------------------------

// NRT_STATUS codes. Older runtimes lack some; unknown codes keep their number (see
// nrt_status_name).
enum NrtStatus : int {
  NRT_SUCCESS = 0,
  NRT_FAILURE = 1,
  NRT_INVALID = 2,
  NRT_INVALID_HANDLE = 3,
  NRT_RESOURCE = 4,
  NRT_TIMEOUT = 5,
  NRT_HW_ERROR = 6,
  NRT_QUEUE_FULL = 7,
  NRT_LOAD_NOT_ENOUGH_NC = 9,
  NRT_UNSUPPORTED_NEFF_VERSION = 10,
  NRT_UNINITIALIZED = 13,
  NRT_CLOSED = 14,
  NRT_QUEUE_EMPTY = 15,
  NRT_EXEC_UNIT_UNRECOVERABLE = 101,
  NRT_EXEC_BAD_INPUT = 1002,
  NRT_EXEC_COMPLETED_WITH_NUM_ERR = 1003,
  NRT_EXEC_COMPLETED_WITH_ERR = 1004,
  NRT_EXEC_NC_BUSY = 1005,
  NRT_EXEC_OOB = 1006,
  NRT_COLL_PENDING = 1100,
};

// nrt_init's framework argument: no framework.
constexpr int kNrtFrameworkNone = 1;
// nrt_tensor_allocate's placement argument.
constexpr int kNrtPlacementDevice = 0;
constexpr int kNrtPlacementHost = 1;
// nrt_tensor_info_t::usage.
constexpr int kNrtUsageInput = 0;
constexpr int kNrtUsageOutput = 1;

// NRT dtype codes (nrt_tensor_info_t::dtype). bool travels as u8.
enum NrtDtype : int {
  NRT_DTYPE_U64 = 0x1,
  NRT_DTYPE_I8 = 0x2,
  NRT_DTYPE_U8 = 0x3,
  NRT_DTYPE_I16 = 0x4,
  NRT_DTYPE_U16 = 0x5,
  NRT_DTYPE_BF16 = 0x6,
  NRT_DTYPE_F16 = 0x7,
  NRT_DTYPE_I32 = 0x8,
  NRT_DTYPE_U32 = 0x9,
  NRT_DTYPE_F32 = 0xA,
  NRT_DTYPE_I64 = 0xC,
  NRT_DTYPE_FP8_E3 = 0xD,
  NRT_DTYPE_FP8_E4 = 0xE,
  NRT_DTYPE_FP8_E5 = 0xF,
};

// Opaque runtime objects.
struct NrtModel;
struct NrtTensor;
struct NrtTensorSet;

constexpr std::size_t kNrtTensorNameMax = 256;

// nrt_tensor_info_t
struct NrtTensorInfo {
  char name[kNrtTensorNameMax];
  int usage;
  std::size_t size;  // bytes
  int dtype;
  std::uint32_t* shape;
  std::uint32_t ndim;
};

// nrt_tensor_info_array_t: a count, then `tensor_count` entries (a C flexible array member).
struct NrtTensorInfoArray {
  std::uint64_t tensor_count;
  const NrtTensorInfo* entries() const {
    return reinterpret_cast<const NrtTensorInfo*>(reinterpret_cast<const char*>(this) +
                                                  sizeof(std::uint64_t));
  }
};

#if UINTPTR_MAX == 0xffffffffffffffffu
static_assert(offsetof(NrtTensorInfo, usage) == 256 && offsetof(NrtTensorInfo, size) == 264 &&
                  offsetof(NrtTensorInfo, dtype) == 272 && offsetof(NrtTensorInfo, shape) == 280 &&
                  offsetof(NrtTensorInfo, ndim) == 288 && sizeof(NrtTensorInfo) == 296,
              "nrt_tensor_info_t layout (docs/neuron-interfaces.md)");
#endif

// ---- errors -------------------------------------------------------------------------------

// A libnrt call returned a status other than NRT_SUCCESS.
// Message: "<call> returned <NAME> (<code>)[ for <context>]".
class NrtError : public Error {
 public:
  NrtError(std::string call, int status, std::string context);
  const std::string& call() const { return call_; }
  int status() const { return status_; }
  const char* status_name() const;
  const std::string& context() const { return context_; }

 private:
  std::string call_;
  int status_;
  std::string context_;
};

// libnrt could not be loaded, or lacks a symbol Spiky needs. The message says what was tried
// and what to install.
class NrtLoadError : public Error {
 public:
  using Error::Error;
};

// The name of a status code without the NRT_ prefix ("EXEC_BAD_INPUT"); "UNKNOWN" for codes
// this table does not know.
const char* nrt_status_name(int status);

// "nrt_execute returned EXEC_BAD_INPUT (1002) for model 'kernel_ab12' input 'x': ..."
std::string format_nrt_error(const std::string& call, int status, const std::string& context);

// Throws NrtError unless status == NRT_SUCCESS: the one place statuses become exceptions.
void check_nrt(const char* call, int status, const std::string& context = {});

// ---- the loaded library -------------------------------------------------------------------

// The libnrt symbols Spiky calls, X(name, return type, parameter list). Exactly the API of
// docs/neuron-interfaces.md; a test keeps the two in step.
#define SPIKY_NRT_SYMBOLS(X)                                                                    \
  X(nrt_init, int, (int framework, const char* fw_version, const char* fal_version))           \
  X(nrt_close, void, ())                                                                        \
  X(nrt_get_total_nc_count, int, (std::uint32_t * count))                                       \
  X(nrt_get_visible_nc_count, int, (std::uint32_t * count))                                     \
  X(nrt_load, int,                                                                              \
    (const void* neff_bytes, std::size_t size, std::int32_t vnc, std::int32_t vnc_count,        \
     NrtModel** model))                                                                         \
  X(nrt_load_collectives, int,                                                                  \
    (const void* neff_bytes, std::size_t size, std::int32_t vnc, std::int32_t vnc_count,        \
     std::uint32_t rank, std::uint32_t world_size, NrtModel** model))                           \
  X(nrt_unload, int, (NrtModel * model))                                                        \
  X(nrt_get_model_tensor_info, int, (NrtModel * model, NrtTensorInfoArray** info))              \
  X(nrt_free_model_tensor_info, int, (NrtTensorInfoArray * info))                               \
  X(nrt_tensor_allocate, int,                                                                   \
    (int placement, int vnc, std::size_t size, const char* name, NrtTensor** tensor))           \
  X(nrt_tensor_free, void, (NrtTensor * *tensor))                                               \
  X(nrt_tensor_write, int,                                                                      \
    (NrtTensor * tensor, const void* buf, std::size_t offset, std::size_t size))                \
  X(nrt_tensor_read, int,                                                                       \
    (const NrtTensor* tensor, void* buf, std::size_t offset, std::size_t size))                 \
  X(nrt_tensor_copy, int,                                                                       \
    (const NrtTensor* src, std::size_t src_offset, NrtTensor* dst, std::size_t dst_offset,      \
     std::size_t size))                                                                         \
  X(nrt_tensor_memset, int,                                                                     \
    (NrtTensor * tensor, std::uint64_t offset, int value, std::size_t size))                    \
  X(nrt_tensor_get_size, std::size_t, (const NrtTensor* tensor))                               \
  X(nrt_tensor_get_va, void*, (const NrtTensor* tensor))                                        \
  X(nrt_tensor_allocate_slice, int,                                                             \
    (const NrtTensor* src, std::size_t offset, std::size_t size, const char* name,              \
     NrtTensor** slice))                                                                        \
  X(nrt_allocate_tensor_set, int, (NrtTensorSet * *set))                                        \
  X(nrt_destroy_tensor_set, void, (NrtTensorSet * *set))                                        \
  X(nrt_add_tensor_to_tensor_set, int, (NrtTensorSet * set, const char* name, NrtTensor* tensor)) \
  X(nrt_execute, int, (NrtModel * model, const NrtTensorSet* inputs, NrtTensorSet* outputs))    \
  X(nrt_profile_start, int, (NrtModel * model, const char* ntff_path))                          \
  X(nrt_profile_stop, int, (const char* ntff_path))

// libnrt.so.1, dlopen'ed, with every symbol resolved. Members are the C functions under their
// C names: `api.nrt_execute(model, in, out)`.
class NrtApi {
 public:
  // Where the library comes from: `path` if not empty, else $SPIKY_LIBNRT if set (no fallback:
  // an explicit choice that fails is an error), else the default dlopen search for
  // "libnrt.so.1", else /opt/aws/neuron/lib/libnrt.so.1. Throws NrtLoadError when none loads or
  // when symbols are missing (all missing names are listed).
  explicit NrtApi(const std::string& path = {});
  ~NrtApi();
  NrtApi(const NrtApi&) = delete;
  NrtApi& operator=(const NrtApi&) = delete;

  // The file that was loaded (resolved through dladdr when found by the default search).
  const std::string& path() const { return path_; }

  // The names of the symbols resolved, in SPIKY_NRT_SYMBOLS order.
  static const std::vector<std::string>& symbol_names();

  static constexpr const char* kSoname = "libnrt.so.1";
  static constexpr const char* kDefaultPath = "/opt/aws/neuron/lib/libnrt.so.1";

#define SPIKY_NRT_MEMBER(name, ret, params) ret(*name) params = nullptr;
  SPIKY_NRT_SYMBOLS(SPIKY_NRT_MEMBER)
#undef SPIKY_NRT_MEMBER

 private:
  void* handle_ = nullptr;
  std::string path_;
};

}  // namespace spiky::runtime
