/* planes.c — the kernels of the planes layout (see planes.h for the layout and the math).
 * Run by: metal/cpu/decode.c and engine.runtime.cpu_runtime (built by engine.runtime.native).
 *
 * Kernel families, chosen at run time: AVX-512 VNNI (vpdpbusd on zmm; Zen 4, Sapphire Rapids), AVX2
 * (vpmaddubsw + vpmaddwd; Zen 3, Intel client chips), portable C. All compute the same integer sums per
 * block; they differ only in the float rounding of the fold.
 *
 * Why these shapes: on a CPU time follows the bytes read in long streams, and routing single weights to
 * their lanes costs more than reading them (docs/measurements.md). So the effort chooses whole rows at a
 * level (contiguous reads), and the compute per weight stays well below the memory time at 4 bits: four
 * rows of one block are interleaved in registers (two unpack steps) so that one vpdpbusd sums four rows'
 * products per output lane; their four activations are one broadcast 32-bit word.
 */
#include "planes.h"
#include "pool.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <stdatomic.h>

#if (defined(__x86_64__) || defined(_M_X64)) && !defined(ECPU_NO_SIMD) && defined(__GNUC__)
#define EE_X86 1
#include <immintrin.h>
#else
#define EE_X86 0
#endif

/* ------------------------------------------------------------------ isa */
enum { ISA_SCALAR = 0, ISA_AVX2 = 1, ISA_AVX512 = 2 };
static int g_isa = -1;
static int isa(void) {
    if (g_isa >= 0) return g_isa;
    int best = ISA_SCALAR;
#if EE_X86
    __builtin_cpu_init();
    if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && __builtin_cpu_supports("f16c")) {
        best = ISA_AVX2;
        if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
            __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512vnni"))
            best = ISA_AVX512;
    }
#endif
    const char *cap = getenv("EE_ISA");
    if (cap && strcmp(cap, "scalar") == 0) best = ISA_SCALAR;
    if (cap && strcmp(cap, "avx2") == 0 && best > ISA_AVX2) best = ISA_AVX2;
    g_isa = best;
    return g_isa;
}
static const char *ISA_NAMES[] = {"scalar", "avx2", "avx512vnni"};
const char *ee_isa(void) { return ISA_NAMES[isa()]; }

int ee_use_isa(const char *name) {
    int best = (g_isa = -1, isa()); /* what this CPU (and EE_ISA) allows */
    for (int i = 0; i <= best; i++)
        if (strcmp(name, ISA_NAMES[i]) == 0) {
            g_isa = i;
            return 0;
        }
    return -1;
}

static float h2f(uint16_t h) {
    uint32_t s = (uint32_t)(h & 0x8000) << 16, e = (h >> 10) & 31, m = h & 1023, u;
    float f;
    if (e == 0) {
        f = ldexpf((float)m, -24);
        memcpy(&u, &f, 4);
        u |= s;
    } else if (e == 31) {
        u = s | 0x7f800000u | (m << 13);
    } else {
        u = s | ((e + 112) << 23) | (m << 13);
    }
    memcpy(&f, &u, 4);
    return f;
}

/* ------------------------------------------------------------------ activations */
/* one block of 32: its scale, its two int8 levels; returns 1 for NaN or inf */
static int quantize_block(const float *v, int8_t *xq, int8_t *xr, float *dx) {
    float top = 0.0f;
    int bad = 0;
    for (int j = 0; j < EE_BLOCK; j++) {
        float a = fabsf(v[j]);
        bad |= !(a <= 3.0e38f); /* NaN or inf: integers cannot carry it, so say so */
        top = a > top ? a : top;
    }
    float inv = top > 0.0f ? 127.0f / top : 0.0f;
    *dx = top / 127.0f;
    for (int j = 0; j < EE_BLOCK; j++) {
        float s = v[j] * inv;
        long q = lrintf(s), r = lrintf((s - (float)q) * (float)EE_RESIDUAL);
        xq[j] = (int8_t)q;
        xr[j] = (int8_t)(r > 127 ? 127 : r < -127 ? -127 : r);
    }
    return bad;
}

#if EE_X86
/* the same, eight lanes at a time (vcvtps2dq rounds to nearest even, as lrintf does) */
__attribute__((target("avx2,fma"))) static int quantize_block_avx2(const float *v, int8_t *xq, int8_t *xr, float *dx) {
    const __m256 sign = _mm256_set1_ps(-0.0f), huge = _mm256_set1_ps(3.0e38f);
    __m256 a[4], top = _mm256_setzero_ps();
    int ok = 0xff;
    for (int k = 0; k < 4; k++) {
        a[k] = _mm256_loadu_ps(v + 8 * k);
        __m256 m = _mm256_andnot_ps(sign, a[k]);
        ok &= _mm256_movemask_ps(_mm256_cmp_ps(m, huge, _CMP_LE_OQ));
        top = _mm256_max_ps(top, m);
    }
    __m128 t4 = _mm_max_ps(_mm256_castps256_ps128(top), _mm256_extractf128_ps(top, 1));
    t4 = _mm_max_ps(t4, _mm_movehl_ps(t4, t4));
    t4 = _mm_max_ss(t4, _mm_movehdup_ps(t4));
    float t = _mm_cvtss_f32(t4);
    *dx = t / 127.0f;
    const __m256 inv = _mm256_set1_ps(t > 0.0f ? 127.0f / t : 0.0f), scale = _mm256_set1_ps((float)EE_RESIDUAL);
    const __m256i lo = _mm256_set1_epi32(-127), hi = _mm256_set1_epi32(127);
    __m256i q[4], r[4];
    for (int k = 0; k < 4; k++) {
        __m256 s = _mm256_mul_ps(a[k], inv);
        q[k] = _mm256_cvtps_epi32(s);
        __m256i rr = _mm256_cvtps_epi32(_mm256_mul_ps(_mm256_sub_ps(s, _mm256_cvtepi32_ps(q[k])), scale));
        r[k] = _mm256_max_epi32(lo, _mm256_min_epi32(hi, rr));
    }
    const __m256i order = _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7); /* undo the packs' lane interleave */
    __m256i q8 = _mm256_packs_epi16(_mm256_packs_epi32(q[0], q[1]), _mm256_packs_epi32(q[2], q[3]));
    __m256i r8 = _mm256_packs_epi16(_mm256_packs_epi32(r[0], r[1]), _mm256_packs_epi32(r[2], r[3]));
    _mm256_storeu_si256((__m256i *)xq, _mm256_permutevar8x32_epi32(q8, order));
    _mm256_storeu_si256((__m256i *)xr, _mm256_permutevar8x32_epi32(r8, order));
    return ok != 0xff;
}
#endif

int ee_quantize_x(const float *x, int in, int8_t *xq, float *dx) {
    int bad = 0;
    for (int b = 0; b < in / EE_BLOCK; b++) {
#if EE_X86
        if (isa() >= ISA_AVX2) {
            bad |= quantize_block_avx2(x + EE_BLOCK * b, xq + EE_BLOCK * b, xq + in + EE_BLOCK * b, dx + b);
            continue;
        }
#endif
        bad |= quantize_block(x + EE_BLOCK * b, xq + EE_BLOCK * b, xq + in + EE_BLOCK * b, dx + b);
    }
    return bad;
}

