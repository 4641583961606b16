/*
 * fake_nrt.c: a contract fake of the Neuron Runtime C API (libnrt.so.1), for tests only.
 *
 * Built by build.py (next to this file) into a shared library with soname libnrt.so.1. It
 * exports the libnrt functions listed in docs/neuron-interfaces.md with the same signatures (the
 * ABI is declared here; no Neuron header is used) plus control functions prefixed fake_nrt_ that
 * tests call through ctypes (control.py). "Device" memory is host memory.
 *
 * Compile with -DFAKE_NRT_OMIT_<symbol> (e.g. -DFAKE_NRT_OMIT_nrt_execute) to leave one libnrt
 * symbol out, so a driver's "missing symbol" report can be tested (plus -DFAKE_NRT_OMITTING,
 * which silences the unused-helper warnings that omission causes).
 *
 * ---------------------------------------------------------------------------------------------
 * The fake NEFF format (written by neff.py and by the fake neuronx-cc, spiky.testing)
 * ---------------------------------------------------------------------------------------------
 *   bytes 0..3      "NEFF"                                     (else UNSUPPORTED_NEFF_VERSION)
 *   bytes 4..7      format version, uint32 little endian, = 1  (else UNSUPPORTED_NEFF_VERSION)
 *   bytes 8..1023   zero
 *   bytes 1024..    a POSIX ustar tar archive (512-byte blocks, checksummed headers; pax
 *                   extended headers are skipped, so write plain ustar). Other members are
 *                   ignored; the member `spiky_io.txt` (or `./spiky_io.txt`) is required:
 *
 *     # comment                       blank lines and '#' lines are ignored
 *     id <text>                       required, once: the rest of the line (1..255 chars); the
 *                                     execute callback receives it to map a model to its graph
 *     collectives <0|1>               optional (default 0); 1 = must be loaded with
 *                                     nrt_load_collectives, plain nrt_load returns NRT_INVALID
 *     input <name> <dtype> <ndim> <d0> ... <d(ndim-1)>
 *     output <name> <dtype> <ndim> <d0> ... <d(ndim-1)>
 *
 *   one line per NEFF input/output, in the order nrt_get_model_tensor_info reports them (and the
 *   execute callback receives them). name: 1..255 chars without whitespace, unique per kind;
 *   dtype: decimal NRT dtype code (f32 10, f16 7, bf16 6, i8 2, u8 3, i16 4, u16 5, i32 8,
 *   u32 9, i64 12, u64 1, fp8 13/14/15); ndim 0..8 (0 = scalar); every dim >= 1 (a NEFF drops
 *   zero-element tensors). Byte size = product(dims) * itemsize. Anything else -> NRT_INVALID.
 *
 * ---------------------------------------------------------------------------------------------
 * The contract the fake enforces (every failing call also sets fake_nrt_last_error())
 * ---------------------------------------------------------------------------------------------
 *  - Lifecycle: never initialised -> nrt_init -> initialised -> nrt_close -> closed.
 *    Calls before nrt_init return NRT_UNINITIALIZED (13), after nrt_close NRT_CLOSED (14);
 *    the core-count calls work in every state. A second nrt_init without close, and nrt_init
 *    after nrt_close (one runtime per process), return NRT_FAILURE (1). void functions
 *    (nrt_close, nrt_tensor_free, nrt_destroy_tensor_set) called in the wrong state or on an
 *    unknown handle count a contract violation (fake_nrt_contract_violations()); frees still
 *    release the memory so leak accounting stays exact. nrt_close does not free live objects:
 *    they stay counted as live until freed or until fake_nrt_teardown().
 *  - Cores: total = FAKE_NRT_TOTAL_CORES (default 2, 1..128). Visible cores = the range in
 *    NEURON_RT_VISIBLE_CORES ("n" or "a-b"), else the first NEURON_RT_NUM_CORES cores, else all;
 *    read at nrt_init (before init, the visible-count call reads the environment). A malformed
 *    or out-of-range setting makes nrt_init return NRT_INVALID. `vnc` arguments are indices
 *    into the visible range; outside it -> NRT_INVALID. With FAKE_NRT_LOCK_DIR set, nrt_init
 *    takes an exclusive flock on <dir>/nc<core>.lock per visible core; a core already held by
 *    another process -> NRT_EXEC_NC_BUSY (1005).
 *  - Tensors: placement 0 (device) or 1 (host), else NRT_INVALID; size 0 -> NRT_INVALID;
 *    write/read/copy/memset with offset + size past the end (or a NULL buffer) -> NRT_INVALID;
 *    unknown tensor handles -> NRT_INVALID_HANDLE (nrt_tensor_get_size/get_va return 0/NULL and
 *    count a contract violation); nrt_tensor_copy between tensors on different cores ->
 *    NRT_INVALID. Slices share their parent's storage, which is
 *    reference counted (freeing the parent while a slice lives keeps the bytes). Device memory
 *    per core is unlimited unless fake_nrt_set_device_capacity() sets a limit; past it, and on
 *    the allocation chosen by fake_nrt_fail_allocation_at(), nrt_tensor_allocate returns
 *    NRT_RESOURCE (4); fake_nrt_fail_next_allocate(status) makes the next valid allocation
 *    return `status`. Slices never count as allocations. Successful writes and reads add their
 *    sizes to fake_nrt_bytes_written() / fake_nrt_bytes_read().
 *  - Models: malformed NEFF -> NRT_INVALID, bad magic/version -> NRT_UNSUPPORTED_NEFF_VERSION;
 *    a NEFF with `collectives 1` via nrt_load -> NRT_INVALID; nrt_load_collectives needs
 *    world_size >= 1 and rank < world_size (else NRT_INVALID) and records both
 *    (fake_nrt_model_rank/world_size). fake_nrt_fail_next_load(status) makes the next load of a
 *    valid NEFF return `status`. A loaded model keeps a copy of its NEFF bytes. nrt_unload of an
 *    unknown or already unloaded model -> NRT_INVALID_HANDLE, counted by
 *    fake_nrt_double_unloads().
 *  - Execute: model unknown -> NRT_INVALID_HANDLE; a NULL set -> NRT_INVALID; a set unknown ->
 *    NRT_INVALID_HANDLE; a tensor freed while still in a set -> NRT_INVALID_HANDLE; a NEFF input
 *    or output missing from its set, a set name the NEFF does not have, or a tensor whose size
 *    differs from the NEFF's -> NRT_EXEC_BAD_INPUT (1002). Then the execution is counted
 *    (fake_nrt_execute_count()) and run by the callback of fake_nrt_set_execute_callback()
 *    (outside the fake's lock, so executions on several threads overlap); without a callback
 *    -> NRT_FAILURE. fake_nrt_fail_next_execute(status) makes the next valid execute return
 *    `status`; for 1003/1004 (completed with errors) the callback still runs first.
 *  - Profiling: nrt_profile_start(model, path) starts a session for a live model on a path not
 *    already being profiled (else NRT_INVALID); executions of that model are counted; at
 *    nrt_profile_stop(path) the file is written (truncated if it exists):
 *    "FAKE-NTFF\nneff_id <id>\nexecutions <n>\n". Stopping a path never started -> NRT_INVALID.
 *  - Tensor sets: adding a name twice rebinds it; the tensor must outlive the set.
 *  - Thread safety: one mutex around all state; the bytes of nrt_tensor_write / nrt_tensor_read
 *    are copied outside it (the storage pinned), so a large transfer does not stall other calls.
 *  - Timing model (off by default; fake_nrt_set_timing): with it on, a successful
 *    nrt_tensor_write lasts latency + bytes / h2d bandwidth, nrt_tensor_read latency + bytes /
 *    d2h bandwidth, each direction being one link that carries one transfer at a time (PCIe is
 *    full duplex: a write and a read overlap). nrt_tensor_copy / nrt_tensor_memset cost bytes /
 *    device bandwidth (HBM), charged per thread once they add up to 100 us (sleeps are not
 *    precise below that). An execution holds its NeuronCore (one at a time per core) and lasts
 *    the NEFF's set time (fake_nrt_set_execute_time; from the start of the callback, so a callback
 *    slower than that takes its own time), or without one the callback's own time. Durations
 *    are deadlines on CLOCK_MONOTONIC, so the host memcpy of a transfer is part of its modelled
 *    time (a memcpy slower than the model makes the transfer take the memcpy's time). All
 *    sleeping happens outside the state mutex.
 *
 * ---------------------------------------------------------------------------------------------
 * Control API (control.py binds it)
 * ---------------------------------------------------------------------------------------------
 *   void        fake_nrt_set_execute_callback(fake_nrt_execute_fn cb, void* user);  NULL removes
 *   const char* fake_nrt_last_error(void);          thread-local copy of the latest failure reason
 *   void        fake_nrt_fail_allocation_at(long n); n-th allocation from now -> RESOURCE; 0 off
 *   void        fake_nrt_fail_next_allocate(int status);    the next allocation -> status; 0 off
 *   void        fake_nrt_fail_next_load(int status);        the next load -> status; 0 off
 *   void        fake_nrt_fail_next_execute(int status);
 *   void        fake_nrt_set_device_capacity(size_t bytes_per_core);   0 = unlimited
 *   void        fake_nrt_set_timing(int on, double h2d_bytes_per_s, double d2h_bytes_per_s,
 *                                   double latency_s, double device_bytes_per_s);
 *                                         bandwidths <= 0 = infinite; on = 0 turns it off
 *   int         fake_nrt_set_execute_time(const char* neff_id, double seconds);
 *                                         neff_id NULL: the default for every NEFF; seconds < 0
 *                                         removes the entry (callback time); -1 if the table of
 *                                         64 NEFF entries is full
 *   void        fake_nrt_reset(void);     injections, counters, capacity, last error, callback,
 *                                         timing model
 *   uint64_t    fake_nrt_teardown(void);  reset + free live objects + "never initialised";
 *                                         returns the number of live objects it freed
 *   uint64_t    fake_nrt_live_tensors / _live_models / _live_tensor_sets / _live_tensor_infos,
 *               fake_nrt_execute_count / _double_unloads / _contract_violations,
 *               fake_nrt_bytes_written / _bytes_read (void)
 *   uint64_t    fake_nrt_device_bytes_in_use(int physical_core);
 *   int64_t     fake_nrt_call_count(const char* nrt_symbol);   -1 if not a libnrt symbol
 *   int32_t     fake_nrt_model_rank / _world_size / _vnc(const nrt_model_t*);   -1 if unknown
 *   const char* fake_nrt_model_neff_id(const nrt_model_t*);
 *   The execute callback gets inputs then outputs, each in NEFF order:
 *   int cb(void* user, const char* neff_id, int n_in, const char* const* in_names,
 *          const void* const* in_bufs, const size_t* in_sizes, int n_out,
 *          const char* const* out_names, void* const* out_bufs, const size_t* out_sizes);
 *   and returns an NRT_STATUS. It runs outside the fake's lock and may call the fake, e.g.
 *   const void* fake_nrt_current_neff(size_t* size, uint64_t* serial): the bytes (and load
 *   serial, unique per load) of the NEFF being executed on this thread; NULL outside a callback.
 *   const nrt_model_t* fake_nrt_current_model(void): that model (for fake_nrt_model_rank).
 */
