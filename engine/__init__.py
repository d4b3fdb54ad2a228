"""The Effort Engine: local LLM inference with an effort dial (bucketMul). Never imports Textual.

Layers, data flowing one way: `io` (model files, tokenizers, registry) -> `model` (config, MLX
decoder) -> `effort` (bucket layout, reference, allocation, calibration, conversion) -> `runtime`
(the `Runtime` interface and its CPU/MLX implementations) -> `generate` / `session` / `worker`
(token loop, loading, the engine thread) -> `api` (what front ends see), `cli` and `tools`.
"""
