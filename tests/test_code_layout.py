"""The shape of the code: imports flow one way (no circles, the engine never imports the UI),
and no file of the app grows into a do-everything module."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("engine", "effort_tui")
MAX_UI_LINES = 350


def _module(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path) -> set[str]:
    """Every project module `path` imports, anywhere in it (TYPE_CHECKING blocks and functions too)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module, *(f"{node.module}.{a.name}" for a in node.names)]
        else:
            continue
        found.update(n for n in names if n.split(".")[0] in PACKAGES)
    return found


def _graph() -> dict[str, set[str]]:
    files = {_module(p): p for top in PACKAGES for p in (ROOT / top).rglob("*.py")}
    graph = {}
    for name, path in files.items():
        graph[name] = {m for m in _imports(path) if m in files and m != name and not name.startswith(m + ".")}
    return graph


def test_no_import_circles() -> None:
    graph = _graph()
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                raise AssertionError("import circle: " + " -> ".join(stack[stack.index(nxt):] + [nxt]))
            if nxt not in state:
                visit(nxt)
        stack.pop()
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node)


def test_the_engine_never_imports_the_ui() -> None:
    for path in (ROOT / "engine").rglob("*.py"):
        text = path.read_text(encoding="utf-8")
        bad = [m for m in _imports(path) if m.startswith("effort_tui")]
        if path.name == "cli.py":  # `effort chat` hands over to the app, imported only when it runs
            bad = [m for m in bad if not m.startswith("effort_tui.app")]
        assert not bad and "import textual" not in text and "from textual" not in text, path


def test_no_ui_file_does_everything() -> None:
    long = {str(p.relative_to(ROOT)): n for p in (ROOT / "effort_tui").rglob("*.py")
            if (n := len(p.read_text(encoding="utf-8").splitlines())) > MAX_UI_LINES}
    assert long == {}