#define _DEFAULT_SOURCE
#define _POSIX_C_SOURCE 200809L

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <pthread.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <time.h>
#include <unistd.h>

#define EXPORT __attribute__((visibility("default")))

#ifdef FAKE_NRT_OMITTING /* set by build.py with any FAKE_NRT_OMIT_*: helpers may go unused */
#pragma GCC diagnostic ignored "-Wunused-function"
#pragma GCC diagnostic ignored "-Wunused-variable"
#endif

/* ---- the libnrt ABI, declared from docs/neuron-interfaces.md ----------------------------- */

typedef int NRT_STATUS;
enum {
  NRT_SUCCESS = 0,
  NRT_FAILURE = 1,
  NRT_INVALID = 2,
  NRT_INVALID_HANDLE = 3,
  NRT_RESOURCE = 4,
  NRT_UNSUPPORTED_NEFF_VERSION = 10,
  NRT_UNINITIALIZED = 13,
  NRT_CLOSED = 14,
  NRT_EXEC_BAD_INPUT = 1002,
  NRT_EXEC_COMPLETED_WITH_NUM_ERR = 1003,
  NRT_EXEC_COMPLETED_WITH_ERR = 1004,
  NRT_EXEC_NC_BUSY = 1005,
};

#define NRT_TENSOR_NAME_MAX 256

typedef struct nrt_tensor_info {
  char name[NRT_TENSOR_NAME_MAX];
  int usage; /* 0 input, 1 output */
  size_t size;
  int dtype;
  uint32_t* shape;
  uint32_t ndim;
} nrt_tensor_info_t;

typedef struct nrt_tensor_info_array {
  uint64_t tensor_count;
  nrt_tensor_info_t tensor_array[];
} nrt_tensor_info_array_t;

#if UINTPTR_MAX == 0xffffffffffffffffu
/* The layout docs/neuron-interfaces.md describes, on LP64. */
_Static_assert(offsetof(nrt_tensor_info_t, usage) == 256, "usage offset");
_Static_assert(offsetof(nrt_tensor_info_t, size) == 264, "size offset");
_Static_assert(offsetof(nrt_tensor_info_t, dtype) == 272, "dtype offset");
_Static_assert(offsetof(nrt_tensor_info_t, shape) == 280, "shape offset");
_Static_assert(offsetof(nrt_tensor_info_t, ndim) == 288, "ndim offset");
_Static_assert(sizeof(nrt_tensor_info_t) == 296, "entry size");
_Static_assert(offsetof(nrt_tensor_info_array_t, tensor_array) == 8, "array header");
#endif

typedef struct nrt_tensor nrt_tensor_t;
typedef struct nrt_model nrt_model_t;
typedef struct nrt_tensor_set nrt_tensor_set_t;

typedef int (*fake_nrt_execute_fn)(void* user, const char* neff_id, int n_in,
                                   const char* const* in_names, const void* const* in_bufs,
                                   const size_t* in_sizes, int n_out,
                                   const char* const* out_names, void* const* out_bufs,
                                   const size_t* out_sizes);

/* ---- internal objects -------------------------------------------------------------------- */

#define MAX_CORES 128
#define MAX_NDIM 8
#define MAX_PROFILES 64

typedef struct storage {
  unsigned char* data;
  size_t size;
  int core; /* physical core index */
  int refs; /* tensors (parent and slices) plus executions in flight */
} storage_t;

struct nrt_tensor {
  uint64_t serial;
  storage_t* st;
  size_t offset;
  size_t size;
  char name[NRT_TENSOR_NAME_MAX];
};

typedef struct io_entry {
  char name[NRT_TENSOR_NAME_MAX];
  int usage;
  int dtype;
  uint32_t ndim;
  uint32_t shape[MAX_NDIM];
  size_t size;
} io_entry_t;

struct nrt_model {
  uint64_t serial;
  char id[NRT_TENSOR_NAME_MAX];
  int collectives;
  int32_t rank;
  int32_t world_size;
  int32_t vnc;
  int n_io;
  io_entry_t* io;
  unsigned char* neff; /* a copy of the loaded bytes (fake_nrt_current_neff) */
  size_t neff_size;
  int refs; /* 1 while loaded, plus executions in flight */
};

typedef struct set_entry {
  char name[NRT_TENSOR_NAME_MAX];
  nrt_tensor_t* tensor;
  uint64_t serial;
} set_entry_t;

struct nrt_tensor_set {
  set_entry_t* entries;
  int n;
  int cap;
};

typedef struct profile_session {
  char* path;
  const nrt_model_t* model;
  uint64_t model_serial;
  char neff_id[NRT_TENSOR_NAME_MAX];
  uint64_t executions;
} profile_session_t;

/* Open-addressing set of live pointers: every handle the API receives is looked up here. */
typedef struct ptrset {
  void** slots;
  size_t cap;
  size_t count;
  size_t used; /* count + tombstones */
} ptrset_t;

#define TOMBSTONE ((void*)1)

/* ---- global state (guarded by g_mu) ------------------------------------------------------ */

enum { STATE_NEW = 0, STATE_INIT = 1, STATE_CLOSED = 2 };

static pthread_mutex_t g_mu = PTHREAD_MUTEX_INITIALIZER;
static int g_state = STATE_NEW;
static int g_total_cores = 2;
static int g_first_visible = 0;
static int g_visible_count = 0;
static int g_lock_fds[MAX_CORES];
static int g_lock_fd_count = 0;

static ptrset_t g_tensors, g_models, g_sets, g_infos;
static uint64_t g_next_serial = 1;
static size_t g_core_bytes[MAX_CORES];
static size_t g_capacity_per_core = 0; /* 0 = unlimited */

static fake_nrt_execute_fn g_callback = NULL;
static void* g_callback_user = NULL;
static long g_fail_alloc_countdown = 0;
static int g_fail_alloc_status = NRT_RESOURCE;
static int g_fail_next_execute = 0;
static int g_fail_next_load = 0;
static uint64_t g_bytes_written = 0;
static uint64_t g_bytes_read = 0;
/* The model whose execute callback runs on this thread (fake_nrt_current_neff). */
static _Thread_local const nrt_model_t* t_executing = NULL;

static uint64_t g_execute_count = 0;
static uint64_t g_double_unloads = 0;
static uint64_t g_violations = 0;
static profile_session_t g_profiles[MAX_PROFILES];

/* Timing model (fake_nrt_set_timing / fake_nrt_set_execute_time), guarded by g_mu. */
#define MAX_EXEC_TIMES 64
typedef struct exec_time {
  char neff_id[NRT_TENSOR_NAME_MAX];
  double seconds;
} exec_time_t;
static int g_timing_on = 0;
static double g_h2d_bps = 0.0, g_d2h_bps = 0.0, g_dev_bps = 0.0; /* <= 0: infinite */
static double g_latency_s = 0.0;
static double g_exec_default_s = -1.0; /* < 0: the callback's own time */
static exec_time_t g_exec_times[MAX_EXEC_TIMES];
static int g_exec_time_count = 0;
/* The links (one transfer at a time per direction) and the cores (one execution at a time);
   taken before g_mu, never while holding it. */
static pthread_mutex_t g_h2d_link = PTHREAD_MUTEX_INITIALIZER;
static pthread_mutex_t g_d2h_link = PTHREAD_MUTEX_INITIALIZER;
static pthread_mutex_t g_core_busy[MAX_CORES];
static _Thread_local double t_device_debt_s = 0.0; /* device copy time not slept yet */

static char g_last_error[1024] = "";
static _Thread_local char t_last_error[1024];

/* Call counters, one per libnrt symbol (the driver's "exactly these symbols" check). */
#define NRT_SYMBOLS(X)                                                                          \
  X(nrt_init) X(nrt_close) X(nrt_get_total_nc_count) X(nrt_get_visible_nc_count) X(nrt_load)  \
  X(nrt_load_collectives) X(nrt_unload) X(nrt_get_model_tensor_info)                            \
  X(nrt_free_model_tensor_info) X(nrt_tensor_allocate) X(nrt_tensor_free) X(nrt_tensor_write)  \
  X(nrt_tensor_read) X(nrt_tensor_copy) X(nrt_tensor_memset) X(nrt_tensor_get_size)            \
  X(nrt_tensor_get_va) X(nrt_tensor_allocate_slice) X(nrt_allocate_tensor_set)                 \
  X(nrt_destroy_tensor_set) X(nrt_add_tensor_to_tensor_set) X(nrt_execute)                     \
  X(nrt_profile_start) X(nrt_profile_stop)

#define AS_ENUM(s) SYM_##s,
enum { NRT_SYMBOLS(AS_ENUM) SYM_COUNT };
#define AS_NAME(s) #s,
static const char* const g_symbol_names[SYM_COUNT] = {NRT_SYMBOLS(AS_NAME)};
static uint64_t g_calls[SYM_COUNT];

/* ---- helpers ----------------------------------------------------------------------------- */

static void lock(void) { pthread_mutex_lock(&g_mu); }
static void unlock(void) { pthread_mutex_unlock(&g_mu); }

__attribute__((constructor)) static void init_core_mutexes(void) {
  for (int i = 0; i < MAX_CORES; i++) pthread_mutex_init(&g_core_busy[i], NULL);
}

static double now_s(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

/* Sleeps until `deadline` (seconds on CLOCK_MONOTONIC); returns at once if it has passed. */
static void sleep_until(double deadline) {
  struct timespec ts;
  ts.tv_sec = (time_t)deadline;
  ts.tv_nsec = (long)((deadline - (double)ts.tv_sec) * 1e9);
  if (ts.tv_nsec >= 1000000000L) {
    ts.tv_sec += 1;
    ts.tv_nsec -= 1000000000L;
  }
  while (clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &ts, NULL) == EINTR) {
  }
}

/* The modelled duration of a host <-> device transfer of `size` bytes; 0 with the model off. */
static double transfer_seconds(int h2d, size_t size) {
  lock();
  double t = 0.0;
  if (g_timing_on && size > 0) {
    double bps = h2d ? g_h2d_bps : g_d2h_bps;
    t = g_latency_s + (bps > 0 ? (double)size / bps : 0.0);
  }
  unlock();
  return t;
}

/* A timed transfer: holds its link from start to deadline (the caller does the copy between
   transfer_begin and transfer_end). */
