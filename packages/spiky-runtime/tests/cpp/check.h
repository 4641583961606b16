// A tiny header-only test harness for the runtime's C++ tests (no framework dependency).
//   TEST(name) { CHECK(cond); CHECK_EQ(a, b); CHECK_THROWS(expr, Type); }
// main() (main.cc) runs every registered test, or those whose name contains argv[1].
#pragma once

#include <cstdio>
#include <functional>
#include <sstream>
#include <stdexcept>
#include <string>
#include <vector>

namespace spiky_test {

struct Failure : std::runtime_error {
  using std::runtime_error::runtime_error;
};

struct Case {
  const char* name;
  std::function<void()> fn;
};

inline std::vector<Case>& registry() {
  static std::vector<Case> cases;
  return cases;
}

struct Registrar {
  Registrar(const char* name, std::function<void()> fn) { registry().push_back({name, std::move(fn)}); }
};

template <typename A, typename B>
void check_eq(const A& a, const B& b, const char* ea, const char* eb, const char* file, int line) {
  if (!(a == b)) {
    std::ostringstream os;
    os << file << ":" << line << ": CHECK_EQ(" << ea << ", " << eb << ") failed: " << a
       << " != " << b;
    throw Failure(os.str());
  }
}

}  // namespace spiky_test

#define SPIKY_CAT2(a, b) a##b
#define SPIKY_CAT(a, b) SPIKY_CAT2(a, b)
#define TEST(name)                                                              \
  static void name();                                                           \
  static const ::spiky_test::Registrar SPIKY_CAT(registrar_, name)(#name, name); \
  static void name()

#define CHECK(cond)                                                                           \
  do {                                                                                        \
    if (!(cond)) {                                                                            \
      throw ::spiky_test::Failure(std::string(__FILE__) + ":" + std::to_string(__LINE__) +    \
                                  ": CHECK(" #cond ") failed");                               \
    }                                                                                         \
  } while (0)

#define CHECK_EQ(a, b) ::spiky_test::check_eq((a), (b), #a, #b, __FILE__, __LINE__)

#define CHECK_THROWS(expr, Type)                                                              \
  do {                                                                                        \
    bool thrown_ = false;                                                                     \
    try {                                                                                     \
      (void)(expr);                                                                           \
    } catch (const Type&) {                                                                   \
      thrown_ = true;                                                                         \
    }                                                                                         \
    if (!thrown_) {                                                                           \
      throw ::spiky_test::Failure(std::string(__FILE__) + ":" + std::to_string(__LINE__) +    \
                                  ": " #expr " did not throw " #Type);                        \
    }                                                                                         \
  } while (0)
