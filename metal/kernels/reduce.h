// effort_reduce: y[o] = sum over g = 0..G-1 of partial[g*out + o], in that order.
// -----------------------------------------------------------------------------------------
// The fixed order makes the bucket matvec deterministic (no float atomics anywhere).
// Launch: grid (ceil(out/EF_TGS)*EF_TGS, 1), threadgroup (EF_TGS, 1); one thread per output,
// G coalesced loads (consecutive threads read consecutive floats of each partial row).
//   inputs : partial float32 [G*out], params int32 [2] {out, G}
//   output : y float32 [out]
// -----------------------------------------------------------------------------------------
const uint32_t out_dim = (uint32_t)params[0];
const uint32_t n_groups = (uint32_t)params[1];
EF_PHASE_BEGIN
    const uint32_t o = EF_GX * EF_TGS + EF_LID;
    if (o < out_dim) {
        float s = 0.0f;
        for (uint32_t g = 0u; g < n_groups; ++g) s += partial[g * out_dim + o];
        y[o] = s;
    }
EF_PHASE_END
