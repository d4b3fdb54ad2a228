// effort_bucket_mul: dispatch (k) + bucket multiply of one matrix, partial sums per input group.
// Run by: engine.runtime.effort_gpu (MLX custom kernel on Metal/CUDA; host build in the tests).
// -----------------------------------------------------------------------------------------
// Spec (engine.effort.reference.matvec_k): for every input i, rank r < k[i] and bucket c,
//   y[16c + pos(r*in+i, c)] += x[i] * value(r*in+i, c)
// with the bucket list w [in*16, nb] (fp16 bits, nb = out/16) of engine.effort.bucket.
//
// Work split: grid (n_bx*EF_TGS, G), threadgroup (EF_TGS, 1).
//   * threadgroup (bx, g) owns buckets bx*EF_TGS .. +EF_TGS-1 (one bucket = 16 outputs per
//     thread) and inputs g*ipg .. g*ipg+ipg-1 (ipg <= EF_IPG_MAX);
//   * phase 1 (the dispatch, fused): the group's k[i] and x[i] go to threadgroup memory; the
//     threads with bx == 0 also write k (each input has exactly one such threadgroup);
//   * phase 2: the dispatched rows (r, i) of the group become one flat list in threadgroup
//     memory, input-major, ranks ascending (offsets by a prefix sum of k);
//   * phase 3: each thread walks that list, 16 rows at a time with the loads issued first.
//     A per-input loop (inputs outer, ranks inner) left one dependent memory round trip per
//     input and measured ~40 us of fixed cost on an H100 even at effort 0.1 (ncu); the flat
//     list keeps 16 loads in flight whatever k looks like.  The list is the same for
//     every thread, so there is no divergence; the loads of row (r, i) are consecutive fp16
//     words across consecutive threads (2*EF_TGS bytes per row per threadgroup, + EF_TGS/2
//     bytes of position nibbles): fully coalesced;
//   * the 16 accumulators of a thread live in threadgroup memory at [LID*17 + pos]: a
//     register array indexed by a runtime position would spill to device memory (or need the
//     16-way select of the original kernel, ~32 ALU ops per weight, which made it ALU-bound);
//     stride 17 spreads the threads over the banks;
//   * phase 4: the threadgroup's 16*EF_TGS sums are written to partial[g, :] in a coalesced
//     pattern; effort_reduce then sums the G partial rows in a fixed order.
// Summation order of one output: inputs ascending within the group, ranks ascending, groups
// ascending (in effort_reduce).  Deterministic; the host run in the tests follows the same
// order.
// Occupancy (EF_TGS = 128, EF_IPG_MAX = 64): 128*17*4 + 64*8 + 64*16*8 B = 17.4 KB threadgroup
// memory, few registers.  G is chosen on the host so that
// n_bx*G*EF_TGS ~ 8-16K threads; the partials cost G*out*8 bytes of traffic (see README).
//   inputs : w uint16 [in*16*nb] (fp16 bits; with EF_POS_NIBBLE == 0 the low 4 bits are the
//            position), pos uint8 [in*16*nb/2] (EF_POS_NIBBLE == 1 only: low nibble = even
//            bucket), stats float32 [16*in], x float32|fp16 bits [in], cutoff float32 [>=1],
//            params int32 [4] {in, nb, ipg, cutoff index}
//   outputs: partial float32 [G*out], k int32 [in]
// -----------------------------------------------------------------------------------------
EF_TG_ARRAY(float, s_acc, EF_TGS * 17);
EF_TG_ARRAY(float, s_x, EF_IPG_MAX);
EF_TG_ARRAY(int32_t, s_k, EF_IPG_MAX);
EF_TG_ARRAY(uint32_t, s_row, 16 * EF_IPG_MAX);  // the group's dispatched rows, input-major
EF_TG_ARRAY(float, s_rx, 16 * EF_IPG_MAX);      // x of each of those rows
EF_TG_ARRAY(uint32_t, s_n, 1);                  // how many