/* ------------------------------------------------------------------ work lists */
ee_work *ee_work_new(int in) {
    ee_work *w = (ee_work *)calloc(1, sizeof(ee_work));
    if (!w) return NULL;
    int nb = in / EE_BLOCK;
    w->nb = 0;
    w->max_in = in;
    w->cap = 2 * (in / 4 + nb) + 8; /* both planes of every row, each block's lists padded to quads */
    w->quads = (ee_quad *)malloc(sizeof(ee_quad) * (size_t)w->cap);
    w->start = (int32_t *)malloc(sizeof(int32_t) * (size_t)(nb + 1));
    w->split = (int32_t *)malloc(sizeof(int32_t) * (size_t)(nb + 1));
    w->dx = (float *)malloc(sizeof(float) * (size_t)(3 * nb + 1));
    if (!w->quads || !w->start || !w->split || !w->dx) {
        ee_work_free(w);
        return NULL;
    }
    w->c0 = w->dx + nb;
    w->c1 = w->c0 + nb;
    return w;
}

void ee_work_free(ee_work *w) {
    if (!w) return;
    free(w->quads);
    free(w->start);
    free(w->split);
    free(w->dx);
    free(w);
}

/* Append the listed rows (indices `rows[0..n)` of one block) as quads; a short last quad repeats the
 * first row with activation 0. xr: the residual activations (xq + in). */
static int put_quads(ee_quad *q, const uint16_t *rows, int n, const int8_t *xq, const int8_t *xr) {
    int nq = (n + 3) / 4;
    for (int t = 0; t < nq; t++) {
        uint32_t word = 0, rest = 0;
        for (int j = 0; j < 4; j++) {
            int k = 4 * t + j;
            uint16_t r = k < n ? rows[k] : rows[0];
            q[t].row[j] = r;
            word |= (uint32_t)(uint8_t)(k < n ? xq[r] : 0) << (8 * j);
            rest |= (uint32_t)(uint8_t)(k < n ? xr[r] : 0) << (8 * j);
        }
        q[t].xq = (int32_t)word;
        q[t].xr = (int32_t)rest;
    }
    return nq;
}

/* Block b's lists (rows at level >= 1: l1, at level 2: l2) as quads at w->quads + at, with the fold's
 * constants; returns the next free quad. */
static int fill_block(const ee_planes *P, ee_work *w, int b, int at, const uint16_t *l1, int n1, const uint16_t *l2,
                      int n2, const int8_t *xq, const float *dx) {
    const int8_t *xr = xq + P->in;
    float r = w->residual ? 1.0f / EE_RESIDUAL : 0.0f;
    float s12 = 0.0f, s1; /* sums of the activations (in units of dx) of the rows at level >= 1, at level 1 */
    for (int t = 0; t < n1; t++) s12 += (float)xq[l1[t]] + (float)xr[l1[t]] * r;
    s1 = s12;
    for (int t = 0; t < n2; t++) s1 -= (float)xq[l2[t]] + (float)xr[l2[t]] * r;
    w->start[b] = at;
    at += n1 ? put_quads(w->quads + at, l1, n1, xq, xr) : 0;
    w->split[b] = at;
    at += n2 ? put_quads(w->quads + at, l2, n2, xq, xr) : 0;
    w->dx[b] = dx[b];
    if (P->kind == EE_Q8) { /* acc holds 16 u + l with u = high nibble + 8: remove the bias, add 7.5 per level-1 row */
        w->c0[b] = dx[b] * (-128.0f * s12 + 7.5f * s1);
        w->c1[b] = 0.0f;
    } else if (!P->m) { /* Q4_0: m = -8 d, a constant in the integer sum */
        w->c0[b] = dx[b] * (-8.0f * s12);
        w->c1[b] = 0.0f;
    } else {
        w->c0[b] = 0.0f;
        w->c1[b] = dx[b] * s12;
    }
    return at;
}

long ee_work_from_levels(const ee_planes *P, const int8_t *xq, const float *dx, const uint8_t *levels,
                         ee_work *w) {
    if (P->in > w->max_in) return -1;
    int nb = P->in / EE_BLOCK, at = 0, top = P->kind == EE_Q8 && P->plane[1] ? 2 : 1;
    long read = 0;
    uint16_t l1[EE_BLOCK], l2[EE_BLOCK];
    w->residual = !w->coarse;
    for (int i = 0; i < P->in; i++) w->residual &= levels[i] >= top;
    for (int b = 0; b < nb; b++) {
        int n1 = 0, n2 = 0;
        for (int j = 0; j < EE_BLOCK; j++) {
            int i = EE_BLOCK * b + j;
            if (levels[i] >= 1) l1[n1++] = (uint16_t)i;
            if (levels[i] >= 2) l2[n2++] = (uint16_t)i;
        }
        at = fill_block(P, w, b, at, l1, n1, l2, n2, xq, dx);
        read += n1 + n2;
    }
    w->start[nb] = at;
    w->nb = nb;
    w->rows_read = read;
    return read;
}

/* bit j of the result: row j of a block has x_j^2 * g_j > tau (g NULL: 1) */
static uint32_t row_mask(const float *x, const float *g, float tau) {
    uint32_t m = 0;
    for (int j = 0; j < EE_BLOCK; j++) m |= (uint32_t)(x[j] * x[j] * (g ? g[j] : 1.0f) > tau) << j;
    return m;
}

#if EE_X86
__attribute__((target("avx2,fma"))) static uint32_t row_mask_avx2(const float *x, const float *g, float tau) {
    const __m256 t = _mm256_set1_ps(tau);
    uint32_t m = 0;
    for (int k = 0; k < 4; k++) {
        __m256 v = _mm256_loadu_ps(x + 8 * k), s = _mm256_mul_ps(v, v);
        if (g) s = _mm256_mul_ps(s, _mm256_loadu_ps(g + 8 * k));
        m |= (uint32_t)_mm256_movemask_ps(_mm256_cmp_ps(s, t, _CMP_GT_OQ)) << (8 * k);
    }
    return m;
}
#endif

static uint32_t mask_of(const float *x, const float *g, float tau) {
#if EE_X86
    if (isa() >= ISA_AVX2) return row_mask_avx2(x, g, tau);
#endif
    return row_mask(x, g, tau);
}

static int list_of(uint32_t m, int base, uint16_t *rows) {
    int n = 0;
    for (; m; m &= m - 1) rows[n++] = (uint16_t)(base + __builtin_ctz(m));
    return n;
}

