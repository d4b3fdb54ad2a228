"""The package tree is the architecture: the engine never imports the TUI (or Textual) on its own."""

from __future__ import annotations

import subprocess
import sys


def test_engine_and_its_cli_import_without_textual() -> None:
    code = (
        "import sys\n"
        "import engine.cli, engine.session, engine.worker, engine.tools.bench, engine.tools.evaluate\n"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('textual', 'effort_tui'))\n"
        "assert not bad, bad\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
