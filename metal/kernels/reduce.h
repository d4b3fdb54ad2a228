// effort_reduce: y[o] = the sum over g = 0..G-1 of partial[g*out + o], in a fixed order.
// Run by: engine.runtime.effort_gpu after effort_bucket_mul (MLX custom kernel; host build in the tests).
// -----------------------------------------------------------------------------------------
// The fixed order makes the bucket matvec deterministic (no float atomics anywhere):
// lane l (0..7) sums its contiguous run of partial rows g = l*run .. in ascending order,
// then the eight lane sums are added in lane order.  One thread per output and 147 partial
// rows left a single dependent chain of loads per thread (28 us on an H100 for out = 14336,
// 12% of the warps active); eight lanes cut the chain eightfold, and each lane issues its
// loads eight at a time.
// Launch: grid (ceil(out/32)*EF_TGS, 1), threadgroup (EF_TGS = 256, 1): 32 outputs x 8 lanes
// per threadgroup; consecutive threads of a lane read consecutive floats of a partial row.
//   inputs : partial float32 [G*out], params int32 [2] {out, G}
//   output : y float32 [out]
// -----------------------------------------------------------------------------------------
EF_TG_ARRAY(float, s_lane, 256);

const uint32_t out_dim = (uint32_t)params[0];
const uint32_t n_groups = (uint32_t)params[1];
const uint32_t run = (n_groups + 7u) / 8u;
EF_PHASE_BEGIN
    const uint32_t lane = EF_LID / 32u;
    const uint32_t o = EF_GX * 32u + (EF_LID & 31u);
    float s = 0.0f;
    if (o < out_dim) {
        const uint32_t g0 = lane * run;
        const uint32_t g1 = g0 + run < n_groups ? g0 + run : n_groups;
        uint32_t g = g0;
        for (; g + 8u <= g1; g += 8u) {  // eight loads in flight, then the sums in order
            float v[8];
            for (uint32_t u = 0u; u < 8u; ++u) v[u] = partial[(g + u) * out_dim + o];
            for (uint32_t u = 0u; u < 8u; ++u) s += v[u];
        }
        for (; g < g1; ++g) s += partial[g * out_dim + o];
    }
    s_lane[EF_LID] = s;
EF_PHASE_END
EF_PHASE_BEGIN
    if (EF_LID < 32u) {
        const uint32_t o = EF_GX * 32u + EF_LID;
        float t = 0.0f;
        for (uint32_t l = 0u; l < 8u; ++l) t += s_lane[l * 32u + EF_LID];
        if (o < out_dim) y[o] = t;
    }
EF_PHASE_END