long ee_select(const ee_planes *P, const float *x, const int8_t *xq, const float *dx, float tau, int top, int whole,
               ee_work *w, uint8_t *levels) {
    if (P->in > w->max_in) return -1;
    int nb = P->in / EE_BLOCK, planes = P->kind == EE_Q8 && P->plane[1] && !top ? 2 : 1, at = 0;
    long read = 0;
    uint16_t l1[EE_BLOCK], l2[EE_BLOCK];
    w->residual = tau < 0.0f && !w->coarse;
    for (int b = 0; b < nb; b++) {
        const float *xb = x + EE_BLOCK * b;
        uint32_t m1, m2;
        if (tau < 0.0f) m1 = m2 = 0xffffffffu; /* every row at its top level: no scores needed */
        else if (whole) m1 = m2 = mask_of(xb, NULL, tau);
        else {
            m1 = mask_of(xb, P->gain[0] + EE_BLOCK * b, tau);
            m2 = planes == 2 && m1 ? m1 & mask_of(xb, P->gain[1] + EE_BLOCK * b, tau) : 0;
        }
        if (planes == 1) m2 = 0;
        int n1 = list_of(m1, EE_BLOCK * b, l1), n2 = list_of(m2, EE_BLOCK * b, l2);
        if (levels)
            for (int j = 0; j < EE_BLOCK; j++) levels[EE_BLOCK * b + j] = (uint8_t)(((m1 >> j) & 1) + ((m2 >> j) & 1));
        at = fill_block(P, w, b, at, l1, n1, l2, n2, xq, dx);
        read += n1 + n2;
    }
    w->start[nb] = at;
    w->nb = nb;
    w->rows_read = read;
    return read;
}

/* the k-th largest of v[0..n) (k >= 1), by quickselect on a copy in `scratch` */
static float kth_largest(float *v, int n, int k) {
    int lo = 0, hi = n - 1, want = k - 1; /* position in descending order */
    while (lo < hi) {
        float pivot = v[(lo + hi) / 2];
        int i = lo, j = hi;
        while (i <= j) {
            while (v[i] > pivot) i++;
            while (v[j] < pivot) j--;
            if (i <= j) { float t = v[i]; v[i] = v[j]; v[j] = t; i++; j--; }
        }
        if (want <= j) hi = j;
        else if (want >= i) lo = i;
        else break;
    }
    return v[want];
}

float ee_budget_tau(const ee_planes *P, const float *x, long budget, int top, int whole, float *scratch) {
    int planes = P->kind == EE_Q8 && P->plane[1] && !top ? 2 : 1, n = 0;
    if (whole) budget /= planes; /* whole rows: every chosen row costs all its planes */
    for (int i = 0; i < P->in; i++) {
        float s = x[i] * x[i];
        if (whole) {
            scratch[n++] = s;
            continue;
        }
        scratch[n++] = s * P->gain[0][i];
        /* level 2 needs level 1: its score never counts ahead of the row's first plane */
        if (planes == 2) scratch[n++] = fminf(s * P->gain[1][i], s * P->gain[0][i]);
    }
    if (budget >= n) return -1.0f;
    if (budget <= 0) return INFINITY;
    /* rows with a score above the (budget+1)-th largest: at most `budget` of them */
    return kth_largest(scratch, n, (int)budget + 1);
}

/* ------------------------------------------------------------------ the kernels */
/* Tiles: out / tile of them (at least one), each `tile` outputs but the last, which takes the rest (so
 * no tile is narrower than `tile`, unless the matrix is). */
static inline int n_tiles(const ee_planes *P) { return P->out >= 2 * P->tile ? P->out / P->tile : 1; }
static inline int tile_of(const ee_planes *P, int base) {
    int t = base / P->tile, n = n_tiles(P);
    return t < n ? t : n - 1;
}
static inline int tile_end(const ee_planes *P, int t) { return t == n_tiles(P) - 1 ? P->out : (t + 1) * P->tile; }

static inline int chunk_width(const ee_planes *P, int c) { return 128 * c + 128 <= P->out ? 128 : 64; }

/* Where chunk `base` (an output, a multiple of 128) of plane p starts for row 0, and the bytes from one
 * row to the next (its tile's width / 2). */
static inline const uint8_t *chunk_rows(const ee_planes *P, int p, int base, size_t *rb) {
    int t = tile_of(P, base), t0 = t * P->tile;
    *rb = (size_t)(tile_end(P, t) - t0) / 2;
    return P->plane[p] + (size_t)t0 / 2 * P->in + (size_t)(base - t0) / 2;
}

/* Ask for quad `i` of block `b`'s list (its four rows' line of this chunk), if the block and the quad
 * exist: the kernels ask for the block EE_PREFETCH_BLOCKS ahead one quad at a time, between their own
 * quads. Under effort the rows read are scattered through a block, which the hardware prefetchers do not
 * follow, and a batch computes several times longer per byte than a step, with nothing being fetched
 * meanwhile. Llama-1B Q8_0, one thread: a step 165 -> 140 ms, at effort 0.25 61 -> 42 ms, a verify of
 * 5 tokens 1.40 -> 1.25 steps. Asking for a whole block at once gained nothing: a burst of requests
 * stalls the core until they are served. */
#define EE_PREFETCH_BLOCKS 2
static inline void prefetch_quad(const ee_planes *P, const ee_work *w, int b, int i, int base) {
    if (b >= w->nb || w->start[b] + i >= w->start[b + 1]) return;
    const ee_quad *Q = w->quads + w->start[b] + i;
    size_t rb;
    const uint8_t *pl = chunk_rows(P, w->start[b] + i < w->split[b] ? 0 : 1, base, &rb);
    for (int j = 0; j < 4; j++) __builtin_prefetch(pl + Q->row[j] * rb, 0, 3);
}

/* scalar: the byte order of planes.h spelled out */
static void chunk_scalar(const ee_planes *P, const ee_work *w, float *yc, int b, int c) {
    int W = chunk_width(P, c), base = 128 * c, half = W / 2;
    int32_t acc[128], accr[128];
    {
        int q0 = w->start[b], q1 = w->start[b + 1];
        memset(acc, 0, sizeof acc);
        memset(accr, 0, sizeof accr);
        for (int q = q0; q < q1; q++) {
            int p = q < w->split[b] ? 0 : 1, mult = (P->kind == EE_Q8 && p == 0) ? 16 : 1;
            const ee_quad *Q = w->quads + q;
            for (int j = 0; j < 4; j++) {
                int a = (int8_t)(Q->xq >> (8 * j)), ar = (int8_t)(Q->xr >> (8 * j));
                if (!a && !ar) continue;
                size_t rb;
                const uint8_t *r = chunk_rows(P, p, base, &rb) + (size_t)Q->row[j] * rb;
                for (int t = 0; t < half; t++) {
                    int L = t >> 4, k = (t >> 2) & 3, jj = t & 3;
                    int lo = W == 128 ? 16 * k + 4 * L + jj : 8 * k + 4 * L + jj;
                    acc[lo] += mult * (r[t] & 15) * a;
                    acc[lo + half] += mult * (r[t] >> 4) * a;
                    accr[lo] += mult * (r[t] & 15) * ar;
                    accr[lo + half] += mult * (r[t] >> 4) * ar;
                }
            }
        }
        const uint16_t *d = P->d + (size_t)b * P->out + base, *m = P->m ? P->m + (size_t)b * P->out + base : NULL;
        for (int o = 0; o < W; o++) {
            float t = ((float)acc[o] + (float)accr[o] * (w->residual ? 1.0f / EE_RESIDUAL : 0.0f)) * w->dx[b] + w->c0[b];
            float v = yc[o] + h2f(d[o]) * t;
            if (m) v += h2f(m[o]) * w->c1[b];
            yc[o] = v;
        }
    }
}

