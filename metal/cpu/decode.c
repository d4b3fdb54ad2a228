/* decode.c — a Llama-family decoder on the CPU, every projection in the planes layout.
 * Run by: engine.runtime.cpu_runtime.CPURuntime (built by engine.runtime.native, called through ctypes).
 *
 * Python owns the weights (the layout is memory-mapped from the converted file) and the KV cache, and
 * calls ee_forward() with the embeddings of one or more tokens at consecutive positions:
 *   x -> n_layers x (attention + SwiGLU MLP) -> norm -> head -> logits.
 * One token is a decode step; several are a chunk of the prompt, drafted tokens to verify, or a text
 * scored teacher-forced: every matrix's weights are then read once for all of them, and each token gets
 * the bits it would get alone. Each projection (and the head) reads its rows at the levels its threshold
 * picks, per token (planes.h); with no effort every row is read at its top level: the dense model, through
 * the same kernels.
 */
#include <math.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "planes.h"
#include "pool.h"

#if (defined(__x86_64__) || defined(_M_X64)) && !defined(ECPU_NO_SIMD) && defined(__GNUC__)
#define EE_X86 1
#include <immintrin.h>
#else
#define EE_X86 0
#endif

/* The projections of a layer, in the order of every per-matrix array (Python reads this string). */
enum { P_Q, P_K, P_V, P_O, P_GATE, P_UP, P_DOWN, EE_N_PROJ };
const char *ee_projections(void) { return "q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj"; }

typedef struct {
    int dim, ffn, n_layers, n_heads, n_kv, head_dim, vocab, max_ctx, window;
    float eps;
} ee_dims;

typedef struct {
    ee_planes proj[EE_N_PROJ];
    const float *bias[3]; /* q, k, v biases or NULL */
    const float *attn_norm, *ffn_norm;
} ee_layer;

/* What the effort reads, per matrix (index layer * EE_N_PROJ + projection; the head last):
 * tau: thresholds (planes.h), or share: a per-token budget as a share of the matrix's plane rows
 * (the threshold found per token). Neither: the dense model. */
typedef struct {
    const float *tau;
    const float *share;
    int whole_rows; /* the activation baseline: rows by x^2 alone, every plane or none */
    int coarse;     /* the activations at their int8 level alone, everywhere (calibration: see planes.h) */
} ee_effort;

/* Calibration statistics (optional): per matrix and plane, a histogram of log2 of the rows' scores
 * x^2 * gain, EE_HIST_BINS bins of 1/EE_HIST_PER_OCTAVE octave from 2^EE_HIST_LOW: what a static threshold
 * reads on average. */
#define EE_HIST_BINS 1024
#define EE_HIST_PER_OCTAVE 8
#define EE_HIST_LOW (-96)
typedef struct {
    uint32_t *hist; /* [n_matrices][2][EE_HIST_BINS] */
} ee_stats;

#define MAX_GROUP 3 /* q/k/v share their input, as do gate/up */

typedef struct {
    ee_dims d;
    ee_layer *layers;
    ee_planes head;
    const float *final_norm, *rope_inv_freq;
    float *kcache, *vcache; /* per layer and kv head: K [blocks][head_dim][16], V [max_ctx][head_dim] (attention) */
    float *part;            /* a split attention's partials (attend) */
    float *attn_scratch;    /* attention's scratch for attn_threads threads */
    int attn_threads;
    int widest_in;          /* the most inputs of any matrix: the work lists' size */
    float *scratch;         /* 2 * widest_in: the per-token budget's order statistic */
    /* per token of a batch, grown on demand: activations, quantized inputs, work lists */
    int cap;
    float *x, *xn, *q, *k, *v, *att, *proj, *gate, *up;
    int8_t *xq;
    float *dx;
    ee_work **work; /* [MAX_GROUP][cap] */
    ee_stats *stats;
    float *capture;            /* optional: each matrix's input, at capture + capture_at[index] (one token) */
    const int64_t *capture_at;
    double read, total; /* plane bytes read / at the top level, by the last call */
    int nonfinite;      /* the last call met NaN or inf activations: its logits are NaN */
} ee_model;

static float *alloc_f(size_t n) { return (float *)calloc(n ? n : 1, sizeof(float)); }

static void free_tokens(ee_model *m) {
    free(m->x); free(m->xn); free(m->q); free(m->k); free(m->v); free(m->att); free(m->proj);
    free(m->gate); free(m->up); free(m->xq); free(m->dx);
    if (m->work)
        for (int i = 0; i < MAX_GROUP * m->cap; i++) ee_work_free(m->work[i]);
    free(m->work);
    m->x = m->xn = m->q = m->k = m->v = m->att = m->proj = m->gate = m->up = m->dx = NULL;
    m->xq = NULL;
    m->work = NULL;
    m->cap = 0;
}

/* room for ntok tokens' activations and work lists */
static int grow(ee_model *m, int ntok) {
    if (ntok <= m->cap) return 1;
    free_tokens(m);
    const ee_dims *d = &m->d;
    size_t n = (size_t)ntok, qdim = (size_t)d->n_heads * d->head_dim, kvdim = (size_t)d->n_kv * d->head_dim;
    size_t widest = (size_t)d->dim > qdim ? (size_t)d->dim : qdim;
    m->x = alloc_f(n * d->dim);
    m->xn = alloc_f(n * widest);
    m->q = alloc_f(n * qdim);
    m->k = alloc_f(n * kvdim);
    m->v = alloc_f(n * kvdim);
    m->att = alloc_f(n * qdim);
    m->proj = alloc_f(n * widest);
    m->gate = alloc_f(n * d->ffn);
    m->up = alloc_f(n * d->ffn);
    m->xq = (int8_t *)calloc(2 * n * m->widest_in, 1);
    m->dx = alloc_f(n * m->widest_in / EE_BLOCK);
    m->work = (ee_work **)calloc((size_t)MAX_GROUP * n, sizeof(ee_work *));
    int ok = m->x && m->xn && m->q && m->k && m->v && m->att && m->proj && m->gate && m->up && m->xq &&
             m->dx && m->work;
    m->cap = ntok;
    for (size_t i = 0; ok && i < MAX_GROUP * n; i++) ok = (m->work[i] = ee_work_new(m->widest_in)) != NULL;
    if (!ok) free_tokens(m);
    return ok;
}

void ee_model_free(ee_model *m) {
    if (!m) return;
    free_tokens(m);
    free(m->layers);
    free(m->scratch);
    free(m->part);
    free(m->attn_scratch);
    free(m);
}

