/* effort_cpu.c - CPU kernels for the Effort Engine.
 * Run by: metal/cpu/decode.c and engine.runtime.cpu_runtime (built by engine.runtime.native).
 *
 * Build (one shared library, any x86-64, runtime dispatch):
 *   gcc -O2 -fPIC -shared -pthread effort_cpu.c -o libeffort_cpu.so -lm
 *   (macOS/arm64: clang -O2 -fPIC -shared effort_cpu.c -o libeffort_cpu.dylib   -> scalar C path)
 *
 * Kernel families (per-function target attributes, chosen at run time with __builtin_cpu_supports):
 * AVX-512 (F/BW/VL/DQ) for the effort matvec, AVX2+FMA+F16C for the dense, head and attention
 * kernels, and portable scalar C for everything (what a non-x86 machine compiles).
 *
 * EFFORT LAYOUT: see the effort section below (the bucket list of engine/effort/bucket.py, B = 4).
 */
#include "effort_cpu.h"
#include <stdlib.h>
#include <string.h>
#include <math.h>
#include <stdatomic.h>
#include <pthread.h>
#include <sched.h>
#if (defined(__x86_64__) || defined(_M_X64) || defined(__i386__)) && !defined(ECPU_NO_SIMD)
#define ECPU_X86 1
#include <immintrin.h>
#else
#define ECPU_X86 0
#endif

/* ------------------------------------------------------------------ fp16 */
static float h2f(uint16_t h) {
    uint32_t s = (uint32_t)(h & 0x8000) << 16, e = (h >> 10) & 31, m = h & 1023, u;
    float f;
    if (e == 0) { f = ldexpf((float)m, -24); memcpy(&u, &f, 4); u |= s; }
    else if (e == 31) u = s | 0x7f800000u | (m << 13);
    else u = s | ((e + 112) << 23) | (m << 13);
    memcpy(&f, &u, 4);
    return f;
}

/* ------------------------------------------------------------------ isa */
/* 0 scalar, 1 AVX2+FMA+F16C, 2 the same plus AVX-512 F/BW/VL/DQ (Zen 4, Ice Lake and later).
 * ECPU_ISA=scalar|avx2 caps it (tests run every build the machine can execute). */
static int g_isa = -1;
static void init_posmask(void);
static void detect_isa(void) {
    if (g_isa >= 0) return;
    int isa = 0;
#if ECPU_X86 && defined(__GNUC__)
    __builtin_cpu_init();
    if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && __builtin_cpu_supports("f16c")) {
        isa = 1;
        if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
            __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq")) isa = 2;
    }
#endif
#ifdef ECPU_MAX_ISA
    if (isa > ECPU_MAX_ISA) isa = ECPU_MAX_ISA;   /* a build capped at compile time (the tests' AVX2 build) */
#endif
    const char *cap = getenv("ECPU_ISA");
    if (cap && strcmp(cap, "scalar") == 0) isa = 0;
    if (cap && strcmp(cap, "avx2") == 0 && isa > 1) isa = 1;
    init_posmask();
    g_isa = isa;
}
const char *ecpu_isa(void) { detect_isa(); return g_isa == 2 ? "avx512" : g_isa == 1 ? "avx2" : "scalar"; }

/* ------------------------------------------------------------------ thread pool */
#define ECPU_MAXT 64
typedef void (*job_fn)(void *arg, int tid);
static int g_nthreads = 1, g_started = 0;
static pthread_t g_th[ECPU_MAXT];
static atomic_uint g_gen;
static atomic_int g_open, g_active, g_stop, g_nsleep;
/* Join protocol: a job is open from pool_run's start until the caller has finished its own share; a worker
   registers in g_active and then joins only if the job is still open, so a worker that the OS has not
   scheduled in time (oversubscribed machine) never makes the caller wait: all jobs claim their work units
   with atomic counters, so the caller alone can complete any job. */
static job_fn g_fn; static void *g_arg;
static unsigned g_gen_at_start; /* generation seen by workers at creation (avoids a start-up race) */
static pthread_mutex_t g_mtx = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t g_cv = PTHREAD_COND_INITIALIZER;

