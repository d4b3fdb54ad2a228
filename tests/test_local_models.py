"""The models a user already has: fake Hugging Face, LM Studio and ollama stores and a configured
folder, built in a temporary home; `effort models` lists what `local_models.find` finds."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from engine.io import local_models

ROOT = Path(__file__).resolve().parents[1]


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture
def stores(tmp_path, monkeypatch, tiny_gguf):
    """A home with a model in each store (the tiny F16 GGUF, so headers are real), and the
    environment that points the engine at it."""
    home = tmp_path / "home"
    source = tiny_gguf("F16")
    digest = _sha(source)
    env = {
        "HOME": str(home), "HF_HOME": str(home / "hf"), "OLLAMA_MODELS": str(home / "ollama"),
        "EFFORT_CACHE_DIR": str(tmp_path / "cache"), "XDG_CONFIG_HOME": str(home / "config"),
    }
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)

    # Hugging Face hub cache: a snapshot file is a symlink to its blob, named by its sha256
    repo = home / "hf" / "hub" / "models--bartowski--Tiny-Llama-GGUF"
    (repo / "blobs").mkdir(parents=True)
    shutil.copy(source, repo / "blobs" / digest)
    snapshot = repo / "snapshots" / "0123abcd"
    snapshot.mkdir(parents=True)
    (snapshot / "Tiny-Llama-Q4_K_M.gguf").symlink_to(Path("../../blobs") / digest)

    # LM Studio: models/{publisher}/{model}/*.gguf (here bytes that are no GGUF: the name tells)
    lms = home / ".lmstudio" / "models" / "lmstudio-community" / "Qwen2-0.5B-GGUF"
    lms.mkdir(parents=True)
    (lms / "qwen2-0_5b-instruct-q8_0.gguf").write_bytes(b"not really a model" * 10)

    # ollama: a manifest names the model blob and a config blob by digest
    ollama = home / "ollama"
    (ollama / "blobs").mkdir(parents=True)
    model_blob = b"GGUF" + b"\0" * 100
    model_digest = hashlib.sha256(model_blob).hexdigest()
    (ollama / "blobs" / f"sha256-{model_digest}").write_bytes(model_blob)
    config_blob = json.dumps({"model_format": "gguf", "file_type": "Q4_0"}).encode()
    config_digest = hashlib.sha256(config_blob).hexdigest()
    (ollama / "blobs" / f"sha256-{config_digest}").write_bytes(config_blob)
    manifest = ollama / "manifests" / "registry.ollama.ai" / "library" / "llama3.2" / "1b"
    manifest.parent.mkdir(parents=True)
    manifest.write_text(json.dumps({
        "config": {"mediaType": "application/vnd.docker.container.image.v1+json", "digest": f"sha256:{config_digest}"},
        "layers": [{"mediaType": "application/vnd.ollama.image.model", "digest": f"sha256:{model_digest}", "size": 104},
                   {"mediaType": "application/vnd.ollama.image.template", "digest": "sha256:" + "0" * 64}],
    }))
    broken = manifest.parent / "broken"
    broken.write_text("{ not json")

    # a folder named in config.toml, with the tiny model converted already
    mine = home / "models" / "mine"
    mine.mkdir(parents=True)
    shutil.copy(source, mine / "tiny.gguf")
    config = home / "config" / "effort-engine" / "config.toml"
    config.parent.mkdir(parents=True)
    config.write_text('model_dirs = ["~/models"]\n')
    converted = local_models.conversion_file(digest)
    converted.parent.mkdir(parents=True, exist_ok=True)
    converted.write_bytes(b"converted")
    return home, env, digest


def test_every_store_is_found_with_size_quantization_and_conversion(stores) -> None:
    home, _, _ = stores
    found = {m.name: m for m in local_models.find(local_models.configured_dirs())}
    assert set(found) == {
        "bartowski/Tiny-Llama-GGUF: Tiny-Llama-Q4_K_M.gguf",
        "lmstudio-community/Qwen2-0.5B-GGUF: qwen2-0_5b-instruct-q8_0.gguf",
        "llama3.2:1b",
        "models/mine/tiny.gguf",
    }
    hub = found["bartowski/Tiny-Llama-GGUF: Tiny-Llama-Q4_K_M.gguf"]
    assert hub.source == "huggingface" and hub.quantization == "F16"  # the header, not the name
    assert hub.converted > 0 and "resident" in hub.conversion  # its blob's name is its sha256: no hashing needed
    assert found["lmstudio-community/Qwen2-0.5B-GGUF: qwen2-0_5b-instruct-q8_0.gguf"].quantization == "Q8_0"
    ollama = found["llama3.2:1b"]
    assert ollama.source == "ollama" and ollama.quantization == "Q4_0" and ollama.size == 104
    assert ollama.path.name.startswith("sha256-") and ollama.converted == 0 and ollama.conversion == "not converted"
    mine = found["models/mine/tiny.gguf"]
    assert mine.converted > 0 and mine.spec == str(home / "models" / "mine" / "tiny.gguf")  # small: hashed


def test_converted_means_the_cache_the_load_writes(tmp_path, monkeypatch, tiny_gguf) -> None:
    """The list asks by fingerprint for the very file the load makes: the planes layout on a CPU
    (the native path), the bucketMul conversion on a GPU."""
    from engine.effort import convert
    from engine.effort.planes import store
    from engine.io.loader import open_model
    from engine.runtime import backend

    monkeypatch.setenv("EFFORT_CACHE_DIR", str(tmp_path / "cache"))
    files = open_model(tiny_gguf("F16"))
    expected = store.layout_path(files) if backend.detect().name == "cpu" else convert.converted_path(files)
    assert local_models.conversion_file(files.fingerprint) == expected
    assert local_models.converted_size(files.fingerprint) == 0
    expected.parent.mkdir(parents=True, exist_ok=True)
    expected.write_bytes(b"made")
    assert local_models.converted_size(files.fingerprint) == 4  # what the runtime will map
    assert local_models.converted_size(None) is None


def test_nothing_installed_is_an_empty_list(tmp_path, monkeypatch) -> None:
    for key, value in {"HOME": tmp_path, "HF_HOME": tmp_path / "hf", "OLLAMA_MODELS": tmp_path / "o",
                       "EFFORT_CACHE_DIR": tmp_path / "c", "XDG_CONFIG_HOME": tmp_path / "cfg"}.items():
        monkeypatch.setenv(key, str(value))
    assert local_models.find(local_models.configured_dirs()) == []


def test_effort_models_lists_the_same(stores) -> None:
    home, env, _ = stores
    proc = subprocess.run([sys.executable, "-m", "engine.cli", "models"], capture_output=True, text=True,
                          cwd=ROOT, env={**os.environ, **env}, timeout=120)
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert "smollm2-135m (default)  not cached" in out
    for name in ("bartowski/Tiny-Llama-GGUF: Tiny-Llama-Q4_K_M.gguf", "llama3.2:1b", "Q4_0", "Q8_0", "huggingface",
                 "lm-studio", "ollama", str(home / "models" / "mine" / "tiny.gguf"), "converted", "not converted"):
        assert name in out, name
