"""`trainer.adversarial`: adversarial training in the loop (DDP, bad configs); resume is in test_resume.py."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from rich.console import Console

from bptrain.config import load_config
from bptrain.train import fit

ROOT = Path(__file__).resolve().parents[1]
QUICKSTART = ROOT / "configs" / "quickstart.yaml"
# dropout off: a single process (batch 64) and two ranks (32 each) then compute the same gradients
COMMON = [
    "model.dropout=0.0",
    "trainer.max_steps=6",
    "trainer.accumulate_grad_batches=2",
    "data.normalize=true",
    "trainer.adversarial={method: pgd, epsilon: 0.1, steps: 2, fraction: 0.75, warmup_steps: 3}",
    "logging.tensorboard=false",
    'logging.progress="off"',
    "logging.log_every_n_steps=1",
]


def test_ddp_adversarial_training_matches_one_process_with_the_same_global_batch(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each rank attacks its shard with its rows of the global batch's random start and the same
    attacked fraction by global position: two processes train exactly as one."""
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    env["OMP_NUM_THREADS"] = "1"
    ddp_dir = tmp_path / "ddp"
    ddp_dir.mkdir()
    done = subprocess.run(
        [sys.executable, "-m", "bptrain", "fit", str(QUICKSTART), *COMMON, "data.batch_size=32", "--nproc", "2"],
        cwd=ddp_dir, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    (summary,) = ddp_dir.glob("runs/*/*/summary.json")
    ddp = json.loads(summary.read_text())

    monkeypatch.chdir(tmp_path)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        single = fit(load_config(QUICKSTART, [*COMMON, "data.batch_size=64"]), Console(quiet=True))
    finally:
        torch.set_num_threads(threads)
    assert ddp["distributed"]["world_size"] == 2 and ddp["steps"] == single["steps"] == 6
    assert ddp["final"]["train/loss"] == pytest.approx(single["final"]["train/loss"], abs=1e-5)
    assert ddp["final"]["val/loss"] == pytest.approx(single["final"]["val/loss"], abs=1e-5)
    assert ddp["final"]["val/acc"] == single["final"]["val/acc"]


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["trainer.adversarial={epsilon: 0}"], "must be > 0"),
        (["trainer.adversarial={epsilon: -0.1}"], "must be > 0"),
        (["trainer.adversarial={epsilon: 0.1, steps: 0}"], "steps: 0 with method pgd"),
        (["trainer.adversarial={epsilon: 0.1, method: pgdd}"], "trainer.adversarial.method"),
    ],
)
def test_bad_adversarial_config_exits_2_before_training(cli, write_config, overrides, message):
    config = write_config()
    result = cli("config", "validate", config, *overrides)
    assert result.exit_code == 2, result.output
    assert message in result.output


@pytest.mark.parametrize(
    ("extra", "overrides", "message"),
    [
        (
            {"=data": {"source": "digits"}},
            ["trainer.adversarial={epsilon: 1.5}"],
            "larger than the data's range",
        ),
        (
            {"data": {"source": "sine", "n_samples": 64}},
            ["trainer.adversarial={epsilon: 0.1}"],
            "regression",
        ),
        (
            {
                "data": {"source": "majority", "n_samples": 64, "length": 6, "vocab": 4},
                "=model": {
                    "name": "transformer",
                    "vocab_size": 4,
                    "d_model": 8,
                    "num_heads": 2,
                    "num_layers": 1,
                },
            },
            ["trainer.adversarial={epsilon: 0.1}"],
            "token ids",
        ),
    ],
)
def test_adversarial_training_the_data_cannot_take_exits_2_without_a_run(
    cli, write_config, tmp_path, extra, overrides, message
):
    config = write_config(extra)
    result = cli("fit", config, *overrides)
    assert result.exit_code == 2, result.output
    assert message in result.output
    assert not list(tmp_path.glob("runs/*/*/metrics.jsonl"))  # refused before any training


@pytest.mark.parametrize("method", ["fgsm", "pgd", "trades"])
def test_every_method_trains(write_config, method):
    cfg = load_config(
        write_config({"=data": {"source": "digits"}}),
        [
            f"trainer.adversarial={{method: {method}, epsilon: 0.1, steps: 2}}",
            "trainer.max_steps=3",
        ],
    )
    summary = fit(cfg, Console(quiet=True))
    assert summary["steps"] == 3
    assert torch.isfinite(torch.tensor(summary["final"]["train/loss"]))
