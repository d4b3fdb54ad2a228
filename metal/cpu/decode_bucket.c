/* One decode step of a Llama-family decoder on the CPU, in plain C.
 * Run by: engine.runtime.cpu_runtime.CPURuntime (built by engine.runtime.native, called through ctypes).
 *
 * Python builds the weight pointers once (numpy owns the memory) and calls
 * ee_step() per token: embedding -> 30x (attention + SwiGLU MLP) -> norm -> head.
 * Every projection is either dense (fp16 weights, fp32 math) or a bucketMul
 * under the effort the caller asks for; see effort_cpu.h for the kernels.
 */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <stdatomic.h>
#include <string.h>

#include "effort_cpu.h"

enum { P_Q, P_K, P_V, P_O, P_GATE, P_UP, P_DOWN, N_PROJ };

typedef struct {
    int dim, ffn, n_layers, n_heads, n_kv, head_dim, vocab, max_ctx, window;
    float eps;
} ee_dims;

#define MAX_GROUP 3 /* q/k/v share their input, as do gate/up */

/* One projection in the bucketMul layout (see effort_cpu.h and engine/bucket.py). */
typedef struct {
    const uint16_t *blk;  /* values, kernel layout */
    const float *stats;   /* [16][in]: mean |w| of each bucket-list row; NULL: dense only */
    const float *probes;  /* [n_probes][in]: sampled |w| per input, aligned with x */
    int n_probes, out, in;
    int max_rank;         /* ranks loaded (16, or fewer with --load-ranks): k is clipped to it */
} ee_bucket;

typedef struct {
    const ee_bucket *bucket[N_PROJ]; /* every projection, in the kernel layout (dense = all ranks) */
    const float *bias[3];          /* q, k, v biases or NULL */
    const float *attn_norm, *ffn_norm;
} ee_layer;

typedef struct {
    ee_dims d;
    ee_layer *layers;
    const uint16_t *embed; /* fp16 [vocab, dim] */
    const uint16_t *head;  /* fp16 [vocab, dim] (the embedding when tied) */
    const int8_t *head_qs;      /* or the head in the file's own Q8_0 (exact): int8 [vocab, dim], */
    const float *head_scales;   /* one scale per 32 weights; NULL: use `head` */
    int embed_from_head;        /* tied embedding read from the Q8_0 head (then `embed` may be NULL) */
    const float *final_norm;
    const float *rope_inv_freq; /* [head_dim / 2] */
    float *kcache, *vcache;     /* [layers][n_kv][max_ctx][head_dim] */
    float *x, *xn, *q, *k, *v, *att, *proj, *gate, *up, *scores;
    uint8_t *ranks;  /* k[i] of the last projection run through ee_project */
    float *group_products[MAX_GROUP]; /* per matrix of a group sharing x: selection scratch */
    uint8_t *group_ranks[MAX_GROUP];  /* and its k */
    uint8_t *all_ranks; /* k[i] = 16 everywhere: the dense product through the same kernel */
    int strategy;    /* EE_BUCKET or EE_ACTIVATION */
    int widest_in;   /* the widest projection input the scratch buffers hold */
} ee_model;

/* What ee_step and ee_project return for an index they refuse (a token past the embedding, a
 * position outside the KV cache, a projection wider than the scratch): nothing was read or written. */
#define EE_BAD_INDEX (-1.0)

/* How the effort picks weights: bucketMul (rank prefixes chosen by stat * |x|), or the
 * activation-only baseline (whole input columns with the largest |x|, as TEAL does). */
enum { EE_BUCKET = 0, EE_ACTIVATION = 1 };

void ee_set_strategy(ee_model *m, int strategy) { m->strategy = strategy; }

static float *alloc_f(size_t n) { return (float *)calloc(n ? n : 1, sizeof(float)); }

static float f16_to_f32(uint16_t h) {
    uint32_t sign = (uint32_t)(h & 0x8000u) << 16, exp = (h >> 10) & 0x1f, man = h & 0x3ffu, bits;
    if (exp == 0) {
        if (man == 0) {
            bits = sign;
        } else { /* subnormal: normalise */
            exp = 113;
            while (!(man & 0x400u)) { man <<= 1; exp--; }
            bits = sign | (exp << 23) | ((man & 0x3ffu) << 13);
        }
    } else if (exp == 31) {
        bits = sign | 0x7f800000u | (man << 13);
    } else {
        bits = sign | ((exp + 112) << 23) | (man << 13);
    }
    float f;
    memcpy(&f, &bits, sizeof f);
    return f;
}