static int valid_planes(const ee_planes *p, int out, int in) {
    return p->out == out && p->in == in && out > 0 && in > 0 && out % 64 == 0 && in % EE_BLOCK == 0 && in <= EE_MAX_IN &&
           p->tile > 0 && p->tile % 128 == 0 &&
           p->plane[0] && p->d && p->gain[0] && (p->kind == EE_Q4 || (p->kind == EE_Q8 && !p->m));
}

/* A model over Python's buffers; NULL when a shape does not suit the kernels (checked here, not assumed). */
ee_model *ee_model_new(const ee_dims *d, const ee_layer *layers, const ee_planes *head, const float *final_norm,
                       const float *rope_inv_freq, float *kcache, float *vcache, int threads) {
    int qdim = d->n_heads * d->head_dim, kvdim = d->n_kv * d->head_dim;
    if (d->dim <= 0 || d->n_layers <= 0 || d->n_heads <= 0 || d->n_kv <= 0 || d->n_heads % d->n_kv || d->max_ctx <= 0)
        return NULL;
    if (!valid_planes(head, d->vocab, d->dim)) return NULL;
    for (int l = 0; l < d->n_layers; l++) {
        const ee_planes *p = layers[l].proj;
        if (!valid_planes(&p[P_Q], qdim, d->dim) || !valid_planes(&p[P_K], kvdim, d->dim) ||
            !valid_planes(&p[P_V], kvdim, d->dim) || !valid_planes(&p[P_O], d->dim, qdim) ||
            !valid_planes(&p[P_GATE], d->ffn, d->dim) || !valid_planes(&p[P_UP], d->ffn, d->dim) ||
            !valid_planes(&p[P_DOWN], d->dim, d->ffn))
            return NULL;
    }
    ee_model *m = (ee_model *)calloc(1, sizeof(ee_model));
    if (!m) return NULL;
    m->d = *d;
    m->layers = (ee_layer *)malloc(sizeof(ee_layer) * (size_t)d->n_layers);
    if (m->layers) memcpy(m->layers, layers, sizeof(ee_layer) * (size_t)d->n_layers);
    m->head = *head;
    m->final_norm = final_norm;
    m->rope_inv_freq = rope_inv_freq;
    m->kcache = kcache;
    m->vcache = vcache;
    int widest = d->dim > qdim ? d->dim : qdim;
    m->widest_in = d->ffn > widest ? d->ffn : widest;
    m->scratch = alloc_f(2 * (size_t)m->widest_in);
    ecpu_init(threads);
    if (!m->layers || !m->scratch || !grow(m, 1)) {
        ee_model_free(m);
        return NULL;
    }
    return m;
}

void ee_set_stats(ee_model *m, ee_stats *stats) { m->stats = stats; }

/* Keep each matrix's input of the following single-token calls (bench and eval time and compare single
 * matrices on real activations); NULL stops it. */
void ee_set_capture(ee_model *m, float *capture, const int64_t *capture_at) {
    m->capture = capture;
    m->capture_at = capture ? capture_at : NULL;
}

/* plane bytes the last call read, and what every row at its top level would have read */
double ee_bytes_read(const ee_model *m) { return m->read; }
double ee_bytes_total(const ee_model *m) { return m->total; }

static void rmsnorm(float *out, const float *x, const float *w, int n, float eps) {
    double ss = 0.0;
    for (int i = 0; i < n; i++) ss += (double)x[i] * x[i];
    float scale = 1.0f / sqrtf((float)(ss / n) + eps);
    for (int i = 0; i < n; i++) out[i] = x[i] * scale * w[i];
}

/* Hugging Face RoPE ("rotate_half"): pairs are (j, j + head_dim/2). */
static void rope(float *v, int n_heads, int head_dim, int pos, const float *inv_freq) {
    int half = head_dim / 2;
    for (int j = 0; j < half; j++) {
        float angle = pos * inv_freq[j];
        float c = cosf(angle), s = sinf(angle);
        for (int h = 0; h < n_heads; h++) {
            float *p = v + h * head_dim;
            float a = p[j], b = p[j + half];
            p[j] = a * c - b * s;
            p[j + half] = b * c + a * s;
        }
    }
}

static void add_bias(float *y, const float *b, int n) {
    if (b)
        for (int i = 0; i < n; i++) y[i] += b[i];
}

/* ------------------------------------------------------------------ projections */
static int top_level(const ee_planes *p) { return p->kind == EE_Q8 && p->plane[1] ? 2 : 1; }

/* Calibration: where this token's row scores fall. */
static void record(ee_stats *st, int index, const ee_planes *p, const float *x) {
    uint32_t *h = st->hist + (size_t)index * 2 * EE_HIST_BINS;
    int planes = top_level(p);
    for (int i = 0; i < p->in; i++) {
        float s = x[i] * x[i];
        for (int q = 0; q < planes; q++) {
            float v = s * p->gain[q][i];
            int bin = v > 0.0f ? (int)floorf((log2f(v) - EE_HIST_LOW) * EE_HIST_PER_OCTAVE) : 0;
            h[q * EE_HIST_BINS + (bin < 0 ? 0 : bin >= EE_HIST_BINS ? EE_HIST_BINS - 1 : bin)]++;
        }
    }
}

/* Up to MAX_GROUP matrices of the same input, for ntok tokens (inputs xs + j * xstride, outputs
 * ys[g] + j * ystride[g]): each token's input quantized once, each matrix's rows selected per token at
 * its threshold (or budget), then one parallel product over all matrices and tokens. */
static void project(ee_model *m, const ee_planes *const *ps, float *const *ys, const int *ystride, const int *index,
                    int count, const float *xs, int xstride, int ntok, const ee_effort *e) {
    int in = ps[0]->in, whole = e && e->whole_rows, same = 1; /* same: every token reads every row */
    ee_mv mv[MAX_GROUP * EE_MAX_BATCH];
    for (int j = 0; j < ntok; j++) {
        const float *x = xs + (size_t)j * xstride;
        int8_t *xq = m->xq + (size_t)j * 2 * m->widest_in;
        float *dx = m->dx + (size_t)j * (m->widest_in / EE_BLOCK);
        m->nonfinite |= ee_quantize_x(x, in, xq, dx);
        for (int g = 0; g < count; g++) {
            const ee_planes *p = ps[g];
            ee_work *w = m->work[(size_t)g * m->cap + j];
            int top = top_level(p) == 1;
            float tau = -1.0f; /* every row at its top level */
            if (e && e->tau) tau = e->tau[index[g]];
            else if (e && e->share) {
                long rows = (long)p->in * top_level(p), budget = lrintf(e->share[index[g]] * (float)rows);
                tau = budget >= rows ? -1.0f : ee_budget_tau(p, x, budget, top, whole, m->scratch);
            }
            w->coarse = e && e->coarse;
            ee_select(p, x, xq, dx, tau, top, whole, w, NULL);
            same &= tau < 0.0f;
            if (m->stats) record(m->stats, index[g], p, x);
            if (m->capture && ntok == 1) memcpy(m->capture + m->capture_at[index[g]], x, sizeof(float) * (size_t)in);
            m->read += (double)w->rows_read * (p->out / 2);
            m->total += (double)p->in * top_level(p) * (p->out / 2);
            mv[(size_t)g * ntok + j] = (ee_mv){p, w, ys[g] + (size_t)j * ystride[g]};
        }
    }
    ee_matmul_multi(count, ntok, mv, same);
}

