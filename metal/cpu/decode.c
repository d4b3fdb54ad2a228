/* decode.c — one step of a Llama-family decoder on the CPU, every projection in the planes layout.
 * Run by: engine.runtime.cpu_runtime.CPURuntime (built by engine.runtime.native, called through ctypes).
 *
 * Python owns every buffer (the layout is memory-mapped from the converted file, the KV cache is numpy)
 * and calls ee_step() per token with the token's embedding:
 *   x -> n_layers x (attention + SwiGLU MLP) -> norm -> head -> logits.
 * Each projection (and the head) reads its rows at the levels its threshold picks (planes.h); with no
 * thresholds every row is read at its top level: the dense model, through the same kernels.
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
} ee_effort;

/* Calibration statistics (optional): per matrix and plane, a histogram of log2 of the row scores
 * x^2 * gain (EE_HIST_BINS bins of 1/EE_HIST_PER_OCTAVE octave from 2^EE_HIST_LOW), the output error
 * energy left unread, and the output energy. */
#define EE_HIST_BINS 1024
#define EE_HIST_PER_OCTAVE 8
#define EE_HIST_LOW (-96)
typedef struct {
    uint32_t *hist;   /* [n_matrices][2][EE_HIST_BINS] */
    double *unread;   /* [n_matrices] */
    double *energy;   /* [n_matrices] */
    double *residual; /* [n_layers + 1]: energy of the residual stream entering each layer (and the final norm) */
} ee_stats;

#define MAX_GROUP 3 /* q/k/v share their input, as do gate/up */

typedef struct {
    ee_dims d;
    ee_layer *layers;
    ee_planes head;
    const float *final_norm, *rope_inv_freq;
    float *kcache, *vcache; /* [layers][n_kv][max_ctx][head_dim] */
    float *x, *xn, *q, *k, *v, *att, *proj, *gate, *up, *scores, *scratch;
    int8_t *xq;
    float *dx;
    ee_work *work[MAX_GROUP];
    uint8_t *levels[MAX_GROUP]; /* each row's level, kept for the calibration statistics */
    ee_stats *stats;
    float *capture;          /* optional: each matrix's input x, at capture + capture_at[index] */
    const int64_t *capture_at;
    double read, total; /* plane bytes read / at the top level, last step */
    int nonfinite;      /* this step met NaN or inf activations: its logits are NaN */
    /* batches (ee_forward), grown on first use: per token activations, work lists, quantized inputs */
    int batch_cap;
    float *bx, *bxn, *bq, *bk, *bv, *batt, *bproj, *bgate, *bup, *bscores;
    int8_t *bxq;
    float *bdx;
    ee_work **bwork; /* [MAX_GROUP][batch_cap] */
    int widest_in;      /* the scratch buffers' size: no matrix with more inputs may run */
} ee_model;

static float *alloc_f(size_t n) { return (float *)calloc(n ? n : 1, sizeof(float)); }

static void free_batch(ee_model *m) {
    free(m->bx); free(m->bxn); free(m->bq); free(m->bk); free(m->bv); free(m->batt); free(m->bproj);
    free(m->bgate); free(m->bup); free(m->bscores); free(m->bxq); free(m->bdx);
    if (m->bwork)
        for (int i = 0; i < MAX_GROUP * m->batch_cap; i++) ee_work_free(m->bwork[i]);
    free(m->bwork);
    m->bx = m->bxn = m->bq = m->bk = m->bv = m->batt = m->bproj = m->bgate = m->bup = m->bscores = m->bdx = NULL;
    m->bxq = NULL;
    m->bwork = NULL;
    m->batch_cap = 0;
}

