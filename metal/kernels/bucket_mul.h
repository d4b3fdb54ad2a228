// effort_bucket_mul: dispatch (k) + bucket multiply of one matrix, partial sums per input group.
// -----------------------------------------------------------------------------------------
// Spec (engine.reference.matvec_k): for every input i, rank r < k[i] and bucket c,
//   y[16c + pos(r*in+i, c)] += x[i] * value(r*in+i, c)
// with the bucket list w [in*16, nb] (fp16 bits, nb = out/16) of engine.bucket.
//
// Work split: grid (n_bx*EF_TGS, G), threadgroup (EF_TGS, 1).
//   * threadgroup (bx, g) owns buckets bx*EF_TGS .. +EF_TGS-1 (one bucket = 16 outputs per
//     thread) and inputs g*ipg .. g*ipg+ipg-1 (ipg <= EF_IPG_MAX);
//   * phase 1 (the dispatch, fused): the group's k[i] and x[i] go to threadgroup memory; the
//     threads with bx == 0 also write k (each input has exactly one such threadgroup);
//   * phase 2: each thread loops over the group's inputs in order and, for each, over ranks
//     r < k[i].  k[i] is the same for every thread of the threadgroup, so the loop has no
//     divergence; the loads of row (r, i) are consecutive fp16 words across consecutive
//     threads (2*EF_TGS bytes per row per threadgroup, + EF_TGS/2 bytes of position nibbles):
//     fully coalesced;
//   * the 16 accumulators of a thread live in threadgroup memory at [LID*17 + pos]: a
//     register array indexed by a runtime position would spill to device memory (or need the
//     16-way select of the original kernel, ~32 ALU ops per weight, which made it ALU-bound);
//     stride 17 spreads the threads over the banks;
//   * phase 3: the threadgroup's 16*EF_TGS sums are written to partial[g, :] in a coalesced
//     pattern; effort_reduce then sums the G partial rows in a fixed order.
// Summation order of one output: inputs ascending within the group, ranks ascending, groups
// ascending (in effort_reduce).  Deterministic; the host run in the tests follows the same
// order.
// Occupancy (EF_TGS = 128): 128*17*4 + EF_IPG_MAX*8 B = 12.8 KB threadgroup memory (2-4
// threadgroups per Apple GPU core), few registers.  G is chosen on the host so that
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

EF_PHASE_BEGIN  // 2: bucket multiply
    const uint32_t c = EF_GX * EF_TGS + EF_LID;
    if (c < nb) {
        const uint32_t a0 = EF_LID * 17u;
        for (uint32_t j = 0u; j < n_here; ++j) {
            const int32_t kk = s_k[j];
            const float xi = s_x[j];
            const uint32_t i = i0 + j;
            int32_t r = 0;
            // four ranks at a time, loads first: four independent loads in flight per thread.
            // The four weights of one input go to four different outputs (positions are a
            // permutation), so every output still sums its products in the same order.
            for (; r + 4 <= kk; r += 4) {
                uint32_t wb[4];
                uint32_t pp[4];
                for (uint32_t u = 0u; u < 4u; ++u) {
                    const uint32_t row = (uint32_t)(r + (int32_t)u) * in_dim + i;
                    wb[u] = (uint32_t)w[row * nb + c];
#if EF_POS_NIBBLE
                    pp[u] = (uint32_t)pos[row * (nb >> 1u) + (c >> 1u)];
#else
                    pp[u] = wb[u];
#endif
                }
                for (uint32_t u = 0u; u < 4u; ++u) {
#if EF_POS_NIBBLE
                    const uint32_t p = (pp[u] >> ((c & 1u) * 4u)) & 15u;
#else
                    const uint32_t p = pp[u] & 15u;
#endif
                    s_acc[a0 + p] = EF_FMA(xi, EF_H2F(wb[u]), s_acc[a0 + p]);
                }
            }
            for (; r < kk; ++r) {
                const uint32_t row = (uint32_t)r * in_dim + i;
                const uint32_t wb1 = (uint32_t)w[row * nb + c];
#if EF_POS_NIBBLE
                const uint32_t pb = (uint32_t)pos[row * (nb >> 1u) + (c >> 1u)];
                const uint32_t p = (pb >> ((c & 1u) * 4u)) & 15u;
#else
                const uint32_t p = wb1 & 15u;
#endif
                s_acc[a0 + p] = EF_FMA(xi, EF_H2F(wb1), s_acc[a0 + p]);
            }
        }
    }
EF_PHASE_END

EF_PHASE_BEGIN  // 3: coalesced write of the threadgroup's 16*EF_TGS partial sums
    const uint32_t base = EF_GX * EF_TGS * 16u;
    for (uint32_t e = EF_LID; e < EF_TGS * 16u; e += EF_TGS) {
        const uint32_t o = base + e;
        if (o < out_dim) partial[EF_GY * out_dim + o] = s_acc[(e >> 4u) * 17u + (e & 15u)];
    }
EF_PHASE_END