static inline void cpu_relax(void) {
#if ECPU_X86
    _mm_pause();
#elif defined(__aarch64__)
    __asm__ __volatile__("yield");
#endif
}
static void *worker_main(void *p) {
    int tid = (int)(intptr_t)p;
    unsigned seen = g_gen_at_start;
    for (;;) {
        long spins = 0;
        unsigned g;
        while ((g = atomic_load_explicit(&g_gen, memory_order_acquire)) == seen && !atomic_load(&g_stop)) {
            if (++spins < 200000) cpu_relax();
            else { /* idle: sleep */
                pthread_mutex_lock(&g_mtx);
                atomic_fetch_add(&g_nsleep, 1);
                while (atomic_load(&g_gen) == seen && !atomic_load(&g_stop)) pthread_cond_wait(&g_cv, &g_mtx);
                atomic_fetch_sub(&g_nsleep, 1);
                pthread_mutex_unlock(&g_mtx);
                spins = 0;
            }
        }
        if (atomic_load(&g_stop)) break;
        seen = g;
        atomic_fetch_add(&g_active, 1);                 /* seq_cst: pairs with the caller's g_open = 0 then g_active check */
        if (atomic_load(&g_open)) g_fn(g_arg, tid);
        atomic_fetch_sub_explicit(&g_active, 1, memory_order_release);
    }
    return NULL;
}
int ecpu_init(int nthreads) {
    detect_isa();
    if (nthreads <= 0) nthreads = 2;
    if (nthreads > ECPU_MAXT) nthreads = ECPU_MAXT;
    if (g_started) ecpu_shutdown();
    atomic_store(&g_stop, 0);
    g_nthreads = 1;
    g_gen_at_start = atomic_load(&g_gen);
    for (int t = 1; t < nthreads; t++) {
        if (pthread_create(&g_th[t], NULL, worker_main, (void *)(intptr_t)t) != 0) break;
        g_nthreads = t + 1;
    }
    g_started = 1;
    return g_nthreads;
}
void ecpu_shutdown(void) {
    if (!g_started) return;
    pthread_mutex_lock(&g_mtx);
    atomic_store(&g_stop, 1);
    pthread_cond_broadcast(&g_cv);
    pthread_mutex_unlock(&g_mtx);
    for (int t = 1; t < g_nthreads; t++) pthread_join(g_th[t], NULL);
    g_nthreads = 1; g_started = 0;
}
/* run fn(arg, tid) on all threads (caller is tid 0) and wait */
static void pool_run(job_fn fn, void *arg) {
    if (g_nthreads <= 1) { fn(arg, 0); return; }
    g_fn = fn; g_arg = arg;
    atomic_store(&g_open, 1);
    atomic_fetch_add(&g_gen, 1); /* seq_cst: pairs with the sleeper's nsleep++ then gen check */
    if (atomic_load(&g_nsleep) > 0) { pthread_mutex_lock(&g_mtx); pthread_cond_broadcast(&g_cv); pthread_mutex_unlock(&g_mtx); }
    fn(arg, 0);                  /* returns when every work unit has been claimed and the caller's are done */
    atomic_store(&g_open, 0);    /* late workers skip the job from here on */
    long spins = 0;
    while (atomic_load_explicit(&g_active, memory_order_acquire) != 0) {   /* workers inside the job: wait for their units */
        if (++spins < 20000) cpu_relax(); else sched_yield();   /* oversubscribed machine: let the worker run */
    }
}

/* run fn(arg, tid) on every pool thread, the caller included, and wait: work must be claimed with
   atomic counters (any thread may end up doing all of it) */
void ecpu_parallel(void (*fn)(void *arg, int tid), void *arg) { pool_run(fn, arg); }

/* ------------------------------------------------------------------ dense fp16 */
static void dense_rows_scalar(const uint16_t *W, const float *x, float *y, int r0, int r1, int in) {
    for (int o = r0; o < r1; o++) {
        const uint16_t *w = W + (size_t)o * in; float a[4] = {0, 0, 0, 0}; int j = 0;
        for (; j + 4 <= in; j += 4) { a[0] += h2f(w[j]) * x[j]; a[1] += h2f(w[j+1]) * x[j+1]; a[2] += h2f(w[j+2]) * x[j+2]; a[3] += h2f(w[j+3]) * x[j+3]; }
        for (; j < in; j++) a[0] += h2f(w[j]) * x[j];
        y[o] = (a[0] + a[1]) + (a[2] + a[3]);
    }
}
#if ECPU_X86
#define TGT __attribute__((target("avx2,fma,f16c")))
#ifndef ECPU_ROWS_AHEAD
#define ECPU_ROWS_AHEAD 8  /* row-major matvecs prefetch this many rows ahead (prefetching past the end is harmless) */
#endif
/* the same offset in four consecutive rows, `ECPU_ROWS_AHEAD` rows on: short rows end before the
   hardware prefetcher ramps up, so the row-major matvecs ask for them */