/* ------------------------------------------------------------------ attention
 * The cache, per layer and kv head: K transposed in blocks of EE_KV_BLOCK positions ([block][head_dim][16],
 * so a block's 16 scores are head_dim broadcast FMAs with no horizontal sum) and V by position
 * ([max_ctx][head_dim], so P V is broadcast FMAs over its rows). The q heads of a kv group (and, in a
 * batch, several tokens) are computed from one read of each K and V block.
 *
 * Positions are cut into chunks of EE_KV_CHUNK at fixed absolute positions. Per token and q head, a chunk
 * gives a partial softmax (its max, its sum of exponentials, its exp-weighted sum of V) and the partials are
 * folded in chunk order. Every sum's order is then a function of the token's position alone, never of
 * the batch, of the work split or of the thread count: a decode step spreads one token's chunks over the
 * threads and folds them afterwards, a batch gives each unit a tile of tokens that walks the chunks itself
 * (each K/V chunk read once for the tile), and both give the same bits. */
#define EE_KV_BLOCK 16
#define EE_KV_CHUNK 64
#define SPLIT_TOKENS 4 /* a call of at most this many tokens splits their chunks over the threads */
#define TILE_TOKENS 16 /* the most tokens one unit of a batch walks the chunks for */
enum { ATT_SCALAR, ATT_AVX2, ATT_AVX512 };

int ee_kv_block(void) { return EE_KV_BLOCK; }

static int kv_blocks(int max_ctx) { return (max_ctx + EE_KV_BLOCK - 1) / EE_KV_BLOCK; }
static int kv_chunks(int max_ctx) { return (max_ctx + EE_KV_CHUNK - 1) / EE_KV_CHUNK; }
/* floats of one layer's K and V */
static size_t k_layer(const ee_dims *d) { return (size_t)d->n_kv * kv_blocks(d->max_ctx) * EE_KV_BLOCK * d->head_dim; }
static size_t v_layer(const ee_dims *d) { return (size_t)d->n_kv * d->max_ctx * d->head_dim; }

/* exp(x) for x <= 0: exp(r) * 2^n with x = n ln2 + r, |r| <= ln2/2, exp(r) by its Taylor series to r^6
 * (error ~1e-7 relative). Below -87 (2^n no longer a normal float) it is 0; NaN stays NaN. */
#define EXP_LOW (-87.0f)
#define LOG2E 1.44269504f
#define LN2_HI 0.693145752f  /* ln 2 in two parts: n * LN2_HI is exact for |n| < 2^8 */
#define LN2_LO 1.42860677e-6f
#define ROUND_MAGIC 12582912.0f /* 1.5 * 2^23: adding and subtracting it rounds to an integer */
static float exp_neg(float x) {
    if (!(x >= EXP_LOW)) return x < EXP_LOW ? 0.0f : x;
    float n = (x * LOG2E + ROUND_MAGIC) - ROUND_MAGIC, r = x - n * LN2_HI - n * LN2_LO;
    float p = 1.0f + r * (1.0f + r * (0.5f + r * (1.0f / 6 + r * (1.0f / 24 + r * (1.0f / 120 + r * (1.0f / 720))))));
    uint32_t bits = (uint32_t)((int32_t)n + 127) << 23;
    float scale;
    memcpy(&scale, &bits, 4);
    return p * scale;
}

/* One chunk of one token for the q heads of one kv head (rows, head_dim hd apart in q): scores over the
 * nb K blocks from K into S ([rows][EE_KV_CHUNK]), of which n from `off` are the token's positions; those
 * become exp(score - max) and the rest is ignored; then part[r] = (max, sum of exp, sum over the n
 * positions of exp * V[t]) ([rows][hd + 2]). */
typedef void chunk_fn(const float *q, int rows, int hd, const float *K, int nb, int off, int n, const float *V,
                      float scale, float *S, float *part);

/* A chunk's scores outside the token's positions [off, off + n) of `len`: -inf, which exp takes to 0
 * (the vector kernels score whole blocks of positions). */
static inline void mask_outside(float *s, int off, int n, int len) {
    for (int t = 0; t < off; t++) s[t] = -INFINITY;
    for (int t = off + n; t < len; t++) s[t] = -INFINITY;
}

static void chunk_scalar(const float *q, int rows, int hd, const float *K, int nb, int off, int n, const float *V,
                         float scale, float *S, float *part) {
    for (int r = 0; r < rows; r++) {
        const float *qr = q + (size_t)r * hd;
        float *s = S + (size_t)r * EE_KV_CHUNK, *pr = part + (size_t)r * (hd + 2);
        for (int b = 0; b < nb; b++) {
            const float *kb = K + (size_t)b * EE_KV_BLOCK * hd;
            float dot[EE_KV_BLOCK] = {0};
            for (int i = 0; i < hd; i++)
                for (int l = 0; l < EE_KV_BLOCK; l++) dot[l] += qr[i] * kb[i * EE_KV_BLOCK + l];
            for (int l = 0; l < EE_KV_BLOCK; l++) s[b * EE_KV_BLOCK + l] = dot[l] * scale;
        }
        s += off;
        float top = -INFINITY, total = 0.0f;
        for (int t = 0; t < n; t++) top = s[t] > top ? s[t] : top;
        for (int t = 0; t < n; t++) {
            s[t] = exp_neg(s[t] - top);
            total += s[t];
        }
        float *acc = pr + 2;
        for (int j = 0; j < hd; j++) acc[j] = 0.0f;
        for (int t = 0; t < n; t++)
            for (int j = 0; j < hd; j++) acc[j] += s[t] * V[(size_t)t * hd + j];
        pr[0] = top;
        pr[1] = total;
    }
}

/* A chunk's partial (m, l, acc) into a row's running max, sum and acc (state: max, sum). Each family
 * has its copy, vectorized at its width; a call folds with its family's alone, so its tiles and its split
 * fold alike. */