void ee_model_free(ee_model *m) {
    if (!m) return;
    free_batch(m);
    free(m->layers);
    free(m->x); free(m->xn); free(m->q); free(m->k); free(m->v);
    free(m->att); free(m->proj); free(m->gate); free(m->up); free(m->scores); free(m->scratch);
    free(m->xq); free(m->dx);
    for (int g = 0; g < MAX_GROUP; g++) {
        ee_work_free(m->work[g]);
        free(m->levels[g]);
    }
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
    int widest = d->dim > qdim ? d->dim : qdim, widest_in = d->ffn > widest ? d->ffn : widest;
    m->widest_in = widest_in;
    m->x = alloc_f(d->dim);
    m->xn = alloc_f(widest);
    m->q = alloc_f(qdim);
    m->k = alloc_f(kvdim);
    m->v = alloc_f(kvdim);
    m->att = alloc_f(qdim);
    m->proj = alloc_f(widest);
    m->gate = alloc_f(d->ffn);
    m->up = alloc_f(d->ffn);
    m->scores = alloc_f((size_t)d->n_heads * d->max_ctx);
    m->scratch = alloc_f(2 * (size_t)widest_in);
    m->xq = (int8_t *)calloc(2 * (size_t)widest_in, 1);
    m->dx = alloc_f((size_t)widest_in / EE_BLOCK);
    int ok = m->layers && m->x && m->xn && m->q && m->k && m->v && m->att && m->proj && m->gate && m->up &&
             m->scores && m->scratch && m->xq && m->dx;
    for (int g = 0; g < MAX_GROUP; g++) {
        ok = ok && (m->work[g] = ee_work_new(widest_in)) != NULL;
        ok = ok && (m->levels[g] = (uint8_t *)malloc((size_t)widest_in)) != NULL;
    }
    if (!ok) {
        ee_model_free(m);
        return NULL;
    }
    ecpu_init(threads);
    return m;
}

void ee_set_stats(ee_model *m, ee_stats *stats) { m->stats = stats; }

/* Keep each matrix's input of the following steps (bench and eval time and compare single matrices
 * on real activations); NULL stops it. */
void ee_set_capture(ee_model *m, float *capture, const int64_t *capture_at) {
    m->capture = capture;
    m->capture_at = capture ? capture_at : NULL;
}

/* plane bytes the last step read, and what every row at its top level would have read */
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

/* ------------------------------------------------------------------ one projection group */
static int top_level(const ee_planes *p) { return p->kind == EE_Q8 && p->plane[1] ? 2 : 1; }

/* Calibration: where this token's row scores fall, what was left unread, and the output energy. */
static void record(ee_stats *st, int index, const ee_planes *p, const float *x, const float *y,
                   const uint8_t *levels) {
    uint32_t *h = st->hist + (size_t)index * 2 * EE_HIST_BINS;
    double unread = 0.0, energy = 0.0;
    int planes = top_level(p);
    for (int i = 0; i < p->in; i++) {
        float s = x[i] * x[i];
        for (int q = 0; q < planes; q++) {
            float v = s * p->gain[q][i];
            int bin = v > 0.0f ? (int)floorf((log2f(v) - EE_HIST_LOW) * EE_HIST_PER_OCTAVE) : 0;
            bin = bin < 0 ? 0 : bin >= EE_HIST_BINS ? EE_HIST_BINS - 1 : bin;
            h[q * EE_HIST_BINS + bin]++;
            if (levels[i] <= q) unread += v;
        }
    }
    for (int o = 0; o < p->out; o++) energy += (double)y[o] * y[o];
    st->unread[index] += unread;
    st->energy[index] += energy;
}

/* Up to MAX_GROUP matrices of the same input x: x quantized once, each matrix's rows selected at its
 * threshold, then one parallel product over all of them. */