typedef struct timed {
  pthread_mutex_t* link;
  double deadline;
} timed_t;

static timed_t transfer_begin(int h2d, size_t size) {
  timed_t t = {NULL, 0.0};
  double seconds = transfer_seconds(h2d, size);
  if (seconds > 0) {
    t.link = h2d ? &g_h2d_link : &g_d2h_link;
    pthread_mutex_lock(t.link);
    t.deadline = now_s() + seconds;
  }
  return t;
}

static void transfer_end(timed_t t, NRT_STATUS st) {
  if (t.link == NULL) return;
  if (st == NRT_SUCCESS) sleep_until(t.deadline);
  pthread_mutex_unlock(t.link);
}

/* Device-side copies and fills at the device bandwidth, slept once they reach 100 us. */
static void charge_device(size_t size) {
  lock();
  double t = g_timing_on && g_dev_bps > 0 ? (double)size / g_dev_bps : 0.0;
  unlock();
  t_device_debt_s += t;
  if (t_device_debt_s >= 100e-6) {
    sleep_until(now_s() + t_device_debt_s);
    t_device_debt_s = 0.0;
  }
}

/* The execution time of a NEFF (g_mu held): its entry, else the default; < 0 = callback time. */
static double exec_seconds_locked(const char* neff_id) {
  if (!g_timing_on) return -1.0;
  for (int i = 0; i < g_exec_time_count; i++) {
    if (strcmp(g_exec_times[i].neff_id, neff_id) == 0) return g_exec_times[i].seconds;
  }
  return g_exec_default_s;
}

__attribute__((format(printf, 1, 2))) static void set_error(const char* fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(g_last_error, sizeof g_last_error, fmt, ap);
  va_end(ap);
}

/* Sets the error message and returns `status`, for one-line failure returns. */
#define FAIL(status, ...) (set_error(__VA_ARGS__), (status))

static size_t ptr_hash(const void* p, size_t cap) {
  uint64_t x = (uint64_t)(uintptr_t)p;
  x ^= x >> 33;
  x *= 0xff51afd7ed558ccdULL;
  x ^= x >> 33;
  return (size_t)(x & (cap - 1));
}

static int ptrset_has(const ptrset_t* s, const void* p) {
  if (p == NULL || s->cap == 0) return 0;
  for (size_t i = ptr_hash(p, s->cap);; i = (i + 1) & (s->cap - 1)) {
    if (s->slots[i] == NULL) return 0;
    if (s->slots[i] == p) return 1;
  }
}

static int ptrset_add(ptrset_t* s, void* p);

static int ptrset_grow(ptrset_t* s) {
  ptrset_t bigger = {0};
  bigger.cap = s->cap ? s->cap * 2 : 64;
  while (s->count * 2 >= bigger.cap) bigger.cap *= 2;
  bigger.slots = calloc(bigger.cap, sizeof(void*));
  if (bigger.slots == NULL) return 0;
  for (size_t i = 0; i < s->cap; i++) {
    if (s->slots[i] != NULL && s->slots[i] != TOMBSTONE) ptrset_add(&bigger, s->slots[i]);
  }
  free(s->slots);
  *s = bigger;
  return 1;
}

static int ptrset_add(ptrset_t* s, void* p) {
  if ((s->used + 1) * 2 > s->cap && !ptrset_grow(s)) return 0;
  size_t i = ptr_hash(p, s->cap);
  while (s->slots[i] != NULL && s->slots[i] != TOMBSTONE) i = (i + 1) & (s->cap - 1);
  if (s->slots[i] == NULL) s->used++;
  s->slots[i] = p;
  s->count++;
  return 1;
}

static int ptrset_remove(ptrset_t* s, const void* p) {
  if (p == NULL || s->cap == 0) return 0;
  for (size_t i = ptr_hash(p, s->cap);; i = (i + 1) & (s->cap - 1)) {
    if (s->slots[i] == NULL) return 0;
    if (s->slots[i] == p) {
      s->slots[i] = TOMBSTONE;
      s->count--;
      return 1;
    }
  }
}

static void ptrset_clear(ptrset_t* s) {
  free(s->slots);
  memset(s, 0, sizeof *s);
}

/* Status of a call that needs an initialised runtime. */
static NRT_STATUS check_state(const char* call) {
  if (g_state == STATE_NEW) return FAIL(NRT_UNINITIALIZED, "%s called before nrt_init", call);
  if (g_state == STATE_CLOSED) return FAIL(NRT_CLOSED, "%s called after nrt_close", call);
  return NRT_SUCCESS;
}

/* For void functions: a call in the wrong state is a contract violation, not a status. */
static void check_state_void(const char* call) {
  if (check_state(call) != NRT_SUCCESS) g_violations++;
}

static int env_int(const char* name, int fallback, int* out) {
  const char* v = getenv(name);
  if (v == NULL || *v == '\0') {
    *out = fallback;
    return 1;
  }
  char* end = NULL;
  errno = 0;
  long x = strtol(v, &end, 10);
  if (errno != 0 || *end != '\0' || x < 0 || x > INT_MAX) return 0;
  *out = (int)x;
  return 1;
}

static int total_cores_from_env(int* total) {
  if (!env_int("FAKE_NRT_TOTAL_CORES", 2, total) || *total < 1 || *total > MAX_CORES) {
    set_error("FAKE_NRT_TOTAL_CORES='%s' is not a core count in 1..%d",
              getenv("FAKE_NRT_TOTAL_CORES"), MAX_CORES);
    return 0;
  }
  return 1;
}

/* Parses the visible core range from the environment; 0 (error set) when malformed. */
static int visible_from_env(int total, int* first, int* count) {
  const char* v = getenv("NEURON_RT_VISIBLE_CORES");
  if (v != NULL && *v != '\0') {
    char* end = NULL;
    errno = 0;
    long a = strtol(v, &end, 10);
    long b = a;
    int ok = errno == 0 && end != v && a >= 0 && v[0] >= '0' && v[0] <= '9';
    if (ok && *end == '-') {
      const char* rest = end + 1;
      ok = *rest >= '0' && *rest <= '9';
      b = strtol(rest, &end, 10);
    }
    ok = ok && errno == 0 && *end == '\0' && b >= a;
    if (!ok) {
      set_error("NEURON_RT_VISIBLE_CORES='%s' is not a core index or a range a-b", v);
      return 0;
    }
    if (b >= total) {
      set_error("NEURON_RT_VISIBLE_CORES='%s' names cores beyond the %d of this device", v, total);
      return 0;
    }
    *first = (int)a;
    *count = (int)(b - a + 1);
    return 1;
  }
  int n = 0;
  if (!env_int("NEURON_RT_NUM_CORES", total, &n) || n < 1 || n > total) {
    set_error("NEURON_RT_NUM_CORES='%s' is not a core count in 1..%d",
              getenv("NEURON_RT_NUM_CORES"), total);
    return 0;
  }
  *first = 0;
  *count = n;
  return 1;
}

static void release_core_locks(void) {
  for (int i = 0; i < g_lock_fd_count; i++) close(g_lock_fds[i]);
  g_lock_fd_count = 0;
}

static NRT_STATUS take_core_locks(void) {
  const char* dir = getenv("FAKE_NRT_LOCK_DIR");
  if (dir == NULL || *dir == '\0') return NRT_SUCCESS;
  for (int i = 0; i < g_visible_count; i++) {
    char path[4096];
    snprintf(path, sizeof path, "%s/nc%d.lock", dir, g_first_visible + i);
    int fd = open(path, O_CREAT | O_RDWR | O_CLOEXEC, 0644);
    if (fd < 0) {
      release_core_locks();
      return FAIL(NRT_FAILURE, "nrt_init: cannot open core lock %s: %s", path, strerror(errno));
    }
    if (flock(fd, LOCK_EX | LOCK_NB) != 0) {
      close(fd);
      release_core_locks();
      return FAIL(NRT_EXEC_NC_BUSY, "nrt_init: NeuronCore %d is in use by another process",
                  g_first_visible + i);
    }
    g_lock_fds[g_lock_fd_count++] = fd;
  }
  return NRT_SUCCESS;
}

static NRT_STATUS check_vnc(const char* call, int32_t vnc, int32_t vnc_count) {
  int32_t n = vnc_count <= 0 ? 1 : vnc_count;
  if (vnc < 0 || vnc >= g_visible_count || n > g_visible_count - vnc) {
    return FAIL(NRT_INVALID, "%s: vnc %d (count %d) is outside the %d visible core(s)", call,
                (int)vnc, (int)vnc_count, g_visible_count);
  }
  return NRT_SUCCESS;
}

static void copy_name(char dst[NRT_TENSOR_NAME_MAX], const char* src) {
  snprintf(dst, NRT_TENSOR_NAME_MAX, "%s", src ? src : "");
}

static void storage_unref(storage_t* st) {
  if (--st->refs > 0) return;
  g_core_bytes[st->core] -= st->size;
  free(st->data);
  free(st);
}

static void model_unref(nrt_model_t* m) {
  if (--m->refs > 0) return;
  free(m->io);
  free(m->neff);
  free(m);
}

static int tensor_live(const nrt_tensor_t* t) { return ptrset_has(&g_tensors, t); }

/* ---- NEFF parsing ------------------------------------------------------------------------ */

static size_t dtype_itemsize(long code) {
  switch (code) {
    case 0xA: case 0x8: case 0x9: return 4;               /* f32 i32 u32 */
    case 0x7: case 0x6: case 0x4: case 0x5: return 2;     /* f16 bf16 i16 u16 */
    case 0x2: case 0x3: case 0xD: case 0xE: case 0xF: return 1; /* i8 u8 fp8 */
    case 0xC: case 0x1: return 8;                         /* i64 u64 */
    default: return 0;
  }
}

static int parse_octal(const unsigned char* p, size_t n, size_t* out) {
  size_t i = 0;
  size_t v = 0;
  while (i < n && p[i] == ' ') i++;
  int digits = 0;
  for (; i < n && p[i] >= '0' && p[i] <= '7'; i++, digits++) {
    if (v > (SIZE_MAX >> 3)) return 0;
    v = (v << 3) | (size_t)(p[i] - '0');
  }
  for (; i < n; i++) {
    if (p[i] != ' ' && p[i] != '\0') return 0;
  }
  if (digits == 0) return 0;
  *out = v;
  return 1;
}

