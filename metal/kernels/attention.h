// effort_attention: decode attention (one query token) over the KV cache, stable softmax.
// Run by: nothing yet. Not launched by the engine: engine.runtime.effort_gpu.decode_attention and the
// tests (host build, Metal export) exercise it; the GPU issue wires it into the decode step.
// -----------------------------------------------------------------------------------------
// out[h] = sum_t softmax_t(scale * q_h . K[kvh, t]) V[kvh, t],  t < length,
// kvh = h / (n_heads / n_kv) (GQA: consecutive query heads share a KV head).
// Cache layout [n_kv, t_cap, HD] (t_cap >= length: the whole preallocated cache is passed,
// so no slice copy is made), q [n_heads, HD].
//
// Launch: grid (n_chunks*EF_TGS, n_heads), threadgroup (EF_TGS, 1): threadgroup (c, h)
// handles positions c*chunk_len .. min(length, (c+1)*chunk_len)-1 of head h, in blocks of
// EF_TGS positions, with an online softmax (running max m, running sum l, output rescaled by
// exp(m_old - m_new) whenever the max grows): no exp ever sees a positive argument.
//   scores: one thread per position, dot product over HD in order (q from threadgroup memory);
//   max and sum of a block: threadgroup tree reductions (fixed order);
//   P.V: thread (lane, d) = (LID / HD, LID % HD) accumulates positions lane, lane+NL, ...
//        (NL = EF_TGS/HD lanes); consecutive threads read consecutive d: coalesced;
//   end: o[d] = sum over lanes in order.
// EF_ATTN_FINAL == 1 (n_chunks == 1): writes out = o / l directly (one launch per layer).
// EF_ATTN_FINAL == 0: writes the chunk's (o, m, l); effort_attn_combine merges the chunks
// (split-K "flash decoding": n_heads * n_chunks threadgroups keep a GPU busy at long context).
//   inputs : q float32|fp16 bits (EF_Q_HALF) [n_heads*HD], keys, values float32|fp16 bits
//            (EF_KV_HALF) [n_kv*t_cap*HD], scale float32 [1],
//            params int32 [6] {n_heads, n_kv, t_cap, length, chunk_len, n_chunks}
//   outputs: FINAL: out float32 [n_heads*HD];  else o_part float32 [n_heads*n_chunks*HD],
//            ml_part float32 [n_heads*n_chunks*2] (m, l)
// Requires EF_TGS % EF_HD == 0.  Threadgroup memory (5*EF_TGS + HD + 4) floats, ~5.6 KB.
// Scores read K rows per thread (row-strided across a SIMD group; the row stays in L1 for the
// HD loads of its thread): fine for decode, a K tile in threadgroup memory is the next step.
// -----------------------------------------------------------------------------------------
EF_TG_ARRAY(float, s_q, EF_HD);
EF_TG_ARRAY(float, s_s, EF_TGS);
EF_TG_ARRAY(float, s_p, EF_TGS);
EF_TG_ARRAY(float, s_red, EF_TGS);
EF_TG_ARRAY(float, s_sum, EF_TGS);
EF_TG_ARRAY(float, s_o, EF_TGS);
EF_TG_ARRAY(float, s_m, 2);
EF_TG_ARRAY(float, s_l, 2);

const uint32_t n_heads = (uint32_t)params[0];
const uint32_t n_kv = (uint32_t)params[1];
const uint32_t t_cap = (uint32_t)params[2];
const uint32_t length = (uint32_t)params[3];
const uint32_t chunk_len = (uint32_t)params[4];
const uint32_t n_chunks = (uint32_t)params[5];
const float sc = scale[0];
const uint32_t h = EF_GY;
const uint32_t chunk = EF_GX;
const uint32_t kvh = h / (n_heads / n_kv);
const uint32_t kv_base = kvh * t_cap * (uint32_t)EF_HD;
const uint32_t t0 = chunk * chunk_len;
const uint32_t t_end = t0 + chunk_len < length ? t0 + chunk_len : length;
const uint32_t nblk = t_end > t0 ? (t_end - t0 + EF_TGS - 1u) / EF_TGS : 0u;
const uint32_t n_lanes = (uint32_t)(EF_TGS / EF_HD);

