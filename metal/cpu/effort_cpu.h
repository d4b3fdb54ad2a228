/* effort_cpu: CPU kernels for the Effort Engine (dense fp16 matvec, Q8_0 head matvec,
   bucketMul "effort" matvec).  Plain C ABI (ctypes-friendly).  Not reentrant: call from one thread.
   Layout of the effort matrices: see effort_cpu.c header comment / ecpu_effort_build.
   Run by: metal/cpu/decode.c and engine.runtime.cpu_runtime (built by engine.runtime.native). */
#ifndef EFFORT_CPU_H
#define EFFORT_CPU_H
#include <stddef.h>
#include <stdint.h>
#include "pool.h"
#ifdef __cplusplus
extern "C" {
#endif
/* "avx2" or "scalar" : the kernel family chosen at runtime */
const char *ecpu_isa(void);

/* y[out] = W[out,in] x ; W fp16 row-major (HF orientation), fp32 accumulate. */
void ecpu_dense_f16(const uint16_t *W, const float *x, float *y, int out, int in);

/* Q8_0 head: qs int8 [out][in], scales fp32 [out][in/32]; y[o] = sum_b scales[o][b] * sum_j qs[o][32b+j]*x[32b+j]
   (exact Q8_0 math in fp32, activations fp32).  in % 32 == 0. */
void ecpu_head_q8(const int8_t *qs, const float *scales, const float *x, float *y, int out, int in);
/* convert GGUF Q8_0 blocks (34 bytes: fp16 d, int8 q[32]; row-major [out][in/32]) to (qs, scales) */
void ecpu_q8_from_gguf(const uint8_t *blocks, int out, int in, int8_t *qs, float *scales);

/* decode attention for one head: out[hd] = softmax(scale * K q) V over n positions (K, V: n rows of hd
   floats), max-subtracted softmax; scores: scratch of n floats */
void ecpu_attend(const float *q, const float *K, const float *V, int n, int hd, float scale, float *scores,
                 float *out);
/* one row of a Q8_0 matrix (see ecpu_head_q8), dequantized: x[j] = scales[row][j/32] * qs[row][j] */
void ecpu_q8_row(const int8_t *qs, const float *scales, int row, int in, float *x);

/* ---- effort (bucketMul) matvec ----
   Requirements: out % 64 == 0.  Sizes of the two buffers:  */
size_t ecpu_effort_blk_bytes(int out, int in);    /* = out*in*5/2 + 64  (2.5 B / weight: fp16 + 4-bit rank; any alignment,
                                                     may be copied/moved after the build: blk[0] records the data offset) */
/* Build layout + stats from W fp16 [out][in] (HF).  stats: float [16*in], stats[r*in+i] = mean_c |w(rank r, input i, bucket c)|.
   k[i] = 16 for every input gives the dense product (W x) from this layout alone. */
void ecpu_effort_build(const uint16_t *W, int out, int in, uint16_t *blk, float *stats);
/* k[i] = #{ r : stats[r*in+i]*|x[i]| > cutoff }  (0..16) ; returns sum(k) */
long ecpu_effort_k(const float *stats, const float *x, int in, float cutoff, uint8_t *k);
/* y[out] = sum_i sum_{rank<k[i]} x[i]*w(rank,i,c) at output 16c+pos.  Exact fp16 weights, fp32 accumulation. */
void ecpu_effort_matvec(const uint16_t *blk, int out, int in,
                        const float *x, const uint8_t *k, float *y);
/* several matrices sharing the same input x (e.g. q,k,v or gate,up) in one parallel region */
typedef struct { const uint16_t *blk; int out; const uint8_t *k; float *y; } ecpu_eff_mat;
void ecpu_effort_matvec_multi(int n, const ecpu_eff_mat *mats, int in, const float *x);
#ifdef __cplusplus
}
#endif
#endif