ee_model *ee_model_new(const ee_dims *d, const ee_layer *layers, const uint16_t *embed, const uint16_t *head,
                       const float *final_norm, const float *rope_inv_freq, float *kcache, float *vcache) {
    ee_model *m = (ee_model *)calloc(1, sizeof(ee_model));
    if (!m) return NULL;
    m->d = *d;
    m->layers = (ee_layer *)malloc(sizeof(ee_layer) * d->n_layers);
    memcpy(m->layers, layers, sizeof(ee_layer) * d->n_layers);
    m->embed = embed;
    m->head = head;
    m->final_norm = final_norm;
    m->rope_inv_freq = rope_inv_freq;
    m->kcache = kcache;
    m->vcache = vcache;
    int qdim = d->n_heads * d->head_dim, kvdim = d->n_kv * d->head_dim;
    int widest = d->dim > qdim ? d->dim : qdim;
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
    int widest_in = d->ffn > widest ? d->ffn : widest;
    m->widest_in = widest_in;
    m->ranks = (uint8_t *)calloc(widest_in, 1);
    for (int g = 0; g < MAX_GROUP; g++) {
        m->group_products[g] = alloc_f((size_t)16 * widest_in);
        m->group_ranks[g] = (uint8_t *)calloc(widest_in, 1);
    }
    m->all_ranks = (uint8_t *)malloc(widest_in);
    memset(m->all_ranks, 16, widest_in);
    ecpu_init(0);
    return m;
}

/* Use the head (and, when tied, the embedding) in the file's Q8_0 form: 1.06 bytes per weight instead
 * of 2, and exactly the file's values (fp16 cannot hold every Q8_0 scale * int8 product). */
void ee_set_head_q8(ee_model *m, const int8_t *qs, const float *scales, int tied_embedding) {
    m->head_qs = qs;
    m->head_scales = scales;
    m->embed_from_head = tied_embedding;
}

void ee_model_free(ee_model *m) {
    if (!m) return;
    free(m->layers);
    free(m->x); free(m->xn); free(m->q); free(m->k); free(m->v);
    free(m->att); free(m->proj); free(m->gate); free(m->up); free(m->scores);
    free(m->ranks); free(m->all_ranks);
    for (int g = 0; g < MAX_GROUP; g++) { free(m->group_products[g]); free(m->group_ranks[g]); }
    free(m);
}

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

/* The nth smallest of v[0..n) (0-based), by quickselect; reorders v. */
static float quickselect(float *v, int n, int nth) {
    int lo = 0, hi = n - 1;
    while (lo < hi) {
        float pivot = v[(lo + hi) / 2];
        int i = lo, j = hi;
        while (i <= j) {
            while (v[i] < pivot) i++;
            while (v[j] > pivot) j--;
            if (i <= j) { float t = v[i]; v[i] = v[j]; v[j] = t; i++; j--; }
        }
        if (nth <= j) hi = j;
        else if (nth >= i) lo = i;
        else break;
    }
    return v[nth];
}

/* float -> unsigned key with the same order */
static inline uint32_t order_key(float f) {
    uint32_t u;
    memcpy(&u, &f, sizeof u);
    return (u & 0x80000000u) ? ~u : (u | 0x80000000u);
}

/* The nth smallest of v[0..n) (0-based), exact. One pass counts the values per top-12-bit key
 * bin; only the bin that holds the answer (a few percent of the values) is copied to scratch
 * (room for n floats) and quickselected. A quickselect over all n values spent most of its
 * time in mispredicted branches: ~20 us per matrix on SmolLM2, ~4 ms per token. */
static float select_nth(const float *v, int n, int nth, float *scratch) {
    uint32_t hist[4096];
    memset(hist, 0, sizeof hist);
    for (int i = 0; i < n; i++) hist[order_key(v[i]) >> 20]++;
    uint32_t below = 0, bin = 0;
    while (below + hist[bin] <= (uint32_t)nth) below += hist[bin++];
    int c = 0;
    for (int i = 0; i < n; i++)
        if ((order_key(v[i]) >> 20) == bin) scratch[c++] = v[i];
    return quickselect(scratch, c, nth - (int)below);
}

/* Cutoff leaving round(share * n) of the n values strictly above it. */
static float cutoff_above(const float *values, int n, float share, float *scratch) {
    int keep = (int)lrint((double)share * n);
    if (keep >= n) return -INFINITY;
    if (keep <= 0) return INFINITY;
    return select_nth(values, n, n - keep - 1, scratch);
}