typedef void fold_fn(float *state, float *acc, const float *part, int hd);

static inline __attribute__((always_inline)) void fold_body(float *state, float *acc, const float *part, int hd) {
    float top = part[0] > state[0] ? part[0] : state[0];
    float a = exp_neg(state[0] - top), b = exp_neg(part[0] - top);
    state[0] = top;
    state[1] = state[1] * a + part[1] * b;
    for (int j = 0; j < hd; j++) acc[j] = acc[j] * a + part[2 + j] * b;
}

static void fold_scalar(float *state, float *acc, const float *part, int hd) { fold_body(state, acc, part, hd); }

/* In the SIMD kernels a score tile is R rows x BT blocks and a P V tile R rows x W vectors, every one of
 * them a register; R, BT and W are constants where the always-inline tiles are called, so the loops
 * over them unroll. Each score and each output is one chain of FMAs in position order whatever the tile. */
#if EE_X86
#define T_AVX2 __attribute__((target("avx2,fma")))
#define T_AVX512 __attribute__((target("avx512f,avx2,fma")))
#define INLINE static inline __attribute__((always_inline))

T_AVX2 static void fold_avx2(float *state, float *acc, const float *part, int hd) { fold_body(state, acc, part, hd); }
T_AVX512 static void fold_avx512(float *state, float *acc, const float *part, int hd) {
    fold_body(state, acc, part, hd);
}

T_AVX2 INLINE __m256 exp8(__m256 x) {
    __m256 n = _mm256_round_ps(_mm256_mul_ps(x, _mm256_set1_ps(LOG2E)), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m256 r = _mm256_fnmadd_ps(n, _mm256_set1_ps(LN2_HI), x);
    r = _mm256_fnmadd_ps(n, _mm256_set1_ps(LN2_LO), r);
    __m256 p = _mm256_set1_ps(1.0f / 720);
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f / 120));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f / 24));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f / 6));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(0.5f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f));
    __m256i e = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23);
    p = _mm256_mul_ps(p, _mm256_castsi256_ps(e));
    return _mm256_blendv_ps(p, _mm256_setzero_ps(), _mm256_cmp_ps(x, _mm256_set1_ps(EXP_LOW), _CMP_LT_OQ));
}

T_AVX2 INLINE float hsum8(__m256 v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    return _mm_cvtss_f32(_mm_add_ss(s, _mm_movehdup_ps(s)));
}

T_AVX2 INLINE float hmax8(__m256 v) {
    __m128 s = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_max_ps(s, _mm_movehl_ps(s, s));
    return _mm_cvtss_f32(_mm_max_ss(s, _mm_movehdup_ps(s)));
}

/* a score tile: a block is two vectors */
T_AVX2 INLINE void scores8(const float *q, int hd, const float *K, int R, int BT, float scale, float *S) {
    __m256 acc[4][2][2];
    for (int r = 0; r < R; r++)
        for (int b = 0; b < BT; b++) acc[r][b][0] = acc[r][b][1] = _mm256_setzero_ps();
    for (int i = 0; i < hd; i++) {
        __m256 k[2][2];
        for (int b = 0; b < BT; b++) {
            const float *kb = K + ((size_t)b * hd + i) * EE_KV_BLOCK;
            k[b][0] = _mm256_loadu_ps(kb);
            k[b][1] = _mm256_loadu_ps(kb + 8);
        }
        for (int r = 0; r < R; r++) {
            __m256 qv = _mm256_broadcast_ss(q + (size_t)r * hd + i);
            for (int b = 0; b < BT; b++) {
                acc[r][b][0] = _mm256_fmadd_ps(qv, k[b][0], acc[r][b][0]);
                acc[r][b][1] = _mm256_fmadd_ps(qv, k[b][1], acc[r][b][1]);
            }
        }
    }
    __m256 sc = _mm256_set1_ps(scale);
    for (int r = 0; r < R; r++)
        for (int b = 0; b < BT; b++) {
            _mm256_storeu_ps(S + r * EE_KV_CHUNK + b * EE_KV_BLOCK, _mm256_mul_ps(acc[r][b][0], sc));
            _mm256_storeu_ps(S + r * EE_KV_CHUNK + b * EE_KV_BLOCK + 8, _mm256_mul_ps(acc[r][b][1], sc));
        }
}

T_AVX2 INLINE void pv8(const float *P, const float *V, int n, int hd, int R, int W, float *out) {
    __m256 acc[4][4];
    for (int r = 0; r < R; r++)
        for (int w = 0; w < W; w++) acc[r][w] = _mm256_setzero_ps();
    for (int t = 0; t < n; t++) {
        __m256 v[4];
        for (int w = 0; w < W; w++) v[w] = _mm256_loadu_ps(V + (size_t)t * hd + 8 * w);
        for (int r = 0; r < R; r++) {
            __m256 p = _mm256_broadcast_ss(P + r * EE_KV_CHUNK + t);
            for (int w = 0; w < W; w++) acc[r][w] = _mm256_fmadd_ps(p, v[w], acc[r][w]);
        }
    }
    for (int r = 0; r < R; r++)
        for (int w = 0; w < W; w++) _mm256_storeu_ps(out + (size_t)r * (hd + 2) + 8 * w, acc[r][w]);
}

/* R rows' scores over nb blocks and their P V (four rows hold 8 score or 8 output registers) */
T_AVX2 INLINE void scores_rows8(const float *q, int hd, const float *K, int nb, int R, float scale, float *S) {
    int b = 0, step = EE_KV_BLOCK * hd;
    if (R <= 2)
        for (; b + 2 <= nb; b += 2) scores8(q, hd, K + (size_t)b * step, R, 2, scale, S + b * EE_KV_BLOCK);
    for (; b < nb; b++) scores8(q, hd, K + (size_t)b * step, R, 1, scale, S + b * EE_KV_BLOCK);
}

T_AVX2 INLINE void pv_rows8(const float *P, const float *V, int n, int hd, int R, float *out) {
    int c = 0, wide = R <= 2 ? 4 : 2;
    for (; c + 8 * wide <= hd; c += 8 * wide)
        if (wide == 4) pv8(P, V + c, n, hd, R, 4, out + c);
        else pv8(P, V + c, n, hd, R, 2, out + c);
    for (; c < hd; c += 8) pv8(P, V + c, n, hd, R, 1, out + c);
}