/* Finds spiky_io.txt in the ustar archive; 0 with the error set when the archive is bad. */
static int find_io_member(const unsigned char* tar, size_t n, const unsigned char** data,
                          size_t* size) {
  static const unsigned char zero[512];
  size_t off = 0;
  while (off + 512 <= n) {
    const unsigned char* h = tar + off;
    if (memcmp(h, zero, 512) == 0) break; /* end-of-archive marker */
    if (memcmp(h + 257, "ustar", 5) != 0) {
      set_error("nrt_load: NEFF archive member at byte %zu is not a ustar header", 1024 + off);
      return 0;
    }
    size_t stored = 0;
    if (!parse_octal(h + 148, 8, &stored)) {
      set_error("nrt_load: NEFF archive header at byte %zu has no checksum", 1024 + off);
      return 0;
    }
    size_t sum = 0;
    for (size_t i = 0; i < 512; i++) sum += (i >= 148 && i < 156) ? ' ' : h[i];
    if (sum != stored) {
      set_error("nrt_load: NEFF archive header at byte %zu has a bad checksum", 1024 + off);
      return 0;
    }
    size_t len = 0;
    if (!parse_octal(h + 124, 12, &len)) {
      set_error("nrt_load: NEFF archive header at byte %zu has a bad size", 1024 + off);
      return 0;
    }
    if (len > n - off - 512) {
      set_error("nrt_load: NEFF archive member at byte %zu is truncated", 1024 + off);
      return 0;
    }
    char name[257];
    if (h[345] != '\0') {
      snprintf(name, sizeof name, "%.155s/%.100s", (const char*)h + 345, (const char*)h);
    } else {
      snprintf(name, sizeof name, "%.100s", (const char*)h);
    }
    char type = (char)h[156];
    if ((type == '0' || type == '\0') &&
        (strcmp(name, "spiky_io.txt") == 0 || strcmp(name, "./spiky_io.txt") == 0)) {
      *data = h + 512;
      *size = len;
      return 1;
    }
    size_t padded = (len + 511) / 512 * 512;
    if (padded > n - off - 512) break;
    off += 512 + padded;
  }
  set_error("nrt_load: NEFF has no spiky_io.txt member");
  return 0;
}

static int parse_ulong(const char* tok, unsigned long max, unsigned long* out) {
  if (tok == NULL || *tok < '0' || *tok > '9') return 0;
  char* end = NULL;
  errno = 0;
  unsigned long v = strtoul(tok, &end, 10);
  if (errno != 0 || *end != '\0' || v > max) return 0;
  *out = v;
  return 1;
}

/* Parses spiky_io.txt into `m`; returns a status with the error set. */
static NRT_STATUS parse_io(char* text, nrt_model_t* m) {
  int have_id = 0;
  int cap = 0;
  int line_no = 0;
  char* save_line = NULL;
  /* strtok_r skips empty lines, which is what the grammar wants. */
  for (char* line = strtok_r(text, "\n", &save_line); line != NULL;
       line = strtok_r(NULL, "\n", &save_line)) {
    line_no++;
    size_t len = strlen(line);
    if (len > 0 && line[len - 1] == '\r') line[--len] = '\0';
    char* p = line;
    while (*p == ' ' || *p == '\t') p++;
    if (*p == '\0' || *p == '#') continue;
    if (strncmp(p, "id", 2) == 0 && (p[2] == ' ' || p[2] == '\t')) {
      char* v = p + 2;
      while (*v == ' ' || *v == '\t') v++;
      char* e = v + strlen(v);
      while (e > v && (e[-1] == ' ' || e[-1] == '\t')) *--e = '\0';
      if (have_id || *v == '\0' || strlen(v) >= NRT_TENSOR_NAME_MAX) {
        return FAIL(NRT_INVALID, "nrt_load: spiky_io.txt line %d: bad or repeated id", line_no);
      }
      copy_name(m->id, v);
      have_id = 1;
      continue;
    }
    char* toks[4 + MAX_NDIM + 1];
    int nt = 0;
    char* save_tok = NULL;
    for (char* t = strtok_r(p, " \t", &save_tok); t != NULL; t = strtok_r(NULL, " \t", &save_tok)) {
      if (nt == (int)(sizeof toks / sizeof toks[0])) {
        return FAIL(NRT_INVALID, "nrt_load: spiky_io.txt line %d: too many fields", line_no);
      }
      toks[nt++] = t;
    }
    if (nt == 0) continue;
    unsigned long v = 0;
    if (strcmp(toks[0], "collectives") == 0) {
      if (nt != 2 || !parse_ulong(toks[1], 1, &v)) {
        return FAIL(NRT_INVALID, "nrt_load: spiky_io.txt line %d: collectives takes 0 or 1",
                    line_no);
      }
      m->collectives = (int)v;
      continue;
    }
    int usage = strcmp(toks[0], "input") == 0 ? 0 : strcmp(toks[0], "output") == 0 ? 1 : -1;
    if (usage < 0) {
      return FAIL(NRT_INVALID, "nrt_load: spiky_io.txt line %d: unknown keyword '%s'", line_no,
                  toks[0]);
    }
    unsigned long dtype = 0;
    unsigned long ndim = 0;
    if (nt < 4 || !parse_ulong(toks[2], 255, &dtype) || dtype_itemsize((long)dtype) == 0 ||
        !parse_ulong(toks[3], MAX_NDIM, &ndim) || nt != 4 + (int)ndim) {
      return FAIL(NRT_INVALID,
                  "nrt_load: spiky_io.txt line %d: expected '%s <name> <dtype code> <ndim> <dims>'"
                  " with a known dtype and ndim <= %d",
                  line_no, toks[0], MAX_NDIM);
    }
    if (nt < 2 || strlen(toks[1]) >= NRT_TENSOR_NAME_MAX) {
      return FAIL(NRT_INVALID, "nrt_load: spiky_io.txt line %d: name too long", line_no);
    }
    for (int i = 0; i < m->n_io; i++) {
      if (m->io[i].usage == usage && strcmp(m->io[i].name, toks[1]) == 0) {
        return FAIL(NRT_INVALID, "nrt_load: spiky_io.txt line %d: %s '%s' declared twice",
                    line_no, toks[0], toks[1]);
      }
    }
    if (m->n_io == cap) {
      cap = cap ? cap * 2 : 8;
      io_entry_t* grown = realloc(m->io, (size_t)cap * sizeof(io_entry_t));
      if (grown == NULL) return FAIL(NRT_RESOURCE, "nrt_load: out of host memory");
      m->io = grown;
    }
    io_entry_t* e = &m->io[m->n_io];
    memset(e, 0, sizeof *e);
    copy_name(e->name, toks[1]);
    e->usage = usage;
    e->dtype = (int)dtype;
    e->ndim = (uint32_t)ndim;
    size_t size = dtype_itemsize((long)dtype);
    for (unsigned long d = 0; d < ndim; d++) {
      unsigned long dim = 0;
      if (!parse_ulong(toks[4 + d], UINT32_MAX, &dim) || dim == 0) {
        return FAIL(NRT_INVALID,
                    "nrt_load: spiky_io.txt line %d: dim %lu of '%s' must be an integer >= 1",
                    line_no, d, toks[1]);
      }
      if (size > SIZE_MAX / dim) {
        return FAIL(NRT_INVALID, "nrt_load: spiky_io.txt line %d: '%s' is too large", line_no,
                    toks[1]);
      }
      e->shape[d] = (uint32_t)dim;
      size *= dim;
    }
    e->size = size;
    m->n_io++;
  }
  if (!have_id) return FAIL(NRT_INVALID, "nrt_load: spiky_io.txt has no 'id' line");
  return NRT_SUCCESS;
}

static NRT_STATUS parse_neff(const void* bytes, size_t size, nrt_model_t* m) {
  const unsigned char* b = bytes;
  if (b == NULL) return FAIL(NRT_INVALID, "nrt_load: NEFF bytes are NULL");
  if (size < 4 || memcmp(b, "NEFF", 4) != 0) {
    return FAIL(NRT_UNSUPPORTED_NEFF_VERSION, "nrt_load: not a NEFF (bad magic)");
  }
  if (size < 1024) {
    return FAIL(NRT_INVALID, "nrt_load: NEFF of %zu bytes is shorter than its 1024-byte header",
                size);
  }
  uint32_t version = (uint32_t)b[4] | (uint32_t)b[5] << 8 | (uint32_t)b[6] << 16 |
                     (uint32_t)b[7] << 24;
  if (version != 1) {
    return FAIL(NRT_UNSUPPORTED_NEFF_VERSION, "nrt_load: NEFF format version %u, expected 1",
                version);
  }
  const unsigned char* io = NULL;
  size_t io_size = 0;
  if (!find_io_member(b + 1024, size - 1024, &io, &io_size)) return NRT_INVALID;
  char* text = malloc(io_size + 1);
  if (text == NULL) return FAIL(NRT_RESOURCE, "nrt_load: out of host memory");
  memcpy(text, io, io_size);
  text[io_size] = '\0';
  NRT_STATUS st = strlen(text) != io_size
                      ? FAIL(NRT_INVALID, "nrt_load: spiky_io.txt contains a NUL byte")
                      : parse_io(text, m);
  free(text);
  return st;
}

/* ---- lifecycle --------------------------------------------------------------------------- */

#ifndef FAKE_NRT_OMIT_nrt_init
EXPORT NRT_STATUS nrt_init(int framework, const char* fw_version, const char* fal_version) {
  (void)framework;
  (void)fw_version;
  (void)fal_version;
  lock();
  g_calls[SYM_nrt_init]++;
  NRT_STATUS st = NRT_SUCCESS;
  if (g_state == STATE_INIT) {
    st = FAIL(NRT_FAILURE, "nrt_init: the runtime is already initialised (one per process)");
  } else if (g_state == STATE_CLOSED) {
    st = FAIL(NRT_FAILURE,
              "nrt_init: re-initialising after nrt_close is not supported (one runtime per "
              "process)");
  } else if (!total_cores_from_env(&g_total_cores) ||
             !visible_from_env(g_total_cores, &g_first_visible, &g_visible_count)) {
    st = NRT_INVALID;
  } else {
    st = take_core_locks();
    if (st == NRT_SUCCESS) g_state = STATE_INIT;
  }
  unlock();
  return st;
}
#endif

#ifndef FAKE_NRT_OMIT_nrt_close
EXPORT void nrt_close(void) {
  lock();
  g_calls[SYM_nrt_close]++;
  if (g_state != STATE_INIT) {
    set_error("nrt_close called %s", g_state == STATE_NEW ? "before nrt_init" : "twice");
    g_violations++;
  } else {
    release_core_locks();
    g_state = STATE_CLOSED;
  }
  unlock();
}
#endif

#ifndef FAKE_NRT_OMIT_nrt_get_total_nc_count
EXPORT NRT_STATUS nrt_get_total_nc_count(uint32_t* count) {
  lock();
  g_calls[SYM_nrt_get_total_nc_count]++;
  NRT_STATUS st = NRT_SUCCESS;
  int total = 0;
  if (count == NULL) {
    st = FAIL(NRT_INVALID, "nrt_get_total_nc_count: count is NULL");
  } else if (g_state == STATE_INIT) {
    *count = (uint32_t)g_total_cores;
  } else if (!total_cores_from_env(&total)) {
    st = NRT_INVALID;
  } else {
    *count = (uint32_t)total;
  }
  unlock();
  return st;
}
#endif

