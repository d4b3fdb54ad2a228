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
    float *kcache, *vcache; /* [layers][n_kv][max_ctx][head_dim] */
    int widest_in;          /* the most inputs of any matrix: the work lists' size */
    float *scratch;         /* 2 * widest_in: the per-token budget's order statistic */
    /* per token of a batch, grown on demand: activations, quantized inputs, work lists */
    int cap;
    float *x, *xn, *q, *k, *v, *att, *proj, *gate, *up, *scores;
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
    free(m->gate); free(m->up); free(m->scores); free(m->xq); free(m->dx);
    if (m->work)
        for (int i = 0; i < MAX_GROUP * m->cap; i++) ee_work_free(m->work[i]);
    free(m->work);
    m->x = m->xn = m->q = m->k = m->v = m->att = m->proj = m->gate = m->up = m->scores = m->dx = NULL;
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
    m->scores = alloc_f((size_t)ecpu_threads() * d->max_ctx);
    m->xq = (int8_t *)calloc(2 * n * m->widest_in, 1);
    m->dx = alloc_f(n * m->widest_in / EE_BLOCK);
    m->work = (ee_work **)calloc((size_t)MAX_GROUP * n, sizeof(ee_work *));
    int ok = m->x && m->xn && m->q && m->k && m->v && m->att && m->proj && m->gate && m->up && m->scores && m->xq &&
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

/* ------------------------------------------------------------------ attention */
static float exp_shifted(float *scores, int n, float top) {
    double total = 0.0;
    for (int t = 0; t < n; t++) {
        scores[t] = expf(scores[t] - top);
        total += scores[t];
    }
    return (float)(1.0 / total);
}

/* out[hd] = softmax(scale * K q) V over n cached positions (rows of hd floats), max subtracted first */
static void attend_scalar(const float *q, const float *K, const float *V, int n, int hd, float scale, float *scores,
                          float *out) {
    float top = -INFINITY;
    for (int t = 0; t < n; t++) {
        const float *k = K + (size_t)t * hd;
        float s = 0.0f;
        for (int j = 0; j < hd; j++) s += q[j] * k[j];
        scores[t] = s * scale;
        if (scores[t] > top) top = scores[t];
    }
    float inv = exp_shifted(scores, n, top);
    for (int j = 0; j < hd; j++) out[j] = 0.0f;
    for (int t = 0; t < n; t++) {
        const float *v = V + (size_t)t * hd;
        float p = scores[t] * inv;
        for (int j = 0; j < hd; j++) out[j] += p * v[j];
    }
}

#if EE_X86
__attribute__((target("avx2,fma"))) static void attend_avx2(const float *q, const float *K, const float *V, int n,
                                                            int hd, float scale, float *scores, float *out) {
    float top = -INFINITY;
    for (int t = 0; t < n; t++) {
        const float *k = K + (size_t)t * hd;
        __m256 a = _mm256_setzero_ps();
        for (int j = 0; j < hd; j += 8) a = _mm256_fmadd_ps(_mm256_loadu_ps(q + j), _mm256_loadu_ps(k + j), a);
        __m128 s4 = _mm_add_ps(_mm256_castps256_ps128(a), _mm256_extractf128_ps(a, 1));
        s4 = _mm_add_ps(s4, _mm_movehl_ps(s4, s4));
        s4 = _mm_add_ss(s4, _mm_movehdup_ps(s4));
        float s = _mm_cvtss_f32(s4) * scale;
        scores[t] = s;
        if (s > top) top = s;
    }
    float inv = exp_shifted(scores, n, top);
    __m256 acc[32]; /* hd <= 256 */
    int nv = hd / 8;
    for (int r = 0; r < nv; r++) acc[r] = _mm256_setzero_ps();
    for (int t = 0; t < n; t++) {
        const float *v = V + (size_t)t * hd;
        __m256 p = _mm256_set1_ps(scores[t] * inv);
        for (int r = 0; r < nv; r++) acc[r] = _mm256_fmadd_ps(p, _mm256_loadu_ps(v + 8 * r), acc[r]);
    }
    for (int r = 0; r < nv; r++) _mm256_storeu_ps(out + 8 * r, acc[r]);
}
#endif

static void attend(const float *q, const float *K, const float *V, int n, int hd, float scale, float *scores,
                   float *out) {
#if EE_X86
    static int avx2 = -1;
    if (avx2 < 0) {
        __builtin_cpu_init();
        avx2 = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && strcmp(ee_isa(), "scalar") != 0;
    }
    if (avx2 && hd % 8 == 0 && hd <= 256) {
        attend_avx2(q, K, V, n, hd, scale, scores, out);
        return;
    }
#endif
    attend_scalar(q, K, V, n, hd, scale, scores, out);
}

typedef struct {
    ee_model *m;
    int layer, pos, ntok;
    atomic_int next;
} attention_job;

/* (token, head) pairs, claimed in turn: token j at position pos + j attends to every cached position up
 * to its own (the batch's keys and values are in the cache already) */
static void attention_worker(void *arg, int tid) {
    attention_job *J = (attention_job *)arg;
    ee_model *m = J->m;
    const ee_dims *d = &m->d;
    int hd = d->head_dim, group = d->n_heads / d->n_kv, qdim = d->n_heads * hd;
    size_t layer_off = (size_t)J->layer * d->n_kv * d->max_ctx * hd;
    float *scores = m->scores + (size_t)tid * d->max_ctx;
    for (;;) {
        int u = atomic_fetch_add(&J->next, 1);
        if (u >= J->ntok * d->n_heads) break;
        int j = u / d->n_heads, h = u % d->n_heads, at = J->pos + j;
        int first = d->window > 0 && at + 1 > d->window ? at + 1 - d->window : 0;
        size_t kv = layer_off + ((size_t)(h / group) * d->max_ctx + first) * hd;
        attend(m->q + (size_t)j * qdim + h * hd, m->kcache + kv, m->vcache + kv, at + 1 - first, hd,
               1.0f / sqrtf((float)hd), scores, m->att + (size_t)j * qdim + h * hd);
    }
}

/* in parallel once there is enough to pay for the hand-off */
static void attention(ee_model *m, int layer, int pos, int ntok) {
    attention_job J = {m, layer, pos, ntok, 0};
    atomic_init(&J.next, 0);
    if ((long)ntok * (pos + ntok) >= 32) ecpu_parallel(attention_worker, &J);
    else attention_worker(&J, 0);
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
    if (!grow(m, ntok)) return -1;
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
        size_t layer_off = (size_t)li * d->n_kv * d->max_ctx * hd;
        for (int j = 0; j < ntok; j++) {
            float *q = m->q + (size_t)j * qdim, *k = m->k + (size_t)j * kvdim, *v = m->v + (size_t)j * kvdim;
            add_bias(q, l->bias[0], qdim);
            add_bias(k, l->bias[1], kvdim);
            add_bias(v, l->bias[2], kvdim);
            rope(q, d->n_heads, hd, pos + j, m->rope_inv_freq);
            rope(k, d->n_kv, hd, pos + j, m->rope_inv_freq);
            for (int h = 0; h < d->n_kv; h++) {
                size_t to = layer_off + ((size_t)h * d->max_ctx + pos + j) * hd;
                memcpy(m->kcache + to, k + h * hd, sizeof(float) * hd);
                memcpy(m->vcache + to, v + h * hd, sizeof(float) * hd);
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
