"""FSDP2 on CPU with gloo (``trainer.strategy: fsdp``): real two-process runs through ``fit --nproc``.

FSDP with batch 32 on each of two ranks must train exactly like one process with batch 64 and
like DDP, hold less per rank, resume bit-exactly, and resume on another number of processes.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from rich.console import Console

from bptrain.checkpoint import load_checkpoint
from bptrain.config import load_config
from bptrain.errors import UserError
from bptrain.train import fit

ROOT = Path(__file__).resolve().parents[1]
QUICKSTART = ROOT / "configs" / "quickstart.yaml"
COMMON = [
    "model.dropout=0.0",
    "model.hidden=[64,32]",
    "trainer.max_epochs=3",
    "trainer.max_steps=50",
    "trainer.grad_clip={max_norm: 1.0}",  # the clipped norm must be the global one
    "trainer.accumulate_grad_batches=2",  # set_requires_gradient_sync on the first micro-batch
    "logging.tensorboard=false",
    'logging.progress="off"',
    "logging.log_every_n_steps=1",
]


def _launch(cwd: Path, *args: str, nproc: int = 2) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    env["OMP_NUM_THREADS"] = "1"
    return subprocess.run(
        [sys.executable, "-m", "bptrain", "fit", str(QUICKSTART), *args, "--nproc", str(nproc)],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


def _run_dir(runs: Path) -> Path:
    (run,) = [p for p in runs.glob("*/*") if p.is_dir()]
    return run


def _step_losses(run: Path) -> list[float]:
    lines = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return [r["train/loss"] for r in lines if r["type"] == "step"]


@pytest.fixture(scope="module")
def fsdp_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    cwd = tmp_path_factory.mktemp("fsdp")
    result = _launch(cwd, *COMMON, "data.batch_size=16", "trainer.strategy=fsdp")
    assert result.returncode == 0, result.stdout + result.stderr
    return _run_dir(cwd / "runs")


def test_fsdp_trains_like_one_process_and_like_ddp(fsdp_run, tmp_path, monkeypatch):
    cwd = tmp_path / "ddp"
    cwd.mkdir()
    ddp = _launch(cwd, *COMMON, "data.batch_size=16", "trainer.strategy=ddp")
    assert ddp.returncode == 0, ddp.stdout + ddp.stderr
    monkeypatch.chdir(tmp_path)
    single = fit(load_config(QUICKSTART, [*COMMON, "data.batch_size=32"]), Console(quiet=True))
    ours, theirs = _step_losses(fsdp_run), _step_losses(_run_dir(cwd / "runs"))
    reference = _step_losses(Path(single["run_dir"]))
    assert len(ours) == len(theirs) == len(reference) == 50
    assert ours == pytest.approx(reference, rel=1e-5)
    assert ours == pytest.approx(theirs, rel=1e-5)


def test_fsdp_holds_at_most_0_6_of_ddp_per_rank(fsdp_run, tmp_path):
    ddp = _launch(tmp_path, *COMMON, "trainer.max_steps=2", "data.batch_size=16")
    assert ddp.returncode == 0, ddp.stderr
    sharded = json.loads((fsdp_run / "summary.json").read_text())["memory_per_rank"]
    replicated = json.loads((_run_dir(tmp_path / "runs") / "summary.json").read_text())
    assert sharded["total"] <= 0.6 * replicated["memory_per_rank"]["total"]


def test_fsdp_checkpoint_is_a_plain_single_file_that_eval_reads(fsdp_run):
    state = load_checkpoint(fsdp_run / "checkpoints" / "last.pt")  # weights_only=True
    assert state["model"]["net.0.weight"].shape == (64, 64)  # full, not a shard
    from bptrain.inference import evaluate_checkpoint

    summary = json.loads((fsdp_run / "summary.json").read_text())
    cfg = load_config(fsdp_run / "config.yaml", ["trainer.strategy=auto"])
    evaluated = evaluate_checkpoint(cfg, fsdp_run / "checkpoints" / "last.pt", "val")
    assert evaluated["val/acc"] == summary["final"]["val/acc"]


def test_fsdp_resume_is_bit_exact_and_continues_on_another_world_size(tmp_path):
    fsdp = [*COMMON, "data.batch_size=16", "trainer.strategy=fsdp", "scheduler={name: none}"]
    (tmp_path / "a").mkdir(), (tmp_path / "b").mkdir()
    straight = _launch(tmp_path / "a", *fsdp)
    assert straight.returncode == 0, straight.stderr
    first = _launch(tmp_path / "b", *fsdp, "trainer.max_epochs=1")  # stops at an epoch end
    assert first.returncode == 0, first.stderr
    run = _run_dir(tmp_path / "b" / "runs")
    resumed = _launch(tmp_path / "b", *fsdp, "--resume", str(run))
    assert resumed.returncode == 0, resumed.stderr
    # bit for bit on the same world size
    assert _step_losses(run) == _step_losses(_run_dir(tmp_path / "a" / "runs"))
    # 2 -> 1 process: the full state reshards onto one rank and the run finishes its steps
    more = ["trainer.max_epochs=5", "trainer.max_steps=60", "--resume", str(run)]
    one = _launch(tmp_path / "b", *fsdp, *more, nproc=1)
    assert one.returncode == 0, one.stderr
    assert json.loads((run / "summary.json").read_text())["steps"] == 60


def test_fsdp_refuses_fp16_and_an_unlaunched_process(tmp_path):
    with pytest.raises(UserError, match="fsdp with precision fp16"):
        load_config(QUICKSTART, ["trainer.strategy=fsdp", "trainer.precision=fp16"])
    cfg = load_config(QUICKSTART, ["trainer.strategy=fsdp", f"logging.run_dir={tmp_path}"])
    with pytest.raises(UserError, match="not started by a distributed launcher"):
        fit(cfg, Console(quiet=True))
