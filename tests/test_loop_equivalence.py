"""bptrain's loop computes exactly what the equivalent hand-written loop computes.

scripts/bench.py compares speed against a hand-written loop and relies on both doing the
same work; this pins it down on a tiny problem: the same per-epoch training loss, bit for
bit. It also guards the loop's speed shortcuts (no weighting multiply for a single
micro-batch, the fast total gradient norm), which must never change a number.
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from rich.console import Console
from torch import nn

from bptrain.config import load_config
from bptrain.faults import total_norm
from bptrain.train import fit


def hand_written(data: Path, epochs: int, batch: int, seed: int = 0) -> list[float]:
    torch.manual_seed(seed)
    with np.load(data) as arrays:
        x, y = torch.as_tensor(arrays["x"]), torch.as_tensor(arrays["y"])
    model = nn.Sequential(
        nn.Linear(4, 16), nn.ReLU(), nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 3)
    )
    for layer in model:
        if isinstance(layer, nn.Linear):
            nn.init.kaiming_normal_(layer.weight, nonlinearity="relu")
            nn.init.zeros_(layer.bias)
    decay = [p for p in model.parameters() if p.ndim >= 2]
    rest = [p for p in model.parameters() if p.ndim < 2]
    optimizer = torch.optim.AdamW(
        [{"params": decay, "weight_decay": 0.01}, {"params": rest, "weight_decay": 0.0}], lr=1e-2
    )
    losses = []
    for epoch in range(epochs):
        order = torch.randperm(
            len(x), generator=torch.Generator().manual_seed(seed * 1_000_003 + epoch)
        )
        total = torch.zeros((), dtype=torch.float64)
        for i in range(0, len(x), batch):
            index = order[i : i + batch]
            loss = F.cross_entropy(model(x[index]), y[index])
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            total += loss.detach().double() * len(index)
        losses.append(total.item() / len(x))
    return losses


def test_fit_matches_a_hand_written_loop_bit_for_bit(tmp_path: Path):
    rng = np.random.default_rng(0)
    y = rng.integers(0, 3, 200)
    x = (rng.normal(0, 1, (3, 4))[y] + rng.normal(0, 1, (200, 4))).astype(np.float32)
    data = tmp_path / "d.npz"
    np.savez(data, x=x[:160], y=y[:160], x_val=x[160:], y_val=y[160:])
    config = tmp_path / "c.yaml"
    config.write_text(
        f"data: {{source: npz, path: {data}, batch_size: 32}}\n"
        "model: {hidden: [16, 16]}\n"
        "optimizer: {name: adamw, lr: 1.0e-2, weight_decay: 0.01}\n"
        f"trainer: {{max_epochs: 3, device: cpu}}\n"
        f"logging: {{run_dir: {tmp_path / 'runs'}, tensorboard: false, progress: plain, log_every_n_steps: 2}}\n",
        encoding="utf-8",
    )
    summary = fit(load_config(config), Console(file=io.StringIO()))
    lines = (Path(summary["run_dir"]) / "metrics.jsonl").read_text().splitlines()
    ours = [r["train/loss"] for r in map(json.loads, lines) if r["type"] == "epoch"]
    assert ours == hand_written(data, epochs=3, batch=32)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
def test_fast_total_norm_equals_torch(dtype: torch.dtype):
    torch.manual_seed(0)
    grads = [
        torch.randn(64, 8, dtype=dtype) * 3,
        torch.randn(64, dtype=dtype),
        torch.randn(5, 64, dtype=dtype) * 1e-3,
    ]
    expected = torch.nn.utils.get_total_norm(grads, norm_type=2.0, foreach=True)
    assert torch.equal(total_norm(grads), expected)


def test_fast_total_norm_handles_mixed_dtypes():
    grads = [torch.ones(4), torch.ones(5, dtype=torch.float64)]
    assert total_norm(grads).item() == pytest.approx(3.0)
