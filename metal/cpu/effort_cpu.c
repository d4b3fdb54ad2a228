/* effort_cpu.c - CPU kernels for the Effort Engine.
 * Run by: metal/cpu/decode.c and engine.runtime.cpu_runtime (built by engine.runtime.native).
 *
 * Build (one shared library, any x86-64, runtime dispatch):
 *   gcc -O2 -fPIC -shared -pthread effort_cpu.c -o libeffort_cpu.so -lm
 *   (macOS/arm64: clang -O2 -fPIC -shared effort_cpu.c -o libeffort_cpu.dylib   -> scalar C path)
 *
 * Kernel families: AVX2+FMA+F16C (per-function target attributes, chosen with
 * __builtin_cpu_supports) and portable scalar C. They run unchanged on AVX-512 machines (Zen 4).
 *
 * EFFORT LAYOUT ("masked-dense tiles", per matrix W[out][in], out % 64 == 0):
 *   bucket c = outputs 16c..16c+15; the 16 weights of (input i, bucket c) are ranked by |w| descending
 *   (fp16 bits & 0x7fff, ties: lower position first).  Input i keeps the weights with rank < k[i].
 *   tile t = outputs 64t..64t+63 (nt = out/64).  blk (uint16): blk[0] = offset (uint16 units, 1..32) of the
 *   64-byte aligned data start D (blk_bytes = 2.5*out*in + 64 B); per tile, from D + t*80*in:
 *        [64*i + o]          fp16 w[64t+o][i], o = 0..63  (one 128-byte row per input, input-major)
 *        bytes of [64*in ..) rank nibbles, 32 B per input: byte 32*i + 16*(o/32) + o%16 holds the rank of
 *                            output 64t+o in its low nibble if o%32 < 16, else in its high nibble.
 *   Memory: 2.5 B per weight, nothing else (also serves k = 16 everywhere).
 * Kernel (AVX2): per tile, 8 ymm accumulators (64 outputs) stay in registers over the inputs with k > 0
 *   (in increasing order, rows software-prefetched ECPU_PD ahead).  k = 16 only: 8 x (vcvtph2ps + FMA) per
 *   row.  Otherwise (mixed list): 32 rank nibbles -> vpcmpgtb against k -> byte masks -> vpunpck to 16-bit
 *   masks -> vpand on the fp16 bits before the conversion, + FMA.  Inputs with k = 0 are skipped.
 *   (A hybrid with tile4/chunk4 blocks for 0 < k < T was measured slower than this at every T.)
 */
#include "effort_cpu.h"
#include "pool.h"
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
/* 0 scalar, 1 AVX2+FMA+F16C; ECPU_ISA=scalar forces the plain-C kernels. An AVX-512 routing kernel for a 4-output
 * bucket list was built and measured on Zen 4 and lost to these (docs/measurements.md). */
static int g_isa = -1;
static void detect_isa(void) {
    if (g_isa >= 0) return;
    int isa = 0;
#if ECPU_X86 && defined(__GNUC__)
    __builtin_cpu_init();
    if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && __builtin_cpu_supports("f16c")) isa = 1;
#endif
    const char *cap = getenv("ECPU_ISA");
    if (cap && strcmp(cap, "scalar") == 0) isa = 0;
    g_isa = isa;
}
const char *ecpu_isa(void) { detect_isa(); return g_isa == 1 ? "avx2" : "scalar"; }

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
        if (g_isa == 1) dense_rows_avx2((const uint16_t *)J->W, J->x, J->y, r0, r1, J->in); else