#if EE_X86
#define T_AVX2 __attribute__((target("avx2,fma,f16c")))
#define T_AVX512 __attribute__((target("avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")))

/* AVX2, 64 outputs: bytes [boff, boff + 32) of each row; accumulator k covers outputs lo_k + 0..7 with
 * lo_k = S*k + eoff (low nibbles) and lo_k + H (high nibbles). */
T_AVX2 static void piece_avx2(const ee_planes *P, const ee_work *w, float *yc, int b, int base, int boff, int S,
                              int H, int eoff) {
    const __m256i m4 = _mm256_set1_epi8(0x0f), one = _mm256_set1_epi16(1), sixteen = _mm256_set1_epi16(16);
    size_t rb;
    const uint8_t *rows[2] = {chunk_rows(P, 0, base, &rb), P->plane[1] ? chunk_rows(P, 1, base, &rb) : NULL};
    {
        int q0 = w->start[b], q1 = w->start[b + 1], split = w->split[b], residual = w->residual;
        __m256i A[8], B[8];
        for (int a = 0; a < 8; a++) A[a] = B[a] = _mm256_setzero_si256();
        for (int q = q0; q < q1; q++) {
            int p = q < split ? 0 : 1;
            const __m256i mul = (P->kind == EE_Q8 && p == 0) ? sixteen : one;
            const ee_quad *Q = w->quads + q;
            const uint8_t *pl = rows[p] + boff;
            if (boff == 0) prefetch_quad(P, w, b + EE_PREFETCH_BLOCKS, q - q0, base);
            __m256i R0 = _mm256_loadu_si256((const __m256i *)(pl + Q->row[0] * rb));
            __m256i R1 = _mm256_loadu_si256((const __m256i *)(pl + Q->row[1] * rb));
            __m256i R2 = _mm256_loadu_si256((const __m256i *)(pl + Q->row[2] * rb));
            __m256i R3 = _mm256_loadu_si256((const __m256i *)(pl + Q->row[3] * rb));
            __m256i X = _mm256_set1_epi32(Q->xq), Xr = _mm256_set1_epi32(Q->xr);
            __m256i U01 = _mm256_unpacklo_epi8(R0, R1), U23 = _mm256_unpacklo_epi8(R2, R3);
            __m256i V01 = _mm256_unpackhi_epi8(R0, R1), V23 = _mm256_unpackhi_epi8(R2, R3);
            __m256i Qk[4] = {_mm256_unpacklo_epi16(U01, U23), _mm256_unpackhi_epi16(U01, U23),
                             _mm256_unpacklo_epi16(V01, V23), _mm256_unpackhi_epi16(V01, V23)};
            for (int k = 0; k < 4; k++) {
                __m256i lo = _mm256_and_si256(Qk[k], m4), hi = _mm256_and_si256(_mm256_srli_epi16(Qk[k], 4), m4);
                A[k] = _mm256_add_epi32(A[k], _mm256_madd_epi16(_mm256_maddubs_epi16(lo, X), mul));
                A[4 + k] = _mm256_add_epi32(A[4 + k], _mm256_madd_epi16(_mm256_maddubs_epi16(hi, X), mul));
                if (residual) {
                    B[k] = _mm256_add_epi32(B[k], _mm256_madd_epi16(_mm256_maddubs_epi16(lo, Xr), mul));
                    B[4 + k] = _mm256_add_epi32(B[4 + k], _mm256_madd_epi16(_mm256_maddubs_epi16(hi, Xr), mul));
                }
            }
        }
        const __m256 dx = _mm256_set1_ps(w->dx[b]), c0 = _mm256_set1_ps(w->c0[b]), c1 = _mm256_set1_ps(w->c1[b]);
        const __m256 res = _mm256_set1_ps(residual ? 1.0f / EE_RESIDUAL : 0.0f);
        const uint16_t *d = P->d + (size_t)b * P->out + base, *m = P->m ? P->m + (size_t)b * P->out + base : NULL;
        for (int a = 0; a < 8; a++) {
            int o = (a < 4 ? S * a : S * (a - 4) + H) + eoff;
            __m256 f = _mm256_fmadd_ps(_mm256_cvtepi32_ps(B[a]), res, _mm256_cvtepi32_ps(A[a]));
            __m256 t = _mm256_fmadd_ps(f, dx, c0);
            __m256 v = _mm256_fmadd_ps(_mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(d + o))), t,
                                       _mm256_loadu_ps(yc + o));
            if (m) v = _mm256_fmadd_ps(_mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(m + o))), c1, v);
            _mm256_storeu_ps(yc + o, v);
        }
    }
}

T_AVX2 static void chunk_avx2(const ee_planes *P, const ee_work *w, float *yc, int b, int c) {
    if (chunk_width(P, c) == 128) {
        piece_avx2(P, w, yc, b, 128 * c, 0, 16, 64, 0);
        piece_avx2(P, w, yc, b, 128 * c, 32, 16, 64, 8);
    } else {
        piece_avx2(P, w, yc, b, 128 * c, 0, 8, 32, 0);
    }
}

/* A quad's four rows of one 128-output chunk as the eight code vectors dpbusd takes (vector a: outputs
 * 16a .. 16a + 15, four inputs per 32-bit lane): the byte order of planes.h undone. `high`: the high
 * plane of an 8-bit matrix, which enters as 16 u (its nibbles moved to the top). */
T_AVX512 static inline __attribute__((always_inline)) void quad_codes128(const uint8_t *pl, size_t rb, const ee_quad *Q,
                                                                         int high, __m512i c[8]) {
    const __m512i m4 = _mm512_set1_epi8(0x0f), mh = _mm512_set1_epi8((char)0xf0);
    __m512i R0 = _mm512_loadu_si512(pl + Q->row[0] * rb), R1 = _mm512_loadu_si512(pl + Q->row[1] * rb);
    __m512i R2 = _mm512_loadu_si512(pl + Q->row[2] * rb), R3 = _mm512_loadu_si512(pl + Q->row[3] * rb);
    __m512i U01 = _mm512_unpacklo_epi8(R0, R1), U23 = _mm512_unpacklo_epi8(R2, R3);
    __m512i V01 = _mm512_unpackhi_epi8(R0, R1), V23 = _mm512_unpackhi_epi8(R2, R3);
    __m512i Qk[4] = {_mm512_unpacklo_epi16(U01, U23), _mm512_unpackhi_epi16(U01, U23),
                     _mm512_unpacklo_epi16(V01, V23), _mm512_unpackhi_epi16(V01, V23)};
    for (int k = 0; k < 4; k++) {
        if (high) {
            c[k] = _mm512_and_si512(_mm512_slli_epi16(Qk[k], 4), mh);
            c[4 + k] = _mm512_and_si512(Qk[k], mh);
        } else {
            c[k] = _mm512_and_si512(Qk[k], m4);
            c[4 + k] = _mm512_and_si512(_mm512_srli_epi16(Qk[k], 4), m4);
        }
    }
}