#ifndef FAKE_NRT_OMIT_nrt_get_visible_nc_count
EXPORT NRT_STATUS nrt_get_visible_nc_count(uint32_t* count) {
  lock();
  g_calls[SYM_nrt_get_visible_nc_count]++;
  NRT_STATUS st = NRT_SUCCESS;
  int total = 0;
  int first = 0;
  int n = 0;
  if (count == NULL) {
    st = FAIL(NRT_INVALID, "nrt_get_visible_nc_count: count is NULL");
  } else if (g_state == STATE_INIT) {
    *count = (uint32_t)g_visible_count;
  } else if (!total_cores_from_env(&total) || !visible_from_env(total, &first, &n)) {
    st = NRT_INVALID;
  } else {
    *count = (uint32_t)n;
  }
  unlock();
  return st;
}
#endif

/* ---- models ------------------------------------------------------------------------------ */

static NRT_STATUS load_model(const char* call, const void* neff, size_t size, int32_t vnc,
                             int32_t vnc_count, int collective_load, uint32_t rank,
                             uint32_t world_size, nrt_model_t** out) {
  NRT_STATUS st = check_state(call);
  if (st != NRT_SUCCESS) return st;
  if (out == NULL) return FAIL(NRT_INVALID, "%s: model out-pointer is NULL", call);
  st = check_vnc(call, vnc, vnc_count);
  if (st != NRT_SUCCESS) return st;
  if (collective_load && (world_size == 0 || rank >= world_size)) {
    return FAIL(NRT_INVALID, "%s: rank %u is not within world size %u", call, rank, world_size);
  }
  nrt_model_t* m = calloc(1, sizeof *m);
  if (m == NULL) return FAIL(NRT_RESOURCE, "%s: out of host memory", call);
  st = parse_neff(neff, size, m);
  if (st == NRT_SUCCESS && m->collectives && !collective_load) {
    st = FAIL(NRT_INVALID,
              "nrt_load: NEFF '%s' contains collectives; load it with nrt_load_collectives",
              m->id);
  }
  if (st == NRT_SUCCESS && g_fail_next_load != 0) {
    st = FAIL(g_fail_next_load, "%s: injected status %d for NEFF '%s'", call, g_fail_next_load,
              m->id);
    g_fail_next_load = 0;
  }
  if (st == NRT_SUCCESS) {
    m->neff = malloc(size);
    if (m->neff == NULL) {
      st = FAIL(NRT_RESOURCE, "%s: out of host memory", call);
    } else {
      memcpy(m->neff, neff, size);
      m->neff_size = size;
    }
  }
  if (st == NRT_SUCCESS && !ptrset_add(&g_models, m)) {
    st = FAIL(NRT_RESOURCE, "%s: out of host memory", call);
  }
  if (st != NRT_SUCCESS) {
    free(m->io);
    free(m->neff);
    free(m);
    return st;
  }
  m->serial = g_next_serial++;
  m->vnc = vnc;
  m->rank = collective_load ? (int32_t)rank : -1;
  m->world_size = collective_load ? (int32_t)world_size : -1;
  m->refs = 1;
  *out = m;
  return NRT_SUCCESS;
}

#ifndef FAKE_NRT_OMIT_nrt_load
EXPORT NRT_STATUS nrt_load(const void* neff_bytes, size_t size, int32_t vnc, int32_t vnc_count,
                           nrt_model_t** model) {
  lock();
  g_calls[SYM_nrt_load]++;
  NRT_STATUS st = load_model("nrt_load", neff_bytes, size, vnc, vnc_count, 0, 0, 0, model);
  unlock();
  return st;
}
#endif

#ifndef FAKE_NRT_OMIT_nrt_load_collectives
EXPORT NRT_STATUS nrt_load_collectives(const void* neff_bytes, size_t size, int32_t vnc,
                                       int32_t vnc_count, uint32_t rank, uint32_t world_size,
                                       nrt_model_t** model) {
  lock();
  g_calls[SYM_nrt_load_collectives]++;
  NRT_STATUS st = load_model("nrt_load_collectives", neff_bytes, size, vnc, vnc_count, 1, rank,
                             world_size, model);
  unlock();
  return st;
}
#endif

#ifndef FAKE_NRT_OMIT_nrt_unload
EXPORT NRT_STATUS nrt_unload(nrt_model_t* model) {
  lock();
  g_calls[SYM_nrt_unload]++;
  NRT_STATUS st = check_state("nrt_unload");
  if (st == NRT_SUCCESS) {
    if (!ptrset_remove(&g_models, model)) {
      g_double_unloads++;
      st = FAIL(NRT_INVALID_HANDLE, "nrt_unload: model %p is not loaded (unloaded twice?)",
                (void*)model);
    } else {
      model_unref(model);
    }
  }
  unlock();
  return st;
}
#endif

#ifndef FAKE_NRT_OMIT_nrt_get_model_tensor_info
EXPORT NRT_STATUS nrt_get_model_tensor_info(nrt_model_t* model, nrt_tensor_info_array_t** info) {
  lock();
  g_calls[SYM_nrt_get_model_tensor_info]++;
  NRT_STATUS st = check_state("nrt_get_model_tensor_info");
  if (st == NRT_SUCCESS && info == NULL) {
    st = FAIL(NRT_INVALID, "nrt_get_model_tensor_info: out-pointer is NULL");
  } else if (st == NRT_SUCCESS && !ptrset_has(&g_models, model)) {
    st = FAIL(NRT_INVALID_HANDLE, "nrt_get_model_tensor_info: model %p is not loaded",
              (void*)model);
  }
  if (st == NRT_SUCCESS) {
    /* One block: the array, then every shape. */
    size_t n = (size_t)model->n_io;
    size_t head = sizeof(nrt_tensor_info_array_t) + n * sizeof(nrt_tensor_info_t);
    nrt_tensor_info_array_t* a = calloc(1, head + n * MAX_NDIM * sizeof(uint32_t));
    if (a == NULL || !ptrset_add(&g_infos, a)) {
      free(a);
      st = FAIL(NRT_RESOURCE, "nrt_get_model_tensor_info: out of host memory");
    } else {
      uint32_t* shapes = (uint32_t*)((unsigned char*)a + head);
      a->tensor_count = n;
      for (size_t i = 0; i < n; i++) {
        const io_entry_t* e = &model->io[i];
        nrt_tensor_info_t* t = &a->tensor_array[i];
        copy_name(t->name, e->name);
        t->usage = e->usage;
        t->size = e->size;
        t->dtype = e->dtype;
        t->shape = shapes + i * MAX_NDIM;
        memcpy(t->shape, e->shape, e->ndim * sizeof(uint32_t));
        t->ndim = e->ndim;
      }
      *info = a;
    }
  }
  unlock();
  return st;
}
#endif

#ifndef FAKE_NRT_OMIT_nrt_free_model_tensor_info
EXPORT NRT_STATUS nrt_free_model_tensor_info(nrt_tensor_info_array_t* info) {
  lock();
  g_calls[SYM_nrt_free_model_tensor_info]++;
  NRT_STATUS st = check_state("nrt_free_model_tensor_info");
  if (st == NRT_SUCCESS) {
    if (!ptrset_remove(&g_infos, info)) {
      st = FAIL(NRT_INVALID_HANDLE, "nrt_free_model_tensor_info: %p is not a live info array",
                (void*)info);
    } else {
      free(info);
    }
  }
  unlock();
  return st;
}
#endif

/* ---- tensors ----------------------------------------------------------------------------- */

static NRT_STATUS new_tensor(const char* call, storage_t* st, size_t offset, size_t size,
                             const char* name, nrt_tensor_t** out) {
  nrt_tensor_t* t = calloc(1, sizeof *t);
  if (t == NULL || !ptrset_add(&g_tensors, t)) {
    free(t);
    return FAIL(NRT_RESOURCE, "%s: out of host memory", call);
  }
  t->serial = g_next_serial++;
  t->st = st;
  t->offset = offset;
  t->size = size;
  copy_name(t->name, name);
  st->refs++;
  *out = t;
  return NRT_SUCCESS;
}

#ifndef FAKE_NRT_OMIT_nrt_tensor_allocate
EXPORT NRT_STATUS nrt_tensor_allocate(int placement, int vnc, size_t size, const char* name,
                                      nrt_tensor_t** tensor) {
  lock();
  g_calls[SYM_nrt_tensor_allocate]++;
  NRT_STATUS st = check_state("nrt_tensor_allocate");
  if (st == NRT_SUCCESS && tensor == NULL) {
    st = FAIL(NRT_INVALID, "nrt_tensor_allocate: out-pointer is NULL");
  } else if (st == NRT_SUCCESS && placement != 0 && placement != 1) {
    st = FAIL(NRT_INVALID, "nrt_tensor_allocate: placement %d is not DEVICE (0) or HOST (1)",
              placement);
  } else if (st == NRT_SUCCESS && size == 0) {
    st = FAIL(NRT_INVALID, "nrt_tensor_allocate: size 0 for tensor '%s'", name ? name : "");
  } else if (st == NRT_SUCCESS) {
    st = check_vnc("nrt_tensor_allocate", vnc, 1);
  }
  if (st == NRT_SUCCESS) {
    int core = g_first_visible + vnc;
    if (g_fail_alloc_countdown > 0 && --g_fail_alloc_countdown == 0) {
      if (g_fail_alloc_status == NRT_RESOURCE) {
        st = FAIL(NRT_RESOURCE, "nrt_tensor_allocate: injected RESOURCE for %zu bytes ('%s')",
                  size, name ? name : "");
      } else {
        st = FAIL(g_fail_alloc_status,
                  "nrt_tensor_allocate: injected status %d for %zu bytes ('%s')",
                  g_fail_alloc_status, size, name ? name : "");
      }
    } else if (g_capacity_per_core != 0 &&
               size > g_capacity_per_core - g_core_bytes[core]) {
      st = FAIL(NRT_RESOURCE,
                "nrt_tensor_allocate: %zu bytes for '%s' do not fit on core %d (%zu of %zu used)",
                size, name ? name : "", core, g_core_bytes[core], g_capacity_per_core);
    }
  }
  if (st == NRT_SUCCESS) {
    storage_t* s = calloc(1, sizeof *s);
    unsigned char* data = calloc(1, size);
    if (s == NULL || data == NULL) {
      free(s);
      free(data);
      st = FAIL(NRT_RESOURCE, "nrt_tensor_allocate: host calloc of %zu bytes failed", size);
    } else {
      s->data = data;
      s->size = size;
      s->core = g_first_visible + vnc;
      st = new_tensor("nrt_tensor_allocate", s, 0, size, name, tensor);
      if (st == NRT_SUCCESS) {
        g_core_bytes[s->core] += size;
      } else {
        free(data);
        free(s);
      }
    }
  }
  unlock();
  return st;
}
#endif

