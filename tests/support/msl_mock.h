// msl_mock.h: just enough of the Metal Shading Language for `g++ -fsyntax-only` to parse and
// type-check the Metal sources MLX generates from our kernels (there is no Metal compiler on
// Linux).  Test aid only, never shipped to a GPU.  It checks C++ syntax, names, macro
// expansion, the generated signature and types; it does NOT check address spaces (device /
// constant / threadgroup are erased here) or anything else specific to the Metal compiler.
#pragma once
#include <cstdint>
#include <cstring>
#include <cmath>

#define device
#define constant
#define threadgroup
#define kernel

typedef unsigned int uint;
typedef unsigned short ushort;
typedef unsigned char uchar;

struct uint3 { uint x, y, z; };

struct half {
    ushort bits;
    operator float() const;
};
typedef half float16_t;

template <typename T, typename U>
T as_type(U u) {
    static_assert(sizeof(T) == sizeof(U), "as_type: sizes differ");
    T t;
    std::memcpy(&t, &u, sizeof(T));
    return t;
}

namespace metal {
enum class mem_flags { mem_none = 0, mem_device = 1, mem_threadgroup = 2, mem_texture = 4 };
void threadgroup_barrier(mem_flags);
enum memory_order { memory_order_relaxed };
struct atomic_uint { uint v; };
struct atomic_int { int v; };
uint atomic_fetch_add_explicit(atomic_uint* a, uint v, memory_order);
uint atomic_load_explicit(atomic_uint* a, memory_order);
void atomic_store_explicit(atomic_uint* a, uint v, memory_order);
float fma(float, float, float);
float exp(float);
float fabs(float);
float fmax(float, float);
float fmin(float, float);
}  // namespace metal
using namespace metal;