static inline void prefetch_4_rows(const char *ahead, size_t row_bytes) {
    for (int r = 0; r < 4; r++) _mm_prefetch(ahead + r * row_bytes, _MM_HINT_T0);
}
TGT static inline float hsum256(__m256 v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s)); s = _mm_add_ss(s, _mm_movehdup_ps(s)); return _mm_cvtss_f32(s);
}
TGT static void dense_rows_avx2(const uint16_t *W, const float *x, float *y, int r0, int r1, int in) {
    int o = r0, in16 = in & ~15;
    for (; o + 4 <= r1; o += 4) {
        const uint16_t *w0 = W + (size_t)o * in, *w1 = w0 + in, *w2 = w1 + in, *w3 = w2 + in;
        __m256 a0 = _mm256_setzero_ps(), a1 = a0, a2 = a0, a3 = a0, b0 = a0, b1 = a0, b2 = a0, b3 = a0;
        const char *ahead = (const char *)(w0 + ECPU_ROWS_AHEAD * (size_t)in);
        for (int j = 0; j < in16; j += 16) {
            if (!(j & 31)) prefetch_4_rows(ahead + 2 * j, 2 * (size_t)in);  /* one 64-byte line per row */
            __m256 x0 = _mm256_loadu_ps(x + j), x1 = _mm256_loadu_ps(x + j + 8);
            a0 = _mm256_fmadd_ps(_mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(w0 + j))), x0, a0);
            a1 = _mm256_fmadd_ps(_mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(w1 + j))), x0, a1);
            a2 = _mm256_fmadd_ps(_mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(w2 + j))), x0, a2);
            a3 = _mm256_fmadd_ps(_mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(w3 + j))), x0, a3);
            b0 = _mm256_fmadd_ps(_mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(w0 + j + 8))), x1, b0);
            b1 = _mm256_fmadd_ps(_mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(w1 + j + 8))), x1, b1);
            b2 = _mm256_fmadd_ps(_mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(w2 + j + 8))), x1, b2);
            b3 = _mm256_fmadd_ps(_mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(w3 + j + 8))), x1, b3);
        }
        a0 = _mm256_add_ps(a0, b0); a1 = _mm256_add_ps(a1, b1); a2 = _mm256_add_ps(a2, b2); a3 = _mm256_add_ps(a3, b3);
        __m256 h = _mm256_hadd_ps(_mm256_hadd_ps(a0, a1), _mm256_hadd_ps(a2, a3));
        __m128 r = _mm_add_ps(_mm256_castps256_ps128(h), _mm256_extractf128_ps(h, 1));
        if (in16 < in) {
            float t[4]; _mm_storeu_ps(t, r);
            for (int q = 0; q < 4; q++) for (int j = in16; j < in; j++) t[q] += h2f(W[(size_t)(o + q) * in + j]) * x[j];
            r = _mm_loadu_ps(t);
        }
        _mm_storeu_ps(y + o, r);
    }
    for (; o < r1; o++) {
        const uint16_t *w = W + (size_t)o * in; __m256 a = _mm256_setzero_ps();
        for (int j = 0; j < in16; j += 8 * 2) {
            a = _mm256_fmadd_ps(_mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(w + j))), _mm256_loadu_ps(x + j), a);
            a = _mm256_fmadd_ps(_mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(w + j + 8))), _mm256_loadu_ps(x + j + 8), a);
        }
        float s = hsum256(a); for (int j = in16; j < in; j++) s += h2f(w[j]) * x[j]; y[o] = s;
    }
}
#endif
typedef struct { const void *W; const void *S; const float *x; float *y; int out, in, chunk; atomic_int next; } dense_job;
static void dense_worker(void *p, int tid) {
    (void)tid; dense_job *J = (dense_job *)p;
    for (;;) {
        int r0 = atomic_fetch_add(&J->next, J->chunk); if (r0 >= J->out) break;
        int r1 = r0 + J->chunk < J->out ? r0 + J->chunk : J->out;
#if ECPU_X86
        if (g_isa >= 1) dense_rows_avx2((const uint16_t *)J->W, J->x, J->y, r0, r1, J->in); else
#endif
        dense_rows_scalar((const uint16_t *)J->W, J->x, J->y, r0, r1, J->in);
    }
}
void ecpu_dense_f16(const uint16_t *W, const float *x, float *y, int out, int in) {
    detect_isa();
    dense_job J = {W, NULL, x, y, out, in, 32, 0};
    if ((size_t)out * in < 65536) { J.chunk = out; }
    pool_run(dense_worker, &J);
}
/* ---- dense tiles: the dense kernel's copy of a projection ----
 * tile t = outputs 64t..64t+63; tiles[(t*in + i)*64 + o] = W[64t + o][i] (fp16): one 128-byte row per
 * input, so a tile is a single sequential stream and its 64 sums stay in registers over all inputs
 * (row-major dot products read four rows at once and ran at a third of this from DRAM). */