/* One (block, chunk)'s integer sums (A, and B for the activations' residual level) folded into
 * yc[0 .. 128) with the block's scales (planes.h). */
T_AVX512 static inline __attribute__((always_inline)) void fold128(const ee_planes *P, const ee_work *w, int b, int base,
                                                                   const __m512i A[8], const __m512i B[8],
                                                                   const int residual, float *yc) {
    const __m512 dx = _mm512_set1_ps(w->dx[b]), c0 = _mm512_set1_ps(w->c0[b]), c1 = _mm512_set1_ps(w->c1[b]);
    const __m512 res = _mm512_set1_ps(residual ? 1.0f / EE_RESIDUAL : 0.0f);
    const uint16_t *d = P->d + (size_t)b * P->out + base, *m = P->m ? P->m + (size_t)b * P->out + base : NULL;
    for (int a = 0; a < 8; a++) {
        __m512 f = _mm512_fmadd_ps(_mm512_cvtepi32_ps(B[a]), res, _mm512_cvtepi32_ps(A[a]));
        __m512 t = _mm512_fmadd_ps(f, dx, c0);
        __m512 v = _mm512_fmadd_ps(_mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)(d + 16 * a))), t,
                                   _mm512_loadu_ps(yc + 16 * a));
        if (m) v = _mm512_fmadd_ps(_mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)(m + 16 * a))), c1, v);
        _mm512_storeu_ps(yc + 16 * a, v);
    }
}

/* AVX-512 VNNI, 128 outputs in eight zmm accumulators (accumulator a: outputs 16a .. 16a + 15). */
T_AVX512 static inline __attribute__((always_inline)) void chunk128_body(const ee_planes *P, const ee_work *w, float *yc,
                                                                         int b, int base, const int residual) {
    size_t rb;
    const uint8_t *rows[2] = {chunk_rows(P, 0, base, &rb), P->plane[1] ? chunk_rows(P, 1, base, &rb) : NULL};
    int q0 = w->start[b], q1 = w->start[b + 1], split = w->split[b];
    __m512i A0 = _mm512_setzero_si512(), A1 = A0, A2 = A0, A3 = A0, A4 = A0, A5 = A0, A6 = A0, A7 = A0;
    __m512i B0 = A0, B1 = A0, B2 = A0, B3 = A0, B4 = A0, B5 = A0, B6 = A0, B7 = A0;
    for (int q = q0; q < q1; q++) {
        const ee_quad *Q = w->quads + q;
        int p = q < split ? 0 : 1;
        prefetch_quad(P, w, b + EE_PREFETCH_BLOCKS, q - q0, base);
        __m512i c[8];
        quad_codes128(rows[p], rb, Q, P->kind == EE_Q8 && p == 0, c);
        const __m512i X = _mm512_set1_epi32(Q->xq), Xr = _mm512_set1_epi32(Q->xr);
#define EE_DOT(A, B, k) do { A = _mm512_dpbusd_epi32(A, c[k], X); if (residual) B = _mm512_dpbusd_epi32(B, c[k], Xr); } while (0)
        EE_DOT(A0, B0, 0); EE_DOT(A1, B1, 1); EE_DOT(A2, B2, 2); EE_DOT(A3, B3, 3);
        EE_DOT(A4, B4, 4); EE_DOT(A5, B5, 5); EE_DOT(A6, B6, 6); EE_DOT(A7, B7, 7);
#undef EE_DOT
    }
    const __m512i A[8] = {A0, A1, A2, A3, A4, A5, A6, A7}, B[8] = {B0, B1, B2, B3, B4, B5, B6, B7};
    fold128(P, w, b, base, A, B, residual, yc);
}

T_AVX512 static void chunk128_avx512(const ee_planes *P, const ee_work *w, float *yc, int b, int base) {
    if (w->residual) chunk128_body(P, w, yc, b, base, 1); /* two copies: the one under effort skips the residual */
    else chunk128_body(P, w, yc, b, base, 0);
}

/* AVX-512 VNNI on ymm, the 64-output last chunk (accumulator a: outputs 8a .. 8a + 7). */
T_AVX512 static void chunk64_avx512(const ee_planes *P, const ee_work *w, float *yc, int b, int base) {
    const __m256i m4 = _mm256_set1_epi8(0x0f), mh = _mm256_set1_epi8((char)0xf0);
    size_t rb;
    const uint8_t *rows[2] = {chunk_rows(P, 0, base, &rb), P->plane[1] ? chunk_rows(P, 1, base, &rb) : NULL};
    {
        int q0 = w->start[b], q1 = w->start[b + 1], split = w->split[b];
        __m256i A[8], B[8];
        for (int a = 0; a < 8; a++) A[a] = B[a] = _mm256_setzero_si256();
        for (int q = q0; q < q1; q++) {
            const ee_quad *Q = w->quads + q;
            int p = q < split ? 0 : 1, high = P->kind == EE_Q8 && p == 0;
            const uint8_t *pl = rows[p];
            prefetch_quad(P, w, b + EE_PREFETCH_BLOCKS, q - q0, base);
            __m256i R0 = _mm256_loadu_si256((const __m256i *)(pl + Q->row[0] * rb));
            __m256i R1 = _mm256_loadu_si256((const __m256i *)(pl + Q->row[1] * rb));
            __m256i R2 = _mm256_loadu_si256((const __m256i *)(pl + Q->row[2] * rb));
            __m256i R3 = _mm256_loadu_si256((const __m256i *)(pl + Q->row[3] * rb));
            __m256i X = _mm256_set1_epi32(Q->xq), Xr = _mm256_set1_epi32(Q->xr);
            __m256i U01 = _mm256_unpacklo_epi8(R0, R1), U23 = _mm256_unpacklo_epi8(R2, R3);
            __m256i V01 = _mm256_unpackhi_epi8(R0, R1), V23 = _mm256_unpackhi_epi8(R2, R3);
            __m256i Qk[4] = {_mm256_unpacklo_epi16(U01, U23), _mm256_unpackhi_epi16(U01, U23),
                             _mm256_unpacklo_epi16(V01, V23), _mm256_unpackhi_epi16(V01, V23)};
            for (int k = 0; k < 4; k++) {
                __m256i lo = high ? _mm256_and_si256(_mm256_slli_epi16(Qk[k], 4), mh) : _mm256_and_si256(Qk[k], m4);
                __m256i hi = high ? _mm256_and_si256(Qk[k], mh) : _mm256_and_si256(_mm256_srli_epi16(Qk[k], 4), m4);
                A[k] = _mm256_dpbusd_epi32(A[k], lo, X);
                A[4 + k] = _mm256_dpbusd_epi32(A[4 + k], hi, X);
                if (w->residual) {
                    B[k] = _mm256_dpbusd_epi32(B[k], lo, Xr);
                    B[4 + k] = _mm256_dpbusd_epi32(B[4 + k], hi, Xr);
                }
            }
        }
        const __m256 dx = _mm256_set1_ps(w->dx[b]), c0 = _mm256_set1_ps(w->c0[b]), c1 = _mm256_set1_ps(w->c1[b]);
        const __m256 res = _mm256_set1_ps(w->residual ? 1.0f / EE_RESIDUAL : 0.0f);
        const uint16_t *d = P->d + (size_t)b * P->out + base, *m = P->m ? P->m + (size_t)b * P->out + base : NULL;
        for (int a = 0; a < 8; a++) {
            __m256 f = _mm256_fmadd_ps(_mm256_cvtepi32_ps(B[a]), res, _mm256_cvtepi32_ps(A[a]));
            __m256 t = _mm256_fmadd_ps(f, dx, c0);
            __m256 v = _mm256_fmadd_ps(_mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(d + 8 * a))), t,
                                       _mm256_loadu_ps(yc + 8 * a));
            if (m) v = _mm256_fmadd_ps(_mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(m + 8 * a))), c1, v);
            _mm256_storeu_ps(yc + 8 * a, v);
        }
    }
}