/* The selection of one projection (engine/reference.py is the spec): writes k into `ranks` and
 * returns its sum.
 * bucketMul: cutoff = the probe product leaving round(effort * probes) products above it,
 *            k[i] = ranks of input i whose stat * |x[i]| beat it;
 * activation: k[i] = 16 for the round(effort * in) inputs with the largest |x[i]|, else 0.
 * `products` is scratch for 2 * n_probes * in floats. Thread-safe for distinct scratch. */
static long select_k(int strategy, const ee_bucket *b, const float *x, float effort, float *products,
                     uint8_t *ranks) {
    long total = 0;
    if (strategy == EE_ACTIVATION) {
        for (int i = 0; i < b->in; i++) products[i] = fabsf(x[i]);
        float cutoff = cutoff_above(products, b->in, effort, products + b->in);
        for (int i = 0; i < b->in; i++) {
            ranks[i] = fabsf(x[i]) > cutoff ? 16 : 0;
            total += ranks[i];
        }
    } else {
        int n = b->n_probes * b->in;
        for (int j = 0; j < b->n_probes; j++)
            for (int i = 0; i < b->in; i++) products[j * b->in + i] = b->probes[j * b->in + i] * fabsf(x[i]);
        total = ecpu_effort_k(b->stats, x, b->in, cutoff_above(products, n, effort, products + n), ranks);
    }
    if (b->max_rank < 16) {
        total = 0;
        for (int i = 0; i < b->in; i++) {
            if (ranks[i] > b->max_rank) ranks[i] = (uint8_t)b->max_rank;
            total += ranks[i];
        }
    }
    return total;
}

typedef struct {
    const ee_model *m;
    const ee_bucket *const *bs;
    const float *x, *effort;
    int todo[MAX_GROUP], n_todo;
    long total[MAX_GROUP];
    atomic_int next;
} select_job;

static void select_worker(void *arg, int tid) {
    (void)tid;
    select_job *J = (select_job *)arg;
    for (;;) {
        int t = atomic_fetch_add(&J->next, 1);
        if (t >= J->n_todo) break;
        int j = J->todo[t];
        J->total[j] = select_k(J->m->strategy, J->bs[j], J->x, J->effort[j], J->m->group_products[j],
                               J->m->group_ranks[j]);
    }
}

/* A projection runs its selection only under effort and when it has the stats to select with. */
static int under_effort(const ee_bucket *b, float effort) { return effort < 1.0f && b->stats; }

/* Up to MAX_GROUP projections of the same input x, dense (effort >= 1 or no stats: every rank)
 * or under effort: the selections run in parallel on the pool, then ONE multiply over all their
 * tiles (one pool job instead of one per matrix). Returns the weights multiplied. */
static double project_group(ee_model *m, const ee_bucket *const *bs, float *const *ys, int count,
                            const float *x, const float *effort) {
    select_job J;
    J.m = m; J.bs = bs; J.x = x; J.effort = effort; J.n_todo = 0;
    atomic_init(&J.next, 0);
    for (int j = 0; j < count; j++)
        if (under_effort(bs[j], effort[j])) J.todo[J.n_todo++] = j;
    if (J.n_todo == 1) select_worker(&J, 0);
    else if (J.n_todo > 1) ecpu_parallel(select_worker, &J);
    ecpu_eff_mat mats[MAX_GROUP];
    double used = 0.0;
    for (int j = 0, t = 0; j < count; j++) {
        const ee_bucket *b = bs[j];
        int selected = t < J.n_todo && J.todo[t] == j;
        const uint8_t *k = selected ? m->group_ranks[j] : m->all_ranks;
        used += selected ? (double)J.total[j] * (b->out / 16) : (double)b->out * b->in;
        t += selected;
        mats[j] = (ecpu_eff_mat){b->blk, b->out, k, ys[j]};
    }
    ecpu_effort_matvec_multi(count, mats, bs[0]->in, x);
    return used;
}

/* Runs one projection, dense (every rank of every input) or under effort; returns the
 * number of weights multiplied. Effort 1.0 is the same kernel with k = 16 everywhere.
 * EE_BAD_INDEX for a projection the model's scratch cannot hold (x must have b->in floats, y b->out). */
double ee_project(ee_model *m, const ee_bucket *b, const float *x, float *y, float effort) {
    if (!m || !b || !b->blk || !x || !y || b->in <= 0 || b->in > m->widest_in || b->out <= 0 || b->out % 64)
        return EE_BAD_INDEX;
    double used = project_group(m, &b, &y, 1, x, &effort);
    memcpy(m->ranks, under_effort(b, effort) ? m->group_ranks[0] : m->all_ranks, (size_t)b->in);
    return used;
}

