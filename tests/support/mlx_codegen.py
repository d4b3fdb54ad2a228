"""Emulations of MLX's kernel source generation, to check the portable kernels without a GPU.

``metal_translation_unit`` (mlx/backend/common/metal_kernel.cpp ``write_signature``, verified in
the tests against the text MLX itself records when a call is exported) and
``cuda_translation_unit`` (mlx/backend/cuda/custom_kernel.cpp ``build_kernel``, compiled with
``nvcc`` in the tests when it is installed). Test support only: the engine never calls these.
"""

from __future__ import annotations

from engine.runtime.kernel_source import C_TYPES, KernelSpec, header, source, undefines_text

# get_type_string (mlx/backend/common/compiled.cpp) and dtype_to_cuda_type (cuda/utils.cpp)
MLX_METAL_TYPES = C_TYPES
MLX_CUDA_TYPES = C_TYPES

# Metal thread attributes MLX adds to the signature when their name occurs in the source, in
# MLX's order (mlx/backend/common/metal_kernel.cpp).
METAL_ATTRIBUTES = (
    ("dispatch_quadgroups_per_threadgroup", "uint"),
    ("dispatch_simdgroups_per_threadgroup", "uint"),
    ("dispatch_threads_per_threadgroup", "uint3"),
    ("grid_origin", "uint3"),
    ("grid_size", "uint3"),
    ("quadgroup_index_in_threadgroup", "uint"),
    ("quadgroups_per_threadgroup", "uint"),
    ("simdgroup_index_in_threadgroup", "uint"),
    ("simdgroups_per_threadgroup", "uint"),
    ("thread_execution_width", "uint"),
    ("thread_index_in_quadgroup", "uint"),
    ("thread_index_in_simdgroup", "uint"),
    ("thread_index_in_threadgroup", "uint"),
    ("thread_position_in_grid", "uint3"),
    ("thread_position_in_threadgroup", "uint3"),
    ("threadgroup_position_in_grid", "uint3"),
    ("threadgroups_per_grid", "uint3"),
    ("threads_per_grid", "uint3"),
    ("threads_per_simdgroup", "uint"),
    ("threads_per_threadgroup", "uint3"),
)
MLX_MAX_CONSTANT_ARRAY_SIZE = 8  # Metal inputs with fewer elements go to `constant` memory


def metal_attributes(src: str) -> list[tuple[str, str]]:
    """The thread attributes MLX will add for this source (substring rule)."""
    return [(a, t) for a, t in METAL_ATTRIBUTES if a in src]


def metal_translation_unit(spec: KernelSpec, input_sizes: dict[str, int]) -> str:
    """What MLX compiles for Metal, minus its utils prefix (write_signature emulation).

    ``input_sizes`` maps each input name to its element count (1-D inputs; an input of fewer
    than 8 elements is passed in the ``constant`` address space)."""
    src = source(spec, "metal")
    sig_name = "custom_kernel_" + spec.name
    for a in spec.inputs:
        sig_name += "_" + MLX_METAL_TYPES[a.dtype] + ("c" if input_sizes[a.name] < MLX_MAX_CONSTANT_ARRAY_SIZE else "")
    for a in spec.outputs:
        sig_name += "_" + MLX_METAL_TYPES[a.dtype]
    text = header(spec, "metal") + "[[kernel]] void " + sig_name + "(\n"
    index = 0
    for a in spec.inputs:
        loc = "constant" if input_sizes[a.name] < MLX_MAX_CONSTANT_ARRAY_SIZE else "device"
        text += f"  const {loc} {MLX_METAL_TYPES[a.dtype]}* {a.name} [[buffer({index})]],\n"
        index += 1
    attrs = metal_attributes(src)
    for n, a in enumerate(spec.outputs):
        text += f"  device {MLX_METAL_TYPES[a.dtype]}* {a.name} [[buffer({index})]]"
        last = n == len(spec.outputs) - 1 and not attrs
        text += ") {\n" if last else ",\n"
        index += 1
    for n, (attr, typ) in enumerate(attrs):
        text += f"  {typ} {attr} [[{attr}]]" + (") {\n" if n == len(attrs) - 1 else ",\n")
    return text + src + "\n}\n"


CUDA_EMULATION_INCLUDES = (
    "// stands in for #include \"mlx/backend/cuda/device/utils.cuh\" (MLX's default header)\n"
    "#include <cuda_fp16.h>\n#include <cuda_bf16.h>\n#include <cstdint>\n\n#include <cooperative_groups.h>\n\n"
)


def cuda_translation_unit(specs: list[KernelSpec], includes: bool = True) -> str:
    """MLX's generated CUDA source for each spec (build_kernel emulation), concatenated.

    Between variants the #defines are undone so that one nvcc run checks them all."""
    text = CUDA_EMULATION_INCLUDES if includes else ""
    for spec in specs:
        text += header(spec, "cuda")
        text += "namespace mlx::core::cu {\n\nnamespace cg = cooperative_groups;\n\n"
        text += f"__global__ void custom_kernel_{spec.name}(\n"
        params = [f"    const {MLX_CUDA_TYPES[a.dtype]}* {a.name}" for a in spec.inputs]
        params += [f"    {MLX_CUDA_TYPES[a.dtype]}* {a.name}" for a in spec.outputs]
        text += ",\n".join(params) + ") {\n"
        text += source(spec, "cuda") + "\n}\n\n} // namespace mlx::core::cu\n"
        text += undefines_text(spec) + "\n"
    return text