/* The same 128 outputs for several tokens at full effort (every token reads the same rows): the block's
 * quads are unpacked once into `codes` and multiplied with each token's activations while they sit in L1.
 * An 8-bit block's two planes hold the same rows here, so each row's nibbles are put back together into
 * its byte (16 u + l) and multiplied once: half the dot products. Each token's integer sums are exactly
 * those of chunk128_avx512 (integer sums depend neither on the order nor on the grouping) and the fold is
 * the same code, so a batch gives the bits the decode step gives. */
#define EE_MAX_QUADS_PER_BLOCK (2 * EE_BLOCK / 4)
T_AVX512 static inline __attribute__((always_inline)) void chunk128_batch_body(const ee_planes *P,
                                                                               const ee_work *const *ws,
                                                                               float *const *ycs, int ntok, int b,
                                                                               int base, const int residual) {
    __m512i codes[EE_MAX_QUADS_PER_BLOCK][8];
    size_t rb;
    const uint8_t *rows[2] = {chunk_rows(P, 0, base, &rb), P->plane[1] ? chunk_rows(P, 1, base, &rb) : NULL};
    const ee_work *w0 = ws[0];
    int q0 = w0->start[b], q1 = w0->start[b + 1], split = w0->split[b];
    for (int q = q0; q < q1; q++) {
        int p = q < split ? 0 : 1;
        prefetch_quad(P, w0, b + EE_PREFETCH_BLOCKS, q - q0, base);
        quad_codes128(rows[p], rb, w0->quads + q, P->kind == EE_Q8 && p == 0, codes[q - q0]);
    }
    int nq = q1 - q0, half = split - q0;
    if (P->kind == EE_Q8 && half > 0 && 2 * half == nq) { /* plane 1 lists the rows of plane 0 (its subset) */
        for (int q = 0; q < half; q++)
            for (int a = 0; a < 8; a++) codes[q][a] = _mm512_or_si512(codes[q][a], codes[half + q][a]);
        nq = half;
    }
    for (int n = 0; n < ntok; n++) {
        const ee_work *w = ws[n];
        __m512i A[8], B[8];
        for (int a = 0; a < 8; a++) A[a] = B[a] = _mm512_setzero_si512();
        for (int q = 0; q < nq; q++) {
            const ee_quad *Q = w->quads + q0 + q;
            const __m512i X = _mm512_set1_epi32(Q->xq), Xr = _mm512_set1_epi32(Q->xr), *c = codes[q];
            for (int a = 0; a < 8; a++) {
                A[a] = _mm512_dpbusd_epi32(A[a], c[a], X);
                if (residual) B[a] = _mm512_dpbusd_epi32(B[a], c[a], Xr);
            }
        }
        fold128(P, w, b, base, A, B, residual, ycs[n]);
    }
}

T_AVX512 static void chunk128_batch_avx512(const ee_planes *P, const ee_work *const *ws, float *const *ycs, int ntok,
                                           int b, int base) {
    if (ws[0]->residual) chunk128_batch_body(P, ws, ycs, ntok, b, base, 1);
    else chunk128_batch_body(P, ws, ycs, ntok, b, base, 0); /* coarse: the activations' int8 level alone */
}
#endif

/* One (block, chunk) of one token's product into yc. */
static void run_chunk(const ee_planes *P, const ee_work *w, float *yc, int b, int c) {
#if EE_X86
    if (g_isa == ISA_AVX512) {
        if (chunk_width(P, c) == 128) chunk128_avx512(P, w, yc, b, 128 * c);
        else chunk64_avx512(P, w, yc, b, 128 * c);
        return;
    }
    if (g_isa == ISA_AVX2) {
        chunk_avx2(P, w, yc, b, c);
        return;
    }
#endif
    chunk_scalar(P, w, yc, b, c);
}

/* Outputs a batch's tokens keep in flight together: a block visits every token's outputs of the group, so
 * a whole wide tile (4096 outputs x 512 tokens: 8 MB) would leave the caches between blocks. */
#define EE_BATCH_GROUP 512

/* Blocks [b0, b1) of tile t for `ntok` tokens into yts[n] (the tile's outputs, overwritten): block by
 * block, each of the tile's chunks in turn, so the tile's rows of a block (32 x width/2 contiguous bytes)
 * are read together and stay in L1 while its chunks, and the tokens, go by. A batch walks the tile in
 * groups of EE_BATCH_GROUP outputs, all the blocks for each group. Each output still sums its blocks in
 * order, so the bits do not depend on the grouping. `same`: every token reads the same rows (full
 * effort), so a block's quads can be unpacked once for all of them. */
static void run_tile(const ee_planes *P, const ee_work *const *ws, float *const *yts, int ntok, int same, int t, int b0,
                     int b1) {
    int t0 = t * P->tile, end = tile_end(P, t), group = ntok > 1 ? EE_BATCH_GROUP : end - t0;
    for (int n = 0; n < ntok; n++) memset(yts[n], 0, sizeof(float) * (size_t)(end - t0));
    float *ycs[EE_MAX_BATCH];
    for (int g0 = t0; g0 < end; g0 += group) {
        int g1 = g0 + group < end ? g0 + group : end;
        for (int b = b0; b < b1; b++) {
            for (int c = g0 / 128; c < (g1 + 127) / 128; c++) {
                for (int n = 0; n < ntok; n++) ycs[n] = yts[n] + (128 * c - t0);
#if EE_X86
                if (same && ntok > 1 && g_isa == ISA_AVX512 && chunk_width(P, c) == 128 &&
                    ws[0]->start[b + 1] - ws[0]->start[b] <= EE_MAX_QUADS_PER_BLOCK) {
                    if (ws[0]->start[b] < ws[0]->start[b + 1]) chunk128_batch_avx512(P, ws, ycs, ntok, b, 128 * c);
                    continue;
                }
#endif
                for (int n = 0; n < ntok; n++)
                    if (ws[n]->start[b] < ws[n]->start[b + 1]) run_chunk(P, ws[n], ycs[n], b, c);
            }
        }
    }
}

/* A product is cut into units: a tile of outputs, or, when a matrix has too few tiles to keep every thread
 * busy, a range of blocks of a tile summed into its own partial (added in unit order afterwards). Any
 * thread may run any unit (claimed with an atomic counter, so a busy machine only slows a job down), and
 * the sums do not depend on which thread ran what. */
