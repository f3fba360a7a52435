"""Compare two finished runs: final weights (bitwise) and metric lines (without wall-clock fields)."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from bptrain.checkpoint import load_checkpoint


def _lines(run: Path) -> list[dict]:
    out = []
    for line in (run / "metrics.jsonl").read_text().splitlines():
        record = json.loads(line)
        if record["type"] in ("step", "epoch", "test"):
            record.pop("time", None)
            out.append(record)
    return out


def compare_runs(a: Path, b: Path) -> tuple[bool, bool]:
    wa = load_checkpoint(a / "checkpoints" / "last.pt")["model"]
    wb = load_checkpoint(b / "checkpoints" / "last.pt")["model"]
    same_weights = wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)
    return same_weights, _lines(a) == _lines(b)