/* hd % 8 == 0 */
T_AVX2 static void chunk_avx2(const float *q, int rows, int hd, const float *K, int nb, int off, int n, const float *V,
                              float scale, float *S, float *part) {
    for (int r = 0; r < rows; r += 4) {
        const float *qr = q + (size_t)r * hd;
        float *s = S + r * EE_KV_CHUNK;
        switch (rows - r) {
        case 1: scores_rows8(qr, hd, K, nb, 1, scale, s); break;
        case 2: scores_rows8(qr, hd, K, nb, 2, scale, s); break;
        case 3: scores_rows8(qr, hd, K, nb, 3, scale, s); break;
        default: scores_rows8(qr, hd, K, nb, 4, scale, s);
        }
    }
    for (int r = 0; r < rows; r++) {
        float *s = S + r * EE_KV_CHUNK, *pr = part + (size_t)r * (hd + 2);
        mask_outside(s, off, n, nb * EE_KV_BLOCK);
        __m256 top = _mm256_set1_ps(-INFINITY), total = _mm256_setzero_ps();
        for (int t = 0; t < nb * EE_KV_BLOCK; t += 8) top = _mm256_max_ps(top, _mm256_loadu_ps(s + t));
        pr[0] = hmax8(top);
        top = _mm256_set1_ps(pr[0]);
        for (int t = 0; t < nb * EE_KV_BLOCK; t += 8) {
            __m256 p = exp8(_mm256_sub_ps(_mm256_loadu_ps(s + t), top));
            _mm256_storeu_ps(s + t, p);
            total = _mm256_add_ps(total, p);
        }
        pr[1] = hsum8(total);
    }
    for (int r = 0; r < rows; r += 4) {
        const float *p = S + r * EE_KV_CHUNK + off;
        float *acc = part + (size_t)r * (hd + 2) + 2;
        switch (rows - r) {
        case 1: pv_rows8(p, V, n, hd, 1, acc); break;
        case 2: pv_rows8(p, V, n, hd, 2, acc); break;
        case 3: pv_rows8(p, V, n, hd, 3, acc); break;
        default: pv_rows8(p, V, n, hd, 4, acc);
        }
    }
}

T_AVX512 INLINE __m512 exp16(__m512 x) {
    __m512 n = _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(LOG2E)),
                                    _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(LN2_HI), x);
    r = _mm512_fnmadd_ps(n, _mm512_set1_ps(LN2_LO), r);
    __m512 p = _mm512_set1_ps(1.0f / 720);
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f / 120));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f / 24));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f / 6));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(0.5f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f));
    __m512i e = _mm512_slli_epi32(_mm512_add_epi32(_mm512_cvtps_epi32(n), _mm512_set1_epi32(127)), 23);
    p = _mm512_mul_ps(p, _mm512_castsi512_ps(e));
    return _mm512_mask_mov_ps(p, _mm512_cmp_ps_mask(x, _mm512_set1_ps(EXP_LOW), _CMP_LT_OQ), _mm512_setzero_ps());
}

T_AVX512 INLINE __m256 high8(__m512 v) { return _mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(v), 1)); }

/* a score tile: a block is one vector */
T_AVX512 INLINE void scores16(const float *q, int hd, const float *K, int R, int BT, float scale, float *S) {
    __m512 acc[4][4];
    for (int r = 0; r < R; r++)
        for (int b = 0; b < BT; b++) acc[r][b] = _mm512_setzero_ps();
    for (int i = 0; i < hd; i++) {
        __m512 k[4];
        for (int b = 0; b < BT; b++) k[b] = _mm512_loadu_ps(K + ((size_t)b * hd + i) * EE_KV_BLOCK);
        for (int r = 0; r < R; r++) {
            __m512 qv = _mm512_set1_ps(q[(size_t)r * hd + i]);
            for (int b = 0; b < BT; b++) acc[r][b] = _mm512_fmadd_ps(qv, k[b], acc[r][b]);
        }
    }
    __m512 sc = _mm512_set1_ps(scale);
    for (int r = 0; r < R; r++)
        for (int b = 0; b < BT; b++)
            _mm512_storeu_ps(S + r * EE_KV_CHUNK + b * EE_KV_BLOCK, _mm512_mul_ps(acc[r][b], sc));
}

T_AVX512 INLINE void pv16(const float *P, const float *V, int n, int hd, int R, int W, float *out) {
    __m512 acc[4][4];
    for (int r = 0; r < R; r++)
        for (int w = 0; w < W; w++) acc[r][w] = _mm512_setzero_ps();
    for (int t = 0; t < n; t++) {
        __m512 v[4];
        for (int w = 0; w < W; w++) v[w] = _mm512_loadu_ps(V + (size_t)t * hd + 16 * w);
        for (int r = 0; r < R; r++) {
            __m512 p = _mm512_set1_ps(P[r * EE_KV_CHUNK + t]);
            for (int w = 0; w < W; w++) acc[r][w] = _mm512_fmadd_ps(p, v[w], acc[r][w]);
        }
    }
    for (int r = 0; r < R; r++)
        for (int w = 0; w < W; w++) _mm512_storeu_ps(out + (size_t)r * (hd + 2) + 16 * w, acc[r][w]);
}

/* R rows' scores over nb blocks and their P V (four rows hold 16 score or 16 output registers) */
T_AVX512 INLINE void scores_rows16(const float *q, int hd, const float *K, int nb, int R, float scale, float *S) {
    int b = 0, step = EE_KV_BLOCK * hd;
    for (; b + 4 <= nb; b += 4) scores16(q, hd, K + (size_t)b * step, R, 4, scale, S + b * EE_KV_BLOCK);
    for (; b < nb; b++) scores16(q, hd, K + (size_t)b * step, R, 1, scale, S + b * EE_KV_BLOCK);
}

T_AVX512 INLINE void pv_rows16(const float *P, const float *V, int n, int hd, int R, float *out) {
    int c = 0;
    for (; c + 64 <= hd; c += 64) pv16(P, V + c, n, hd, R, 4, out + c);
    for (; c < hd; c += 16) pv16(P, V + c, n, hd, R, 1, out + c);
}

