// effort_attn_combine: merge the per-chunk softmax states of effort_attention (EF_ATTN_FINAL 0).
// Run by: nothing yet (see attention.h): engine.runtime.effort_gpu.decode_attention and the tests.
// -----------------------------------------------------------------------------------------
// out[h, d] = sum_c o_c[d] * exp(m_c - M) / sum_c l_c * exp(m_c - M),  M = max_c m_c,
// chunks in ascending order.  An empty chunk (m = EF_NEG_BIG, l = 0, o = 0) weighs 0.
// Launch: grid (EF_TGS, n_heads), threadgroup (EF_TGS, 1) with EF_TGS = EF_HD: one thread per
// output element; the (m, l) loads are the same address for the whole threadgroup.
//   inputs : o_part float32 [n_heads*n_chunks*HD], ml_part float32 [n_heads*n_chunks*2],
//            params int32 [2] {n_heads, n_chunks}
//   output : out float32 [n_heads*HD]
// -----------------------------------------------------------------------------------------
const uint32_t n_chunks = (uint32_t)params[1];
EF_PHASE_BEGIN
    const uint32_t h = EF_GY;
    const uint32_t d = EF_LID;
    float mx = EF_NEG_BIG;
    for (uint32_t c = 0u; c < n_chunks; ++c) mx = EF_FMAX(mx, ml_part[2u * (h * n_chunks + c)]);
    float l = 0.0f;
    float o = 0.0f;
    for (uint32_t c = 0u; c < n_chunks; ++c) {
        const uint32_t slot = h * n_chunks + c;
        const float wgt = EF_EXP(ml_part[2u * slot] - mx);
        l = EF_FMA(ml_part[2u * slot + 1u], wgt, l);
        o = EF_FMA(o_part[slot * (uint32_t)EF_HD + d], wgt, o);
    }
    out[h * (uint32_t)EF_HD + d] = o / l;
EF_PHASE_END
