// effort_dispatch: the selection k[in] of one matrix for a given cutoff (standalone form).
// -----------------------------------------------------------------------------------------
// k[i] = #{ r in 0..15 : stats[r*in + i] * |x[i]| > cutoff[params[1]] }  (k_from_cutoff).
// Since stats do not increase with rank, input i dispatches bucket-list rows
// r*in + i for r < k[i]: the dispatch is this vector, computed in place, no atomic counter
// and no ordering question at all.  effort_bucket_mul computes the same k (same macro) in its
// prologue, so a matvec does not need this launch; it serves callers that want k alone.
// Launch: grid (ceil(in/EF_TGS)*EF_TGS, 1), threadgroup (EF_TGS, 1); one thread per input,
// 16 coalesced stat loads each.
//   inputs : stats float32 [16*in], x float32|fp16 bits [in], cutoff float32 [>=1],
//            params int32 [2] {in, cutoff index}
//   output : k int32 [in]
// -----------------------------------------------------------------------------------------
const uint32_t in_dim = (uint32_t)params[0];
const float cut = cutoff[params[1]];
EF_PHASE_BEGIN
    const uint32_t i = EF_GX * EF_TGS + EF_LID;
    if (i < in_dim) {
        const float ax = EF_FABS(EF_LOAD_X(x, i));
        int32_t kk;
        EF_COUNT_RANKS(kk, stats, in_dim, i, ax, cut);
        k[i] = kk;
    }
EF_PHASE_END