#define EE_MAX_UNITS 4096
typedef struct {
    const ee_mv *mv; /* [matrix][token] */
    int ntok, same, units;
    int um[EE_MAX_UNITS], ut[EE_MAX_UNITS], ub0[EE_MAX_UNITS], ub1[EE_MAX_UNITS]; /* matrix, tile, blocks */
    float *part[EE_MAX_UNITS]; /* NULL: the unit writes its tile of y itself; else ntok partials, one per token */
    atomic_int next;
} mv_job;

static void mv_worker(void *arg, int tid) {
    (void)tid;
    mv_job *J = (mv_job *)arg;
    const ee_work *ws[EE_MAX_BATCH];
    float *yts[EE_MAX_BATCH];
    for (;;) {
        int u = atomic_fetch_add(&J->next, 1);
        if (u >= J->units) break;
        const ee_mv *mv = J->mv + (size_t)J->um[u] * J->ntok;
        const ee_planes *P = mv->P;
        int t = J->ut[u], width = tile_end(P, t) - t * P->tile;
        for (int n = 0; n < J->ntok; n++) {
            ws[n] = mv[n].w;
            yts[n] = J->part[u] ? J->part[u] + (size_t)n * width : mv[n].y + t * P->tile;
        }
        run_tile(P, ws, yts, J->ntok, J->same, t, J->ub0[u], J->ub1[u]);
    }
}

/* The partials into y, token by token (claimed in turn), each in unit order: the same sums whoever ran
 * them. */
static void merge_worker(void *arg, int tid) {
    (void)tid;
    mv_job *J = (mv_job *)arg;
    for (;;) {
        int j = atomic_fetch_add(&J->next, 1);
        if (j >= J->ntok) break;
        for (int u = 0; u < J->units; u++) {
            if (!J->part[u]) continue;
            const ee_mv *m = J->mv + (size_t)J->um[u] * J->ntok;
            int t = J->ut[u], width = tile_end(m->P, t) - t * m->P->tile;
            float *yt = m[j].y + t * m->P->tile;
            const float *p = J->part[u] + (size_t)j * width;
            if (J->ub0[u] == 0) memcpy(yt, p, sizeof(float) * (size_t)width);
            else for (int o = 0; o < width; o++) yt[o] += p[o];
        }
    }
}

#define EE_MIN_UNITS 4 /* units a matrix is cut into at least */
/* Below this many quad-chunks a job is not worth waking another thread for. */
#define EE_PARALLEL_WORK 512

static float *g_parts;
static size_t g_parts_n;

void ee_matmul_multi(int n, int ntok, const ee_mv *mv, int same) {
    isa();
    static mv_job J;
    int threads = ecpu_threads();
    long work = 0;
    size_t need = 0;
    J.mv = mv;
    J.ntok = ntok;
    J.same = same;
    J.units = 0;
    for (int k = 0; k < n; k++) {
        const ee_mv *m = mv + (size_t)k * ntok;
        work += (long)m->w->start[m->w->nb] * ((m->P->out + 127) / 128) * ntok;
    }
    int parallel = threads > 1 && work >= EE_PARALLEL_WORK;
    for (int k = 0; k < n; k++) {
        const ee_planes *P = mv[(size_t)k * ntok].P;
        const ee_work *w = mv[(size_t)k * ntok].w;
        int tiles = n_tiles(P), nb = w->nb;
        /* a matrix of few tiles is split into ranges of blocks too, by its shape alone (never by the thread
         * count, the batch, the rows selected or the machine's load): the same units, so the same sums,
         * for a token alone or in a batch, on any machine */
        int split = tiles < EE_MIN_UNITS ? (EE_MIN_UNITS + tiles - 1) / tiles : 1;
        if (split > nb) split = nb > 0 ? nb : 1;
        if (J.units + tiles * split > EE_MAX_UNITS) split = 1;
        for (int t = 0; t < tiles && J.units < EE_MAX_UNITS; t++) {
            for (int s = 0; s < split; s++) {
                int b0 = nb * s / split, b = nb * (s + 1) / split;
                J.um[J.units] = k;
                J.ut[J.units] = t;
                J.ub0[J.units] = b0;
                J.ub1[J.units] = b;
                J.part[J.units] = NULL;
                if (split > 1) need += (size_t)(tile_end(P, t) - t * P->tile) * ntok;
                J.units++;
            }
        }
    }
    if (need > g_parts_n) {
        free(g_parts);
        g_parts = (float *)malloc(sizeof(float) * need);
        g_parts_n = g_parts ? need : 0;
    }
    if (need && !g_parts) { /* no memory for partials: nothing is computed, the caller's outputs become NaN */
        for (int k = 0; k < n; k++)
            for (int j = 0; j < ntok; j++) {
                const ee_mv *m = mv + (size_t)k * ntok + j;
                for (int o = 0; o < m->P->out; o++) m->y[o] = NAN;
            }
        return;
    }
    size_t at = 0;
    for (int u = 0; u < J.units; u++) {
        const ee_mv *m = mv + (size_t)J.um[u] * ntok;
        if (!(J.ub0[u] == 0 && J.ub1[u] == m->w->nb)) {
            J.part[u] = g_parts + at;
            at += (size_t)(tile_end(m->P, J.ut[u]) - J.ut[u] * m->P->tile) * ntok;
        }
    }
    atomic_store(&J.next, 0);
    if (J.units == 1 || !parallel) mv_worker(&J, 0);
    else ecpu_parallel(mv_worker, &J);
    if (!need) return;
    atomic_store(&J.next, 0);
    if (parallel && ntok > 1) ecpu_parallel(merge_worker, &J); /* a batch's partials are megabytes */
    else merge_worker(&J, 0);
}

void ee_matvec_multi(int n, const ee_mv *mv) { ee_matmul_multi(n, 1, mv, 1); }

void ee_matvec(const ee_planes *P, const ee_work *w, float *y) {
    ee_mv one = {P, w, y};
    ee_matvec_multi(1, &one);
}

/* ------------------------------------------------------------------ building the layout */
/* the outputs in the low and high nibble of byte `byte` of a tile's row of `width` outputs (planes.h) */
static void outputs_of(int byte, int width, int *lo, int *hi) {
    int chunk = byte / 64 * 128, w = width - chunk >= 128 ? 128 : 64, b = byte - chunk / 2;
    int L = b / 16, k = (b % 16) / 4, j = b % 4, S = w == 128 ? 16 : 8;
    *lo = chunk + S * k + 4 * L + j;
    *hi = *lo + w / 2;
}

