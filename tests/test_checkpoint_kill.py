"""SIGKILL at random moments (also mid-write) never loses last.pt, and resuming still ends bit-identical.

The work happens in tests/kill_driver.py (a separate process that forks or execs the runs it
kills); see its docstring. The default run kills 20 times with forked children; the slow test
kills 30 times through the real CLI (`python -m bptrain fit ... --resume auto`).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

DRIVER = Path(__file__).with_name("kill_driver.py")


def drive(tmp_path: Path, *args: str) -> dict:
    proc = subprocess.run(
        [sys.executable, str(DRIVER), str(tmp_path / "work"), *args],
        capture_output=True,
        text=True,
        timeout=600,
    )
    result_file = tmp_path / "work" / "result.json"
    assert result_file.exists(), proc.stdout + proc.stderr
    result = json.loads(result_file.read_text())
    print(json.dumps(result, indent=2))  # shown with -s / on failure: the numbers for the report
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return result


def check(result: dict, min_kills: int) -> None:
    assert result["kills"] >= min_kills
    # every kill after the first checkpoint left a loadable last.pt (load_checkpoint raised otherwise)
    assert (
        result["last_pt_loadable_after_kill"] + result["kills_before_first_checkpoint"]
        == result["kills"]
    )
    assert result["final_exit_code"] == 0
    assert result["final_weights_identical_to_uninterrupted"]
    assert result["metric_lines_identical_to_uninterrupted"]


def test_random_sigkills_never_lose_the_checkpoint(tmp_path):
    # The delays scale with the machine's speed; on a loaded machine a run may finish a little early.
    check(drive(tmp_path, "--kills", "20", "--mode", "fork", "--seed", "7"), min_kills=10)


@pytest.mark.slow
@pytest.mark.skipif(os.environ.get("BPTRAIN_SLOW") != "1", reason="slow: run with BPTRAIN_SLOW=1")
def test_random_sigkills_of_the_real_cli_never_lose_the_checkpoint(tmp_path):
    # 30 epochs of 10 steps: room for all 30 kills even when a loaded machine makes steps slow
    check(
        drive(tmp_path, "--kills", "30", "--mode", "exec", "--seed", "11", "--epochs", "30"),
        min_kills=20,
    )