void ecpu_dense_tiles(const uint16_t *W, int out, int in, uint16_t *tiles) {
    for (int t = 0; t < out / 64; t++)
        for (int o = 0; o < 64; o++) {
            const uint16_t *row = W + (size_t)(64 * t + o) * in;
            uint16_t *dst = tiles + (size_t)t * in * 64 + o;
            for (int i = 0; i < in; i++) dst[(size_t)i * 64] = row[i];
        }
}
static void tile_dense_scalar(const uint16_t *T, const float *x, float *y, int in) {
    float acc[64] = {0};
    for (int i = 0; i < in; i++)
        for (int o = 0; o < 64; o++) acc[o] += h2f(T[(size_t)i * 64 + o]) * x[i];
    memcpy(y, acc, sizeof acc);
}
#if ECPU_X86
#ifndef ECPU_TILE_PD
#define ECPU_TILE_PD 12   /* rows prefetched ahead */
#endif
#define DFMA(A, off) A = _mm256_fmadd_ps(_mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(R + (off)))), xb, A)
TGT static void tile_dense_avx2(const uint16_t *T, const float *x, float *y, int in) {
    __m256 a0 = _mm256_setzero_ps(), a1 = a0, a2 = a0, a3 = a0, a4 = a0, a5 = a0, a6 = a0, a7 = a0;
    for (int i = 0; i < in; i++) {
        const char *pf = (const char *)(T + (size_t)64 * (i + ECPU_TILE_PD < in ? i + ECPU_TILE_PD : in - 1));
        _mm_prefetch(pf, _MM_HINT_T0); _mm_prefetch(pf + 64, _MM_HINT_T0);
        const uint16_t *R = T + (size_t)64 * i; __m256 xb = _mm256_broadcast_ss(x + i);
        DFMA(a0, 0); DFMA(a1, 8); DFMA(a2, 16); DFMA(a3, 24); DFMA(a4, 32); DFMA(a5, 40); DFMA(a6, 48); DFMA(a7, 56);
    }
    _mm256_storeu_ps(y, a0); _mm256_storeu_ps(y + 8, a1); _mm256_storeu_ps(y + 16, a2); _mm256_storeu_ps(y + 24, a3);
    _mm256_storeu_ps(y + 32, a4); _mm256_storeu_ps(y + 40, a5); _mm256_storeu_ps(y + 48, a6); _mm256_storeu_ps(y + 56, a7);
}
#undef DFMA
#endif
typedef struct { int n, in; const ecpu_dense_mat *mats; const float *x; int tstart[65]; atomic_int next; } dense_multi_job;
static void dense_multi_worker(void *p, int tid) {
    (void)tid; dense_multi_job *J = (dense_multi_job *)p; int total = J->tstart[J->n], m = 0;
    for (;;) {
        int t = atomic_fetch_add(&J->next, 1); if (t >= total) break;
        while (t >= J->tstart[m + 1]) m++;
        const ecpu_dense_mat *M = J->mats + m; int tt = t - J->tstart[m];
        const uint16_t *T = M->tiles + (size_t)tt * J->in * 64;
#if ECPU_X86
        if (g_isa >= 1) tile_dense_avx2(T, J->x, M->y + 64 * tt, J->in); else
#endif
        tile_dense_scalar(T, J->x, M->y + 64 * tt, J->in);
    }
}
void ecpu_dense_tiles_multi(int n, const ecpu_dense_mat *mats, int in, const float *x) {
    detect_isa();
    for (int base = 0; base < n; base += 64) {
        int cnt = n - base < 64 ? n - base : 64;
        dense_multi_job J; J.n = cnt; J.in = in; J.mats = mats + base; J.x = x; atomic_init(&J.next, 0); J.tstart[0] = 0;
        for (int q = 0; q < cnt; q++) J.tstart[q + 1] = J.tstart[q] + mats[base + q].out / 64;
        pool_run(dense_multi_worker, &J);
    }
}