EF_PHASE_BEGIN
    if (EF_LID < (uint32_t)EF_HD) s_q[EF_LID] = EF_LOAD_Q(q, h * (uint32_t)EF_HD + EF_LID);
    s_o[EF_LID] = 0.0f;
    if (EF_LID == 0u) {
        s_m[0] = EF_NEG_BIG;
        s_l[0] = 0.0f;
    }
EF_PHASE_END

for (uint32_t b = 0u; b < nblk; ++b) {
    const uint32_t tb = t0 + b * EF_TGS;
    const uint32_t cnt = t_end - tb < EF_TGS ? t_end - tb : EF_TGS;  // valid positions
    const uint32_t cur = b & 1u;
    const uint32_t nxt = cur ^ 1u;

    EF_PHASE_BEGIN  // scores
        float sv = EF_NEG_BIG;
        if (EF_LID < cnt) {
            const uint32_t kb = kv_base + (tb + EF_LID) * (uint32_t)EF_HD;
            float acc = 0.0f;
            for (uint32_t d = 0u; d < (uint32_t)EF_HD; ++d) acc = EF_FMA(s_q[d], EF_LOAD_KV(keys, kb + d), acc);
            sv = acc * sc;
        }
        s_s[EF_LID] = sv;
        s_red[EF_LID] = sv;
    EF_PHASE_END

    for (uint32_t st = EF_TGS / 2u; st > 0u; st >>= 1u) {  // block max
        EF_PHASE_BEGIN
            if (EF_LID < st) s_red[EF_LID] = EF_FMAX(s_red[EF_LID], s_red[EF_LID + st]);
        EF_PHASE_END
    }

    EF_PHASE_BEGIN  // probabilities against the new running max
        const float m_new = EF_FMAX(s_m[cur], s_red[0]);
        const float pv = EF_LID < cnt ? EF_EXP(s_s[EF_LID] - m_new) : 0.0f;
        s_p[EF_LID] = pv;
        s_sum[EF_LID] = pv;
        if (EF_LID == 0u) s_m[nxt] = m_new;
    EF_PHASE_END

    for (uint32_t st = EF_TGS / 2u; st > 0u; st >>= 1u) {  // block sum
        EF_PHASE_BEGIN
            if (EF_LID < st) s_sum[EF_LID] = s_sum[EF_LID] + s_sum[EF_LID + st];
        EF_PHASE_END
    }

    EF_PHASE_BEGIN  // rescale by exp(m_old - m_new) and accumulate P.V
        const float m_old = s_m[cur];
        const float alpha = b == 0u ? 0.0f : EF_EXP(m_old - (float)s_m[nxt]);
        if (EF_LID == 0u) s_l[nxt] = EF_FMA(s_l[cur], alpha, s_sum[0]);
        const uint32_t d = EF_LID % (uint32_t)EF_HD;
        const uint32_t lane = EF_LID / (uint32_t)EF_HD;
        float acc = s_o[EF_LID] * alpha;
        for (uint32_t tt = lane; tt < cnt; tt += n_lanes) {
            acc = EF_FMA(s_p[tt], EF_LOAD_KV(values, kv_base + (tb + tt) * (uint32_t)EF_HD + d), acc);
        }
        s_o[EF_LID] = acc;
    EF_PHASE_END
}

EF_PHASE_BEGIN  // merge the lanes; write the result (or the chunk's partial state)
    if (EF_LID < (uint32_t)EF_HD) {
        float o = 0.0f;
        for (uint32_t lane = 0u; lane < n_lanes; ++lane) o += s_o[lane * (uint32_t)EF_HD + EF_LID];
        const float l = s_l[nblk & 1u];
#if EF_ATTN_FINAL
        out[h * (uint32_t)EF_HD + EF_LID] = o / l;
#else
        const uint32_t slot = h * n_chunks + chunk;
        o_part[slot * (uint32_t)EF_HD + EF_LID] = o;
        if (EF_LID == 0u) {
            ml_part[2u * slot] = s_m[nblk & 1u];
            ml_part[2u * slot + 1u] = l;
        }
#endif
    }
EF_PHASE_END
