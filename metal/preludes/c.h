// effort-engine portable kernels: host prelude (C-like C++17, compiled with g++/clang++)
// Run by: the tests only (engine.runtime.kernel_source.build_host, through engine.runtime.effort_gpu.HostExec).
// -----------------------------------------------------------------------------------------
// Runs the SAME kernel bodies that ship for Metal and CUDA on the CPU, one threadgroup at a
// time, so that the test suite executes the exact indexing, phase structure and reduction
// order of the GPU kernels (engine/kernel_source.py builds one extern "C" function per
// kernel and tests/test_portable_kernels.py calls it through ctypes).
//
// Execution model (what a GPU does, made sequential):
//   for every threadgroup (GY_, GX_):
//     the body runs once as "uniform" code (the same in every thread: loop counters, params,
//     values read from threadgroup memory after a barrier);
//     each EF_PHASE_BEGIN ... EF_PHASE_END block is a lambda run for LID_ = 0 .. EF_TGS-1 in
//     turn, followed by a barrier.
// The lambda captures by value, so a phase cannot assign to uniform variables (compile
// error), and uniform code cannot name LID_ (compile error): the two rules that make the
// sequential run equivalent to the parallel one.
//
// EF_CHECKED=1 adds a race / bounds checker: threadgroup arrays and global buffers become
// small wrapper objects that record, per element and per barrier interval ("epoch"), which
// thread wrote / read / atomically updated it.  It reports what would be a data race on a
// GPU (two threads touching one element between two barriers, at least one writing; uniform
// code reading what a thread writes in the same interval), reads of never-written
// threadgroup memory, out-of-bounds accesses, and output elements written by two threads.
// -----------------------------------------------------------------------------------------
#ifndef EF_PRELUDE_HOST
#define EF_PRELUDE_HOST 1
#define EF_BACKEND_HOST 1

#include <math.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#ifndef EF_CHECKED
#define EF_CHECKED 0
#endif

#define EF_FN static inline

