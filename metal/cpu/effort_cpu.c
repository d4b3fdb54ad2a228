/* effort_cpu.c - CPU kernels for the Effort Engine.
 *
 * Build (one shared library, any x86-64, runtime dispatch):
 *   gcc -O2 -fPIC -shared -pthread effort_cpu.c -o libeffort_cpu.so -lm
 *   (macOS/arm64: clang -O2 -fPIC -shared effort_cpu.c -o libeffort_cpu.dylib   -> scalar C path)
 *
 * Kernel families: AVX2+FMA+F16C (per-function target attributes, chosen with
 * __builtin_cpu_supports) and portable scalar C.  No AVX-512 path: the development host
 * exposes only AVX2 (no avx512* cpu flags), so AVX-512 code could not be tested here.
 *
 * EFFORT LAYOUT ("tile4/chunk4", per matrix W[out][in], out % 64 == 0):
 *   bucket c = outputs 16c..16c+15 (nb = out/16), tile t = buckets 4t..4t+3 (nt = out/64).
 *   For each (input i, bucket c) the 16 weights are ranked by |w| descending (fp16 bits&0x7fff,
 *   ties: lower position first); chunk g (0..3) holds ranks 4g..4g+3.
 *   blk  (uint16, out*in*5/4 elements = 2.5 B/weight): block b = (t*4+g)*in + i is 20 uint16:
 *        [q]        q=0..3 : 16-bit position mask of bucket 4t+q's chunk-g members
 *        [4+4q+s]   s=0..3 : fp16 value of the s-th member in increasing position order
 *   codes (uint8, out*in/4 = 0.25 B/weight, read only for partial chunks): codes[4b+q] =
 *        r0 | r1<<2 | r2<<4, r_s = rank-4g of member s (r3 implied: 6-r0-r1-r2).
 *   Selection for a token: input i keeps ranks < k[i]: chunks g < k[i]/4 fully, chunk k[i]/4 partially
 *   (members with r_s < k[i]%4).  Memory traffic ~2.5 B per kept weight (+ chunk rounding).
 * Kernel (AVX2): per tile, 8 ymm accumulators (64 outputs) stay in registers over all active
 *   (g,i) rows; per bucket-chunk the 4 fp16 values are converted once, duplicated in both 128-bit
 *   lanes, and routed to their positions with two vpshufb whose controls come from a 16 KB table
 *   indexed by the low / high byte of the mask (zero for absent lanes), then 2 FMAs with x[i].
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

/* ------------------------------------------------------------------ tables */
static int32_t SLOT_LO[256][8], SLOT_HI[256][8];         /* slot index feeding each lane (>=4: none) */
static uint8_t CTRL[2][256][32] __attribute__((aligned(64))); /* vpshufb controls (lo / hi half) */
static uint32_t SLOTMASK[64][4][4] __attribute__((aligned(16)));  /* [code][j][s]: ~0 if r_s < j */
static atomic_int g_tables_ready;
static pthread_mutex_t g_tab_mtx = PTHREAD_MUTEX_INITIALIZER;
static void init_tables(void) {
    if (atomic_load_explicit(&g_tables_ready, memory_order_acquire)) return;
    pthread_mutex_lock(&g_tab_mtx);
    if (!atomic_load(&g_tables_ready)) {
        for (int m = 0; m < 256; m++) {
            int nlo = 4 - __builtin_popcount(m); if (nlo < 0) nlo = 0;
            for (int l = 0; l < 8; l++) {
                int before = __builtin_popcount(m & ((1 << l) - 1));
                SLOT_LO[m][l] = (m >> l & 1) ? before : 4;
                SLOT_HI[m][l] = (m >> l & 1) ? (nlo + before > 3 ? 4 : nlo + before) : 4;
                for (int h = 0; h < 2; h++) {
                    int s = h ? SLOT_HI[m][l] : SLOT_LO[m][l];
                    for (int b = 0; b < 4; b++) CTRL[h][m][4 * l + b] = (s >= 4) ? 0x80 : (uint8_t)(4 * s + b);
                }
            }
        }
        for (int code = 0; code < 64; code++) {
            int r[4] = {code & 3, (code >> 2) & 3, (code >> 4) & 3, 0}; r[3] = 6 - r[0] - r[1] - r[2];
            for (int j = 0; j < 4; j++) for (int s = 0; s < 4; s++) SLOTMASK[code][j][s] = (r[s] >= 0 && r[s] < j) ? 0xffffffffu : 0;
        }
        atomic_store_explicit(&g_tables_ready, 1, memory_order_release);
    }
    pthread_mutex_unlock(&g_tab_mtx);
}

