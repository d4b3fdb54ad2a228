/* planes: effort as bytes read — the CPU layout of a projection matrix and its kernels.
 * Run by: metal/cpu/decode.c (the decode step) and engine.runtime.cpu_runtime (through ctypes).
 * Spec: engine/effort/planes.py (the numpy reference every kernel here is tested against).
 *
 * A matrix W [out][in] (y = W x) is stored INPUT-MAJOR in one or two 4-bit PLANES:
 *   EE_Q4 (a 4-bit file kept at 4 bits):  w = d * q + m            q in 0..15 (plane 0; m = -8 d for Q4_0)
 *   EE_Q8 (8- and 16-bit files):           w = d * (16 * (u - 8) + l)
 *                                          u = high nibble + 8 (plane 0), l = low nibble (plane 1)
 * with one scale d (and, for EE_Q4, one offset m) per output and block of 32 inputs (fp16, [in/32][out]).
 * A plane is cut into TILES of `tile` outputs (a multiple of 128; the last tile holds what remains): tile
 * after tile, and inside a tile row i (the tile's codes of input i) is width/2 contiguous bytes, the rows
 * one after the other. A thread owns whole tiles, so it streams through one contiguous region; reading a
 * row at a level is one contiguous read per tile. Per token and row the selection picks a LEVEL:
 *   0: skip the row; 1: plane 0 only (EE_Q8: the code with its low nibble replaced by 7.5);
 *   2 (EE_Q8 only): both planes, the exact code.
 * Effort 1.0 is every row at its top level: the dense product, through the same kernel.
 *
 * Byte order inside a tile's row (so that in-register interleaving lands outputs in natural order): it is
 * cut into chunks of 128 outputs (64 bytes) and, when its width % 128 == 64, one last chunk of 64 (32 bytes).
 *   128-chunk, byte b = 16L + 4k + j (L, k, j in 0..3): low nibble = output 16k + 4L + j, high = that + 64
 *   64-chunk,  byte b = 16L + 4k + j (L in 0..1):       low nibble = output 8k + 4L + j,  high = that + 32
 * x is quantized per block of 32 inputs in two int8 levels: xq = round(x / dx) with dx = max|x| / 127 (as
 * llama.cpp does), and the residual xr = round((x / dx - xq) * 256), so x = dx * (xq + xr / 256) to about
 * 16 bits (int8 alone moves the logits by ~2% and greedy text away from float references within a few
 * tokens). The kernels sum integer products per block for both levels, then fold them in with the block's
 * scales:   y[o] += d[b][o] * (dx[b] * (acc[b][o] + accr[b][o] / 256) + c0[b]) + m[b][o] * c1[b]
 * A matrix read at less than its top level (under effort) loses far more than int8 activations cost, so
 * there the residual is skipped (half the dot products): the residual is read exactly when every row is,
 * unless the work list is `coarse` (calibration measures what skipping rows costs, which int8 activations
 * on both sides of the comparison do not change, at half the arithmetic).
 */