const uint32_t in_dim = (uint32_t)params[0];
const uint32_t nb = (uint32_t)params[1];
const uint32_t ipg = (uint32_t)params[2];
const float cut = cutoff[params[3]];
const uint32_t out_dim = nb * 16u;
const uint32_t i0 = EF_GY * ipg;
const uint32_t n_here = i0 >= in_dim ? 0u : (in_dim - i0 < ipg ? in_dim - i0 : ipg);

EF_PHASE_BEGIN  // 1: dispatch of this group's inputs; clear the accumulators
    for (uint32_t j = EF_LID; j < n_here; j += EF_TGS) {
        const uint32_t i = i0 + j;
        const float xi = EF_LOAD_X(x, i);
        const float ax = EF_FABS(xi);
        int32_t kk;
        EF_COUNT_RANKS(kk, stats, in_dim, i, ax, cut);
        s_x[j] = xi;
        s_k[j] = kk;
        if (EF_GX == 0u) k[i] = kk;
    }
    for (uint32_t q = 0u; q < 16u; ++q) s_acc[EF_LID * 17u + q] = 0.0f;
EF_PHASE_END

EF_PHASE_BEGIN  // 2: the flat list of dispatched rows (each input's offset = sum of the k before it)
    for (uint32_t j = EF_LID; j < n_here; j += EF_TGS) {
        uint32_t off = 0u;
        for (uint32_t t = 0u; t < j; ++t) off += (uint32_t)s_k[t];
        const int32_t kk = s_k[j];
        for (int32_t r = 0; r < kk; ++r) {
            s_row[off + (uint32_t)r] = (uint32_t)r * in_dim + i0 + j;
            s_rx[off + (uint32_t)r] = s_x[j];
        }
        if (j == n_here - 1u) s_n[0] = off + (uint32_t)kk;
    }
    if (n_here == 0u && EF_LID == 0u) s_n[0] = 0u;
EF_PHASE_END

EF_PHASE_BEGIN  // 3: bucket multiply over the flat list, 16 rows' loads in flight per thread
    const uint32_t c = EF_GX * EF_TGS + EF_LID;
    const uint32_t n_rows = s_n[0];
    if (c < nb) {
        const uint32_t a0 = EF_LID * 17u;
        uint32_t e = 0u;
        for (; e + 16u <= n_rows; e += 16u) {
            uint32_t wb[16];
            uint32_t pp[16];
            for (uint32_t u = 0u; u < 16u; ++u) {
                const uint32_t row = s_row[e + u];
                wb[u] = (uint32_t)w[row * nb + c];
#if EF_POS_NIBBLE
                pp[u] = (uint32_t)pos[row * (nb >> 1u) + (c >> 1u)];
#else
                pp[u] = wb[u];
#endif
            }
            for (uint32_t u = 0u; u < 16u; ++u) {
#if EF_POS_NIBBLE
                const uint32_t p = (pp[u] >> ((c & 1u) * 4u)) & 15u;
#else
                const uint32_t p = pp[u] & 15u;
#endif
                s_acc[a0 + p] = EF_FMA(s_rx[e + u], EF_H2F(wb[u]), s_acc[a0 + p]);
            }
        }
        for (; e < n_rows; ++e) {
            const uint32_t row = s_row[e];
            const uint32_t wb1 = (uint32_t)w[row * nb + c];
#if EF_POS_NIBBLE
            const uint32_t pb = (uint32_t)pos[row * (nb >> 1u) + (c >> 1u)];
            const uint32_t p = (pb >> ((c & 1u) * 4u)) & 15u;
#else
            const uint32_t p = wb1 & 15u;
#endif
            s_acc[a0 + p] = EF_FMA(s_rx[e], EF_H2F(wb1), s_acc[a0 + p]);
        }
    }
EF_PHASE_END

EF_PHASE_BEGIN  // 4: coalesced write of the threadgroup's 16*EF_TGS partial sums
    const uint32_t base = EF_GX * EF_TGS * 16u;
    for (uint32_t e = EF_LID; e < EF_TGS * 16u; e += EF_TGS) {
        const uint32_t o = base + e;
        if (o < out_dim) partial[EF_GY * out_dim + o] = s_acc[(e >> 4u) * 17u + (e & 15u)];
    }
EF_PHASE_END