/* hd % 16 == 0 */
T_AVX512 static void chunk_avx512(const float *q, int rows, int hd, const float *K, int nb, int off, int n,
                                  const float *V, float scale, float *S, float *part) {
    for (int r = 0; r < rows; r += 4) {
        const float *qr = q + (size_t)r * hd;
        float *s = S + r * EE_KV_CHUNK;
        switch (rows - r) {
        case 1: scores_rows16(qr, hd, K, nb, 1, scale, s); break;
        case 2: scores_rows16(qr, hd, K, nb, 2, scale, s); break;
        case 3: scores_rows16(qr, hd, K, nb, 3, scale, s); break;
        default: scores_rows16(qr, hd, K, nb, 4, scale, s);
        }
    }
    for (int r = 0; r < rows; r++) {
        float *s = S + r * EE_KV_CHUNK, *pr = part + (size_t)r * (hd + 2);
        mask_outside(s, off, n, nb * EE_KV_BLOCK);
        __m512 top = _mm512_set1_ps(-INFINITY), total = _mm512_setzero_ps();
        for (int b = 0; b < nb; b++) top = _mm512_max_ps(top, _mm512_loadu_ps(s + b * EE_KV_BLOCK));
        pr[0] = hmax8(_mm256_max_ps(_mm512_castps512_ps256(top), high8(top)));
        top = _mm512_set1_ps(pr[0]);
        for (int b = 0; b < nb; b++) {
            __m512 p = exp16(_mm512_sub_ps(_mm512_loadu_ps(s + b * EE_KV_BLOCK), top));
            _mm512_storeu_ps(s + b * EE_KV_BLOCK, p);
            total = _mm512_add_ps(total, p);
        }
        pr[1] = hsum8(_mm256_add_ps(_mm512_castps512_ps256(total), high8(total)));
    }
    for (int r = 0; r < rows; r += 4) {
        const float *p = S + r * EE_KV_CHUNK + off;
        float *acc = part + (size_t)r * (hd + 2) + 2;
        switch (rows - r) {
        case 1: pv_rows16(p, V, n, hd, 1, acc); break;
        case 2: pv_rows16(p, V, n, hd, 2, acc); break;
        case 3: pv_rows16(p, V, n, hd, 3, acc); break;
        default: pv_rows16(p, V, n, hd, 4, acc);
        }
    }
}
#endif

static const struct {
    chunk_fn *chunk;
    fold_fn *fold;
} KERNELS[] = {
    {chunk_scalar, fold_scalar},
#if EE_X86
    {chunk_avx2, fold_avx2},
    {chunk_avx512, fold_avx512},
#endif
};

/* One layer's attention for ntok tokens at positions pos.. (their keys and values in the cache already):
 * units are claimed in turn from `next`, then, for a split call, the folds from `folded`. */
typedef struct {
    int isa, n_heads, n_kv, hd, max_ctx, window, pos, ntok;
    const float *k, *v, *q; /* the layer's cache; queries [ntok][n_heads][hd] */
    float *out;             /* [ntok][n_heads][hd] */
    int tile;               /* tokens per unit; 0: split (a unit is a chunk of every token) */
    float *part;            /* split: [chunk][ntok][n_heads][hd + 2] */
    float *scratch;         /* per thread: attn_scratch floats */
    atomic_int next, folded;
} attn_job;

/* per thread: scores [group][chunk], a chunk's partials [group][hd + 2], a tile's running (max, sum) */
static size_t attn_scratch(int group, int hd) { return (size_t)group * (EE_KV_CHUNK + hd + 2 + 2 * TILE_TOKENS); }

/* the first position a token at `at` attends */
static int first_position(const attn_job *J, int at) {
    return J->window > 0 && at + 1 > J->window ? at + 1 - J->window : 0;
}

/* token j's partials over chunk c for the q heads of kv head h (see chunk_fn); 0 when the chunk holds none
 * of its positions */
static int chunk(const attn_job *J, int h, int c, int j, float *S, float *part) {
    int at = J->pos + j, first = first_position(J, at);
    int lo = c * EE_KV_CHUNK > first ? c * EE_KV_CHUNK : first;
    int hi = c * EE_KV_CHUNK + EE_KV_CHUNK - 1 < at ? c * EE_KV_CHUNK + EE_KV_CHUNK - 1 : at;
    if (lo > hi) return 0;
    int group = J->n_heads / J->n_kv, hd = J->hd, b0 = lo / EE_KV_BLOCK;
    const float *K = J->k + ((size_t)h * kv_blocks(J->max_ctx) + b0) * EE_KV_BLOCK * hd;
    const float *V = J->v + ((size_t)h * J->max_ctx + lo) * hd;
    KERNELS[J->isa].chunk(J->q + ((size_t)j * J->n_heads + h * group) * hd, group, hd, K, hi / EE_KV_BLOCK - b0 + 1,
                          lo - b0 * EE_KV_BLOCK, hi - lo + 1, V, 1.0f / sqrtf((float)hd), S, part);
    return 1;
}

static void finish(const float *state, float *acc, int hd) {
    float inv = 1.0f / state[1];
    for (int j = 0; j < hd; j++) acc[j] *= inv;
}

/* row r of a tile from token j0 for kv head h: the output of token j0 + r / group, q head h * group + r % group */
static float *row_out(const attn_job *J, int h, int j0, int r) {
    int group = J->n_heads / J->n_kv;
    return J->out + ((size_t)(j0 + r / group) * J->n_heads + h * group + r % group) * J->hd;
}

/* a batch: unit u is a tile of tokens (the last first: they attend the furthest) and a kv head; the
 * tile walks the chunks, each chunk read once for all its tokens, and each token folds its own in order */
static void attention_tiles(void *arg, int tid) {
    attn_job *J = (attn_job *)arg;
    int group = J->n_heads / J->n_kv, hd = J->hd, tiles = (J->ntok + J->tile - 1) / J->tile;
    float *S = J->scratch + tid * attn_scratch(group, hd);
    float *part = S + (size_t)group * EE_KV_CHUNK, *state = part + (size_t)group * (hd + 2);
    for (;;) {
        int u = atomic_fetch_add(&J->next, 1);
        if (u >= tiles * J->n_kv) break;
        int h = u % J->n_kv, j0 = (tiles - 1 - u / J->n_kv) * J->tile;
        int j1 = j0 + J->tile < J->ntok ? j0 + J->tile : J->ntok;
        for (int r = 0; r < (j1 - j0) * group; r++) {
            state[2 * r] = -INFINITY;
            state[2 * r + 1] = 0.0f;
            memset(row_out(J, h, j0, r), 0, sizeof(float) * hd);
        }
        int c0 = first_position(J, J->pos + j0) / EE_KV_CHUNK, c1 = (J->pos + j1 - 1) / EE_KV_CHUNK;
        for (int c = c0; c <= c1; c++)
            for (int j = j0; j < j1; j++)
                if (chunk(J, h, c, j, S, part))
                    for (int g = 0, r = (j - j0) * group; g < group; g++, r++)
                        KERNELS[J->isa].fold(state + 2 * r, row_out(J, h, j0, r), part + (size_t)g * (hd + 2), hd);
        for (int r = 0; r < (j1 - j0) * group; r++) finish(state + 2 * r, row_out(J, h, j0, r), hd);
    }
}