#ifndef EFFORT_PLANES_H
#define EFFORT_PLANES_H
#include <stddef.h>
#include <stdint.h>
#ifdef __cplusplus
extern "C" {
#endif

enum { EE_Q4 = 0, EE_Q8 = 1 };
#define EE_BLOCK 32
#define EE_RESIDUAL 256 /* xr is the residual of xq in 1/256 steps */
#define EE_MAX_IN 65535 /* rows are indexed with 16 bits in the work list */

typedef struct {
    int kind;                 /* EE_Q4 or EE_Q8 */
    int out, in;              /* out % 64 == 0, in % 32 == 0, in <= EE_MAX_IN */
    int tile;                 /* outputs per tile, a multiple of 128 */
    const uint8_t *plane[2];  /* in * out/2 bytes each, tile after tile; plane[1] is NULL for EE_Q4 */
    const uint16_t *d;        /* fp16 [in/32][out] */
    const uint16_t *m;        /* fp16 [in/32][out] for EE_Q4 (NULL: a Q4_0 file, m = -8 d), else NULL */
    const float *gain[2];     /* [in]: output error energy that reading plane p of row i removes, per x_i^2 */
} ee_planes;

/* Four rows of one block read together: their indices and their four int8 activations packed in one
 * 32-bit word (row[j]'s activation in byte j), the residuals in another. A short list is padded with a
 * row whose activations are 0. */
typedef struct {
    uint16_t row[4];
    int32_t xq, xr;
} ee_quad;

/* What one token reads of one matrix: per block, the quads of plane 0 then those of plane 1. */
typedef struct {
    int nb;            /* blocks of the matrix the list was last made for */
    int max_in, cap;   /* the most inputs a list can hold; quads allocated */
    ee_quad *quads;    /* [cap] */
    int32_t *start;    /* [nb + 1]: block b's quads are quads[start[b] .. start[b + 1]) */
    int32_t *split;    /* [nb]: those before split[b] read plane 0, the rest plane 1 */
    float *dx, *c0, *c1; /* [nb]: the fold's per-block constants (see above) */
    long rows_read;    /* plane rows read (x out/2 bytes each) */
    int residual;      /* whether the activations' residual level is multiplied (every row read at the top) */
    int coarse;        /* set by the caller: never multiply the residual (calibration's cheaper measurements) */
} ee_work;

/* allocate / free a work list for matrices with up to `in` inputs (ee_select and ee_work_from_levels
 * refuse a larger matrix with -1) */
ee_work *ee_work_new(int in);
void ee_work_free(ee_work *w);

/* x (fp32 [in]) -> xq (int8 [2 * in]: the levels, then the residuals) and dx (fp32 [in/32]); returns 1 when
 * x holds NaN or inf (which integers cannot carry: the caller must not trust the product), else 0 */
int ee_quantize_x(const float *x, int in, int8_t *xq, float *dx);

/* The selection: row i gets level  [x_i^2 gain[0][i] > tau] + [x_i^2 gain[1][i] > tau]  (the second only if
 * the first holds; tau < 0 is every row at the top level, tau = +inf reads nothing). `top` = 1 reads no
 * plane 1 even where the score asks for it (plane 1 not loaded). `whole` = 1 is the activation baseline:
 * the score is x_i^2 alone and a chosen row is read at the top level. Fills w (quads with the activations
 * of xq/dx from ee_quantize_x); returns the plane rows read. `levels` (may be NULL) gets each row's level. */
long ee_select(const ee_planes *P, const float *x, const int8_t *xq, const float *dx, float tau, int top, int whole,
               ee_work *w, uint8_t *levels);
/* Every row at the given levels (0..2), e.g. from a reference: the same work list ee_select builds. */
long ee_work_from_levels(const ee_planes *P, const int8_t *xq, const float *dx, const uint8_t *levels,
                         ee_work *w);
/* The threshold that reads at most `budget` plane rows of this matrix for this x (an exact order statistic
 * of the scores, as ee_select computes them): the per-token byte budget. scratch: 2 * in floats. */
float ee_budget_tau(const ee_planes *P, const float *x, long budget, int top, int whole, float *scratch);

/* y[out] = the matrix at the work list's levels times x (y is overwritten). */
void ee_matvec(const ee_planes *P, const ee_work *w, float *y);
/* several matrices in one parallel region (e.g. q, k, v sharing x) */
typedef struct {
    const ee_planes *P;
    const ee_work *w;
    float *y;
} ee_mv;
void ee_matvec_multi(int n, const ee_mv *mv);
/* n matrices for ntok tokens (ntok <= EE_MAX_BATCH): mv[k * ntok + j] is matrix k for token j with its own
 * work list; each matrix's weights are read from memory once for all the tokens (block by block, the
 * tokens inside), and every token gets exactly the bits ee_matvec_multi gives it. `same`: every token's
 * list reads the same rows (full effort), which lets a block's weights be unpacked once for all. */
#define EE_MAX_BATCH 512
void ee_matmul_multi(int n, int ntok, const ee_mv *mv, int same);

/* The layout of a matrix from its codes [out][in] (int8 for EE_Q8, 0..15 as uint8 for EE_Q4) and file-order
 * scales d, m [out][in/32] (m NULL: none, or for EE_Q4 a Q4_0 file's -8 d): the planes (out * in / 2 bytes
 * each; plane1 for EE_Q8 only), the scales transposed to [in/32][out], and the gains ([planes][in]). What
 * engine/effort/planes/layout.py's from_codes computes (the gains summed in double here), much faster.
 * Returns 0, or -1 for a shape the layout does not take or no memory. */
int ee_pack(int kind, const void *codes, const uint16_t *d, const uint16_t *m, int out, int in, int tile,
            uint8_t *plane0, uint8_t *plane1, uint16_t *d_t, uint16_t *m_t, float *gains);

/* "avx512vnni", "avx2" or "scalar": the kernel family chosen at run time (EE_ISA=avx2|scalar caps it) */
const char *ee_isa(void);
/* use a narrower family than the CPU's best (tests and benchmarks run every one the machine can);
 * 0, or -1 when this CPU cannot run it */
int ee_use_isa(const char *name);

#ifdef __cplusplus
}
#endif
/* Read every byte of n spans once (in parallel, summed so the reads happen): a plain streaming read, the
 * yardstick for the dense step's memory speed. */
uint64_t ee_stream_read(const uint8_t *const *ptr, const size_t *size, int n);

#endif
