"""Shared fixtures: tiny model files (built once per session) and the real SmolLM2 model."""

from __future__ import annotations

from pathlib import Path

import pytest

import tiny_models

@pytest.fixture(scope="session")
def smollm2_path() -> Path:
    """The real SmolLM2-135M-Instruct Q4_1 GGUF, fetched once into the cache by the product itself.

    The one place that knows where the real model comes from. No network and no cached
    copy is a failure, not a skip: these tests are part of CI.
    """
    from engine.io import registry
    from engine.errors import EngineError

    try:
        return registry.pull("smollm2-135m")
    except EngineError as exc:
        pytest.fail(f"the real model could not be fetched: {exc}")


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("tiny_models")


@pytest.fixture(scope="session")
def tiny_gguf(tiny_dir):
    """Factory: tiny_gguf(qtype="F16", **kwargs) -> Path of a tiny GGUF (cached per arguments)."""
    cache: dict = {}

    def make(qtype: str = "F16", **kwargs) -> Path:
        key = (qtype, repr(sorted(kwargs.items())))
        if key not in cache:
            cache[key] = tiny_models.write_tiny_gguf(tiny_dir / f"gguf{len(cache)}", qtype, **kwargs)
        return cache[key]

    return make


@pytest.fixture(scope="session")
def tiny_hf(tiny_dir):
    """Factory: tiny_hf(arch="llama"|"mistral"|"qwen2", seed=0) -> Path of a tiny HF folder."""
    cache: dict = {}

    def make(arch: str = "llama", seed: int = 0) -> Path:
        if (arch, seed) not in cache:
            cache[(arch, seed)] = tiny_models.write_tiny_hf(tiny_dir / "hf", arch, seed)
        return cache[(arch, seed)]

    return make


def _transformers():
    pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    transformers.logging.set_verbosity_error()
    return transformers


@pytest.fixture(scope="session")
def hf_smollm2_tokenizer(smollm2_path):
    """transformers' tokenizer for the real GGUF (~15 s), built once."""
    transformers = _transformers()
    return transformers.AutoTokenizer.from_pretrained(smollm2_path.parent, gguf_file=smollm2_path.name)


@pytest.fixture(scope="session")
def hf_smollm2_model(smollm2_path):
    """transformers' float32 model for the real GGUF (~40 s), built once."""
    import torch

    transformers = _transformers()
    return transformers.AutoModelForCausalLM.from_pretrained(
        smollm2_path.parent, gguf_file=smollm2_path.name, dtype=torch.float32
    )


@pytest.fixture(scope="session")
def transformers_cache():
    """Factory: transformers' float32 model for a tiny GGUF file or HF folder (cached)."""
    pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    transformers.logging.set_verbosity_error()
    cache: dict = {}

    def load(path):
        import torch

        if path not in cache:
            kw = {"gguf_file": path.name} if path.suffix == ".gguf" else {}
            where = path.parent if path.suffix == ".gguf" else path
            cache[path] = transformers.AutoModelForCausalLM.from_pretrained(where, dtype=torch.float32, **kw)
        return cache[path]

    return load