/* ------------------------------------------------------------------ isa */
static int g_isa = -1; /* 0 scalar, 1 avx2 */
static void detect_isa(void) {
    if (g_isa >= 0) return;
    int isa = 0;
#if ECPU_X86 && defined(__GNUC__)
    __builtin_cpu_init();
    if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && __builtin_cpu_supports("f16c")) isa = 1;
#endif
    { const char *e = getenv("ECPU_FORCE_SCALAR"); if (e && *e == '1') isa = 0; }
    g_isa = isa;
}
const char *ecpu_isa(void) { detect_isa(); return g_isa == 1 ? "avx2" : "scalar"; }

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
    detect_isa(); init_tables();
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
TGT static inline float hsum256(__m256 v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s)); s = _mm_add_ss(s, _mm_movehdup_ps(s)); return _mm_cvtss_f32(s);
}
TGT static void dense_rows_avx2(const uint16_t *W, const float *x, float *y, int r0, int r1, int in) {
    int o = r0, in16 = in & ~15;
    for (; o + 4 <= r1; o += 4) {
        const uint16_t *w0 = W + (size_t)o * in, *w1 = w0 + in, *w2 = w1 + in, *w3 = w2 + in;
        __m256 a0 = _mm256_setzero_ps(), a1 = a0, a2 = a0, a3 = a0, b0 = a0, b1 = a0, b2 = a0, b3 = a0;
        for (int j = 0; j < in16; j += 16) {
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
        if (g_isa == 1) dense_rows_avx2((const uint16_t *)J->W, J->x, J->y, r0, r1, J->in); else
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
        for (int b = 0; b < nbk; b++) {
            const float *xb = x + 32 * b; int j = 32 * b;
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
        if (g_isa == 1) q8_rows_avx2((const int8_t *)J->W, (const float *)J->S, J->x, J->y, r0, r1, J->in); else
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

/* ------------------------------------------------------------------ effort layout */
size_t ecpu_effort_blk_bytes(int out, int in) { return (size_t)out * in * 5 / 2; }
size_t ecpu_effort_codes_bytes(int out, int in) { return (size_t)out * in / 4; }
void ecpu_effort_build(const uint16_t *W, int out, int in, uint16_t *blk, uint8_t *codes, float *stats) {
    int nb = out / 16;
    double *st = (double *)calloc((size_t)16 * in, sizeof(double));
    for (int i = 0; i < in; i++)
        for (int c = 0; c < nb; c++) {
            int ord[16], rank[16]; uint16_t a[16];
            for (int p = 0; p < 16; p++) { ord[p] = p; a[p] = W[(size_t)(16 * c + p) * in + i] & 0x7fff; }
            for (int s = 1; s < 16; s++) { int t = ord[s], u = s - 1; while (u >= 0 && a[ord[u]] < a[t]) { ord[u + 1] = ord[u]; u--; } ord[u + 1] = t; }
            for (int r = 0; r < 16; r++) { rank[ord[r]] = r; st[(size_t)r * in + i] += fabsf(h2f(a[ord[r]])); }
            int t = c / 4, q = c % 4;
            for (int g = 0; g < 4; g++) {
                size_t b = ((size_t)t * 4 + g) * in + i; uint16_t *B = blk + 20 * b;
                uint16_t m = 0; int s = 0, rr[4] = {0, 0, 0, 0};
                for (int p = 0; p < 16; p++) if (rank[p] / 4 == g) { m |= (uint16_t)(1u << p); B[4 + 4 * q + s] = W[(size_t)(16 * c + p) * in + i]; rr[s] = rank[p] - 4 * g; s++; }
                B[q] = m; codes[4 * b + q] = (uint8_t)(rr[0] | rr[1] << 2 | rr[2] << 4);
            }
        }
    for (size_t r = 0; r < (size_t)16 * in; r++) stats[r] = (float)(st[r] / nb);
    free(st);
}
long ecpu_effort_k(const float *stats, const float *x, int in, float cutoff, uint8_t *k) {
    long tot = 0;
    for (int i = 0; i < in; i++) { float ax = fabsf(x[i]); int kk = 0; while (kk < 16 && stats[(size_t)kk * in + i] * ax > cutoff) kk++; k[i] = (uint8_t)kk; tot += kk; }
    return tot;
}

/* per-matrix work list: rows (g*in+i) with k>=4g+4 (full) and 4g<k<4g+4 (partial, j=k-4g) */
#ifndef ECPU_PD
#define ECPU_PD 12
#endif
typedef struct { int nfull, npart; int32_t *full, *part; float *xf, *xp; uint8_t *jp; } worklist;
static void make_work(int in, const float *x, const uint8_t *k, worklist *w) {
    w->nfull = w->npart = 0;
    for (int g = 0; g < 4; g++)
        for (int i = 0; i < in; i++) {
            int kk = (int)k[i] - 4 * g; if (kk <= 0) continue;
            if (kk >= 4) { w->full[w->nfull] = g * in + i; w->xf[w->nfull++] = x[i]; }
            else { w->part[w->npart] = g * in + i; w->xp[w->npart] = x[i]; w->jp[w->npart++] = (uint8_t)kk; }
        }
    for (int q = 0; q < ECPU_PD; q++) { w->full[w->nfull + q] = w->nfull ? w->full[w->nfull - 1] : 0; w->part[w->npart + q] = w->npart ? w->part[w->npart - 1] : 0; }
}
static void eff_tile_scalar(const uint16_t *blk, const uint8_t *codes, int in, const worklist *w, float *y, int t) {
    float acc[64]; memset(acc, 0, sizeof acc);
    size_t tb = (size_t)t * 4 * in;
    for (int n = 0; n < w->nfull + w->npart; n++) {
        int full = n < w->nfull, row = full ? w->full[n] : w->part[n - w->nfull];
        float xv = full ? w->xf[n] : w->xp[n - w->nfull]; int j = full ? 4 : w->jp[n - w->nfull];
        size_t b = tb + row; const uint16_t *B = blk + 20 * b;
        for (int q = 0; q < 4; q++) {
            unsigned m = B[q], code = codes[4 * b + q];
            int r[4] = {(int)(code & 3), (int)((code >> 2) & 3), (int)((code >> 4) & 3), 0}; r[3] = 6 - r[0] - r[1] - r[2];
            int s = 0;
            for (int p = 0; p < 16; p++) if (m >> p & 1) { if (r[s] < j) acc[16 * q + p] += xv * h2f(B[4 + 4 * q + s]); s++; }
        }
    }
    memcpy(y + 64 * (size_t)t, acc, sizeof acc);
}
#if ECPU_X86
#define EBK(cc, P4) { unsigned m = (unsigned)(mm >> (16 * cc)) & 0xffff; __m128 p4 = P4; \
    __m256i P = _mm256_castps_si256(_mm256_insertf128_ps(_mm256_castps128_ps256(p4), p4, 1)); \
    a##cc##l = _mm256_fmadd_ps(_mm256_castsi256_ps(_mm256_shuffle_epi8(P, _mm256_load_si256((const __m256i *)CTRL[0][m & 255]))), xb, a##cc##l); \
    a##cc##h = _mm256_fmadd_ps(_mm256_castsi256_ps(_mm256_shuffle_epi8(P, _mm256_load_si256((const __m256i *)CTRL[1][m >> 8]))), xb, a##cc##h); }
#define EBKF(cc) { unsigned m = (unsigned)(mm >> (16 * cc)) & 0xffff; \
    __m256i P = _mm256_castps_si256(_mm256_cvtph_ps(_mm_castpd_si128(_mm_loaddup_pd((const double *)(B + 4 + 4 * cc))))); \
    a##cc##l = _mm256_fmadd_ps(_mm256_castsi256_ps(_mm256_shuffle_epi8(P, _mm256_load_si256((const __m256i *)CTRL[0][m & 255]))), xb, a##cc##l); \
    a##cc##h = _mm256_fmadd_ps(_mm256_castsi256_ps(_mm256_shuffle_epi8(P, _mm256_load_si256((const __m256i *)CTRL[1][m >> 8]))), xb, a##cc##h); }
#define EVP(cc) _mm_and_ps(_mm_cvtph_ps(_mm_loadl_epi64((const __m128i *)(B + 4 + 4 * cc))), _mm_load_ps((const float *)SLOTMASK[C[cc]][j]))
__attribute__((target("avx2,fma,f16c")))
static void eff_tile_avx2(const uint16_t *blk, const uint8_t *codes, int in, const worklist *w, float *y, int t) {
    size_t tb = (size_t)t * 4 * in;
    const uint16_t *base = blk + 20 * tb; const uint8_t *cb = codes + 4 * tb;
    __m256 a0l = _mm256_setzero_ps(), a0h = a0l, a1l = a0l, a1h = a0l, a2l = a0l, a2h = a0l, a3l = a0l, a3h = a0l;
    /* rows are sparse within the tile region: software-prefetch ECPU_PD rows ahead (lists are padded) */
    for (int n = 0; n < w->nfull; n++) {
        const char *pf = (const char *)(base + 20 * (size_t)w->full[n + ECPU_PD]);
        _mm_prefetch(pf, _MM_HINT_T0); _mm_prefetch(pf + 39, _MM_HINT_T0);
        const uint16_t *B = base + 20 * (size_t)w->full[n]; __m256 xb = _mm256_broadcast_ss(w->xf + n);
        uint64_t mm; memcpy(&mm, B, 8);
        EBKF(0) EBKF(1) EBKF(2) EBKF(3)
    }
    for (int n = 0; n < w->npart; n++) {
        const char *pf = (const char *)(base + 20 * (size_t)w->part[n + ECPU_PD]);
        _mm_prefetch(pf, _MM_HINT_T0); _mm_prefetch(pf + 39, _MM_HINT_T0); _mm_prefetch((const char *)(cb + 4 * (size_t)w->part[n + ECPU_PD]), _MM_HINT_T0);
        const uint16_t *B = base + 20 * (size_t)w->part[n]; const uint8_t *C = cb + 4 * (size_t)w->part[n];
        int j = w->jp[n]; __m256 xb = _mm256_broadcast_ss(w->xp + n);
        uint64_t mm; memcpy(&mm, B, 8);
        EBK(0, EVP(0)) EBK(1, EVP(1)) EBK(2, EVP(2)) EBK(3, EVP(3))
    }
    float *yy = y + 64 * (size_t)t;
    _mm256_storeu_ps(yy, a0l); _mm256_storeu_ps(yy + 8, a0h); _mm256_storeu_ps(yy + 16, a1l); _mm256_storeu_ps(yy + 24, a1h);
    _mm256_storeu_ps(yy + 32, a2l); _mm256_storeu_ps(yy + 40, a2h); _mm256_storeu_ps(yy + 48, a3l); _mm256_storeu_ps(yy + 56, a3h);
}
#endif

/* scratch for work lists (grown on demand; API is not reentrant) */
static worklist *g_wl; static int g_wl_n, g_wl_in;
static void ensure_wl(int n, int in) {
    if (n <= g_wl_n && in <= g_wl_in) return;
    for (int q = 0; q < g_wl_n; q++) { free(g_wl[q].full); free(g_wl[q].part); free(g_wl[q].xf); free(g_wl[q].xp); free(g_wl[q].jp); }
    free(g_wl);
    if (n < g_wl_n) n = g_wl_n;
    if (in < g_wl_in) in = g_wl_in;
    g_wl = (worklist *)calloc(n, sizeof(worklist));
    for (int q = 0; q < n; q++) {
        g_wl[q].full = (int32_t *)malloc(sizeof(int32_t) * (4 * in + ECPU_PD)); g_wl[q].part = (int32_t *)malloc(sizeof(int32_t) * (4 * in + ECPU_PD));
        g_wl[q].xf = (float *)malloc(sizeof(float) * 4 * in); g_wl[q].xp = (float *)malloc(sizeof(float) * 4 * in);
        g_wl[q].jp = (uint8_t *)malloc(4 * in);
    }
    g_wl_n = n; g_wl_in = in;
}
typedef struct { int n, in; const ecpu_eff_mat *mats; int tstart[65]; atomic_int next; } eff_job;
static void eff_worker(void *p, int tid) {
    (void)tid; eff_job *J = (eff_job *)p; int total = J->tstart[J->n], m = 0;
    for (;;) {
        int t = atomic_fetch_add(&J->next, 1); if (t >= total) break;
        while (t >= J->tstart[m + 1]) m++;
        const ecpu_eff_mat *M = J->mats + m; int tt = t - J->tstart[m];
#if ECPU_X86
        if (g_isa == 1) eff_tile_avx2(M->blk, M->codes, J->in, &g_wl[m], M->y, tt); else
#endif
        eff_tile_scalar(M->blk, M->codes, J->in, &g_wl[m], M->y, tt);
    }
}
void ecpu_effort_matvec_multi(int n, const ecpu_eff_mat *mats, int in, const float *x) {
    detect_isa(); init_tables();
    for (int base = 0; base < n; base += 64) {   /* at most 64 matrices per region */
        int cnt = n - base < 64 ? n - base : 64;
        ensure_wl(cnt, in);
        eff_job J; J.n = cnt; J.in = in; J.mats = mats + base; atomic_init(&J.next, 0); J.tstart[0] = 0;
        for (int q = 0; q < cnt; q++) { make_work(in, x, mats[base + q].k, &g_wl[q]); J.tstart[q + 1] = J.tstart[q] + mats[base + q].out / 64; }
        pool_run(eff_worker, &J);
    }
}
void ecpu_effort_matvec(const uint16_t *blk, const uint8_t *codes, int out, int in, const float *x, const uint8_t *k, float *y) {
    ecpu_eff_mat M = {blk, codes, out, k, y};
    ecpu_effort_matvec_multi(1, &M, in, x);
}