/* a few tokens: unit u is a chunk and a kv head, its partials kept for attention_folds */
static void attention_chunks(void *arg, int tid) {
    attn_job *J = (attn_job *)arg;
    int group = J->n_heads / J->n_kv, hd = J->hd;
    int c0 = first_position(J, J->pos) / EE_KV_CHUNK, c1 = (J->pos + J->ntok - 1) / EE_KV_CHUNK;
    float *S = J->scratch + tid * attn_scratch(group, hd);
    for (;;) {
        int u = atomic_fetch_add(&J->next, 1);
        if (u >= (c1 - c0 + 1) * J->n_kv) break;
        int c = c0 + u / J->n_kv, h = u % J->n_kv;
        for (int j = 0; j < J->ntok; j++)
            chunk(J, h, c, j, S, J->part + (((size_t)c * J->ntok + j) * J->n_heads + h * group) * (hd + 2));
    }
}

/* (token, q head) pairs of a split call: its chunks' partials folded in order */
static void attention_folds(void *arg, int tid) {
    (void)tid;
    attn_job *J = (attn_job *)arg;
    int hd = J->hd;
    for (;;) {
        int u = atomic_fetch_add(&J->folded, 1);
        if (u >= J->ntok * J->n_heads) break;
        int j = u / J->n_heads, head = u % J->n_heads, at = J->pos + j;
        float state[2] = {-INFINITY, 0.0f}, *out = J->out + (size_t)u * hd;
        memset(out, 0, sizeof(float) * hd);
        for (int c = first_position(J, at) / EE_KV_CHUNK; c <= at / EE_KV_CHUNK; c++)
            KERNELS[J->isa].fold(state, out, J->part + (((size_t)c * J->ntok + j) * J->n_heads + head) * (hd + 2), hd);
        finish(state, out, hd);
    }
}

/* the kernel family: the planes' (ee_isa), as far as head_dim allows */
static int attn_isa(int hd) {
    const char *name = ee_isa();
    int isa = strcmp(name, "avx512vnni") == 0 ? ATT_AVX512 : strcmp(name, "avx2") == 0 ? ATT_AVX2 : ATT_SCALAR;
    if (isa == ATT_AVX512 && hd % 16) isa = ATT_AVX2;
    if (isa == ATT_AVX2 && hd % 8) isa = ATT_SCALAR;
    return isa;
}

/* J with its geometry, pointers and scratch set (part: room for SPLIT_TOKENS tokens over the call's
 * chunks); in parallel once there is enough to pay for the hand-off */
static void attend(attn_job *J) {
    int parallel = (long)J->ntok * (J->pos + J->ntok) * J->n_heads >= 256;
    J->isa = attn_isa(J->hd);
    atomic_init(&J->next, 0);
    atomic_init(&J->folded, 0);
    if (J->ntok <= SPLIT_TOKENS) {
        J->tile = 0;
        if (parallel) ecpu_parallel(attention_chunks, J), ecpu_parallel(attention_folds, J);
        else attention_chunks(J, 0), attention_folds(J, 0);
        return;
    }
    /* tiles as large as leave every thread a few units */
    int tile = J->ntok * J->n_kv / (4 * ecpu_threads());
    J->tile = tile < 1 ? 1 : tile > TILE_TOKENS ? TILE_TOKENS : tile;
    if (parallel) ecpu_parallel(attention_tiles, J);
    else attention_tiles(J, 0);
}

/* a split call's partials: SPLIT_TOKENS tokens over `chunks` chunks */
static size_t attn_part(const ee_dims *d, int chunks) {
    return (size_t)SPLIT_TOKENS * d->n_heads * chunks * (d->head_dim + 2);
}

/* the partials, and scratch for every pool thread (the pool can grow after the model was made) */
static int attn_room(ee_model *m) {
    if (!m->part) m->part = alloc_f(attn_part(&m->d, kv_chunks(m->d.max_ctx)));
    if (m->attn_threads < ecpu_threads()) {
        free(m->attn_scratch);
        m->attn_scratch = alloc_f(ecpu_threads() * attn_scratch(m->d.n_heads / m->d.n_kv, m->d.head_dim));
        m->attn_threads = m->attn_scratch ? ecpu_threads() : 0;
    }
    return m->part && m->attn_scratch;
}

static void attention(ee_model *m, int layer, int pos, int ntok) {
    const ee_dims *d = &m->d;
    attn_job J = {.n_heads = d->n_heads, .n_kv = d->n_kv, .hd = d->head_dim, .max_ctx = d->max_ctx,
                  .window = d->window, .pos = pos, .ntok = ntok, .k = m->kcache + layer * k_layer(d),
                  .v = m->vcache + layer * v_layer(d), .q = m->q, .out = m->att, .part = m->part,
                  .scratch = m->attn_scratch};
    attend(&J);
}

/* One layer's attention outside a decode step (tests): k and v that layer's cache (see above), q and out
 * [ntok][n_heads][head_dim], for tokens at positions pos.. (only d's head counts, head_dim, max_ctx and
 * window are read). Returns 0, or -1 for a shape the kernels do not take or no memory. */
int ee_attention(const ee_dims *d, const float *k, const float *v, const float *q, int pos, int ntok, float *out) {
    if (!d || !k || !v || !q || !out || d->n_heads <= 0 || d->n_kv <= 0 || d->n_heads % d->n_kv || d->head_dim <= 0 ||
        ntok < 1 || pos < 0 || pos > d->max_ctx - ntok)
        return -1;
    attn_job J = {.n_heads = d->n_heads, .n_kv = d->n_kv, .hd = d->head_dim, .max_ctx = d->max_ctx,
                  .window = d->window, .pos = pos, .ntok = ntok, .k = k, .v = v, .q = q, .out = out,
                  .part = malloc(sizeof(float) * attn_part(d, (pos + ntok - 1) / EE_KV_CHUNK + 1)),
                  .scratch = alloc_f(ecpu_threads() * attn_scratch(d->n_heads / d->n_kv, d->head_dim))};
    int ok = J.part && J.scratch;
    if (ok) attend(&J);
    free(J.part);
    free(J.scratch);
    return ok ? 0 : -1;
}

/* ntok tokens at positions pos .. pos + ntok - 1, from their embeddings x0 [ntok][dim], at an effort (NULL:
 * full): writes logits [ntok][vocab] (all_logits) or only the last token's [vocab]. Each matrix's weights
 * are read once for all the tokens and every token gets the bits it would get alone. Returns 0, or -1
 * (nothing written) for a position past the cache, a batch too large, a missing buffer or no memory.
 * Token ids never reach C: the caller reads the embedding rows (and checks the ids) itself. */
