#include "nrt_api.h"

#include <dlfcn.h>

#include <cstdlib>
#include <sstream>
#include <utility>

namespace spiky::runtime {

namespace {

struct StatusName {
  int status;
  const char* name;
};

// Codes from docs/neuron-interfaces.md. 1200-1206 are documented only as hardware errors.
constexpr StatusName kStatusNames[] = {
    {NRT_SUCCESS, "SUCCESS"},
    {NRT_FAILURE, "FAILURE"},
    {NRT_INVALID, "INVALID"},
    {NRT_INVALID_HANDLE, "INVALID_HANDLE"},
    {NRT_RESOURCE, "RESOURCE"},
    {NRT_TIMEOUT, "TIMEOUT"},
    {NRT_HW_ERROR, "HW_ERROR"},
    {NRT_QUEUE_FULL, "QUEUE_FULL"},
    {NRT_LOAD_NOT_ENOUGH_NC, "LOAD_NOT_ENOUGH_NC"},
    {NRT_UNSUPPORTED_NEFF_VERSION, "UNSUPPORTED_NEFF_VERSION"},
    {NRT_UNINITIALIZED, "UNINITIALIZED"},
    {NRT_CLOSED, "CLOSED"},
    {NRT_QUEUE_EMPTY, "QUEUE_EMPTY"},
    {NRT_EXEC_UNIT_UNRECOVERABLE, "EXEC_UNIT_UNRECOVERABLE"},
    {NRT_EXEC_BAD_INPUT, "EXEC_BAD_INPUT"},
    {NRT_EXEC_COMPLETED_WITH_NUM_ERR, "EXEC_COMPLETED_WITH_NUM_ERR"},
    {NRT_EXEC_COMPLETED_WITH_ERR, "EXEC_COMPLETED_WITH_ERR"},
    {NRT_EXEC_NC_BUSY, "EXEC_NC_BUSY"},
    {NRT_EXEC_OOB, "EXEC_OOB"},
    {NRT_COLL_PENDING, "COLL_PENDING"},
};

constexpr int kFirstHwError = 1200;
constexpr int kLastHwError = 1206;

std::string dl_error() {
  const char* e = dlerror();
  return e != nullptr ? e : "unknown dlopen error";
}

}  // namespace

const char* nrt_status_name(int status) {
  for (const StatusName& s : kStatusNames) {
    if (s.status == status) return s.name;
  }
  if (status >= kFirstHwError && status <= kLastHwError) return "EXEC_HW_ERR";
  return "UNKNOWN";
}

std::string format_nrt_error(const std::string& call, int status, const std::string& context) {
  std::ostringstream out;
  out << call << " returned " << nrt_status_name(status) << " (" << status << ")";
  if (!context.empty()) out << " for " << context;
  return out.str();
}

NrtError::NrtError(std::string call, int status, std::string context)
    : Error(format_nrt_error(call, status, context)),
      call_(std::move(call)),
      status_(status),
      context_(std::move(context)) {}

const char* NrtError::status_name() const { return nrt_status_name(status_); }

void check_nrt(const char* call, int status, const std::string& context) {
  if (status != NRT_SUCCESS) throw NrtError(call, status, context);
}

const std::vector<std::string>& NrtApi::symbol_names() {
#define SPIKY_NRT_NAME(name, ret, params) #name,
  static const std::vector<std::string> names = {SPIKY_NRT_SYMBOLS(SPIKY_NRT_NAME)};
#undef SPIKY_NRT_NAME
  return names;
}

NrtApi::NrtApi(const std::string& path) {
  constexpr const char* kInstall =
      "The neuron target needs the Neuron Runtime: install aws-neuronx-runtime-lib from the "
      "Neuron package repository, or point SPIKY_LIBNRT at libnrt.so.1";
  std::vector<std::pair<std::string, bool>> candidates;  // (path, explicit choice)
  const char* env = std::getenv("SPIKY_LIBNRT");
  if (!path.empty()) {
    candidates.emplace_back(path, true);
  } else if (env != nullptr && *env != '\0') {
    candidates.emplace_back(env, true);
  } else {
    candidates.emplace_back(kSoname, false);
    candidates.emplace_back(kDefaultPath, false);
  }
  std::string tried;
  for (const auto& [candidate, chosen] : candidates) {
    handle_ = dlopen(candidate.c_str(), RTLD_NOW | RTLD_LOCAL);
    if (handle_ != nullptr) {
      path_ = candidate;
      break;
    }
    tried += "\n  " + dl_error();  // names the candidate
    if (chosen) break;
  }
  if (handle_ == nullptr) {
    const bool from_env = path.empty() && env != nullptr && *env != '\0';
    const std::string origin = from_env ? " (from SPIKY_LIBNRT)" : "";
    throw NrtLoadError("cannot load " + std::string(kSoname) + origin + "; tried:" + tried + "\n" +
                       kInstall);
  }

  std::vector<std::string> missing;
  auto resolve = [&](const char* name) -> void* {
    dlerror();
    void* sym = dlsym(handle_, name);
    if (sym == nullptr) missing.emplace_back(name);
    return sym;
  };
#define SPIKY_NRT_RESOLVE(name, ret, params) \
  name = reinterpret_cast<ret(*) params>(resolve(#name));
  SPIKY_NRT_SYMBOLS(SPIKY_NRT_RESOLVE)
#undef SPIKY_NRT_RESOLVE

  // Name the file actually loaded, also when the default search found it.
  Dl_info info{};
  if (nrt_init != nullptr && dladdr(reinterpret_cast<void*>(nrt_init), &info) != 0 &&
      info.dli_fname != nullptr) {
    path_ = info.dli_fname;
  }
  if (!missing.empty()) {
    std::string names;
    for (const std::string& m : missing) names += (names.empty() ? "" : ", ") + m;
    dlclose(handle_);
    handle_ = nullptr;
    throw NrtLoadError(path_ + " lacks symbol" + (missing.size() > 1 ? "s " : " ") + names +
                       " that Spiky needs; the Neuron Runtime is too old or not libnrt. " +
                       kInstall);
  }
}

NrtApi::~NrtApi() {
  if (handle_ != nullptr) dlclose(handle_);
}

}  // namespace spiky::runtime