namespace ef {

static const uint32_t NONE = 0xFFFFFFFFu;
static const uint32_t ALL = 0xFFFFFFFEu;    // uniform code: every thread of the group
static const uint32_t MULTI = 0xFFFFFFFDu;  // several distinct threads

struct State {
    uint32_t thread;      // current local thread id, ALL outside phases
    uint32_t epoch;       // number of barriers passed in this launch
    int in_phase;
    uint64_t group;       // linear threadgroup id
    uint32_t tgs;
    long errors;
    char first[768];
};
static State g = {ALL, 0, 0, 0, 0, 0, {0}};

static void fail(const char* fmt, ...) {
    if (g.errors++ == 0) {
        va_list ap;
        va_start(ap, fmt);
        int n = snprintf(g.first, sizeof g.first, "group %llu thread %d epoch %u: ",
                         (unsigned long long)g.group, g.thread >= MULTI ? -1 : (int)g.thread, g.epoch);
        if (n > 0 && n < (int)sizeof g.first) vsnprintf(g.first + n, sizeof g.first - n, fmt, ap);
        va_end(ap);
    }
}

static inline void launch_begin(uint32_t tgs) { g.tgs = tgs; g.epoch = 0; g.thread = ALL; g.in_phase = 0; }
static inline void group_begin(uint64_t gid) { g.group = gid; g.thread = ALL; g.epoch += 2; }
static inline void phase_begin() {
    if (g.in_phase) fail("phase nested in a phase");
    g.in_phase = 1;
}
static inline void set_thread(uint32_t t) { g.thread = t; }
static inline void phase_end() { g.thread = ALL; g.in_phase = 0; g.epoch++; }

static inline float as_float(uint32_t u) { float f; memcpy(&f, &u, 4); return f; }
static inline uint32_t as_uint(float f) { uint32_t u; memcpy(&u, &f, 4); return u; }
static inline float h2f(uint32_t h) {
    uint32_t s = (h & 0x8000u) << 16, e = (h >> 10) & 31u, m = h & 1023u;
    if (e == 0) {
        float f = ldexpf((float)m, -24);
        return s ? -f : f;
    }
    if (e == 31) return as_float(s | 0x7f800000u | (m << 13));
    return as_float(s | ((e + 112u) << 23) | (m << 13));
}

// ---------------------------------------------------------------- checked memory
enum Kind { READ = 0, WRITE = 1, ATOMIC = 2 };

struct Meta {
    uint32_t epoch, writer, reader, atomic;
    uint32_t init;
};

static inline void merge(uint32_t& slot, uint32_t t) { slot = (slot == NONE || slot == t) ? t : MULTI; }

static void tg_access(Meta& m, int kind, const char* name, uint32_t idx) {
    const uint32_t t = g.thread;
    if (m.epoch != g.epoch) { m.epoch = g.epoch; m.writer = m.reader = m.atomic = NONE; }
    if (kind == READ) {
        if (!m.init) fail("read of uninitialized threadgroup %s[%u]", name, idx);
        if (m.writer != NONE && m.writer != t) fail("race: %s[%u] read, written by thread %d since the last barrier", name, idx, (int)m.writer);
        if (m.atomic != NONE) fail("race: %s[%u] read while atomically updated in the same interval", name, idx);
        merge(m.reader, t);
    } else if (kind == WRITE) {
        if (t == ALL) fail("write to threadgroup %s[%u] outside a phase", name, idx);
        if (m.writer != NONE && m.writer != t) fail("race: %s[%u] written by two threads between barriers", name, idx);
        if (m.reader != NONE && m.reader != t) fail("race: %s[%u] written after another thread read it (no barrier)", name, idx);
        if (m.atomic != NONE) fail("race: %s[%u] written while atomically updated", name, idx);
        m.writer = t;
        m.init = 1;
    } else {
        if (t == ALL) fail("atomic on %s[%u] outside a phase", name, idx);
        if (!m.init) fail("atomic on uninitialized threadgroup %s[%u]", name, idx);
        if ((m.writer != NONE && m.writer != t) || (m.reader != NONE && m.reader != t))
            fail("race: %s[%u] atomic mixed with plain access between barriers", name, idx);
        merge(m.atomic, t);
    }
}

template <class T>
struct TgProxy {
    T* v;
    Meta* m;
    const char* name;
    uint32_t i;
    operator T() const { tg_access(*m, READ, name, i); return *v; }
    TgProxy& operator=(T x) { tg_access(*m, WRITE, name, i); *v = x; return *this; }
    TgProxy& operator=(const TgProxy& o) { T x = (T)o; return (*this = x); }
    TgProxy& operator+=(T x) { T c = (T)*this; return (*this = (T)(c + x)); }
};

template <class T>
struct TgRef {
    T* v;
    Meta* m;
    uint32_t n;
    const char* name;
    TgProxy<T> operator[](uint64_t i) const {
        if (i >= n) { fail("out of bounds: threadgroup %s[%llu] (size %u)", name, (unsigned long long)i, n); i = 0; }
        return TgProxy<T>{v + i, m + i, name, (uint32_t)i};
    }
    T atomic_inc(uint64_t i) const {
        if (i >= n) { fail("out of bounds: threadgroup %s[%llu] (size %u)", name, (unsigned long long)i, n); return T(); }
        tg_access(m[i], ATOMIC, name, (uint32_t)i);
        return v[i]++;
    }
    T atomic_load(uint64_t i) const { return (T)(*this)[i]; }
    void atomic_store(uint64_t i, T x) const { (*this)[i] = x; }
};

template <class T, uint32_t N>
struct TgStore {
    T v[N];
    Meta m[N];
    const char* name;
    explicit TgStore(const char* nm) : name(nm) {
        memset(v, 0xA5, sizeof v);  // garbage, like uninitialized GPU memory
        for (uint32_t i = 0; i < N; ++i) m[i] = Meta{NONE, NONE, NONE, NONE, 0};
    }
    TgRef<T> ref() { return TgRef<T>{v, m, N, name}; }
};

template <class T>
struct GIn {
    const T* p;
    int64_t n;
    const char* name;
    T operator[](int64_t i) const {
        if (i < 0 || i >= n) { fail("out of bounds read %s[%lld] (size %lld)", name, (long long)i, (long long)n); return T(); }
        return p[i];
    }
};

struct Owner {
    uint64_t* p;
    explicit Owner(int64_t n) : p((uint64_t*)calloc((size_t)(n > 0 ? n : 1), sizeof(uint64_t))) {}
    ~Owner() { free(p); }
};

template <class T>
struct GOutProxy {
    T* v;
    uint64_t* own;
    const char* name;
    int64_t i;
    uint64_t me() const { return g.group * (uint64_t)g.tgs + (uint64_t)g.thread + 1u; }
    operator T() const {
        if (*own != me()) fail("read of output %s[%lld] not written by this thread", name, (long long)i);
        return *v;
    }
    GOutProxy& operator=(T x) {
        if (g.thread >= MULTI) fail("write to output %s[%lld] outside a phase", name, (long long)i);
        else if (*own != 0 && *own != me()) fail("output %s[%lld] written by two threads", name, (long long)i);
        *own = me();
        *v = x;
        return *this;
    }
    GOutProxy& operator=(const GOutProxy& o) { T x = (T)o; return (*this = x); }
};

template <class T>
struct GOut {
    T* p;
    int64_t n;
    const char* name;
    uint64_t* own;
    GOutProxy<T> operator[](int64_t i) const {
        static T dummy;
        static uint64_t dummy_own;
        if (i < 0 || i >= n) {
            fail("out of bounds write %s[%lld] (size %lld)", name, (long long)i, (long long)n);
            dummy_own = 0;
            return GOutProxy<T>{&dummy, &dummy_own, name, i};
        }
        return GOutProxy<T>{p + i, own + i, name, i};
    }
};

}  // namespace ef