int ee_pack(int kind, const void *codes, const uint16_t *d, const uint16_t *m, int out, int in, int tile,
            uint8_t *plane0, uint8_t *plane1, uint16_t *d_t, uint16_t *m_t, float *gains) {
    if (out <= 0 || in <= 0 || out % 64 || in % EE_BLOCK || tile <= 0 || tile % 128) return -1;
    int nb = in / EE_BLOCK, tiles = out >= 2 * tile ? out / tile : 1, widest = out - (tiles - 1) * tile;
    int *lo = (int *)malloc(sizeof(int) * (size_t)widest), *hi = (int *)malloc(sizeof(int) * (size_t)widest);
    int8_t *block = (int8_t *)malloc((size_t)EE_BLOCK * widest);  /* one tile x block of codes, transposed */
    float *val = (float *)malloc(sizeof(float) * (size_t)EE_BLOCK * widest), *res = NULL;
    double *e0 = (double *)calloc((size_t)in, sizeof(double)), *e1 = (double *)calloc((size_t)in, sizeof(double));
    if (kind == EE_Q8) res = (float *)malloc(sizeof(float) * (size_t)EE_BLOCK * widest);
    int ok = lo && hi && block && val && e0 && e1 && (kind == EE_Q4 || res);
    for (int t = 0; ok && t < tiles; t++) {
        int t0 = t * tile, width = t == tiles - 1 ? out - t0 : tile;
        for (int byte = 0; byte < width / 2; byte++) outputs_of(byte, width, &lo[byte], &hi[byte]);
        for (int b = 0; b < nb; b++) {
            for (int o = 0; o < width; o++) { /* the tile's rows of this block, transposed, with their values */
                size_t row = (size_t)(t0 + o) * in + (size_t)b * EE_BLOCK;
                float db = h2f(d[(size_t)(t0 + o) * nb + b]), mb = m ? h2f(m[(size_t)(t0 + o) * nb + b]) : -8.0f * db;
                d_t[(size_t)b * out + t0 + o] = d[(size_t)(t0 + o) * nb + b];
                if (m_t) m_t[(size_t)b * out + t0 + o] = m[(size_t)(t0 + o) * nb + b];
                for (int j = 0; j < EE_BLOCK; j++) {
                    int c = kind == EE_Q4 ? (((const uint8_t *)codes)[row + j] & 15) : ((const int8_t *)codes)[row + j];
                    block[(size_t)j * width + o] = (int8_t)c;
                    val[(size_t)j * width + o] = kind == EE_Q4 ? db * (float)c + mb : db * (float)c;
                    if (res) res[(size_t)j * width + o] = db * ((float)(c & 15) - 7.5f);
                }
            }
            for (int j = 0; j < EE_BLOCK; j++) {
                int i = b * EE_BLOCK + j;
                const int8_t *c = block + (size_t)j * width;
                uint8_t *p0 = plane0 + (size_t)t0 / 2 * in + (size_t)i * (width / 2);
                uint8_t *p1 = plane1 ? plane1 + (size_t)t0 / 2 * in + (size_t)i * (width / 2) : NULL;
                for (int byte = 0; byte < width / 2; byte++) {
                    int a = c[lo[byte]], z = c[hi[byte]];
                    if (kind == EE_Q4) p0[byte] = (uint8_t)(a | z << 4);
                    else {
                        p0[byte] = (uint8_t)(((a >> 4) + 8) | ((z >> 4) + 8) << 4);
                        p1[byte] = (uint8_t)((a & 15) | (z & 15) << 4);
                    }
                }
                double s0 = 0.0, s1 = 0.0;
                for (int o = 0; o < width; o++) {
                    float v = val[(size_t)j * width + o];
                    s0 += (double)(v * v);
                    if (res) s1 += (double)(res[(size_t)j * width + o] * res[(size_t)j * width + o]);
                }
                e0[i] += s0;
                e1[i] += s1;
            }
        }
    }
    for (int i = 0; ok && i < in; i++) {
        if (kind == EE_Q4) gains[i] = (float)e0[i];
        else {
            gains[i] = (float)(e0[i] - e1[i] > 0.0 ? e0[i] - e1[i] : 0.0);
            gains[in + i] = (float)e1[i];
        }
    }
    free(lo); free(hi); free(block); free(val); free(res); free(e0); free(e1);
    return ok ? 0 : -1;
}

/* ------------------------------------------------------------------ a plain streaming read */
#if EE_X86
__attribute__((target("avx2"))) static uint64_t sum_bytes_avx2(const uint8_t *p, size_t n) {
    __m256i a = _mm256_setzero_si256(), b = a, c = a, d = a;
    size_t i = 0;
    for (; i + 128 <= n; i += 128) {
        a = _mm256_add_epi64(a, _mm256_loadu_si256((const __m256i *)(p + i)));
        b = _mm256_add_epi64(b, _mm256_loadu_si256((const __m256i *)(p + i + 32)));
        c = _mm256_add_epi64(c, _mm256_loadu_si256((const __m256i *)(p + i + 64)));
        d = _mm256_add_epi64(d, _mm256_loadu_si256((const __m256i *)(p + i + 96)));
    }
    uint64_t lanes[4];
    _mm256_storeu_si256((__m256i *)lanes, _mm256_add_epi64(_mm256_add_epi64(a, b), _mm256_add_epi64(c, d)));
    uint64_t s = lanes[0] + lanes[1] + lanes[2] + lanes[3];
    for (; i < n; i++) s += p[i];
    return s;
}
#endif

/* Every byte of n spans read once, in 1 MiB pieces claimed by the pool's threads, and summed (so the reads
 * cannot be skipped): what the memory gives a program that only streams, the yardstick `effort bench`
 * holds the dense decode step against. */
#define EE_STREAM_PIECE (1u << 20)
typedef struct {
    const uint8_t *const *ptr;
    const size_t *size;
    int n;
    size_t pieces;
    atomic_size_t next;
    atomic_ullong sum;
} stream_job;

static uint64_t sum_bytes(const uint8_t *p, size_t n) {
    uint64_t s = 0;
#if EE_X86
    if (g_isa >= ISA_AVX2) return sum_bytes_avx2(p, n);
#endif
    for (size_t i = 0; i < n; i += 8) {
        uint64_t v = 0;
        memcpy(&v, p + i, n - i >= 8 ? 8 : n - i);
        s += v;
    }
    return s;
}

static void stream_worker(void *arg, int tid) {
    (void)tid;
    stream_job *J = (stream_job *)arg;
    uint64_t s = 0;
    for (;;) {
        size_t u = atomic_fetch_add(&J->next, 1);
        if (u >= J->pieces) break;
        for (int k = 0; k < J->n; k++) { /* piece u: the u-th MiB counting through the spans in order */
            size_t count = (J->size[k] + EE_STREAM_PIECE - 1) / EE_STREAM_PIECE;
            if (u < count) {
                size_t at = u * EE_STREAM_PIECE, len = J->size[k] - at < EE_STREAM_PIECE ? J->size[k] - at : EE_STREAM_PIECE;
                s += sum_bytes(J->ptr[k] + at, len);
                break;
            }
            u -= count;
        }
    }
    atomic_fetch_add(&J->sum, (unsigned long long)s);
}

uint64_t ee_stream_read(const uint8_t *const *ptr, const size_t *size, int n) {
    isa();
    static stream_job J;
    J.ptr = ptr;
    J.size = size;
    J.n = n;
    J.pieces = 0;
    for (int k = 0; k < n; k++) J.pieces += (size[k] + EE_STREAM_PIECE - 1) / EE_STREAM_PIECE;
    atomic_store(&J.next, 0);
    atomic_store(&J.sum, 0);
    ecpu_parallel(stream_worker, &J);
    return (uint64_t)atomic_load(&J.sum);
}