/* ------------------------------------------------------------------ Q8_0 head */
static void q8_rows_scalar(const int8_t *Q, const float *S, const float *x, float *y, int r0, int r1, int in) {
    int nbk = in / 32;
    for (int o = r0; o < r1; o++) {
        const int8_t *q = Q + (size_t)o * in; float acc = 0;
        for (int b = 0; b < nbk; b++) { float s = 0; for (int j = 0; j < 32; j++) s += (float)q[32 * b + j] * x[32 * b + j]; acc += S[(size_t)o * nbk + b] * s; }
        y[o] = acc;
    }
}
#if ECPU_X86
#define Q8LD(p) _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64((const __m128i *)(p))))
TGT static void q8_rows_avx2(const int8_t *Q, const float *S, const float *x, float *y, int r0, int r1, int in) {
    int nbk = in / 32, o = r0;
    for (; o + 4 <= r1; o += 4) {
        const int8_t *q0 = Q + (size_t)o * in, *q1 = q0 + in, *q2 = q1 + in, *q3 = q2 + in;
        const float *s0 = S + (size_t)o * nbk, *s1 = s0 + nbk, *s2 = s1 + nbk, *s3 = s2 + nbk;
        __m256 A0 = _mm256_setzero_ps(), A1 = A0, A2 = A0, A3 = A0;
        const char *ahead = (const char *)(q0 + ECPU_ROWS_AHEAD * (size_t)in);
        for (int b = 0; b < nbk; b++) {
            const float *xb = x + 32 * b; int j = 32 * b;
            if (!(b & 1)) prefetch_4_rows(ahead + j, (size_t)in);
            __m256 x0 = _mm256_loadu_ps(xb), x1 = _mm256_loadu_ps(xb + 8), x2 = _mm256_loadu_ps(xb + 16), x3 = _mm256_loadu_ps(xb + 24);
#define Q8ROW(R) { __m256 t = _mm256_mul_ps(Q8LD(q##R + j), x0); t = _mm256_fmadd_ps(Q8LD(q##R + j + 8), x1, t); \
                   __m256 u = _mm256_mul_ps(Q8LD(q##R + j + 16), x2); u = _mm256_fmadd_ps(Q8LD(q##R + j + 24), x3, u); \
                   A##R = _mm256_fmadd_ps(_mm256_add_ps(t, u), _mm256_broadcast_ss(s##R + b), A##R); }
            Q8ROW(0) Q8ROW(1) Q8ROW(2) Q8ROW(3)
#undef Q8ROW
        }
        __m256 h = _mm256_hadd_ps(_mm256_hadd_ps(A0, A1), _mm256_hadd_ps(A2, A3));
        _mm_storeu_ps(y + o, _mm_add_ps(_mm256_castps256_ps128(h), _mm256_extractf128_ps(h, 1)));
    }
    if (o < r1) q8_rows_scalar(Q, S, x, y, o, r1, in);
}
#endif
static void q8_worker(void *p, int tid) {
    (void)tid; dense_job *J = (dense_job *)p;
    for (;;) {
        int r0 = atomic_fetch_add(&J->next, J->chunk); if (r0 >= J->out) break;
        int r1 = r0 + J->chunk < J->out ? r0 + J->chunk : J->out;
#if ECPU_X86
        if (g_isa >= 1) q8_rows_avx2((const int8_t *)J->W, (const float *)J->S, J->x, J->y, r0, r1, J->in); else
#endif
        q8_rows_scalar((const int8_t *)J->W, (const float *)J->S, J->x, J->y, r0, r1, J->in);
    }
}
void ecpu_head_q8(const int8_t *qs, const float *scales, const float *x, float *y, int out, int in) {
    detect_isa();
    dense_job J = {qs, scales, x, y, out, in, 256, 0};
    pool_run(q8_worker, &J);
}
void ecpu_q8_from_gguf(const uint8_t *blocks, int out, int in, int8_t *qs, float *scales) {
    int nbk = in / 32;
    for (size_t b = 0; b < (size_t)out * nbk; b++) {
        const uint8_t *B = blocks + 34 * b; uint16_t d; memcpy(&d, B, 2);
        scales[b] = h2f(d); memcpy(qs + 32 * b, B + 2, 32);
    }
}

/* ------------------------------------------------------------------ decode attention (one head) */
/* out[hd] = softmax(scale * K q) V over n cached positions (rows of hd floats): the max is subtracted
   before exp, so long contexts cannot overflow.  scores: scratch of n floats. */
/* scores[t] = exp(scores[t] - top); returns 1 / their sum (summed in double) */
static float exp_shifted(float *scores, int n, float top) {
    double total = 0.0;
    for (int t = 0; t < n; t++) { scores[t] = expf(scores[t] - top); total += scores[t]; }
    return (float)(1.0 / total);
}
static void attend_scalar(const float *q, const float *K, const float *V, int n, int hd, float scale,
                          float *scores, float *out) {
    float top = -INFINITY;
    for (int t = 0; t < n; t++) {
        const float *k = K + (size_t)t * hd; float s = 0.0f;
        for (int j = 0; j < hd; j++) s += q[j] * k[j];
        scores[t] = s * scale; if (scores[t] > top) top = scores[t];
    }
    float inv = exp_shifted(scores, n, top);
    for (int j = 0; j < hd; j++) out[j] = 0.0f;
    for (int t = 0; t < n; t++) {
        const float *v = V + (size_t)t * hd; float p = scores[t] * inv;
        for (int j = 0; j < hd; j++) out[j] += p * v[j];
    }
}
#if ECPU_X86
TGT static void attend_avx2(const float *q, const float *K, const float *V, int n, int hd, float scale,
                            float *scores, float *out) {
    float top = -INFINITY;
    for (int t = 0; t < n; t++) {
        const float *k = K + (size_t)t * hd; __m256 a = _mm256_setzero_ps(), b = a;
        int j = 0;
        for (; j + 16 <= hd; j += 16) {
            a = _mm256_fmadd_ps(_mm256_loadu_ps(q + j), _mm256_loadu_ps(k + j), a);
            b = _mm256_fmadd_ps(_mm256_loadu_ps(q + j + 8), _mm256_loadu_ps(k + j + 8), b);
        }
        for (; j < hd; j += 8) a = _mm256_fmadd_ps(_mm256_loadu_ps(q + j), _mm256_loadu_ps(k + j), a);
        float s = hsum256(_mm256_add_ps(a, b)) * scale;
        scores[t] = s; if (s > top) top = s;
    }
    float inv = exp_shifted(scores, n, top);
    __m256 acc[32];  /* hd <= 256 */
    int nv = hd / 8;
    for (int r = 0; r < nv; r++) acc[r] = _mm256_setzero_ps();
    for (int t = 0; t < n; t++) {
        const float *v = V + (size_t)t * hd; __m256 p = _mm256_set1_ps(scores[t] * inv);
        for (int r = 0; r < nv; r++) acc[r] = _mm256_fmadd_ps(p, _mm256_loadu_ps(v + 8 * r), acc[r]);
    }
    for (int r = 0; r < nv; r++) _mm256_storeu_ps(out + 8 * r, acc[r]);
}
#endif
void ecpu_attend(const float *q, const float *K, const float *V, int n, int hd, float scale, float *scores,
                 float *out) {
    detect_isa();
#if ECPU_X86
    if (g_isa == 1 && hd % 8 == 0 && hd <= 256) { attend_avx2(q, K, V, n, hd, scale, scores, out); return; }
#endif
    attend_scalar(q, K, V, n, hd, scale, scores, out);
}

/* Q8_0 embedding row: x[j] = d(block) * q[j], exactly the file's value */
void ecpu_q8_row(const int8_t *qs, const float *scales, int row, int in, float *x) {
    const int8_t *q = qs + (size_t)row * in; const float *s = scales + (size_t)row * (in / 32);
    for (int j = 0; j < in; j++) x[j] = s[j / 32] * (float)q[j];
}

/* ------------------------------------------------------------------ effort (bucketMul) matvec */
/* The layout is engine/effort/bucket.py's bucket list with bucket size EFFORT_B = 4, "crumb" packing
 * (read as it is stored in the converted cache; nothing is rebuilt here):
 *   vals uint16 [4*in][nb]   fp16 bits; row r*in + i holds the rank-r weight of every bucket (nb = out/4)
 *   pos  uint8  [4*in][nb/4] positions, 2 bits each: bucket 4q + j in bits 2j..2j+1 of byte q
 * Input i keeps its ranks 0..k[i]-1; y[4b + pos] += x[i] * value.
 * Kernel (AVX-512): a job owns up to 4 units of 64 outputs (16 zmm accumulators, 4 per unit; an
 * accumulator = 4 buckets). For every input with k > 0 (grouped by k, ascending input order inside a
 * group, so the rank loop never mispredicts), each kept rank row of a unit (16 fp16 values, one per
 * bucket) is converted once (vcvtph2ps) and routed into the unit's 4 registers: one vpermps with a
 * static index puts bucket b's value in each of its 4 lanes, and a mask built from the byte of four
 * positions (one 256-entry table) keeps only the lane it belongs to; all k ranks merge into the same
 * registers, then one FMA per accumulator with x[i]. Exact fp16 weights, fp32 products and sums.
 * Cost: about one cycle per permute, i.e. four kept weights per cycle-ish; with 8-output buckets a
 * permute places two and the kernel was twice as slow per kept weight (measured). */
#define EB EFFORT_B
static uint16_t g_posmask[256];   /* byte of four 2-bit positions -> lanes 4j + p_j */
static void init_posmask(void) {
    for (int b = 0; b < 256; b++) {
        unsigned m = 0;
        for (int j = 0; j < 4; j++) m |= 1u << (4 * j + ((b >> (2 * j)) & 3));
        g_posmask[b] = (uint16_t)m;
    }
}

/* k[i] = #{ r : stats[r*in+i]*|x[i]| > cutoff }  (0..EB) ; returns sum(k) */
long ecpu_effort_k(const float *stats, const float *x, int in, float cutoff, uint8_t *k) {
    memset(k, 0, (size_t)in);
    for (int r = 0; r < EB; r++) {
        const float *s = stats + (size_t)r * in;
        for (int i = 0; i < in; i++) k[i] += (uint8_t)(s[i] * fabsf(x[i]) > cutoff);
    }
    long tot = 0;
    for (int i = 0; i < in; i++) tot += k[i];
    return tot;
}

int ecpu_effort_units(int out) {
    int n = out / 64;
    for (int u = 4; u > 1; u--)
        if (n % u == 0 && n / u >= 2) return u;
    return 1;
}
static void eff_tile_scalar(const ecpu_eff_mat *M, int in, const uint8_t *k, const float *x, int t) {
    int U = ecpu_effort_units(M->out);
    size_t vplane = (size_t)in * 16 * U, pplane = (size_t)in * 4 * U;
    const uint16_t *Vt = M->vals + (size_t)t * M->ranks * vplane;
    const uint8_t *Pt = M->pos + (size_t)t * M->ranks * pplane;
    float *y = M->y + 64 * (size_t)U * t;
    for (int o = 0; o < 64 * U; o++) y[o] = 0.0f;
    float acc[256];
    for (int i = 0; i < in; i++) {
        int kk = k[i] > EB ? EB : k[i];
        if (!kk) continue;
        memset(acc, 0, sizeof acc);
        for (int r = 0; r < kk; r++) {
            const uint16_t *V = Vt + r * vplane + (size_t)i * 16 * U;
            const uint8_t *P = Pt + r * pplane + (size_t)i * 4 * U;
            for (int b = 0; b < 16 * U; b++) acc[4 * b + ((P[b / 4] >> (2 * (b & 3))) & 3)] = h2f(V[b]);
        }
        for (int o = 0; o < 64 * U; o++) y[o] += acc[o] * x[i];
    }
}
#if ECPU_X86
#define T512 __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,f16c,fma")))
/* prefetch distance in inputs of the same k */
#ifndef ECPU_PD
#define ECPU_PD 8
#endif
/* The CPU packing of the bucket list (engine/effort/bucket.py, cpu_tiles): tile t = units
 * tU..tU+U-1 (U = ecpu_effort_units(out), 64 outputs per unit); vals [nt][4][in][16U] and
 * pos [nt][4][in][4U], so a tile's rank-r rows of consecutive inputs are one contiguous stream
 * (slices of whole rows, 128 bytes of every 768, ran at a fifth of this from DRAM), and its 4U
 * accumulators stay in registers over all inputs. */
#define EFF_ROUTE_UNIT(u, KK, A0, A1, A2, A3)                                                         \
    {                                                                                                 \
        __m512 t0 = _mm512_setzero_ps(), t1 = t0, t2 = t0, t3 = t0;                                  \
        for (int r = 0; r < KK; r++) {                                                                \
            __m512 w = _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)(V + r * vplane + 16 * (u)))); \
            const uint8_t *qr = P + r * pplane + 4 * (u);                                             \
            t0 = _mm512_mask_permutexvar_ps(t0, g_posmask[qr[0]], IDX0, w);                           \
            t1 = _mm512_mask_permutexvar_ps(t1, g_posmask[qr[1]], IDX1, w);                           \
            t2 = _mm512_mask_permutexvar_ps(t2, g_posmask[qr[2]], IDX2, w);                           \
            t3 = _mm512_mask_permutexvar_ps(t3, g_posmask[qr[3]], IDX3, w);                           \
        }                                                                                             \
        A0 = _mm512_fmadd_ps(t0, xb, A0); A1 = _mm512_fmadd_ps(t1, xb, A1);                           \
        A2 = _mm512_fmadd_ps(t2, xb, A2); A3 = _mm512_fmadd_ps(t3, xb, A3);                           \
    }