#ifndef FAKE_NRT_OMIT_nrt_tensor_allocate_slice
EXPORT NRT_STATUS nrt_tensor_allocate_slice(const nrt_tensor_t* src, size_t offset, size_t size,
                                            const char* name, nrt_tensor_t** slice) {
  lock();
  g_calls[SYM_nrt_tensor_allocate_slice]++;
  NRT_STATUS st = check_state("nrt_tensor_allocate_slice");
  if (st == NRT_SUCCESS && slice == NULL) {
    st = FAIL(NRT_INVALID, "nrt_tensor_allocate_slice: out-pointer is NULL");
  } else if (st == NRT_SUCCESS && !tensor_live(src)) {
    st = FAIL(NRT_INVALID_HANDLE, "nrt_tensor_allocate_slice: source %p is not a live tensor",
              (const void*)src);
  } else if (st == NRT_SUCCESS && (size == 0 || offset > src->size || size > src->size - offset)) {
    st = FAIL(NRT_INVALID,
              "nrt_tensor_allocate_slice: slice [%zu, +%zu) of '%s' (%zu bytes) is empty or "
              "out of bounds",
              offset, size, src->name, src->size);
  }
  if (st == NRT_SUCCESS) {
    st = new_tensor("nrt_tensor_allocate_slice", src->st, src->offset + offset, size, name,
                    slice);
  }
  unlock();
  return st;
}
#endif

#ifndef FAKE_NRT_OMIT_nrt_tensor_free
EXPORT void nrt_tensor_free(nrt_tensor_t** tensor) {
  lock();
  g_calls[SYM_nrt_tensor_free]++;
  check_state_void("nrt_tensor_free");
  if (tensor != NULL && *tensor != NULL) {
    nrt_tensor_t* t = *tensor;
    if (ptrset_remove(&g_tensors, t)) {
      storage_unref(t->st);
      free(t);
    } else {
      set_error("nrt_tensor_free: %p is not a live tensor (freed twice?)", (void*)t);
      g_violations++;
    }
    *tensor = NULL;
  }
  unlock();
}
#endif

/* Validates a tensor and a byte range of it. */
static NRT_STATUS check_range(const char* call, const nrt_tensor_t* t, size_t offset,
                              size_t size) {
  if (!tensor_live(t)) {
    return FAIL(NRT_INVALID_HANDLE, "%s: %p is not a live tensor", call, (const void*)t);
  }
  if (offset > t->size || size > t->size - offset) {
    return FAIL(NRT_INVALID, "%s: range [%zu, %zu + %zu) is past the end of '%s' (%zu bytes)",
                call, offset, offset, size, t->name, t->size);
  }
  return NRT_SUCCESS;
}

#ifndef FAKE_NRT_OMIT_nrt_tensor_write
EXPORT NRT_STATUS nrt_tensor_write(nrt_tensor_t* tensor, const void* buf, size_t offset,
                                   size_t size) {
  timed_t timed = transfer_begin(1, size);
  lock();
  g_calls[SYM_nrt_tensor_write]++;
  NRT_STATUS st = check_state("nrt_tensor_write");
  if (st == NRT_SUCCESS) st = check_range("nrt_tensor_write", tensor, offset, size);
  if (st == NRT_SUCCESS && buf == NULL && size > 0) {
    st = FAIL(NRT_INVALID, "nrt_tensor_write: buffer is NULL");
  }
  storage_t* pinned = NULL;
  if (st == NRT_SUCCESS && size > 0) {
    pinned = tensor->st; /* copied outside the lock (a large copy must not stall other calls) */
    pinned->refs++;
    g_bytes_written += size;
  }
  unsigned char* dst = pinned != NULL ? pinned->data + tensor->offset + offset : NULL;
  unlock();
  if (pinned != NULL) {
    memcpy(dst, buf, size);
    lock();
    storage_unref(pinned);
    unlock();
  }
  transfer_end(timed, st);
  return st;
}
#endif

#ifndef FAKE_NRT_OMIT_nrt_tensor_read
EXPORT NRT_STATUS nrt_tensor_read(const nrt_tensor_t* tensor, void* buf, size_t offset,
                                  size_t size) {
  timed_t timed = transfer_begin(0, size);
  lock();
  g_calls[SYM_nrt_tensor_read]++;
  NRT_STATUS st = check_state("nrt_tensor_read");
  if (st == NRT_SUCCESS) st = check_range("nrt_tensor_read", tensor, offset, size);
  if (st == NRT_SUCCESS && buf == NULL && size > 0) {
    st = FAIL(NRT_INVALID, "nrt_tensor_read: buffer is NULL");
  }
  storage_t* pinned = NULL;
  if (st == NRT_SUCCESS && size > 0) {
    pinned = tensor->st; /* copied outside the lock, as in nrt_tensor_write */
    pinned->refs++;
    g_bytes_read += size;
  }
  const unsigned char* src = pinned != NULL ? pinned->data + tensor->offset + offset : NULL;
  unlock();
  if (pinned != NULL) {
    memcpy(buf, src, size);
    lock();
    storage_unref(pinned);
    unlock();
  }
  transfer_end(timed, st);
  return st;
}
#endif

#ifndef FAKE_NRT_OMIT_nrt_tensor_copy
EXPORT NRT_STATUS nrt_tensor_copy(const nrt_tensor_t* src, size_t src_offset, nrt_tensor_t* dst,
                                  size_t dst_offset, size_t size) {
  lock();
  g_calls[SYM_nrt_tensor_copy]++;
  NRT_STATUS st = check_state("nrt_tensor_copy");
  if (st == NRT_SUCCESS) st = check_range("nrt_tensor_copy (source)", src, src_offset, size);
  if (st == NRT_SUCCESS) st = check_range("nrt_tensor_copy (destination)", dst, dst_offset, size);
  if (st == NRT_SUCCESS && src->st->core != dst->st->core) {
    st = FAIL(NRT_INVALID, "nrt_tensor_copy: '%s' (core %d) and '%s' (core %d) are on different "
              "cores", src->name, src->st->core, dst->name, dst->st->core);
  }
  if (st == NRT_SUCCESS && size > 0) {
    memmove(dst->st->data + dst->offset + dst_offset, src->st->data + src->offset + src_offset,
            size);
  }
  unlock();
  if (st == NRT_SUCCESS) charge_device(size);
  return st;
}
#endif

#ifndef FAKE_NRT_OMIT_nrt_tensor_memset
EXPORT NRT_STATUS nrt_tensor_memset(nrt_tensor_t* tensor, uint64_t offset, int value,
                                    size_t size) {
  lock();
  g_calls[SYM_nrt_tensor_memset]++;
  NRT_STATUS st = check_state("nrt_tensor_memset");
  if (st == NRT_SUCCESS && offset > SIZE_MAX) {
    st = FAIL(NRT_INVALID, "nrt_tensor_memset: offset %llu is too large",
              (unsigned long long)offset);
  }
  if (st == NRT_SUCCESS) st = check_range("nrt_tensor_memset", tensor, (size_t)offset, size);
  if (st == NRT_SUCCESS && size > 0) {
    memset(tensor->st->data + tensor->offset + offset, value, size);
  }
  unlock();
  if (st == NRT_SUCCESS) charge_device(size);
  return st;
}
#endif

#ifndef FAKE_NRT_OMIT_nrt_tensor_get_size
EXPORT size_t nrt_tensor_get_size(const nrt_tensor_t* tensor) {
  lock();
  g_calls[SYM_nrt_tensor_get_size]++;
  size_t size = 0;
  if (check_state("nrt_tensor_get_size") != NRT_SUCCESS) {
    g_violations++;
  } else if (!tensor_live(tensor)) {
    set_error("nrt_tensor_get_size: %p is not a live tensor", (const void*)tensor);
    g_violations++;
  } else {
    size = tensor->size;
  }
  unlock();
  return size;
}
#endif

#ifndef FAKE_NRT_OMIT_nrt_tensor_get_va
EXPORT void* nrt_tensor_get_va(const nrt_tensor_t* tensor) {
  lock();
  g_calls[SYM_nrt_tensor_get_va]++;
  void* va = NULL;
  if (check_state("nrt_tensor_get_va") != NRT_SUCCESS) {
    g_violations++;
  } else if (!tensor_live(tensor)) {
    set_error("nrt_tensor_get_va: %p is not a live tensor", (const void*)tensor);
    g_violations++;
  } else {
    va = tensor->st->data + tensor->offset;
  }
  unlock();
  return va;
}
#endif

/* ---- tensor sets ------------------------------------------------------------------------- */

static void set_free(nrt_tensor_set_t* s) {
  free(s->entries);
  free(s);
}

#ifndef FAKE_NRT_OMIT_nrt_allocate_tensor_set
EXPORT NRT_STATUS nrt_allocate_tensor_set(nrt_tensor_set_t** result) {
  lock();
  g_calls[SYM_nrt_allocate_tensor_set]++;
  NRT_STATUS st = check_state("nrt_allocate_tensor_set");
  if (st == NRT_SUCCESS && result == NULL) {
    st = FAIL(NRT_INVALID, "nrt_allocate_tensor_set: out-pointer is NULL");
  }
  if (st == NRT_SUCCESS) {
    nrt_tensor_set_t* s = calloc(1, sizeof *s);
    if (s == NULL || !ptrset_add(&g_sets, s)) {
      free(s);
      st = FAIL(NRT_RESOURCE, "nrt_allocate_tensor_set: out of host memory");
    } else {
      *result = s;
    }
  }
  unlock();
  return st;
}
#endif

#ifndef FAKE_NRT_OMIT_nrt_destroy_tensor_set
EXPORT void nrt_destroy_tensor_set(nrt_tensor_set_t** tensor_set) {
  lock();
  g_calls[SYM_nrt_destroy_tensor_set]++;
  check_state_void("nrt_destroy_tensor_set");
  if (tensor_set != NULL && *tensor_set != NULL) {
    if (ptrset_remove(&g_sets, *tensor_set)) {
      set_free(*tensor_set);
    } else {
      set_error("nrt_destroy_tensor_set: %p is not a live tensor set (destroyed twice?)",
                (void*)*tensor_set);
      g_violations++;
    }
    *tensor_set = NULL;
  }
  unlock();
}
#endif

