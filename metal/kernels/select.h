// effort_select: the probe cutoff of one or more matrices that share the input x.
// Run by: engine.runtime.effort_gpu, first launch of every effort matvec (MLX custom kernel; host build in the tests).
// -----------------------------------------------------------------------------------------
// Spec (engine.effort.bucket.cutoff_for_effort): with products p = probes[j, i] * |x[i]| (n = P*in
// of them, fp32), the cutoff is the value of rank `rank` in ascending order, rank =
// n - round(effort*n) - 1, so that round(effort*n) products lie strictly above it (fewer on
// ties).  rank < 0 means cutoff -inf (effort 1: everything dispatched), rank >= n means
// +inf (nothing).  The host computes `rank` from the Python float effort: nothing is read
// back from the GPU.
//
// Method: exact radix select on order-preserving 32-bit keys of the products, most
// significant digit first, digits of 12 + 10 + 10 bits.  Every pass streams the products
// (recomputed: probes and x stay in L1/L2), histograms the digit of the keys that match the
// prefix fixed so far (threadgroup atomics on integer counters: the counts, hence the
// result, do not depend on the order of the atomics), then an inclusive Hillis-Steele scan
// of per-thread run sums finds the digit bin holding the wanted rank.  Exact and
// deterministic; no float reductions at all.
//
// Launch: grid (EF_TGS, M), threadgroup (EF_TGS, 1): ONE threadgroup per matrix (threadgroup
// y = matrix index m; all matrices of a launch share x).  EF_TGS = 1024 by default.
//   inputs : probes float32 [sum_m P_m*in] (matrix m's probes at params[4m+0], [P_m, in])
//            x      float32 or fp16 bits (EF_X_HALF) [in]
//            params int32 [4*M]: {probe offset, P, in, rank} per matrix
//   output : cutoff float32 [M]
// Cost (per matrix): 3 streams over P*in products (P*in/EF_TGS per thread each), ~45
// barriers (3 x (3 + log2 EF_TGS)), 24 KB threadgroup memory.  The first pass does one
// threadgroup atomic per product; products of similar magnitude hit the same bin, so this
// pass is the contention hot spot (to be measured on a GPU; alternatives in README).
// -----------------------------------------------------------------------------------------
EF_TG_ATOMIC_U32(s_hist, 4096);
EF_TG_ARRAY(uint32_t, s_scan, 2 * EF_TGS);
EF_TG_ARRAY(uint32_t, s_res, 8);

const int32_t p_off = params[4u * EF_GY + 0u];
const int32_t p_rows = params[4u * EF_GY + 1u];
const int32_t in_dim = params[4u * EF_GY + 2u];
const int32_t rank = params[4u * EF_GY + 3u];

if (rank < 0 || rank >= p_rows * in_dim) {
    EF_PHASE_BEGIN
        if (EF_LID == 0u) cutoff[EF_GY] = rank < 0 ? -EF_INF : EF_INF;
    EF_PHASE_END
} else {
    uint32_t prefix = 0u;              // key bits fixed by the passes so far
    uint32_t want = (uint32_t)rank;    // rank of the answer among the keys matching prefix
    for (uint32_t pass = 0u; pass < 3u; ++pass) {
        const uint32_t shift = pass == 0u ? 20u : (pass == 1u ? 10u : 0u);
        const uint32_t nbins = pass == 0u ? 4096u : 1024u;
        const uint32_t hi = shift + (pass == 0u ? 12u : 10u);  // bits >= hi must equal prefix
        const uint32_t run = (nbins + EF_TGS - 1u) / EF_TGS;    // bins per thread in the scan

        EF_PHASE_BEGIN  // clear the histogram
            for (uint32_t b = EF_LID; b < nbins; b += EF_TGS) EF_ATOMIC_STORE(s_hist, b, 0u);
        EF_PHASE_END

        EF_PHASE_BEGIN  // histogram of this digit over the keys that match the prefix
            // product t = probe row t / in, input t % in; four products' loads issued first
            const uint32_t n_prod = (uint32_t)p_rows * (uint32_t)in_dim;
            uint32_t t = EF_LID;
            for (; t + 3u * EF_TGS < n_prod; t += 4u * EF_TGS) {
                float pv[4];
                float xv[4];
                for (uint32_t u = 0u; u < 4u; ++u) {
                    const uint32_t tt = t + u * EF_TGS;
                    pv[u] = probes[(uint32_t)p_off + tt];
                    xv[u] = EF_LOAD_X(x, tt % (uint32_t)in_dim);
                }
                for (uint32_t u = 0u; u < 4u; ++u) {
                    const uint32_t key = ef_key_of_bits(EF_AS_UINT(pv[u] * EF_FABS(xv[u])));
                    if (pass == 0u || (key >> hi) == (prefix >> hi)) {
                        EF_ATOMIC_INC(s_hist, (key >> shift) & (nbins - 1u));
                    }
                }
            }
            for (; t < n_prod; t += EF_TGS) {
                const float prod = probes[(uint32_t)p_off + t] * EF_FABS(EF_LOAD_X(x, t % (uint32_t)in_dim));
                const uint32_t key = ef_key_of_bits(EF_AS_UINT(prod));
                if (pass == 0u || (key >> hi) == (prefix >> hi)) {
                    EF_ATOMIC_INC(s_hist, (key >> shift) & (nbins - 1u));
                }
            }
        EF_PHASE_END

        EF_PHASE_BEGIN  // per-thread sums of `run` consecutive bins
            uint32_t sum = 0u;
            for (uint32_t q = 0u; q < run; ++q) {
                const uint32_t b = EF_LID * run + q;
                if (b < nbins) sum += EF_ATOMIC_LOAD(s_hist, b);
            }
            s_scan[EF_LID] = sum;
        EF_PHASE_END

        uint32_t src = 0u;  // inclusive scan, ping-pong between the two halves of s_scan
        for (uint32_t d = 1u; d < EF_TGS; d <<= 1u) {
            EF_PHASE_BEGIN
                uint32_t v = s_scan[src * EF_TGS + EF_LID];
                if (EF_LID >= d) v += s_scan[src * EF_TGS + EF_LID - d];
                s_scan[(1u - src) * EF_TGS + EF_LID] = v;
            EF_PHASE_END
            src = 1u - src;
        }

        EF_PHASE_BEGIN  // the one thread whose run holds the wanted rank finds the bin
            const uint32_t incl = s_scan[src * EF_TGS + EF_LID];
            const uint32_t excl = EF_LID == 0u ? 0u : (uint32_t)s_scan[src * EF_TGS + EF_LID - 1u];
            if (excl <= want && want < incl) {
                uint32_t c = excl;
                for (uint32_t q = 0u; q < run; ++q) {
                    const uint32_t b = EF_LID * run + q;
                    const uint32_t h = b < nbins ? (uint32_t)EF_ATOMIC_LOAD(s_hist, b) : 0u;
                    if (want < c + h) {
                        s_res[2u * pass] = b;
                        s_res[2u * pass + 1u] = want - c;
                        break;
                    }
                    c += h;
                }
            }
        EF_PHASE_END

        prefix |= (uint32_t)s_res[2u * pass] << shift;  // uniform: every thread reads the same
        want = s_res[2u * pass + 1u];
    }
    EF_PHASE_BEGIN
        if (EF_LID == 0u) cutoff[EF_GY] = EF_AS_FLOAT(ef_bits_of_key(prefix));
    EF_PHASE_END
}