#define EFF_INPUT(KK)                                                                                 \
    {                                                                                                 \
        EFF_ROUTE_UNIT(0, KK, a0, a1, a2, a3)                                                         \
        if (U > 1) EFF_ROUTE_UNIT(1, KK, b0, b1, b2, b3)                                              \
        if (U > 2) EFF_ROUTE_UNIT(2, KK, c0, c1, c2, c3)                                              \
        if (U > 3) EFF_ROUTE_UNIT(3, KK, d0, d1, d2, d3)                                              \
    }
/* one instance per U: the 4U accumulators live in zmm registers only when U is a constant */
#define EFF_TILE_FN(UU)                                                                                       \
    T512 static void eff_tile_avx512_##UU(const ecpu_eff_mat *M, int in, const uint8_t *k, const float *x, int t) { \
        enum { U = UU };                                                                                     \
        const size_t vplane = (size_t)in * 16 * U, pplane = (size_t)in * 4 * U;                             \
        const __m512i IDX0 = _mm512_set_epi32(3, 3, 3, 3, 2, 2, 2, 2, 1, 1, 1, 1, 0, 0, 0, 0);               \
        const __m512i IDX1 = _mm512_add_epi32(IDX0, _mm512_set1_epi32(4));                                 \
        const __m512i IDX2 = _mm512_add_epi32(IDX0, _mm512_set1_epi32(8));                                 \
        const __m512i IDX3 = _mm512_add_epi32(IDX0, _mm512_set1_epi32(12));                                \
        __m512 a0 = _mm512_setzero_ps(), a1 = a0, a2 = a0, a3 = a0, b0 = a0, b1 = a0, b2 = a0, b3 = a0;      \
        __m512 c0 = a0, c1 = a0, c2 = a0, c3 = a0, d0 = a0, d1 = a0, d2 = a0, d3 = a0;                       \
        const uint16_t *Vt = M->vals + (size_t)t * M->ranks * vplane;                                        \
        const uint8_t *Pt = M->pos + (size_t)t * M->ranks * pplane;                                          \
        for (int i = 0; i < in; i++) {                                                                       \
            int kk = k[i] > EB ? EB : k[i];                                                                  \
            if (!kk) continue;                                                                               \
            const uint16_t *V = Vt + (size_t)i * 16 * U;                                                     \
            const uint8_t *P = Pt + (size_t)i * 4 * U;                                                       \
            __m512 xb = _mm512_set1_ps(x[i]);                                                                \
            switch (kk) {                                                                                    \
            case 1: EFF_INPUT(1) break;                                                                      \
            case 2: EFF_INPUT(2) break;                                                                      \
            case 3: EFF_INPUT(3) break;                                                                      \
            default: EFF_INPUT(4) break;                                                                     \
            }                                                                                                \
        }                                                                                                    \
        float *y = M->y + 64 * U * (size_t)t;                                                                \
        _mm512_storeu_ps(y, a0); _mm512_storeu_ps(y + 16, a1); _mm512_storeu_ps(y + 32, a2); _mm512_storeu_ps(y + 48, a3); \
        if (U > 1) { _mm512_storeu_ps(y + 64, b0); _mm512_storeu_ps(y + 80, b1); _mm512_storeu_ps(y + 96, b2); _mm512_storeu_ps(y + 112, b3); } \
        if (U > 2) { _mm512_storeu_ps(y + 128, c0); _mm512_storeu_ps(y + 144, c1); _mm512_storeu_ps(y + 160, c2); _mm512_storeu_ps(y + 176, c3); } \
        if (U > 3) { _mm512_storeu_ps(y + 192, d0); _mm512_storeu_ps(y + 208, d1); _mm512_storeu_ps(y + 224, d2); _mm512_storeu_ps(y + 240, d3); } \
    }