#ifndef FAKE_NRT_OMIT_nrt_add_tensor_to_tensor_set
EXPORT NRT_STATUS nrt_add_tensor_to_tensor_set(nrt_tensor_set_t* tensor_set, const char* name,
                                               nrt_tensor_t* tensor) {
  lock();
  g_calls[SYM_nrt_add_tensor_to_tensor_set]++;
  NRT_STATUS st = check_state("nrt_add_tensor_to_tensor_set");
  if (st == NRT_SUCCESS && !ptrset_has(&g_sets, tensor_set)) {
    st = FAIL(NRT_INVALID_HANDLE, "nrt_add_tensor_to_tensor_set: %p is not a live tensor set",
              (void*)tensor_set);
  } else if (st == NRT_SUCCESS &&
             (name == NULL || *name == '\0' || strlen(name) >= NRT_TENSOR_NAME_MAX)) {
    st = FAIL(NRT_INVALID, "nrt_add_tensor_to_tensor_set: name is empty or too long");
  } else if (st == NRT_SUCCESS && !tensor_live(tensor)) {
    st = FAIL(NRT_INVALID_HANDLE, "nrt_add_tensor_to_tensor_set: '%s' -> %p is not a live tensor",
              name, (void*)tensor);
  }
  if (st == NRT_SUCCESS) {
    set_entry_t* e = NULL;
    for (int i = 0; i < tensor_set->n; i++) {
      if (strcmp(tensor_set->entries[i].name, name) == 0) e = &tensor_set->entries[i];
    }
    if (e == NULL) { /* a name added twice is rebound, as in the real runtime */
      if (tensor_set->n == tensor_set->cap) {
        int cap = tensor_set->cap ? tensor_set->cap * 2 : 8;
        set_entry_t* grown = realloc(tensor_set->entries, (size_t)cap * sizeof *grown);
        if (grown == NULL) {
          st = FAIL(NRT_RESOURCE, "nrt_add_tensor_to_tensor_set: out of host memory");
        } else {
          tensor_set->entries = grown;
          tensor_set->cap = cap;
        }
      }
      if (st == NRT_SUCCESS) {
        e = &tensor_set->entries[tensor_set->n++];
        copy_name(e->name, name);
      }
    }
    if (e != NULL) {
      e->tensor = tensor;
      e->serial = tensor->serial;
    }
  }
  unlock();
  return st;
}
#endif

/* ---- execute ----------------------------------------------------------------------------- */

/* Checks one set against the model's inputs (usage 0) or outputs (usage 1). */
static NRT_STATUS check_set(const nrt_model_t* m, const nrt_tensor_set_t* s, int usage) {
  const char* kind = usage == 0 ? "input" : "output";
  if (s == NULL) return FAIL(NRT_INVALID, "nrt_execute: %s tensor set is NULL", kind);
  if (!ptrset_has(&g_sets, s)) {
    return FAIL(NRT_INVALID_HANDLE, "nrt_execute: %s tensor set %p is not live", kind,
                (const void*)s);
  }
  for (int i = 0; i < s->n; i++) {
    const set_entry_t* e = &s->entries[i];
    if (!tensor_live(e->tensor) || e->tensor->serial != e->serial) {
      return FAIL(NRT_INVALID_HANDLE,
                  "nrt_execute: model '%s' %s '%s': its tensor was freed while still in the set",
                  m->id, kind, e->name);
    }
    int known = 0;
    for (int j = 0; j < m->n_io; j++) {
      known |= m->io[j].usage == usage && strcmp(m->io[j].name, e->name) == 0;
    }
    if (!known) {
      return FAIL(NRT_EXEC_BAD_INPUT, "nrt_execute: model '%s' has no %s named '%s'", m->id, kind,
                  e->name);
    }
  }
  for (int j = 0; j < m->n_io; j++) {
    const io_entry_t* io = &m->io[j];
    if (io->usage != usage) continue;
    const set_entry_t* found = NULL;
    for (int i = 0; i < s->n; i++) {
      if (strcmp(s->entries[i].name, io->name) == 0) found = &s->entries[i];
    }
    if (found == NULL) {
      return FAIL(NRT_EXEC_BAD_INPUT, "nrt_execute: model '%s' %s '%s' is missing from the set",
                  m->id, kind, io->name);
    }
    if (found->tensor->size != io->size) {
      return FAIL(NRT_EXEC_BAD_INPUT,
                  "nrt_execute: model '%s' %s '%s' is %zu bytes, the NEFF expects %zu", m->id,
                  kind, io->name, found->tensor->size, io->size);
    }
  }
  return NRT_SUCCESS;
}

static const nrt_tensor_t* set_lookup(const nrt_tensor_set_t* s, const char* name) {
  for (int i = 0; i < s->n; i++) {
    if (strcmp(s->entries[i].name, name) == 0) return s->entries[i].tensor;
  }
  return NULL;
}

#ifndef FAKE_NRT_OMIT_nrt_execute
EXPORT NRT_STATUS nrt_execute(nrt_model_t* model, const nrt_tensor_set_t* input_set,
                              nrt_tensor_set_t* output_set) {
  lock();
  g_calls[SYM_nrt_execute]++;
  NRT_STATUS st = check_state("nrt_execute");
  if (st == NRT_SUCCESS && !ptrset_has(&g_models, model)) {
    st = FAIL(NRT_INVALID_HANDLE, "nrt_execute: model %p is not loaded", (void*)model);
  }
  if (st == NRT_SUCCESS) st = check_set(model, input_set, 0);
  if (st == NRT_SUCCESS) st = check_set(model, output_set, 1);
  if (st != NRT_SUCCESS) {
    unlock();
    return st;
  }
  g_execute_count++;
  for (int i = 0; i < MAX_PROFILES; i++) {
    if (g_profiles[i].path != NULL && g_profiles[i].model == model &&
        g_profiles[i].model_serial == model->serial) {
      g_profiles[i].executions++;
    }
  }
  int injected = g_fail_next_execute;
  g_fail_next_execute = 0;
  int completes = injected == NRT_EXEC_COMPLETED_WITH_NUM_ERR ||
                  injected == NRT_EXEC_COMPLETED_WITH_ERR;
  if (injected != 0 && !completes) {
    set_error("nrt_execute: injected status %d for model '%s'", injected, model->id);
    unlock();
    return injected;
  }
  fake_nrt_execute_fn cb = g_callback;
  void* user = g_callback_user;
  if (cb == NULL) {
    set_error("nrt_execute: model '%s': no execute callback set (fake_nrt_set_execute_callback)",
              model->id);
    unlock();
    return NRT_FAILURE;
  }

  /* Pin the model and every storage, then run the callback without the lock. */
  int n = model->n_io;
  const char** names = calloc((size_t)n + 1, sizeof *names);
  void** bufs = calloc((size_t)n + 1, sizeof *bufs);
  size_t* sizes = calloc((size_t)n + 1, sizeof *sizes);
  storage_t** pinned = calloc((size_t)n + 1, sizeof *pinned);
  if (names == NULL || bufs == NULL || sizes == NULL || pinned == NULL) {
    free(names);
    free(bufs);
    free(sizes);
    free(pinned);
    set_error("nrt_execute: out of host memory");
    unlock();
    return NRT_RESOURCE;
  }
  int n_in = 0;
  for (int j = 0; j < n; j++) n_in += model->io[j].usage == 0;
  /* Fill arrays: slots [0, n_in) inputs, [n_in, n) outputs. */
  int in_i = 0;
  int out_i = n_in;
  for (int pass = 0; pass < 2; pass++) {
    for (int j = 0; j < n; j++) {
      const io_entry_t* io = &model->io[j];
      if (io->usage != pass) continue;
      const nrt_tensor_t* t = set_lookup(pass == 0 ? input_set : output_set, io->name);
      int slot = pass == 0 ? in_i++ : out_i++;
      names[slot] = io->name;
      bufs[slot] = t->st->data + t->offset;
      sizes[slot] = t->size;
      pinned[slot] = t->st;
      t->st->refs++;
    }
  }
  model->refs++;
  char neff_id[NRT_TENSOR_NAME_MAX];
  copy_name(neff_id, model->id);
  const int timed = g_timing_on;
  const double exec_s = exec_seconds_locked(neff_id);
  pthread_mutex_t* core = &g_core_busy[(g_first_visible + model->vnc) % MAX_CORES];
  unlock();

  /* With the timing model a core runs one execution at a time; an execution nested in a
     callback runs inside its caller's (it holds the core already). */
  const int hold_core = timed && t_executing == NULL;
  if (hold_core) pthread_mutex_lock(core);
  const double started = now_s();
  const nrt_model_t* outer = t_executing; /* a callback may execute another model */
  t_executing = model;
  st = cb(user, neff_id, n_in, names, (const void* const*)bufs, sizes, n - n_in, names + n_in,
          bufs + n_in, sizes + n_in);
  t_executing = outer;
  if (timed && exec_s >= 0) sleep_until(started + exec_s);
  if (hold_core) pthread_mutex_unlock(core);

  lock();
  for (int j = 0; j < n; j++) storage_unref(pinned[j]);
  model_unref(model);
  if (st != NRT_SUCCESS) {
    set_error("nrt_execute: model '%s': execute callback returned %d", neff_id, st);
  } else if (completes) {
    set_error("nrt_execute: injected status %d for model '%s'", injected, neff_id);
    st = injected;
  }
  unlock();
  free(names);
  free(bufs);
  free(sizes);
  free(pinned);
  return st;
}
#endif

/* ---- profiling --------------------------------------------------------------------------- */

static profile_session_t* find_profile(const char* path) {
  for (int i = 0; i < MAX_PROFILES; i++) {
    if (g_profiles[i].path != NULL && strcmp(g_profiles[i].path, path) == 0) return &g_profiles[i];
  }
  return NULL;
}

#ifndef FAKE_NRT_OMIT_nrt_profile_start
EXPORT NRT_STATUS nrt_profile_start(nrt_model_t* model, const char* filename) {
  lock();
  g_calls[SYM_nrt_profile_start]++;
  NRT_STATUS st = check_state("nrt_profile_start");
  if (st == NRT_SUCCESS && !ptrset_has(&g_models, model)) {
    st = FAIL(NRT_INVALID_HANDLE, "nrt_profile_start: model %p is not loaded", (void*)model);
  } else if (st == NRT_SUCCESS && (filename == NULL || *filename == '\0')) {
    st = FAIL(NRT_INVALID, "nrt_profile_start: ntff path is empty");
  } else if (st == NRT_SUCCESS && find_profile(filename) != NULL) {
    st = FAIL(NRT_INVALID, "nrt_profile_start: '%s' is already being profiled", filename);
  }
  if (st == NRT_SUCCESS) {
    profile_session_t* slot = NULL;
    for (int i = 0; i < MAX_PROFILES && slot == NULL; i++) {
      if (g_profiles[i].path == NULL) slot = &g_profiles[i];
    }
    char* path = slot ? strdup(filename) : NULL;
    if (path == NULL) {
      st = FAIL(NRT_RESOURCE, "nrt_profile_start: too many profiling sessions");
    } else {
      slot->path = path;
      slot->model = model;
      slot->model_serial = model->serial;
      copy_name(slot->neff_id, model->id);
      slot->executions = 0;
    }
  }
  unlock();
  return st;
}
#endif