static void project_group(ee_model *m, const ee_planes *const *ps, float *const *ys, const int *index, int count,
                          const float *x, const ee_effort *e) {
    m->nonfinite |= ee_quantize_x(x, ps[0]->in, m->xq, m->dx);
    ee_mv mv[MAX_GROUP];
    int whole = e && e->whole_rows;
    for (int j = 0; j < count; j++) {
        const ee_planes *p = ps[j];
        if (m->capture) memcpy(m->capture + m->capture_at[index[j]], x, sizeof(float) * (size_t)p->in);
        int top = top_level(p) == 1;
        float tau = -1.0f; /* every row at its top level */
        if (e && e->tau) tau = e->tau[index[j]];
        else if (e && e->share) {
            long rows = (long)p->in * top_level(p), budget = lrintf(e->share[index[j]] * (float)rows);
            tau = budget >= rows ? -1.0f : ee_budget_tau(p, x, budget, top, whole, m->scratch);
        }
        ee_select(p, x, m->xq, m->dx, tau, top, whole, m->work[j], m->stats ? m->levels[j] : NULL);
        m->read += (double)m->work[j]->rows_read * (p->out / 2);
        m->total += (double)p->in * top_level(p) * (p->out / 2);
        mv[j] = (ee_mv){p, m->work[j], ys[j]};
    }
    ee_matvec_multi(count, mv);
    if (m->stats)
        for (int j = 0; j < count; j++) record(m->stats, index[j], ps[j], x, ys[j], m->levels[j]);
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
    int layer, pos;
    atomic_int next;
} attention_job;

static void attention_worker(void *arg, int tid) {
    (void)tid;
    attention_job *J = (attention_job *)arg;
    ee_model *m = J->m;
    const ee_dims *d = &m->d;
    int hd = d->head_dim, group = d->n_heads / d->n_kv;
    int first = d->window > 0 && J->pos + 1 > d->window ? J->pos + 1 - d->window : 0;
    size_t layer_off = (size_t)J->layer * d->n_kv * d->max_ctx * hd;
    for (;;) {
        int h = atomic_fetch_add(&J->next, 1);
        if (h >= d->n_heads) break;
        size_t at = layer_off + ((size_t)(h / group) * d->max_ctx + first) * hd;
        attend(m->q + h * hd, m->kcache + at, m->vcache + at, J->pos + 1 - first, hd, 1.0f / sqrtf((float)hd),
               m->scores + (size_t)h * d->max_ctx, m->att + h * hd);
    }
}

/* heads in parallel once the context is long enough to pay for the hand-off */
static void attention(ee_model *m, int layer, int pos) {
    attention_job J = {m, layer, pos, 0};
    atomic_init(&J.next, 0);
    if (pos >= 32) ecpu_parallel(attention_worker, &J);
    else attention_worker(&J, 0);
}

static void add_bias(float *y, const float *b, int n) {
    if (b)
        for (int i = 0; i < n; i++) y[i] += b[i];
}

/* One token at position `pos`, from its embedding x0 [dim]: writes logits [vocab]. Returns 0, or -1 when
 * `pos` is outside the KV cache or a buffer is missing (nothing is written then). Token ids never reach
 * C: the caller reads the embedding row (and checks the id) itself. */
