/* The runtime's C ABI for foreign allocators (the torch "nkipy" device).
 *
 * spiky_runtime._core.allocator_capsule(device) returns a PyCapsule named
 * SPIKY_ALLOCATOR_CAPSULE_NAME holding a pointer to a SpikyAllocatorV1: plain C function
 * pointers over the device's memory pool, so a consumer (spiky-torch's C++ extension) needs
 * this header only, never the runtime's C++ types or symbols.
 *
 * This file is the only copy: it ships inside the spiky_runtime package, and consumers build
 * with `-I$(python -c "import spiky_runtime; print(spiky_runtime.get_include())")` and
 * `#include <spiky_runtime/c_abi.h>`.
 *
 * Pointers. allocate() hands out a *device address*: an opaque, non-null, 512-byte aligned
 * number that is unique among live allocations of the capsule, with room for `nbytes` after
 * it. It is not host-dereferenceable (on Neuron it cannot be); every byte moves through the
 * copy functions, which accept any address inside a live allocation (base + offset).
 * `handle` is what free() takes (here equal to the address).
 *
 * Calls return SPIKY_ABI_OK, or an error status with a NUL-terminated message written into
 * `err` (at most err_len bytes). They are thread-safe, release the GIL while they block when
 * the calling thread holds it, and wait for pending producers (a pipelined call's output)
 * before touching their memory.
 *
 * Compatibility: a consumer checks abi_version == SPIKY_ALLOCATOR_ABI_VERSION and
 * struct_size >= sizeof(the struct it was built with); fields are only ever appended.
 */
#ifndef SPIKY_RUNTIME_C_ABI_H_
#define SPIKY_RUNTIME_C_ABI_H_

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define SPIKY_ALLOCATOR_CAPSULE_NAME "spiky_runtime.allocator_v1"
#define SPIKY_ALLOCATOR_ABI_VERSION 1u

enum SpikyAbiStatus {
  SPIKY_ABI_OK = 0,
  SPIKY_ABI_ERROR = 1,          /* bad address/size, freed memory, driver failure */
  SPIKY_ABI_OUT_OF_MEMORY = 2,  /* the pool is exhausted after freeing its cache */
};

typedef struct SpikyAllocatorV1 {
  uint32_t abi_version; /* SPIKY_ALLOCATOR_ABI_VERSION */
  uint32_t struct_size; /* sizeof(SpikyAllocatorV1) of the runtime */
  void* ctx;            /* first argument of every call */
  int32_t device_index;
  const char* driver_name; /* "host", "nrt" */

  /* nbytes may be 0 (a 1-byte block is held). */
  int (*allocate)(void* ctx, size_t nbytes, void** ptr, uint64_t* handle, char* err,
                  size_t err_len);
  int (*free)(void* ctx, uint64_t handle, char* err, size_t err_len);
  int (*copy_h2d)(void* ctx, void* dst, const void* src, size_t nbytes, char* err,
                  size_t err_len);
  int (*copy_d2h)(void* ctx, void* dst, const void* src, size_t nbytes, char* err,
                  size_t err_len);
  int (*copy_d2d)(void* ctx, void* dst, const void* src, size_t nbytes, char* err,
                  size_t err_len);
  /* Waits for every call submitted to the device's stream. */
  int (*synchronize)(void* ctx, char* err, size_t err_len);
} SpikyAllocatorV1;

#ifdef __cplusplus
}
#endif

#endif /* SPIKY_RUNTIME_C_ABI_H_ */