#ifndef FAKE_NRT_OMIT_nrt_profile_stop
EXPORT NRT_STATUS nrt_profile_stop(const char* filename) {
  lock();
  g_calls[SYM_nrt_profile_stop]++;
  NRT_STATUS st = check_state("nrt_profile_stop");
  profile_session_t* s = NULL;
  if (st == NRT_SUCCESS && (filename == NULL || (s = find_profile(filename)) == NULL)) {
    st = FAIL(NRT_INVALID, "nrt_profile_stop: '%s' is not being profiled",
              filename ? filename : "(null)");
  }
  if (st == NRT_SUCCESS) {
    FILE* f = fopen(filename, "w");
    if (f == NULL) {
      st = FAIL(NRT_FAILURE, "nrt_profile_stop: cannot write '%s': %s", filename, strerror(errno));
    } else {
      fprintf(f, "FAKE-NTFF\nneff_id %s\nexecutions %llu\n", s->neff_id,
              (unsigned long long)s->executions);
      if (fclose(f) != 0) {
        st = FAIL(NRT_FAILURE, "nrt_profile_stop: cannot write '%s': %s", filename,
                  strerror(errno));
      }
    }
    free(s->path);
    memset(s, 0, sizeof *s);
  }
  unlock();
  return st;
}
#endif

/* ---- control API for tests --------------------------------------------------------------- */

EXPORT const char* fake_nrt_last_error(void) {
  lock();
  memcpy(t_last_error, g_last_error, sizeof t_last_error);
  unlock();
  return t_last_error;
}

EXPORT void fake_nrt_set_execute_callback(fake_nrt_execute_fn cb, void* user) {
  lock();
  g_callback = cb;
  g_callback_user = user;
  unlock();
}

EXPORT void fake_nrt_fail_allocation_at(long n) {
  lock();
  g_fail_alloc_countdown = n > 0 ? n : 0;
  g_fail_alloc_status = NRT_RESOURCE;
  unlock();
}

EXPORT void fake_nrt_fail_next_allocate(int status) {
  lock();
  g_fail_alloc_countdown = status != 0 ? 1 : 0;
  g_fail_alloc_status = status;
  unlock();
}

EXPORT void fake_nrt_fail_next_load(int status) {
  lock();
  g_fail_next_load = status;
  unlock();
}

/* The NEFF bytes of the model whose execute callback runs on the calling thread (NULL, size 0
   and serial 0 outside a callback). Valid until the callback returns: the model is pinned. */
EXPORT const void* fake_nrt_current_neff(size_t* size, uint64_t* serial) {
  const nrt_model_t* m = t_executing;
  if (size != NULL) *size = m != NULL ? m->neff_size : 0;
  if (serial != NULL) *serial = m != NULL ? m->serial : 0;
  return m != NULL ? m->neff : NULL;
}

/* The model whose execute callback runs on the calling thread (NULL outside a callback): for
   fake_nrt_model_rank / _world_size from inside the callback. */
EXPORT const nrt_model_t* fake_nrt_current_model(void) { return t_executing; }

EXPORT void fake_nrt_fail_next_execute(int status) {
  lock();
  g_fail_next_execute = status;
  unlock();
}

EXPORT void fake_nrt_set_device_capacity(size_t bytes_per_core) {
  lock();
  g_capacity_per_core = bytes_per_core;
  unlock();
}

EXPORT void fake_nrt_set_timing(int on, double h2d_bytes_per_s, double d2h_bytes_per_s,
                                double latency_s, double device_bytes_per_s) {
  lock();
  g_timing_on = on != 0;
  g_h2d_bps = h2d_bytes_per_s;
  g_d2h_bps = d2h_bytes_per_s;
  g_latency_s = latency_s > 0 ? latency_s : 0.0;
  g_dev_bps = device_bytes_per_s;
  unlock();
}

EXPORT int fake_nrt_set_execute_time(const char* neff_id, double seconds) {
  int result = 0;
  lock();
  if (neff_id == NULL) {
    g_exec_default_s = seconds < 0 ? -1.0 : seconds;
  } else {
    int found = -1;
    for (int i = 0; i < g_exec_time_count; i++) {
      if (strcmp(g_exec_times[i].neff_id, neff_id) == 0) found = i;
    }
    if (seconds < 0) {
      if (found >= 0) g_exec_times[found] = g_exec_times[--g_exec_time_count];
    } else if (found >= 0) {
      g_exec_times[found].seconds = seconds;
    } else if (g_exec_time_count < MAX_EXEC_TIMES) {
      copy_name(g_exec_times[g_exec_time_count].neff_id, neff_id);
      g_exec_times[g_exec_time_count++].seconds = seconds;
    } else {
      result = -1;
    }
  }
  unlock();
  return result;
}

static void reset_locked(void) {
  g_timing_on = 0;
  g_h2d_bps = g_d2h_bps = g_dev_bps = 0.0;
  g_latency_s = 0.0;
  g_exec_default_s = -1.0;
  g_exec_time_count = 0;
  g_callback = NULL;
  g_callback_user = NULL;
  g_fail_alloc_countdown = 0;
  g_fail_alloc_status = NRT_RESOURCE;
  g_fail_next_execute = 0;
  g_fail_next_load = 0;
  g_bytes_written = 0;
  g_bytes_read = 0;
  g_capacity_per_core = 0;
  g_execute_count = 0;
  g_double_unloads = 0;
  g_violations = 0;
  memset(g_calls, 0, sizeof g_calls);
  g_last_error[0] = '\0';
}

EXPORT void fake_nrt_reset(void) {
  lock();
  reset_locked();
  unlock();
}

/* Frees every live object, returns to "never initialised" and resets; returns how many live
   objects (tensors, models, sets, info arrays) there were, i.e. what the caller leaked. */
EXPORT uint64_t fake_nrt_teardown(void) {
  lock();
  uint64_t leaked = g_tensors.count + g_models.count + g_sets.count + g_infos.count;
  for (size_t i = 0; i < g_tensors.cap; i++) {
    nrt_tensor_t* t = g_tensors.slots[i];
    if (t == NULL || t == TOMBSTONE) continue;
    storage_unref(t->st);
    free(t);
  }
  for (size_t i = 0; i < g_models.cap; i++) {
    nrt_model_t* m = g_models.slots[i];
    if (m != NULL && m != TOMBSTONE) model_unref(m);
  }
  for (size_t i = 0; i < g_sets.cap; i++) {
    nrt_tensor_set_t* s = g_sets.slots[i];
    if (s != NULL && s != TOMBSTONE) set_free(s);
  }
  for (size_t i = 0; i < g_infos.cap; i++) {
    void* a = g_infos.slots[i];
    if (a != NULL && a != TOMBSTONE) free(a);
  }
  ptrset_clear(&g_tensors);
  ptrset_clear(&g_models);
  ptrset_clear(&g_sets);
  ptrset_clear(&g_infos);
  for (int i = 0; i < MAX_PROFILES; i++) {
    free(g_profiles[i].path);
    memset(&g_profiles[i], 0, sizeof g_profiles[i]);
  }
  release_core_locks();
  memset(g_core_bytes, 0, sizeof g_core_bytes);
  g_state = STATE_NEW;
  g_visible_count = 0;
  g_first_visible = 0;
  reset_locked();
  unlock();
  return leaked;
}

/* At unload (dlclose or exit) free the fake's own tables, but not live objects: what the
   caller leaked stays visible to valgrind/ASan as lost memory. */
__attribute__((destructor)) static void fake_nrt_unload_tables(void) {
  lock();
  ptrset_clear(&g_tensors);
  ptrset_clear(&g_models);
  ptrset_clear(&g_sets);
  ptrset_clear(&g_infos);
  for (int i = 0; i < MAX_PROFILES; i++) {
    free(g_profiles[i].path);
    g_profiles[i].path = NULL;
  }
  release_core_locks();
  unlock();
}

#define COUNTER(fn, expr)     \
  EXPORT uint64_t fn(void) {  \
    lock();                   \
    uint64_t v = (expr);      \
    unlock();                 \
    return v;                 \
  }

COUNTER(fake_nrt_live_tensors, g_tensors.count)
COUNTER(fake_nrt_live_models, g_models.count)
COUNTER(fake_nrt_live_tensor_sets, g_sets.count)
COUNTER(fake_nrt_live_tensor_infos, g_infos.count)
COUNTER(fake_nrt_execute_count, g_execute_count)
COUNTER(fake_nrt_double_unloads, g_double_unloads)
COUNTER(fake_nrt_contract_violations, g_violations)
COUNTER(fake_nrt_bytes_written, g_bytes_written)
COUNTER(fake_nrt_bytes_read, g_bytes_read)

/* Bytes of device storage held on a physical core (storages, not tensors: slices add none). */
EXPORT uint64_t fake_nrt_device_bytes_in_use(int core) {
  lock();
  uint64_t v = core >= 0 && core < MAX_CORES ? g_core_bytes[core] : 0;
  unlock();
  return v;
}

/* Calls of one libnrt symbol since the last reset; -1 for a name that is not a libnrt symbol. */
EXPORT int64_t fake_nrt_call_count(const char* symbol) {
  int64_t v = -1;
  lock();
  for (int i = 0; i < SYM_COUNT; i++) {
    if (symbol != NULL && strcmp(symbol, g_symbol_names[i]) == 0) v = (int64_t)g_calls[i];
  }
  unlock();
  return v;
}

/* Rank / world size / vnc of a loaded model; -1 if not loaded (or, for rank and world size,
   not loaded with nrt_load_collectives). */
EXPORT int32_t fake_nrt_model_rank(const nrt_model_t* model) {
  lock();
  int32_t v = ptrset_has(&g_models, model) ? model->rank : -1;
  unlock();
  return v;
}

EXPORT int32_t fake_nrt_model_world_size(const nrt_model_t* model) {
  lock();
  int32_t v = ptrset_has(&g_models, model) ? model->world_size : -1;
  unlock();
  return v;
}

EXPORT int32_t fake_nrt_model_vnc(const nrt_model_t* model) {
  lock();
  int32_t v = ptrset_has(&g_models, model) ? model->vnc : -1;
  unlock();
  return v;
}

/* The model's `id` line, copied into a thread-local buffer; "" if not loaded. */
EXPORT const char* fake_nrt_model_neff_id(const nrt_model_t* model) {
  static _Thread_local char id[NRT_TENSOR_NAME_MAX];
  lock();
  copy_name(id, ptrset_has(&g_models, model) ? model->id : "");
  unlock();
  return id;
}
