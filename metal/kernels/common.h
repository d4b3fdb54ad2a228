// effort-engine portable kernels: helpers shared by all bodies (after the backend prelude
// Run by: every kernel body here (engine.runtime.kernel_source puts it before each one).
// and the per-variant #defines, before the kernel signature).  Value-only helpers: no
// pointers cross a function boundary (Metal address spaces stay out of the portable text).
#ifndef EF_COMMON
#define EF_COMMON 1

#define EF_INF EF_AS_FLOAT(0x7f800000u)
// "minus infinity" for running maxima: finite, so no kernel depends on how a math mode
// treats infinities (MLX compiles Metal in "safe" mode, but NVRTC flags are not ours).
#define EF_NEG_BIG (-3.0e38f)

// float bits -> unsigned key with the same order as the float (negatives reversed)
EF_FN unsigned int ef_key_of_bits(unsigned int u) { return (u & 0x80000000u) ? ~u : (u | 0x80000000u); }
// inverse of ef_key_of_bits
EF_FN unsigned int ef_bits_of_key(unsigned int k) { return (k & 0x80000000u) ? (k & 0x7fffffffu) : ~k; }

// k of one input: the number of ranks r (0..15) with stats[r*in + i] * |x_i| > cutoff.
// Exactly engine.effort.bucket.k_from_cutoff: the same fp32 product, the same strict comparison.
// Loads are coalesced when consecutive threads take consecutive i.
#define EF_COUNT_RANKS(kk, stats, in_dim, i, ax, cut)                               \
    {                                                                             \
        kk = 0;                                                                   \
        for (uint32_t r_ = 0; r_ < 16u; ++r_) {                                   \
            const float sv_ = (stats)[r_ * (uint32_t)(in_dim) + (uint32_t)(i)];   \
            kk += (sv_ * (ax) > (cut)) ? 1 : 0;                                   \
        }                                                                         \
    }

#endif  // EF_COMMON