#endif
        dense_rows_scalar((const uint16_t *)J->W, J->x, J->y, r0, r1, J->in);
    }
}
void ecpu_dense_f16(const uint16_t *W, const float *x, float *y, int out, int in) {
    detect_isa();
    dense_job J = {W, NULL, x, y, out, in, 32, 0};
    if ((size_t)out * in < 65536) { J.chunk = out; }
    ecpu_parallel(dense_worker, &J);
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
        if (g_isa == 1) q8_rows_avx2((const int8_t *)J->W, (const float *)J->S, J->x, J->y, r0, r1, J->in); else
#endif
        q8_rows_scalar((const int8_t *)J->W, (const float *)J->S, J->x, J->y, r0, r1, J->in);
    }
}
void ecpu_head_q8(const int8_t *qs, const float *scales, const float *x, float *y, int out, int in) {
    detect_isa();
    dense_job J = {qs, scales, x, y, out, in, 256, 0};
    ecpu_parallel(q8_worker, &J);
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

/* ------------------------------------------------------------------ effort layout */
#define ECPU_TS(in) ((size_t)(in) * 80)     /* uint16 per tile: 64 fp16 + 16 uint16 of nibbles per input */
size_t ecpu_effort_blk_bytes(int out, int in) { return (size_t)(out / 64) * ECPU_TS(in) * 2 + 64; }
static inline const uint16_t *eff_data(const uint16_t *blk) { return blk + blk[0]; }
void ecpu_effort_build(const uint16_t *W, int out, int in, uint16_t *blk, float *stats) {
    int nb = out / 16;
    double *st = (double *)calloc((size_t)16 * in, sizeof(double));
    blk[0] = (uint16_t)((64 - ((uintptr_t)blk & 63)) / 2);   /* data start: first 64-byte boundary after blk[0] */
    uint16_t *D = blk + blk[0];
    for (int i = 0; i < in; i++)
        for (int c = 0; c < nb; c++) {
            int ord[16], rank[16]; uint16_t a[16];
            for (int p = 0; p < 16; p++) { ord[p] = p; a[p] = W[(size_t)(16 * c + p) * in + i] & 0x7fff; }
            for (int s = 1; s < 16; s++) { int t = ord[s], u = s - 1; while (u >= 0 && a[ord[u]] < a[t]) { ord[u + 1] = ord[u]; u--; } ord[u + 1] = t; }
            for (int r = 0; r < 16; r++) { rank[ord[r]] = r; st[(size_t)r * in + i] += fabsf(h2f(a[ord[r]])); }
            uint16_t *T0 = D + (size_t)(c / 4) * ECPU_TS(in);
            uint8_t *nib = (uint8_t *)(T0 + (size_t)64 * in) + 32 * (size_t)i;
            for (int p = 0; p < 16; p++) {
                int o = 16 * (c % 4) + p, sh = (o & 31) >= 16 ? 4 : 0; uint8_t *bp = nib + 16 * (o >> 5) + (o & 15);
                T0[(size_t)64 * i + o] = W[(size_t)(16 * c + p) * in + i];
                *bp = (uint8_t)((*bp & ~(0xf << sh)) | (rank[p] << sh));
            }
        }
    for (size_t r = 0; r < (size_t)16 * in; r++) stats[r] = (float)(st[r] / nb);
    free(st);
}
/* k[i] = the ranks r whose stats[r*in + i] * |x[i]| beat the cutoff. Stats do not increase with
   the rank, so counting every rank that passes equals counting the leading ones; done rank by
   rank, the loads are contiguous and the loop vectorises. */
long ecpu_effort_k(const float *stats, const float *x, int in, float cutoff, uint8_t *k) {
    memset(k, 0, (size_t)in);
    for (int r = 0; r < 16; r++) {
        const float *s = stats + (size_t)r * in;
        for (int i = 0; i < in; i++) k[i] += (uint8_t)(s[i] * fabsf(x[i]) > cutoff);
    }
    long tot = 0;
    for (int i = 0; i < in; i++) tot += k[i];
    return tot;
}

/* per-matrix work list: the inputs with k > 0 in increasing order, with x and k (clamped to 16);
   all16: every listed k is 16 (unmasked rows).  Padded by ECPU_PD entries for the prefetch.
   When every input has k = 16 (the dense product) the list is the identity and x and k themselves:
   nothing is copied. */
#ifndef ECPU_PD
#define ECPU_PD 12
#endif
typedef struct {
    int n, all16; const int32_t *idx; const float *xs; const uint8_t *ks;   /* what the kernels read */
    int32_t *idx_buf; float *xs_buf; uint8_t *ks_buf;                      /* owned storage */
} worklist;
static int32_t *g_identity;   /* 0, 1, 2, ... (in + ECPU_PD entries, see ensure_wl) */
static void make_work(int in, const float *x, const uint8_t *k, worklist *w) {
    uint8_t low = 16;
    for (int i = 0; i < in; i++) low = k[i] < low ? k[i] : low;   /* vectorises */
    if (low == 16) { w->n = in; w->all16 = 1; w->idx = g_identity; w->xs = x; w->ks = k; return; }
    int n = 0, a16 = 1;
    for (int i = 0; i < in; i++) {   /* branch-free: k = 0 vs k > 0 is a coin flip at low effort */
        int kk = k[i] > 16 ? 16 : k[i];
        w->idx_buf[n] = i; w->xs_buf[n] = x[i]; w->ks_buf[n] = (uint8_t)kk;
        a16 &= kk == 16 || kk == 0;
        n += kk > 0;
    }
    for (int q = 0; q < ECPU_PD; q++) w->idx_buf[n + q] = n ? w->idx_buf[n - 1] : 0;
    w->n = n; w->all16 = a16; w->idx = w->idx_buf; w->xs = w->xs_buf; w->ks = w->ks_buf;
}
static void eff_tile_scalar(const uint16_t *blk, int in, const worklist *w, float *y, int t) {
    float acc[64]; memset(acc, 0, sizeof acc);
    const uint16_t *T0 = eff_data(blk) + (size_t)t * ECPU_TS(in);
    const uint8_t *NB = (const uint8_t *)(T0 + (size_t)64 * in);
    for (int n = 0; n < w->n; n++) {
        const uint16_t *R = T0 + (size_t)64 * w->idx[n]; const uint8_t *nib = NB + 32 * (size_t)w->idx[n];
        float xv = w->xs[n]; int kk = w->ks[n];
        for (int o = 0; o < 64; o++) {
            int r = (nib[16 * (o >> 5) + (o & 15)] >> ((o & 31) >= 16 ? 4 : 0)) & 15;
            if (r < kk) acc[o] += xv * h2f(R[o]);
        }
    }
    memcpy(y + 64 * (size_t)t, acc, sizeof acc);
}
#if ECPU_X86
#define DFMA(A, off) A = _mm256_fmadd_ps(_mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(R + (off)))), xb, A)
#define MFMA(A, off, M) A = _mm256_fmadd_ps(_mm256_cvtph_ps(_mm_and_si128(_mm_loadu_si128((const __m128i *)(R + (off))), M)), xb, A)
/* outputs 32h..32h+31: 16 nibble bytes -> byte masks (rank < k) -> 16-bit masks (unpack) -> and on the fp16 bits */
#define MHALF(h, A0, A1, A2, A3) { __m128i Rn = _mm_loadu_si128((const __m128i *)(Np + 16 * h)); \
    __m128i ml = _mm_cmpgt_epi8(K, _mm_and_si128(Rn, nib)), mh = _mm_cmpgt_epi8(K, _mm_and_si128(_mm_srli_epi16(Rn, 4), nib)); \
    MFMA(A0, 32 * h, _mm_unpacklo_epi8(ml, ml)); MFMA(A1, 32 * h + 8, _mm_unpackhi_epi8(ml, ml)); \
    MFMA(A2, 32 * h + 16, _mm_unpacklo_epi8(mh, mh)); MFMA(A3, 32 * h + 24, _mm_unpackhi_epi8(mh, mh)); }
