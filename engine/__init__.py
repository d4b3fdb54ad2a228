"""The Effort Engine: local LLM inference with an effort dial (bucketMul). Never imports Textual.

Layers, data flowing one way: `io` (model files, tokenizers, registry) -> `model` (config, MLX
decoder) -> `effort` (bucket layout, reference, allocation, calibration, conversion) -> `runtime`
(the `Runtime` interface and its CPU/MLX implementations) -> `generate` / `session` / `worker`
(token loop, loading, the engine thread) -> `api` (what front ends see), `cli` and `tools`.
"""

import os as _os

# numpy's OpenBLAS keeps a pool of threads that spin after every call: beside the CPU kernels' own threads
# on a few cores they steal the cores the decode step needs. The engine's numpy work is small; one thread.
_os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