EFF_TILE_FN(1)
EFF_TILE_FN(2)
EFF_TILE_FN(3)
EFF_TILE_FN(4)
static void eff_tile_avx512(const ecpu_eff_mat *M, int in, const uint8_t *k, const float *x, int t) {
    switch (ecpu_effort_units(M->out)) {
    case 1: eff_tile_avx512_1(M, in, k, x, t); break;
    case 2: eff_tile_avx512_2(M, in, k, x, t); break;
    case 3: eff_tile_avx512_3(M, in, k, x, t); break;
    default: eff_tile_avx512_4(M, in, k, x, t); break;
    }
}
#endif

typedef struct { int n, in; const ecpu_eff_mat *mats; const float *x; int jstart[65]; atomic_int next; } eff_job;
static int tiles_of(int out) { return out / 64 / ecpu_effort_units(out); }
static void eff_worker(void *p, int tid) {
    (void)tid; eff_job *J = (eff_job *)p; int total = J->jstart[J->n], m = 0;
    for (;;) {
        int t = atomic_fetch_add(&J->next, 1); if (t >= total) break;
        while (t >= J->jstart[m + 1]) m++;
        const ecpu_eff_mat *M = J->mats + m;
#if ECPU_X86
        if (g_isa == 2) eff_tile_avx512(M, J->in, M->k, J->x, t - J->jstart[m]); else
#endif
        eff_tile_scalar(M, J->in, M->k, J->x, t - J->jstart[m]);
    }
}
void ecpu_effort_matvec_multi(int n, const ecpu_eff_mat *mats, int in, const float *x) {
    detect_isa();
    for (int base = 0; base < n; base += 64) {   /* at most 64 matrices per region */
        int cnt = n - base < 64 ? n - base : 64;
        eff_job J; J.n = cnt; J.in = in; J.mats = mats + base; J.x = x; atomic_init(&J.next, 0); J.jstart[0] = 0;
        for (int q = 0; q < cnt; q++) J.jstart[q + 1] = J.jstart[q] + tiles_of(mats[base + q].out);
        pool_run(eff_worker, &J);
    }
}
void ecpu_effort_matvec(const uint16_t *vals, const uint8_t *pos, int out, int in, const float *x, const uint8_t *k, float *y) {
    ecpu_eff_mat M = {vals, pos, out, EB, k, y};
    ecpu_effort_matvec_multi(1, &M, in, x);
}