int ee_step(ee_model *m, const float *x0, int pos, const ee_effort *effort, float *logits) {
    if (!m || !x0 || !logits) return -1;
    const ee_dims *d = &m->d;
    if (pos < 0 || pos >= d->max_ctx) return -1;
    const ee_effort *e = effort && (effort->tau || effort->share) ? effort : NULL;
    int dim = d->dim, hd = d->head_dim, qdim = d->n_heads * hd, kvdim = d->n_kv * hd;
    m->read = m->total = 0.0;
    m->nonfinite = 0;
    memcpy(m->x, x0, sizeof(float) * (size_t)dim);
    for (int li = 0; li < d->n_layers; li++) {
        ee_layer *l = &m->layers[li];
        int at = li * EE_N_PROJ;
        if (m->stats)
            for (int i = 0; i < dim; i++) m->stats->residual[li] += (double)m->x[i] * m->x[i];
        rmsnorm(m->xn, m->x, l->attn_norm, dim, d->eps);
        const ee_planes *qkv[3] = {&l->proj[P_Q], &l->proj[P_K], &l->proj[P_V]};
        float *qkv_out[3] = {m->q, m->k, m->v};
        int qkv_index[3] = {at + P_Q, at + P_K, at + P_V};
        project_group(m, qkv, qkv_out, qkv_index, 3, m->xn, e);
        add_bias(m->q, l->bias[0], qdim);
        add_bias(m->k, l->bias[1], kvdim);
        add_bias(m->v, l->bias[2], kvdim);
        rope(m->q, d->n_heads, hd, pos, m->rope_inv_freq);
        rope(m->k, d->n_kv, hd, pos, m->rope_inv_freq);
        size_t layer_off = (size_t)li * d->n_kv * d->max_ctx * hd;
        for (int h = 0; h < d->n_kv; h++) {
            size_t to = layer_off + ((size_t)h * d->max_ctx + pos) * hd;
            memcpy(m->kcache + to, m->k + h * hd, sizeof(float) * hd);
            memcpy(m->vcache + to, m->v + h * hd, sizeof(float) * hd);
        }
        attention(m, li, pos);
        const ee_planes *o[1] = {&l->proj[P_O]};
        float *o_out[1] = {m->proj};
        int o_index[1] = {at + P_O};
        project_group(m, o, o_out, o_index, 1, m->att, e);
        for (int i = 0; i < dim; i++) m->x[i] += m->proj[i];

        rmsnorm(m->xn, m->x, l->ffn_norm, dim, d->eps);
        const ee_planes *gu[2] = {&l->proj[P_GATE], &l->proj[P_UP]};
        float *gu_out[2] = {m->gate, m->up};
        int gu_index[2] = {at + P_GATE, at + P_UP};
        project_group(m, gu, gu_out, gu_index, 2, m->xn, e);
        for (int i = 0; i < d->ffn; i++) {
            float g = m->gate[i];
            m->gate[i] = g / (1.0f + expf(-g)) * m->up[i];
        }
        const ee_planes *dn[1] = {&l->proj[P_DOWN]};
        float *dn_out[1] = {m->proj};
        int dn_index[1] = {at + P_DOWN};
        project_group(m, dn, dn_out, dn_index, 1, m->gate, e);
        for (int i = 0; i < dim; i++) m->x[i] += m->proj[i];
    }
    if (m->stats)
        for (int i = 0; i < dim; i++) m->stats->residual[d->n_layers] += (double)m->x[i] * m->x[i];
    rmsnorm(m->xn, m->x, m->final_norm, dim, d->eps);
    const ee_planes *head[1] = {&m->head};
    float *head_out[1] = {logits};
    int head_index[1] = {d->n_layers * EE_N_PROJ};
    project_group(m, head, head_out, head_index, 1, m->xn, e);
    if (m->nonfinite) /* the activations went NaN or inf somewhere: the logits say so */
        for (int i = 0; i < d->vocab; i++) logits[i] = NAN;
    return 0;
}

/* One projection outside a decode step (bench, eval, tests): y = the matrix at `tau` (or `share`) times x.
 * Returns the plane rows it read, or -1 (nothing written) for a matrix this model's buffers cannot run. */
long ee_project(ee_model *m, const ee_planes *p, const float *x, float *y, float tau, float share, int whole_rows) {
    if (!m || !p || !x || !y || !valid_planes(p, p->out, p->in) || p->in > m->widest_in) return -1;
    float t[1] = {tau}, s[1] = {share};
    ee_effort e = {share >= 0.0f ? NULL : t, share >= 0.0f ? s : NULL, whole_rows};
    const ee_planes *ps[1] = {p};
    float *ys[1] = {y};
    int index[1] = {0};
    ee_stats *keep = m->stats;
    float *capture = m->capture;
    m->stats = NULL;
    m->capture = NULL;
    m->read = m->total = 0.0;
    project_group(m, ps, ys, index, 1, x, &e);
    m->stats = keep;
    m->capture = capture;
    return m->work[0]->rows_read;
}