__attribute__((target("avx2,fma,f16c")))
static void eff_tile_avx2(const uint16_t *blk, int in, const worklist *w, float *y, int t) {
    const uint16_t *T0 = eff_data(blk) + (size_t)t * ECPU_TS(in);
    const uint8_t *NB = (const uint8_t *)(T0 + (size_t)64 * in);
    __m256 a0l = _mm256_setzero_ps(), a0h = a0l, a1l = a0l, a1h = a0l, a2l = a0l, a2h = a0l, a3l = a0l, a3h = a0l;
    if (w->all16) {
        for (int n = 0; n < w->n; n++) {
            const char *pf = (const char *)(T0 + (size_t)64 * w->idx[n + ECPU_PD]);
            _mm_prefetch(pf, _MM_HINT_T0); _mm_prefetch(pf + 64, _MM_HINT_T0);
            const uint16_t *R = T0 + (size_t)64 * w->idx[n]; __m256 xb = _mm256_broadcast_ss(w->xs + n);
            DFMA(a0l, 0); DFMA(a0h, 8); DFMA(a1l, 16); DFMA(a1h, 24); DFMA(a2l, 32); DFMA(a2h, 40); DFMA(a3l, 48); DFMA(a3h, 56);
        }
    } else {
        const __m128i nib = _mm_set1_epi8(0x0f);
        for (int n = 0; n < w->n; n++) {
            size_t ip = (size_t)w->idx[n + ECPU_PD];
            const char *pf = (const char *)(T0 + 64 * ip);
            _mm_prefetch(pf, _MM_HINT_T0); _mm_prefetch(pf + 64, _MM_HINT_T0); _mm_prefetch((const char *)(NB + 32 * ip), _MM_HINT_T0);
            const uint16_t *R = T0 + (size_t)64 * w->idx[n]; const uint8_t *Np = NB + 32 * (size_t)w->idx[n];
            __m256 xb = _mm256_broadcast_ss(w->xs + n); __m128i K = _mm_set1_epi8((char)w->ks[n]);
            MHALF(0, a0l, a0h, a1l, a1h) MHALF(1, a2l, a2h, a3l, a3h)
        }
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
    for (int q = 0; q < g_wl_n; q++) { free(g_wl[q].idx_buf); free(g_wl[q].xs_buf); free(g_wl[q].ks_buf); }
    free(g_wl); free(g_identity);
    if (n < g_wl_n) n = g_wl_n;
    if (in < g_wl_in) in = g_wl_in;
    g_wl = (worklist *)calloc(n, sizeof(worklist));
    for (int q = 0; q < n; q++) {
        g_wl[q].idx_buf = (int32_t *)malloc(sizeof(int32_t) * (in + ECPU_PD));
        g_wl[q].xs_buf = (float *)malloc(sizeof(float) * in); g_wl[q].ks_buf = (uint8_t *)malloc(in);
    }
    g_identity = (int32_t *)malloc(sizeof(int32_t) * (in + ECPU_PD));
    for (int i = 0; i < in + ECPU_PD; i++) g_identity[i] = i < in ? i : in - 1;
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
        if (g_isa == 1) eff_tile_avx2(M->blk, J->in, &g_wl[m], M->y, tt); else
#endif
        eff_tile_scalar(M->blk, J->in, &g_wl[m], M->y, tt);
    }
}
void ecpu_effort_matvec_multi(int n, const ecpu_eff_mat *mats, int in, const float *x) {
    detect_isa();
    for (int base = 0; base < n; base += 64) {   /* at most 64 matrices per region */
        int cnt = n - base < 64 ? n - base : 64;
        ensure_wl(cnt, in);
        eff_job J; J.n = cnt; J.in = in; J.mats = mats + base; atomic_init(&J.next, 0); J.tstart[0] = 0;
        for (int q = 0; q < cnt; q++) { make_work(in, x, mats[base + q].k, &g_wl[q]); J.tstart[q + 1] = J.tstart[q] + mats[base + q].out / 64; }
        ecpu_parallel(eff_worker, &J);
    }
}
void ecpu_effort_matvec(const uint16_t *blk, int out, int in, const float *x, const uint8_t *k, float *y) {
    ecpu_eff_mat M = {blk, out, k, y};
    ecpu_effort_matvec_multi(1, &M, in, x);
}
