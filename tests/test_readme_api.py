"""The README's Python API example runs as written (in a scratch directory, so its run stays there)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MARKER = "<!-- readme-example: python-api -->"


def readme_example() -> str:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    assert MARKER in text, "the README lost its Python API example"
    found = re.search(r"```python\n(.*?)```", text[text.index(MARKER) :], re.S)
    assert found is not None
    return found.group(1)


def test_readme_python_api_example_runs(tmp_path):
    (tmp_path / "configs").symlink_to(ROOT / "configs")
    done = subprocess.run(
        [sys.executable, "-c", readme_example()],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "(5, 10)" in done.stdout
    assert list((tmp_path / "runs" / "quickstart").glob("*/checkpoints/best.pt"))
