// C++ exception types of the runtime.
//
// Every failure inside the engine is one of these. bindings.cc translates them to the
// Python classes of spiky_runtime.errors in a single exception translator; nothing else
// in csrc/ knows about Python exceptions. A driver that talks to a C API (libnrt) converts
// status codes into these types in one checking helper of its own.
#pragma once

#include <stdexcept>
#include <string>

namespace spiky::runtime {

// Root of the hierarchy -> spiky_runtime.SpikyRuntimeError.
class Error : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

// A bad size, offset, shape, dtype, index or name -> spiky_runtime.InvalidArgumentError.
class InvalidArgument : public Error {
 public:
  using Error::Error;
};

// The memory pool could not satisfy a request even after freeing its cache
// -> spiky_runtime.OutOfMemoryError. The message carries the pool numbers.
class OutOfMemory : public Error {
 public:
  using Error::Error;
};

// Raised by a Driver when the device itself has no room. The pool catches it, frees its
// cache and retries once; only if that fails does the caller see OutOfMemory.
class DeviceOutOfMemory : public Error {
 public:
  using Error::Error;
};

}  // namespace spiky::runtime
