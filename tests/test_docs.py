"""The README's config reference is generated from the schema and must match it."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_readme_config_reference_is_current():
    done = subprocess.run(
        [sys.executable, "scripts/config_reference.py", "--check"],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stderr


def test_readme_quick_start_commands_match_ci():
    readme = (ROOT / "README.md").read_text()
    ci = (ROOT / ".ci" / "run").read_text()
    test_command = "bash scripts/install.sh --test && .venv/bin/python -m pytest -q"
    assert test_command in readme and test_command in ci
    assert "bash scripts/install.sh && .venv/bin/bptrain fit configs/quickstart.yaml" in readme
