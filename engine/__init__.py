"""The Effort Engine: local LLM inference with an effort dial (bucketMul). Never imports Textual.

Layers, each importing only those before it:
`events`, `errors`, `validation`, `units`, then `api` (the plain values every layer and every front
end shares: settings, requests, model info, the `ChatEngine` protocol) -> `io` (model files,
tokenizers, registry, cache paths) -> `model` (config, MLX decoder) -> `effort` (bucket layout,
reference, allocation, calibration, conversion; `effort.planes`: the CPU path's layout and its
calibration) -> `runtime` (the `Runtime` interface and its CPU/MLX implementations) -> `sampler`,
`speculative`, `generate` (the token loop) -> `session` (a model ready to answer) -> `worker`, `conversion_child` (the engine thread behind the chat, and its background
conversion) -> `cli` and `tools`.
"""

import os as _os

# numpy's OpenBLAS keeps a pool of threads that spin after every call: beside the CPU kernels' own threads
# on a few cores they steal the cores the decode step needs. The engine's numpy work is small; one thread.
_os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
