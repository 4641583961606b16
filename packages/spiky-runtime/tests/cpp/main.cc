// Runs the registered C++ tests; exit code 0 iff all pass. Optional argv[1]: name filter.
#include <chrono>
#include <cstdio>
#include <cstring>
#include <exception>

#include "check.h"

int main(int argc, char** argv) {
  const char* filter = argc > 1 ? argv[1] : nullptr;
  int run = 0;
  int failed = 0;
  for (const auto& c : spiky_test::registry()) {
    if (filter != nullptr && std::strstr(c.name, filter) == nullptr) continue;
    ++run;
    const auto start = std::chrono::steady_clock::now();
    try {
      c.fn();
      const double ms = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - start).count();
      std::printf("PASS %s (%.1f ms)\n", c.name, ms);
    } catch (const std::exception& e) {
      ++failed;
      std::printf("FAIL %s: %s\n", c.name, e.what());
    }
  }
  std::printf("%d tests, %d failed\n", run, failed);
  return failed == 0 && run > 0 ? 0 : 1;
}
