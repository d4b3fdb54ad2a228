/* One decode step of a Llama-family decoder on the CPU, in plain C.
 *
 * Python builds the weight pointers once (numpy owns the memory) and calls
 * ee_step() per token: embedding -> 30x (attention + SwiGLU MLP) -> norm -> head.
 * Every projection is either dense (fp16 weights, fp32 math) or a bucketMul
 * under the effort the caller asks for; see effort_cpu.h for the kernels.
 */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "effort_cpu.h"

enum { P_Q, P_K, P_V, P_O, P_GATE, P_UP, P_DOWN, N_PROJ };

typedef struct {
    int dim, ffn, n_layers, n_heads, n_kv, head_dim, vocab, max_ctx, window;
    float eps;
} ee_dims;

typedef struct {
    const uint16_t *dense[N_PROJ]; /* fp16 [out, in] */
    const ee_bucket *bucket[N_PROJ]; /* bucket layout, or NULL when the matrix has none */
    const float *bias[3];          /* q, k, v biases or NULL */
    const float *attn_norm, *ffn_norm;
} ee_layer;

typedef struct {
    ee_dims d;
    ee_layer *layers;
    const uint16_t *embed; /* fp16 [vocab, dim] */
    const uint16_t *head;  /* fp16 [vocab, dim] (the embedding when tied) */
    const float *final_norm;
    const float *rope_inv_freq; /* [head_dim / 2] */
    float *kcache, *vcache;     /* [layers][n_kv][max_ctx][head_dim] */
    float *x, *xn, *q, *k, *v, *att, *proj, *gate, *up, *scores;
} ee_model;

static float *alloc_f(size_t n) { return (float *)calloc(n ? n : 1, sizeof(float)); }

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
    m->scores = alloc_f(d->max_ctx);
    return m;
}

void ee_model_free(ee_model *m) {
    if (!m) return;
    free(m->layers);
    free(m->x); free(m->xn); free(m->q); free(m->k); free(m->v);
    free(m->att); free(m->proj); free(m->gate); free(m->up); free(m->scores);
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

/* Runs one projection, dense or under effort; returns the number of weights multiplied. */
static double project(const ee_layer *l, int p, const float *x, float *y, int out, int in, float effort) {
    if (effort < 1.0f && l->bucket[p]) return ee_bucket_matvec(l->bucket[p], x, y, effort);
    ee_matvec_f16(l->dense[p], x, y, out, in);
    return (double)out * in;
}

/* Decode-time attention for one layer: stable softmax over the cached keys. */
static void attention(ee_model *m, int layer, int pos) {
    const ee_dims *d = &m->d;
    int hd = d->head_dim, group = d->n_heads / d->n_kv;
    int first = d->window > 0 && pos + 1 > d->window ? pos + 1 - d->window : 0;
    float scale = 1.0f / sqrtf((float)hd);
    size_t layer_off = (size_t)layer * d->n_kv * d->max_ctx * hd;
    for (int h = 0; h < d->n_heads; h++) {
        int kvh = h / group;
        const float *q = m->q + h * hd;
        const float *K = m->kcache + layer_off + (size_t)kvh * d->max_ctx * hd;
        const float *V = m->vcache + layer_off + (size_t)kvh * d->max_ctx * hd;
        float top = -INFINITY;
        for (int t = first; t <= pos; t++) {
            const float *k = K + (size_t)t * hd;
            float s = 0.0f;
            for (int j = 0; j < hd; j++) s += q[j] * k[j];
            s *= scale;
            m->scores[t] = s;
            if (s > top) top = s;
        }
        double total = 0.0;
        for (int t = first; t <= pos; t++) {
            float e = expf(m->scores[t] - top);
            m->scores[t] = e;
            total += e;
        }
        float inv = (float)(1.0 / total);
        float *o = m->att + h * hd;
        memset(o, 0, sizeof(float) * hd);
        for (int t = first; t <= pos; t++) {
            const float *v = V + (size_t)t * hd;
            float p = m->scores[t] * inv;
            for (int j = 0; j < hd; j++) o[j] += p * v[j];
        }
    }
}

static void add_bias(float *y, const float *b, int n) {
    if (b)
        for (int i = 0; i < n; i++) y[i] += b[i];
}

/* One token at position `pos`; `effort` holds one local effort per (layer, projection), or is
 * NULL for the dense model. Writes logits [vocab]; returns the share of projection weights used. */
double ee_step(ee_model *m, int token, int pos, const float *effort, float *logits) {
    const ee_dims *d = &m->d;
    int dim = d->dim, hd = d->head_dim;
    int qdim = d->n_heads * hd, kvdim = d->n_kv * hd;
    double used = 0.0, total = 0.0;
    ee_f16_to_f32(m->embed + (size_t)token * dim, m->x, dim);
    for (int li = 0; li < d->n_layers; li++) {
        const ee_layer *l = &m->layers[li];
        const float *e = effort ? effort + li * N_PROJ : NULL;
#define EFF(p) (e ? e[p] : 1.0f)
        rmsnorm(m->xn, m->x, l->attn_norm, dim, d->eps);
        used += project(l, P_Q, m->xn, m->q, qdim, dim, EFF(P_Q));
        used += project(l, P_K, m->xn, m->k, kvdim, dim, EFF(P_K));
        used += project(l, P_V, m->xn, m->v, kvdim, dim, EFF(P_V));
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
        used += project(l, P_O, m->att, m->proj, dim, qdim, EFF(P_O));
        for (int i = 0; i < dim; i++) m->x[i] += m->proj[i];

        rmsnorm(m->xn, m->x, l->ffn_norm, dim, d->eps);
        used += project(l, P_GATE, m->xn, m->gate, d->ffn, dim, EFF(P_GATE));
        used += project(l, P_UP, m->xn, m->up, d->ffn, dim, EFF(P_UP));
        for (int i = 0; i < d->ffn; i++) {
            float g = m->gate[i];
            m->gate[i] = g / (1.0f + expf(-g)) * m->up[i];
        }
        used += project(l, P_DOWN, m->gate, m->proj, dim, d->ffn, EFF(P_DOWN));
        for (int i = 0; i < dim; i++) m->x[i] += m->proj[i];
#undef EFF
        total += 2.0 * qdim * dim + 2.0 * kvdim * dim + 3.0 * dim * d->ffn;
    }
    rmsnorm(m->xn, m->x, m->final_norm, dim, d->eps);
    ee_matvec_f16(m->head, m->xn, logits, d->vocab, dim);
    return used / total;
}
