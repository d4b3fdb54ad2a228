"""What `pip install .` ships: the package list in pyproject.toml against the folders, and the
repository's `metal/` and `themes/` inside the project's own packages, never at the top level of
site-packages (where any other project's `metal` or `themes` would clash with them)."""

from __future__ import annotations

import fnmatch
from pathlib import Path

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib

from engine.runtime.kernel_files import kernel_path

ROOT = Path(__file__).resolve().parents[1]
SETUPTOOLS = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]


def _folder(package: str) -> Path:
    mapped = SETUPTOOLS["package-dir"].get(package)
    return ROOT / (mapped or package.replace(".", "/"))


def test_every_python_package_is_listed_and_nothing_lands_at_the_top_level() -> None:
    found = {
        ".".join(init.parent.relative_to(ROOT).parts)
        for top in ("engine", "effort_tui")
        for init in (ROOT / top).rglob("__init__.py")
    }
    listed = set(SETUPTOOLS["packages"])
    assert found <= listed, f"not in pyproject.toml's packages: {sorted(found - listed)}"
    assert {p.split(".")[0] for p in listed} == {"engine", "effort_tui"}
    assert SETUPTOOLS["package-dir"] == {"engine.kernels": "metal", "effort_tui.theme_files": "themes"}
    assert not (ROOT / "metal" / "__init__.py").exists() and not (ROOT / "themes" / "__init__.py").exists()


def test_every_kernel_source_and_theme_file_is_package_data() -> None:
    for package in ("engine.kernels", "effort_tui.theme_files"):
        folder = _folder(package)
        patterns = SETUPTOOLS["package-data"][package]
        for path in folder.rglob("*"):
            if path.is_file() and "__pycache__" not in path.parts:
                relative = path.relative_to(folder).as_posix()
                assert any(fnmatch.fnmatch(relative, p) for p in patterns), f"{path} would not be installed"


def test_kernel_sources_are_found_through_the_one_accessor() -> None:
    assert kernel_path("cpu/decode.c").is_file() and kernel_path("kernels/select.h").is_file()
    offenders = [
        str(path.relative_to(ROOT))
        for top in ("engine", "effort_tui", "tests")
        for path in (ROOT / top).rglob("*.py")
        if any(line.strip() in ("import metal", "import themes") or line.startswith(("from metal ", "from themes "))
               for line in path.read_text(encoding="utf-8").splitlines())
    ]
    assert offenders == []
