// effort-engine portable kernels: Metal prelude
// Run by: engine.runtime.effort_gpu on Apple GPUs (mx.fast.metal_kernel header).
// -----------------------------------------------------------------------------------------
// Passed as `header=` to mx.fast.metal_kernel.  MLX puts its own utils (metal_stdlib,
// `using namespace metal`) in front of it, then this text, then the generated signature,
// then the kernel body.  The body starts with a per-backend prologue written by
// engine/kernel_source.py, which names `threadgroup_position_in_grid` and
// `thread_position_in_threadgroup` so that MLX adds those two attributes to the signature.
// Every portable body is written against the EF_* vocabulary below; the CUDA prelude
// (cuda.h) and the host prelude (c.h, runs the same bodies in the tests) define it too.
// Kept deliberately small: every line here is plain MSL that can be checked by eye.
// -----------------------------------------------------------------------------------------
#ifndef EF_PRELUDE_METAL
#define EF_PRELUDE_METAL 1
#define EF_BACKEND_METAL 1

#define EF_FN inline

// thread / threadgroup indices (GX_, GY_, LID_ are set by the body prologue)
#define EF_LID LID_
#define EF_GX GX_
#define EF_GY GY_

// threadgroup memory; declared at the top level of a body
#define EF_TG_ARRAY(T, name, n) threadgroup T name[(n)]
#define EF_TG_ATOMIC_U32(name, n) threadgroup metal::atomic_uint name[(n)]

// a phase is a block of per-thread code; every phase ends with a threadgroup barrier
#define EF_BARRIER() metal::threadgroup_barrier(metal::mem_flags::mem_threadgroup)
#define EF_PHASE_BEGIN {
#define EF_PHASE_END } EF_BARRIER();

// threadgroup atomics (integer counts only: the result never depends on the order)
#define EF_ATOMIC_INC(a, i) metal::atomic_fetch_add_explicit(&(a)[(i)], 1u, metal::memory_order_relaxed)
#define EF_ATOMIC_LOAD(a, i) metal::atomic_load_explicit(&(a)[(i)], metal::memory_order_relaxed)
#define EF_ATOMIC_STORE(a, i, v) metal::atomic_store_explicit(&(a)[(i)], (uint)(v), metal::memory_order_relaxed)

// bit casts, fp16 bits -> float, math
#define EF_AS_UINT(f) as_type<uint>((float)(f))
#define EF_AS_FLOAT(u) as_type<float>((uint)(u))
#define EF_H2F(b) ((float)as_type<half>((ushort)(b)))
#define EF_FMA(a, b, c) metal::fma((float)(a), (float)(b), (float)(c))
#define EF_EXP(x) metal::exp((float)(x))
#define EF_FABS(x) metal::fabs((float)(x))
#define EF_FMAX(a, b) metal::fmax((float)(a), (float)(b))
#define EF_FMIN(a, b) metal::fmin((float)(a), (float)(b))

#endif  // EF_PRELUDE_METAL
