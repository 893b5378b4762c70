"""The package's import contracts (setup.cfg, [importlinter]): imports run only downward
through the layers of ARCHITECTURE.md, and no modules or packages that are siblings import
each other in a circle, at any depth. Checked with import-linter, which reads every import
statement, the ones inside functions included (heavy libraries are imported late here, so
most imports are inside functions)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

from tests.conftest import REPO


def lint_imports(root: Path) -> subprocess.CompletedProcess:
    """`lint-imports` on the `search` package found under `root`, with the repository's contracts."""
    env = {**os.environ, "PYTHONPATH": str(root)}
    command = "import sys; from importlinter.cli import lint_imports_command; sys.exit(lint_imports_command())"
    return subprocess.run([sys.executable, "-c", command, str(REPO / "setup.cfg"), "--no-cache"],
                          cwd=root, env=env, capture_output=True, text=True, timeout=120)


def test_imports_run_downward_without_cycles():
    done = lint_imports(REPO)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]
    assert "2 kept, 0 broken" in done.stdout


def test_the_contracts_catch_an_upward_import_and_a_cycle(tmp_path):
    """The contracts are not vacuous: a copy of the package with one upward import (config
    importing the command line) and one cycle (the loop importing a training mode that
    imports it) breaks both."""
    shutil.copytree(REPO / "search", tmp_path / "search", ignore=shutil.ignore_patterns("__pycache__"))
    with open(tmp_path / "search" / "config" / "records.py", "a") as f:
        f.write("\n\ndef _upward():\n    from search.cli import main  # noqa: F401\n")
    with open(tmp_path / "search" / "training" / "loop.py", "a") as f:
        f.write("\n\ndef _circle():\n    from search.training import transfer  # noqa: F401\n")
    done = lint_imports(tmp_path)
    assert done.returncode != 0
    assert "search.config is not allowed to import search.cli" in done.stdout
    assert "No cycles are allowed in search.training" in done.stdout