/* How many inputs the last projection used at all (k > 0): the kernel reads whole rows of those. */
int ee_active_inputs(const ee_model *m, int in) {
    int n = 0;
    for (int i = 0; i < in; i++) n += m->ranks[i] > 0;
    return n;
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
        ecpu_attend(m->q + h * hd, m->kcache + at, m->vcache + at, J->pos + 1 - first, hd,
                    1.0f / sqrtf((float)hd), m->scores + (size_t)h * d->max_ctx, m->att + h * hd);
    }
}

/* Decode-time attention for one layer: stable softmax over the cached keys, heads in parallel
 * once the context is long enough to pay for the hand-off. */
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

/* One token at position `pos`; `effort` holds one local effort per (layer, projection), or is
 * NULL for the dense model. Writes logits [vocab]; returns the share of projection weights used,
 * or EE_BAD_INDEX (touching nothing) unless 0 <= token < vocab and 0 <= pos < max_ctx. */
double ee_step(ee_model *m, int token, int pos, const float *effort, float *logits) {
    const ee_dims *d = &m->d;
    int dim = d->dim, hd = d->head_dim;
    int qdim = d->n_heads * hd, kvdim = d->n_kv * hd;
    double used = 0.0, total = 0.0;
    if (token < 0 || token >= d->vocab || pos < 0 || pos >= d->max_ctx || !logits) return EE_BAD_INDEX;
    if (m->embed_from_head) ecpu_q8_row(m->head_qs, m->head_scales, token, dim, m->x);
    else for (int i = 0; i < dim; i++) m->x[i] = f16_to_f32(m->embed[(size_t)token * dim + i]);
    for (int li = 0; li < d->n_layers; li++) {
        const ee_layer *l = &m->layers[li];
        const float *e = effort ? effort + li * N_PROJ : NULL;
#define EFF(p) (e ? e[p] : 1.0f)
        rmsnorm(m->xn, m->x, l->attn_norm, dim, d->eps);
        const ee_bucket *qkv[3] = {l->bucket[P_Q], l->bucket[P_K], l->bucket[P_V]};
        float *qkv_out[3] = {m->q, m->k, m->v};
        float qkv_effort[3] = {EFF(P_Q), EFF(P_K), EFF(P_V)};
        used += project_group(m, qkv, qkv_out, 3, m->xn, qkv_effort);
        add_bias(m->q, l->bias[0], qdim);
        add_bias(m->k, l->bias[1], kvdim);
        add_bias(m->v, l->bias[2], kvdim);
        rope(m->q, d->n_heads, hd, pos, m->rope_inv_freq);
        rope(m->k, d->n_kv, hd, pos, m->rope_inv_freq);
        size_t layer_off = (size_t)li * d->n_kv * d->max_ctx * hd;
        for (int h = 0; h < d->n_kv; h++) {
            size_t at = layer_off + ((size_t)h * d->max_ctx + pos) * hd;
            memcpy(m->kcache + at, m->k + h * hd, sizeof(float) * hd);
            memcpy(m->vcache + at, m->v + h * hd, sizeof(float) * hd);
        }
        attention(m, li, pos);
        float o_effort = EFF(P_O);
        used += project_group(m, &l->bucket[P_O], &m->proj, 1, m->att, &o_effort);
        for (int i = 0; i < dim; i++) m->x[i] += m->proj[i];

        rmsnorm(m->xn, m->x, l->ffn_norm, dim, d->eps);
        float *gate_up_out[2] = {m->gate, m->up};
        float gate_up_effort[2] = {EFF(P_GATE), EFF(P_UP)};
        used += project_group(m, &l->bucket[P_GATE], gate_up_out, 2, m->xn, gate_up_effort);
        for (int i = 0; i < d->ffn; i++) {
            float g = m->gate[i];
            m->gate[i] = g / (1.0f + expf(-g)) * m->up[i];
        }
        float down_effort = EFF(P_DOWN);
        used += project_group(m, &l->bucket[P_DOWN], &m->proj, 1, m->gate, &down_effort);
        for (int i = 0; i < dim; i++) m->x[i] += m->proj[i];
#undef EFF
        total += 2.0 * qdim * dim + 2.0 * kvdim * dim + 3.0 * dim * d->ffn;
    }
    rmsnorm(m->xn, m->x, m->final_norm, dim, d->eps);
    if (m->head_qs) ecpu_head_q8(m->head_qs, m->head_scales, m->xn, logits, d->vocab, dim);
    else ecpu_dense_f16(m->head, m->xn, logits, d->vocab, dim);
    return used / total;
}