extern "C" long ef_check_errors(void) { return ef::g.errors; }
extern "C" const char* ef_check_first_error(void) { return ef::g.first; }
extern "C" void ef_check_reset(void) { ef::g.errors = 0; ef::g.first[0] = 0; }
extern "C" int ef_checked(void) { return EF_CHECKED; }

// ---------------------------------------------------------------- the EF_* vocabulary
#define EF_LID LID_
#define EF_GX GX_
#define EF_GY GY_

#define EF_PHASE_BEGIN { ::ef::phase_begin(); auto ef_phase_fn_ = [=](const uint32_t LID_) -> void {
#define EF_PHASE_END }; \
    for (uint32_t ef_t_ = 0; ef_t_ < (uint32_t)(EF_TGS); ++ef_t_) { ::ef::set_thread(ef_t_); ef_phase_fn_(ef_t_); } \
    ::ef::phase_end(); }
#define EF_BARRIER() ::ef::phase_end()

#if EF_CHECKED
#define EF_TG_ARRAY(T, name, n) ::ef::TgStore<T, (n)> name##_store_(#name); const ::ef::TgRef<T> name = name##_store_.ref()
#define EF_TG_ATOMIC_U32(name, n) EF_TG_ARRAY(uint32_t, name, n)
#define EF_ATOMIC_INC(a, i) ((a).atomic_inc(i))
#define EF_ATOMIC_LOAD(a, i) ((a).atomic_load(i))
#define EF_ATOMIC_STORE(a, i, v) ((a).atomic_store((i), (uint32_t)(v)))
#define EF_IN(T, name) const ::ef::GIn<T> name = {name##_ptr, name##_len, #name}
#define EF_OUT(T, name) ::ef::Owner name##_own_(name##_len); const ::ef::GOut<T> name = {name##_ptr, name##_len, #name, name##_own_.p}
#else
#define EF_TG_ARRAY(T, name, n) T name##_store_[(n)]; T* const name = name##_store_
#define EF_TG_ATOMIC_U32(name, n) EF_TG_ARRAY(uint32_t, name, n)
#define EF_ATOMIC_INC(a, i) ((a)[(i)]++)
#define EF_ATOMIC_LOAD(a, i) ((a)[(i)])
#define EF_ATOMIC_STORE(a, i, v) ((a)[(i)] = (uint32_t)(v))
#define EF_IN(T, name) const T* const name = name##_ptr
#define EF_OUT(T, name) T* const name = name##_ptr
#endif

#define EF_AS_UINT(f) ::ef::as_uint((float)(f))
#define EF_AS_FLOAT(u) ::ef::as_float((uint32_t)(u))
#define EF_H2F(b) ::ef::h2f((uint32_t)(b))
#define EF_FMA(a, b, c) fmaf((float)(a), (float)(b), (float)(c))
#define EF_EXP(x) expf((float)(x))
#define EF_FABS(x) fabsf((float)(x))
#define EF_FMAX(a, b) fmaxf((float)(a), (float)(b))
#define EF_FMIN(a, b) fminf((float)(a), (float)(b))

#endif  // EF_PRELUDE_HOST
