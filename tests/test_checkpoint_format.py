"""A checkpoint written by bptrain 0.1 still resumes bit-exactly (tests/fixtures/v0_1_run)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from ckpt_helpers import metric_lines, run_fit

from bptrain.config import validate_config

FIXTURE = Path(__file__).parent / "fixtures" / "v0_1_run"


def _records(path: Path) -> list[dict]:
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    return [
        {k: v for k, v in record.items() if k != "time"}
        for record in lines
        if record["type"] in ("step", "epoch", "test")
    ]


def test_a_v0_1_checkpoint_resumes_bit_exactly(tmp_path):
    """Interrupted by 0.1 mid-epoch 2 (fp16, accumulation, clipping, onecycle, early stopping, top-k)."""
    run = tmp_path / "runs" / "v0_1" / "20260101-000000"
    shutil.copytree(FIXTURE / "run", run)
    config = json.loads((FIXTURE / "config.json").read_text())
    config["logging"]["run_dir"] = str(tmp_path / "runs")
    summary = run_fit(validate_config(config), resume=str(run))
    expected = json.loads((FIXTURE / "straight_summary.json").read_text())
    assert summary["run_dir"] == str(run)
    assert summary["final"] == expected["final"] | {"time": summary["final"]["time"]}
    assert summary["best"] == expected["best"]
    # every step and epoch line equals the uninterrupted 0.1 run's, bit for bit
    assert metric_lines(run) == _records(FIXTURE / "straight_metrics.jsonl")
