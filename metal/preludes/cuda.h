// effort-engine portable kernels: CUDA prelude
// Run by: engine.runtime.effort_gpu on MLX's CUDA backend (mx.fast.cuda_kernel header).
// -----------------------------------------------------------------------------------------
// Passed as `header=` to mx.fast.cuda_kernel.  MLX's generated translation unit is
//   #include "mlx/backend/cuda/device/utils.cuh"   (cuda_fp16.h, cuda_bf16.h, cuda/std/...)
//   #include <cooperative_groups.h>
//   <this header>
//   namespace mlx::core::cu { __global__ void name(const T* in..., T* out...) { body } }
// and is compiled with NVRTC, so nothing here may include host headers; helpers defined
// at global scope use only builtin types.  The body starts with a prologue from
// engine/kernel_source.py that sets GX_/GY_/LID_ from blockIdx/threadIdx.
// -----------------------------------------------------------------------------------------
#ifndef EF_PRELUDE_CUDA
#define EF_PRELUDE_CUDA 1
#define EF_BACKEND_CUDA 1

#define EF_FN __device__ __forceinline__

#define EF_LID LID_
#define EF_GX GX_
#define EF_GY GY_

#define EF_TG_ARRAY(T, name, n) __shared__ T name[(n)]
#define EF_TG_ATOMIC_U32(name, n) __shared__ unsigned int name[(n)]

#define EF_BARRIER() __syncthreads()
#define EF_PHASE_BEGIN {
#define EF_PHASE_END } EF_BARRIER();

#define EF_ATOMIC_INC(a, i) atomicAdd(&(a)[(i)], 1u)
#define EF_ATOMIC_LOAD(a, i) ((a)[(i)])
#define EF_ATOMIC_STORE(a, i, v) ((a)[(i)] = (unsigned int)(v))

#define EF_AS_UINT(f) __float_as_uint((float)(f))
#define EF_AS_FLOAT(u) __uint_as_float((unsigned int)(u))
#define EF_H2F(b) __half2float(__ushort_as_half((unsigned short)(b)))
#define EF_FMA(a, b, c) fmaf((float)(a), (float)(b), (float)(c))
#define EF_EXP(x) expf((float)(x))
#define EF_FABS(x) fabsf((float)(x))
#define EF_FMAX(a, b) fmaxf((float)(a), (float)(b))
#define EF_FMIN(a, b) fminf((float)(a), (float)(b))

#endif  // EF_PRELUDE_CUDA
