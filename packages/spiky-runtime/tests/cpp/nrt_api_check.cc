// Drives csrc/nrt_api.{h,cc} against the fake libnrt (spiky-torch's spiky/testing/fake_nrt). Built and run by
// tests/test_nrt_api.py; prints what it checks and exits non-zero on the first failure.
//
//   nrt_api_check roundtrip <add.neff> <cycles>   init, tensors, tensor info, sets, execute
//                                                 (a C rule adds two f32 inputs), errors,
//                                                 load/execute/unload cycles, leak counters
//   nrt_api_check load                            load NrtApi, print its path or the error
//   nrt_api_check symbols                         print NrtApi::symbol_names()
//   nrt_api_check status <code>...                print format_nrt_error for each code
#include <dlfcn.h>

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <iterator>
#include <string>
#include <vector>

#include "nrt_api.h"

using namespace spiky::runtime;

namespace {

#define CHECK(cond)                                                   \
  do {                                                                \
    if (!(cond)) {                                                    \
      std::fprintf(stderr, "%s:%d: CHECK failed: %s\n", __FILE__, __LINE__, #cond); \
      std::exit(1);                                                   \
    }                                                                 \
  } while (0)

using ExecuteFn = int (*)(void*, const char*, int, const char* const*, const void* const*,
                          const std::size_t*, int, const char* const*, void* const*,
                          const std::size_t*);

// The fake's control functions, from the same (already loaded) library.
struct Control {
  void (*set_execute_callback)(ExecuteFn, void*);
  std::uint64_t (*live_tensors)();
  std::uint64_t (*live_models)();
  std::uint64_t (*live_tensor_sets)();
  std::uint64_t (*live_tensor_infos)();
  std::uint64_t (*execute_count)();
  void (*fail_next_execute)(int);

  explicit Control(const std::string& path) {
    handle_ = dlopen(path.c_str(), RTLD_NOW | RTLD_LOCAL);  // same file: same handle, same state
    CHECK(handle_ != nullptr);
    set_execute_callback = reinterpret_cast<void (*)(ExecuteFn, void*)>(sym("fake_nrt_set_execute_callback"));
    live_tensors = reinterpret_cast<std::uint64_t (*)()>(sym("fake_nrt_live_tensors"));
    live_models = reinterpret_cast<std::uint64_t (*)()>(sym("fake_nrt_live_models"));
    live_tensor_sets = reinterpret_cast<std::uint64_t (*)()>(sym("fake_nrt_live_tensor_sets"));
    live_tensor_infos = reinterpret_cast<std::uint64_t (*)()>(sym("fake_nrt_live_tensor_infos"));
    execute_count = reinterpret_cast<std::uint64_t (*)()>(sym("fake_nrt_execute_count"));
    fail_next_execute = reinterpret_cast<void (*)(int)>(sym("fake_nrt_fail_next_execute"));
  }
  ~Control() { dlclose(handle_); }
  Control(const Control&) = delete;
  Control& operator=(const Control&) = delete;

 private:
  void* sym(const char* name) {
    void* s = dlsym(handle_, name);
    CHECK(s != nullptr);
    return s;
  }
  void* handle_ = nullptr;
};

int add_rule(void*, const char*, int n_in, const char* const*, const void* const* in_bufs,
             const std::size_t* in_sizes, int n_out, const char* const*, void* const* out_bufs,
             const std::size_t* out_sizes) {
  if (n_in != 2 || n_out != 1 || in_sizes[0] != out_sizes[0]) return NRT_FAILURE;
  const float* a = static_cast<const float*>(in_bufs[0]);
  const float* b = static_cast<const float*>(in_bufs[1]);
  float* out = static_cast<float*>(out_bufs[0]);
  for (std::size_t i = 0; i < out_sizes[0] / sizeof(float); i++) out[i] = a[i] + b[i];
  return NRT_SUCCESS;
}

// Owning wrappers, as the driver will have them.
struct Tensor {
  const NrtApi& api;
  NrtTensor* t = nullptr;
  Tensor(const NrtApi& a, std::size_t size, const char* name) : api(a) {
    check_nrt("nrt_tensor_allocate",
              api.nrt_tensor_allocate(kNrtPlacementDevice, 0, size, name, &t),
              std::string("tensor '") + name + "'");
  }
  ~Tensor() { api.nrt_tensor_free(&t); }
  Tensor(const Tensor&) = delete;
  Tensor& operator=(const Tensor&) = delete;
};

struct Set {
  const NrtApi& api;
  NrtTensorSet* s = nullptr;
  explicit Set(const NrtApi& a) : api(a) {
    check_nrt("nrt_allocate_tensor_set", api.nrt_allocate_tensor_set(&s));
  }
  ~Set() { api.nrt_destroy_tensor_set(&s); }
  void add(const char* name, const Tensor& t) {
    check_nrt("nrt_add_tensor_to_tensor_set", api.nrt_add_tensor_to_tensor_set(s, name, t.t),
              std::string("'") + name + "'");
  }
  Set(const Set&) = delete;
  Set& operator=(const Set&) = delete;
};

struct Model {
  const NrtApi& api;
  NrtModel* m = nullptr;
  Model(const NrtApi& a, const std::vector<char>& neff) : api(a) {
    check_nrt("nrt_load", api.nrt_load(neff.data(), neff.size(), 0, -1, &m));
  }
  ~Model() {
    if (m != nullptr) api.nrt_unload(m);
  }
  Model(const Model&) = delete;
  Model& operator=(const Model&) = delete;
};

std::vector<char> read_file(const char* path) {
  std::ifstream f(path, std::ios::binary);
  CHECK(f.good());
  return {std::istreambuf_iterator<char>(f), std::istreambuf_iterator<char>()};
}

int roundtrip(const char* neff_path, int cycles) {
  NrtApi api;
  Control fake(api.path());
  std::vector<char> neff = read_file(neff_path);

  std::uint32_t n = 0;
  check_nrt("nrt_get_visible_nc_count", api.nrt_get_visible_nc_count(&n));
  CHECK(n == 2);
  try {
    NrtTensor* t = nullptr;
    check_nrt("nrt_tensor_allocate", api.nrt_tensor_allocate(0, 0, 8, "x", &t), "tensor 'x'");
    CHECK(false);
  } catch (const NrtError& e) {
    std::printf("before init: %s\n", e.what());
    CHECK(e.status() == NRT_UNINITIALIZED);
    CHECK(std::string(e.what()) ==
          "nrt_tensor_allocate returned UNINITIALIZED (13) for tensor 'x'");
  }
  check_nrt("nrt_init", api.nrt_init(kNrtFrameworkNone, "", ""));
  fake.set_execute_callback(add_rule, nullptr);
  {
    Model model(api, neff);
    NrtTensorInfoArray* info = nullptr;
    check_nrt("nrt_get_model_tensor_info", api.nrt_get_model_tensor_info(model.m, &info));
    CHECK(info->tensor_count == 3);
    const NrtTensorInfo* e = info->entries();
    CHECK(std::strcmp(e[0].name, "a") == 0 && e[0].usage == kNrtUsageInput);
    CHECK(std::strcmp(e[2].name, "output0") == 0 && e[2].usage == kNrtUsageOutput);
    CHECK(e[2].dtype == NRT_DTYPE_F32 && e[2].ndim == 1 && e[2].shape[0] == 4 && e[2].size == 16);
    check_nrt("nrt_free_model_tensor_info", api.nrt_free_model_tensor_info(info));

    Tensor a(api, 16, "a"), b(api, 16, "b"), out(api, 16, "out"), small(api, 12, "small");
    const float xa[4] = {1, 2, 3, 4}, xb[4] = {10, 20, 30, 40};
    check_nrt("nrt_tensor_write", api.nrt_tensor_write(a.t, xa, 0, sizeof xa));
    check_nrt("nrt_tensor_write", api.nrt_tensor_write(b.t, xb, 0, sizeof xb));
    CHECK(api.nrt_tensor_get_size(a.t) == 16);
    Set ins(api), outs(api);
    ins.add("a", a);
    ins.add("b", b);
    outs.add("output0", out);
    check_nrt("nrt_execute", api.nrt_execute(model.m, ins.s, outs.s), "model 'kernel_add'");
    float got[4] = {};
    check_nrt("nrt_tensor_read", api.nrt_tensor_read(out.t, got, 0, sizeof got));
    for (int i = 0; i < 4; i++) CHECK(got[i] == xa[i] + xb[i]);
    std::printf("execute: %g %g %g %g\n", got[0], got[1], got[2], got[3]);

    try {
      check_nrt("nrt_tensor_write", api.nrt_tensor_write(a.t, xa, 8, sizeof xa), "tensor 'a'");
      CHECK(false);
    } catch (const NrtError& err) {
      std::printf("past the end: %s\n", err.what());
      CHECK(err.status() == NRT_INVALID && std::string(err.status_name()) == "INVALID");
    }
    Set bad(api);
    bad.add("a", a);
    bad.add("b", small);
    try {
      check_nrt("nrt_execute", api.nrt_execute(model.m, bad.s, outs.s),
                "model 'kernel_add' input 'b': 12 bytes, expected 16");
      CHECK(false);
    } catch (const NrtError& err) {
      std::printf("bad input: %s\n", err.what());
      CHECK(std::string(err.what()) ==
            "nrt_execute returned EXEC_BAD_INPUT (1002) for model 'kernel_add' input 'b': 12 "
            "bytes, expected 16");
      CHECK(err.call() == "nrt_execute" && err.status() == NRT_EXEC_BAD_INPUT);
    }
    fake.fail_next_execute(NRT_TIMEOUT);
    try {
      check_nrt("nrt_execute", api.nrt_execute(model.m, ins.s, outs.s));
      CHECK(false);
    } catch (const Error& err) {  // NrtError is an engine Error
      std::printf("injected: %s\n", err.what());
    }
  }
  CHECK(fake.live_tensors() == 0 && fake.live_models() == 0 && fake.live_tensor_sets() == 0);

  for (int i = 0; i < cycles; i++) {
    Model model(api, neff);
    Tensor a(api, 16, "a"), b(api, 16, "b"), out(api, 16, "out");
    Set ins(api), outs(api);
    ins.add("a", a);
    ins.add("b", b);
    outs.add("output0", out);
    check_nrt("nrt_execute", api.nrt_execute(model.m, ins.s, outs.s));
  }
  std::printf("cycles: %d, executions: %llu\n", cycles,
              static_cast<unsigned long long>(fake.execute_count()));
  CHECK(fake.live_tensors() == 0 && fake.live_models() == 0 && fake.live_tensor_sets() == 0 &&
        fake.live_tensor_infos() == 0);
  fake.set_execute_callback(nullptr, nullptr);
  api.nrt_close();
  std::printf("PASS\n");
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  std::string mode = argc > 1 ? argv[1] : "";
  if (mode == "roundtrip" && argc == 4) return roundtrip(argv[2], std::atoi(argv[3]));
  if (mode == "load") {
    try {
      NrtApi api;
      std::printf("loaded %s\n", api.path().c_str());
    } catch (const NrtLoadError& e) {
      std::printf("NrtLoadError: %s\n", e.what());
    }
    return 0;
  }
  if (mode == "symbols") {
    for (const std::string& name : NrtApi::symbol_names()) std::printf("%s\n", name.c_str());
    return 0;
  }
  if (mode == "status") {
    for (int i = 2; i < argc; i++) {
      std::printf("%s\n", format_nrt_error("nrt_call", std::atoi(argv[i]), "").c_str());
    }
    return 0;
  }
  std::fprintf(stderr, "usage: see the comment at the top of nrt_api_check.cc\n");
  return 2;
}