int ee_forward(ee_model *m, const float *x0, int pos, int ntok, const ee_effort *effort, float *logits, int all_logits) {
    if (!m || !x0 || !logits || ntok < 1 || ntok > EE_MAX_BATCH) return -1;
    const ee_dims *d = &m->d;
    if (pos < 0 || pos > d->max_ctx - ntok) return -1;
    if (!grow(m, ntok) || !attn_room(m)) return -1;
    const ee_effort *e = effort && (effort->tau || effort->share) ? effort : NULL;
    int dim = d->dim, hd = d->head_dim, qdim = d->n_heads * hd, kvdim = d->n_kv * hd, ffn = d->ffn;
    int widest = dim > qdim ? dim : qdim;
    m->nonfinite = 0;
    m->read = m->total = 0.0;
    memcpy(m->x, x0, sizeof(float) * (size_t)ntok * dim);
    for (int li = 0; li < d->n_layers; li++) {
        ee_layer *l = &m->layers[li];
        int at = li * EE_N_PROJ;
        for (int j = 0; j < ntok; j++) rmsnorm(m->xn + (size_t)j * widest, m->x + (size_t)j * dim, l->attn_norm, dim, d->eps);
        const ee_planes *qkv[3] = {&l->proj[P_Q], &l->proj[P_K], &l->proj[P_V]};
        float *qkv_out[3] = {m->q, m->k, m->v};
        int qkv_stride[3] = {qdim, kvdim, kvdim}, qkv_index[3] = {at + P_Q, at + P_K, at + P_V};
        project(m, qkv, qkv_out, qkv_stride, qkv_index, 3, m->xn, widest, ntok, e);
        float *kl = m->kcache + li * k_layer(d), *vl = m->vcache + li * v_layer(d);
        for (int j = 0; j < ntok; j++) {
            float *q = m->q + (size_t)j * qdim, *k = m->k + (size_t)j * kvdim, *v = m->v + (size_t)j * kvdim;
            add_bias(q, l->bias[0], qdim);
            add_bias(k, l->bias[1], kvdim);
            add_bias(v, l->bias[2], kvdim);
            rope(q, d->n_heads, hd, pos + j, m->rope_inv_freq);
            rope(k, d->n_kv, hd, pos + j, m->rope_inv_freq);
            int at = pos + j;
            for (int h = 0; h < d->n_kv; h++) {
                float *kb = kl + ((size_t)h * kv_blocks(d->max_ctx) + at / EE_KV_BLOCK) * hd * EE_KV_BLOCK;
                for (int i = 0; i < hd; i++) kb[i * EE_KV_BLOCK + at % EE_KV_BLOCK] = k[h * hd + i];
                memcpy(vl + ((size_t)h * d->max_ctx + at) * hd, v + h * hd, sizeof(float) * hd);
            }
        }
        attention(m, li, pos, ntok);
        const ee_planes *o[1] = {&l->proj[P_O]};
        float *o_out[1] = {m->proj};
        int o_stride[1] = {dim}, o_index[1] = {at + P_O};
        project(m, o, o_out, o_stride, o_index, 1, m->att, qdim, ntok, e);
        for (size_t i = 0; i < (size_t)ntok * dim; i++) m->x[i] += m->proj[i];
        for (int j = 0; j < ntok; j++) rmsnorm(m->xn + (size_t)j * widest, m->x + (size_t)j * dim, l->ffn_norm, dim, d->eps);
        const ee_planes *gu[2] = {&l->proj[P_GATE], &l->proj[P_UP]};
        float *gu_out[2] = {m->gate, m->up};
        int gu_stride[2] = {ffn, ffn}, gu_index[2] = {at + P_GATE, at + P_UP};
        project(m, gu, gu_out, gu_stride, gu_index, 2, m->xn, widest, ntok, e);
        for (size_t i = 0; i < (size_t)ntok * ffn; i++) {
            float g = m->gate[i];
            m->gate[i] = g / (1.0f + expf(-g)) * m->up[i];
        }
        const ee_planes *dn[1] = {&l->proj[P_DOWN]};
        float *dn_out[1] = {m->proj};
        int dn_stride[1] = {dim}, dn_index[1] = {at + P_DOWN};
        project(m, dn, dn_out, dn_stride, dn_index, 1, m->gate, ffn, ntok, e);
        for (size_t i = 0; i < (size_t)ntok * dim; i++) m->x[i] += m->proj[i];
    }
    int first = all_logits ? 0 : ntok - 1, count = ntok - first;
    for (int j = first; j < ntok; j++)
        rmsnorm(m->xn + (size_t)(j - first) * widest, m->x + (size_t)j * dim, m->final_norm, dim, d->eps);
    const ee_planes *head[1] = {&m->head};
    float *head_out[1] = {logits};
    int head_stride[1] = {d->vocab}, head_index[1] = {d->n_layers * EE_N_PROJ};
    project(m, head, head_out, head_stride, head_index, 1, m->xn, widest, count, e);
    if (m->nonfinite) /* the activations went NaN or inf somewhere: the logits say so */
        for (size_t i = 0; i < (size_t)count * d->vocab; i++) logits[i] = NAN;
    return 0;
}

/* One token (a decode step): ee_forward of one. */
int ee_step(ee_model *m, const float *x0, int pos, const ee_effort *effort, float *logits) {
    return ee_forward(m, x0, pos, 1, effort, logits, 1);
}

/* One projection outside a decode step (bench, eval, tests): y = the matrix at `tau` (or `share`) times x.
 * Returns the plane rows it read, or -1 (nothing written) for a matrix this model's buffers cannot run. */
long ee_project(ee_model *m, const ee_planes *p, const float *x, float *y, float tau, float share, int whole_rows) {
    if (!m || !p || !x || !y || !valid_planes(p, p->out, p->in) || p->in > m->widest_in) return -1;
    float t[1] = {tau}, s[1] = {share};
    ee_effort e = {share >= 0.0f ? NULL : t, share >= 0.0f ? s : NULL, whole_rows};
    const ee_planes *ps[1] = {p};
    float *ys[1] = {y};
    int stride[1] = {p->out}, index[1] = {0};
    ee_stats *stats = m->stats;
    float *capture = m->capture;
    m->stats = NULL;
    m->capture = NULL;
    m->read = m->total = 0.0;
    project(m, ps, ys, stride, index, 1, x, p->in, 1, tau < 0.0f && share < 0.0f ? NULL : &e);
    m->stats = stats;
    m->capture = capture;
    return m->work[0]->rows_read;
}