/* ------------------------------------------------------------------ batches */
static int grow_batch(ee_model *m, int ntok) {
    if (ntok <= m->batch_cap) return 1;
    free_batch(m);
    const ee_dims *d = &m->d;
    size_t n = (size_t)ntok, qdim = (size_t)d->n_heads * d->head_dim, kvdim = (size_t)d->n_kv * d->head_dim;
    size_t widest = (size_t)(d->dim > (int)qdim ? d->dim : (int)qdim);
    m->bx = alloc_f(n * d->dim);
    m->bxn = alloc_f(n * widest);
    m->bq = alloc_f(n * qdim);
    m->bk = alloc_f(n * kvdim);
    m->bv = alloc_f(n * kvdim);
    m->batt = alloc_f(n * qdim);
    m->bproj = alloc_f(n * widest);
    m->bgate = alloc_f(n * d->ffn);
    m->bup = alloc_f(n * d->ffn);
    m->bscores = alloc_f((size_t)ecpu_threads() * d->max_ctx);
    m->bxq = (int8_t *)calloc(2 * n * m->widest_in, 1);
    m->bdx = alloc_f(n * m->widest_in / EE_BLOCK);
    m->bwork = (ee_work **)calloc((size_t)MAX_GROUP * n, sizeof(ee_work *));
    int ok = m->bx && m->bxn && m->bq && m->bk && m->bv && m->batt && m->bproj && m->bgate && m->bup && m->bscores &&
             m->bxq && m->bdx && m->bwork;
    for (size_t i = 0; ok && i < MAX_GROUP * n; i++) ok = (m->bwork[i] = ee_work_new(m->widest_in)) != NULL;
    m->batch_cap = ntok;
    if (!ok) free_batch(m);
    return ok;
}

/* Up to MAX_GROUP matrices of the same inputs for ntok tokens at full effort: inputs xs[j * stride],
 * outputs ys[g][j * ystride[g]]. */
static void project_batch(ee_model *m, const ee_planes *const *ps, float *const *ys, const int *ystride, int count,
                          const float *xs, int stride, int ntok) {
    int in = ps[0]->in;
    ee_mv mv[MAX_GROUP * EE_MAX_BATCH];
    for (int j = 0; j < ntok; j++) {
        int8_t *xq = m->bxq + (size_t)j * 2 * m->widest_in;
        float *dx = m->bdx + (size_t)j * (m->widest_in / EE_BLOCK);
        const float *x = xs + (size_t)j * stride;
        m->nonfinite |= ee_quantize_x(x, in, xq, dx);
        for (int g = 0; g < count; g++) {
            ee_work *w = m->bwork[(size_t)g * m->batch_cap + j];
            ee_select(ps[g], x, xq, dx, -1.0f, top_level(ps[g]) == 1, 0, w, NULL);
            mv[(size_t)g * ntok + j] = (ee_mv){ps[g], w, ys[g] + (size_t)j * ystride[g]};
        }
    }
    ee_matmul_multi(count, ntok, mv);
}

typedef struct {
    ee_model *m;
    int layer, pos, ntok;
    atomic_int next;
} batch_attention_job;

/* (token, head) pairs in parallel: token j at position pos + j attends to every cached position up to
 * its own (the batch's keys and values are in the cache already) */
static void batch_attention_worker(void *arg, int tid) {
    batch_attention_job *J = (batch_attention_job *)arg;
    ee_model *m = J->m;
    const ee_dims *d = &m->d;
    int hd = d->head_dim, group = d->n_heads / d->n_kv, qdim = d->n_heads * hd;
    size_t layer_off = (size_t)J->layer * d->n_kv * d->max_ctx * hd;
    float *scores = m->bscores + (size_t)tid * d->max_ctx;
    for (;;) {
        int u = atomic_fetch_add(&J->next, 1);
        if (u >= J->ntok * d->n_heads) break;
        int j = u / d->n_heads, h = u % d->n_heads, at = J->pos + j;
        int first = d->window > 0 && at + 1 > d->window ? at + 1 - d->window : 0;
        size_t kv = layer_off + ((size_t)(h / group) * d->max_ctx + first) * hd;
        attend(m->bq + (size_t)j * qdim + h * hd, m->kcache + kv, m->vcache + kv, at + 1 - first, hd,
               1.0f / sqrtf((float)hd), scores, m->batt + (size_t)j * qdim + h * hd);
    }
}

/* ntok tokens at positions pos .. pos + ntok - 1, from their embeddings x0 [ntok][dim], at full effort:
 * the prompt, or drafted tokens to verify. Each matrix's weights are read once for all of them, and every
 * token gets the logits a decode step would give it, bit for bit. Writes logits [ntok][vocab] (all_logits)
 * or only the last token's [vocab]. Returns 0, or -1 (nothing written) for a position past the cache, a
 * batch too large, a missing buffer or no memory. */
int ee_forward(ee_model *m, const float *x0, int pos, int ntok, float *logits, int all_logits) {
    if (!m || !x0 || !logits || ntok < 1 || ntok > EE_MAX_BATCH) return -1;
    const ee_dims *d = &m->d;
    if (pos < 0 || pos > d->max_ctx - ntok) return -1;
    if (!grow_batch(m, ntok)) return -1;
    int dim = d->dim, hd = d->head_dim, qdim = d->n_heads * hd, kvdim = d->n_kv * hd, ffn = d->ffn;
    int widest = dim > qdim ? dim : qdim;
    m->nonfinite = 0;
    m->read = m->total = 0.0;
    memcpy(m->bx, x0, sizeof(float) * (size_t)ntok * dim);
    for (int li = 0; li < d->n_layers; li++) {
        ee_layer *l = &m->layers[li];
        for (int j = 0; j < ntok; j++) rmsnorm(m->bxn + (size_t)j * widest, m->bx + (size_t)j * dim, l->attn_norm, dim, d->eps);
        const ee_planes *qkv[3] = {&l->proj[P_Q], &l->proj[P_K], &l->proj[P_V]};
        float *qkv_out[3] = {m->bq, m->bk, m->bv};
        int qkv_stride[3] = {qdim, kvdim, kvdim};
        project_batch(m, qkv, qkv_out, qkv_stride, 3, m->bxn, widest, ntok);
        size_t layer_off = (size_t)li * d->n_kv * d->max_ctx * hd;
        for (int j = 0; j < ntok; j++) {
            float *q = m->bq + (size_t)j * qdim, *k = m->bk + (size_t)j * kvdim, *v = m->bv + (size_t)j * kvdim;
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
        batch_attention_job A = {m, li, pos, ntok, 0};
        atomic_init(&A.next, 0);
        ecpu_parallel(batch_attention_worker, &A);
        const ee_planes *o[1] = {&l->proj[P_O]};
        float *o_out[1] = {m->bproj};
        int o_stride[1] = {dim};
        project_batch(m, o, o_out, o_stride, 1, m->batt, qdim, ntok);
        for (size_t i = 0; i < (size_t)ntok * dim; i++) m->bx[i] += m->bproj[i];
        for (int j = 0; j < ntok; j++) rmsnorm(m->bxn + (size_t)j * widest, m->bx + (size_t)j * dim, l->ffn_norm, dim, d->eps);
        const ee_planes *gu[2] = {&l->proj[P_GATE], &l->proj[P_UP]};
        float *gu_out[2] = {m->bgate, m->bup};
        int gu_stride[2] = {ffn, ffn};
        project_batch(m, gu, gu_out, gu_stride, 2, m->bxn, widest, ntok);
        for (size_t i = 0; i < (size_t)ntok * ffn; i++) {
            float g = m->bgate[i];
            m->bgate[i] = g / (1.0f + expf(-g)) * m->bup[i];
        }
        const ee_planes *dn[1] = {&l->proj[P_DOWN]};
        float *dn_out[1] = {m->bproj};
        int dn_stride[1] = {dim};
        project_batch(m, dn, dn_out, dn_stride, 1, m->bgate, ffn, ntok);
        for (size_t i = 0; i < (size_t)ntok * dim; i++) m->bx[i] += m->bproj[i];
    }
    int first = all_logits ? 0 : ntok - 1, count = ntok - first;
    for (int j = first; j < ntok; j++)
        rmsnorm(m->bxn + (size_t)(j - first) * widest, m->bx + (size_t)j * dim, m->final_norm, dim, d->eps);
    const ee_planes *head[1] = {&m->head};
    float *head_out[1] = {logits};
    int head_stride[1] = {d->vocab};
    project_batch(m, head, head_out, head_stride, 1, m->bxn, widest, count);
    if (m->nonfinite)
        for (size_t i = 0; i < (size_t)count * d->vocab; i++) logits[i] = NAN;
    return 0;
}
