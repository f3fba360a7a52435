"""DDP on CPU with gloo: real multi-process runs (torch's elastic launcher, loopback only).

The launched runs take a few seconds each on two cores; they share one reference run.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from bptrain import distributed
from bptrain.cli import app
from bptrain.config import load_config
from bptrain.errors import UserError
from bptrain.inference import evaluate_checkpoint
from bptrain.train import fit

ROOT = Path(__file__).resolve().parents[1]
QUICKSTART = ROOT / "configs" / "quickstart.yaml"
# Dropout off, so that the single process (batch 64) and two ranks (32 each) train on exactly the
# same samples per step with the same gradients; two accumulated micro-batches exercise no_sync.
COMMON = [
    "model.dropout=0.0",
    "trainer.max_epochs=2",
    "trainer.accumulate_grad_batches=2",
    "logging.tensorboard=false",
    'logging.progress="off"',
    "logging.log_every_n_steps=1",
]
TIMEOUT = 120


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    env["OMP_NUM_THREADS"] = "1"
    return env


def _bptrain(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "bptrain", *args],
        cwd=cwd,
        env=_env(),
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
    )


def _only_run_dir(runs: Path) -> Path:
    run_dirs = [p for p in runs.glob("*/*") if p.is_dir()]
    assert len(run_dirs) == 1, run_dirs  # rank 1 must not create its own run directory
    return run_dirs[0]


def _records(run_dir: Path, kind: str) -> list[dict]:
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return [r for r in map(json.loads, lines) if r["type"] == kind]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def ddp_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """`bptrain fit --nproc 2` of the quick start, batch 32 per process (64 per step)."""
    cwd = tmp_path_factory.mktemp("ddp")
    result = _bptrain(
        "fit", str(QUICKSTART), *COMMON, "data.batch_size=32", "--nproc", "2", cwd=cwd
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return _only_run_dir(cwd / "runs")


def test_two_processes_train_like_one_process_with_the_same_global_batch(
    ddp_run: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    cfg = load_config(QUICKSTART, [*COMMON, "data.batch_size=64"])
    from rich.console import Console

    single = fit(cfg, Console(quiet=True))
    ddp = json.loads((ddp_run / "summary.json").read_text())

    assert ddp["distributed"] == {
        "world_size": 2,
        "backend": "gloo",
        "batch_size_per_process": 32,
        "global_batch_size": 128,  # 32 x 2 ranks x 2 accumulated micro-batches
    }
    assert ddp["steps"] == single["steps"]
    # same samples, same averaged gradients: equal up to float rounding, the LR not rescaled
    assert ddp["final"]["val/acc"] == single["final"]["val/acc"]
    assert ddp["final"]["val/loss"] == pytest.approx(single["final"]["val/loss"], abs=1e-5)
    assert ddp["final"]["train/loss"] == pytest.approx(single["final"]["train/loss"], abs=1e-5)
    assert ddp["test"]["test/acc"] == single["test"]["test/acc"]
    # only rank 0 logged: one line per epoch and per step, not two
    assert [r["epoch"] for r in _records(ddp_run, "epoch")] == [1, 2]
    assert len(_records(ddp_run, "step")) == ddp["steps"]


def test_reported_metrics_equal_a_single_process_eval_of_the_checkpoint(ddp_run: Path) -> None:
    summary = json.loads((ddp_run / "summary.json").read_text())
    cfg = load_config(ddp_run / "config.yaml")
    checkpoint = ddp_run / "checkpoints" / "last.pt"
    for split, reported in (("val", summary["final"]), ("test", summary["test"])):
        evaluated = evaluate_checkpoint(cfg, checkpoint, split)
        assert evaluated["samples"] == (
            360 if split == "val" else 359
        )  # whole split, every sample once
        assert evaluated[f"{split}/acc"] == reported[f"{split}/acc"]  # exact: counts
        assert evaluated[f"{split}/loss"] == pytest.approx(reported[f"{split}/loss"], abs=1e-6)


def test_two_node_rendezvous_on_loopback_gives_the_same_run(ddp_run: Path, tmp_path: Path) -> None:
    """Two torchrun launchers, one per simulated node, meeting on 127.0.0.1."""
    port = _free_port()
    launchers = [
        subprocess.Popen(
            [
                *(
                    sys.executable,
                    "-m",
                    "torch.distributed.run",
                    "--nnodes=2",
                    "--nproc_per_node=1",
                ),
                *(f"--node_rank={rank}", "--master_addr=127.0.0.1", f"--master_port={port}"),
                *("-m", "bptrain", "fit", str(QUICKSTART), *COMMON, "data.batch_size=32"),
            ],
            cwd=tmp_path,
            env=_env(),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for rank in (0, 1)
    ]
    outputs = [p.communicate(timeout=TIMEOUT)[0] for p in launchers]
    assert [p.returncode for p in launchers] == [0, 0], outputs
    multi = json.loads((_only_run_dir(tmp_path / "runs") / "summary.json").read_text())
    single_node = json.loads((ddp_run / "summary.json").read_text())
    assert multi["distributed"]["world_size"] == 2
    assert multi["final"]["val/acc"] == single_node["final"]["val/acc"]
    assert multi["final"]["val/loss"] == pytest.approx(single_node["final"]["val/loss"], abs=1e-9)


def _worker_pid(marker: str, rank: int) -> int | None:
    """The pid of the bptrain worker of `rank` whose command line mentions `marker`."""
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cmdline = (proc / "cmdline").read_bytes().split(b"\0")
            environ = (proc / "environ").read_bytes().split(b"\0")
        except OSError:
            continue
        if marker.encode() in cmdline and f"RANK={rank}".encode() in environ:
            return int(proc.name)
    return None


@pytest.mark.skipif(sys.platform != "linux", reason="finds the rank's process through /proc")
def test_a_signal_to_one_rank_stops_all_ranks_at_the_same_step_then_resume_finishes(
    tmp_path: Path,
) -> None:
    marker = "logging.name=signalled"
    # BatchNorm: per-rank running statistics, which evaluation must take from rank 0
    args = ["fit", str(QUICKSTART), *COMMON, marker, "data.batch_size=32", "model.norm=batchnorm"]
    launcher = subprocess.Popen(
        [sys.executable, "-m", "bptrain", *args, "trainer.max_epochs=400", "--nproc", "2"],
        cwd=tmp_path,
        env=_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    metrics = tmp_path / "runs" / "signalled"
    deadline = time.monotonic() + TIMEOUT
    while not any(p.stat().st_size for p in metrics.glob("*/metrics.jsonl")):
        assert launcher.poll() is None and time.monotonic() < deadline, launcher.stdout.read()
        time.sleep(0.05)
    pid = _worker_pid(marker, rank=1)
    assert pid is not None
    os.kill(pid, signal.SIGUSR1)  # rank 1 only: rank 0 learns it through the all-reduced flag
    output = launcher.communicate(timeout=TIMEOUT)[0]
    assert launcher.returncode == 128 + signal.SIGUSR1, output  # 138, from the workers

    run_dir = _only_run_dir(tmp_path / "runs")
    events = _records(run_dir, "event")
    assert [e["signal"] for e in events] == ["SIGUSR1"]
    saved = torch.load(run_dir / "checkpoints" / "last.pt", weights_only=True)
    done = saved["progress"]["epoch"]
    assert saved["progress"]["step"] == events[0]["step"]  # saved where all ranks stopped
    assert done < 400

    resumed = _bptrain(
        *args, f"trainer.max_epochs={done + 1}", "--nproc", "2", "--resume", str(run_dir),
        cwd=tmp_path,
    )  # fmt: skip
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert [r["epoch"] for r in _records(run_dir, "epoch")] == list(range(1, done + 2))
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["epochs"] == done + 1
    evaluated = evaluate_checkpoint(
        load_config(run_dir / "config.yaml"), run_dir / "checkpoints" / "last.pt", "val"
    )
    assert evaluated["val/acc"] == summary["final"]["val/acc"]
    assert evaluated["val/loss"] == pytest.approx(summary["final"]["val/loss"], abs=1e-6)


_ACCUMULATION_PROBE = """
import sys
import torch
from bptrain import distributed
from bptrain.config import load_config
from bptrain.data import DataSpec
from bptrain.losses import build_objective
from bptrain.runtime import Precision
from bptrain.train import train_step

port, quickstart = int(sys.argv[1]), sys.argv[2]
torch.distributed.init_process_group(
    "gloo", init_method=f"tcp://127.0.0.1:{port}", rank=0, world_size=1
)
cfg = load_config(quickstart, ["trainer.accumulate_grad_batches=3"])
model = torch.nn.Linear(4, 3)
ddp = distributed.wrap(model, distributed.Dist(torch.device("cpu"), backend="gloo"))
calls = []

def counting_allreduce(state, bucket):  # no annotations: DDP checks them at runtime
    calls.append(bucket.index())
    work = torch.distributed.all_reduce(bucket.buffer(), async_op=True)
    return work.get_future().then(lambda fut: fut.value()[0])

ddp.register_comm_hook(None, counting_allreduce)
objective = build_objective(cfg.loss, DataSpec("classification", (4,), 3, ()))
optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
window = [(torch.randn(5, 4), torch.randint(0, 3, (5,))) for _ in range(3)]
precision = Precision.create("32", torch.device("cpu"))
train_step(ddp, window, objective, optimizer, precision, cfg.trainer.grad_clip)
after_window = len(calls)
train_step(ddp, window[:1], objective, optimizer, precision, cfg.trainer.grad_clip)
print(after_window, len(calls))
del ddp  # free DDP (and its reference to the group) before the group itself
torch.distributed.destroy_process_group()
"""


def test_gradient_accumulation_all_reduces_once_per_optimizer_step(tmp_path: Path) -> None:
    """no_sync: three micro-batches, one all-reduce (a one-process gloo group counts them).

    Runs in its own process with a timeout: a gloo group torn down inside the pytest process can
    block in its destructor, which would stall the whole suite.
    """
    done = subprocess.run(
        [sys.executable, "-c", _ACCUMULATION_PROBE, str(_free_port()), str(QUICKSTART)],
        capture_output=True,
        text=True,
        timeout=180,
        cwd=tmp_path,
    )
    assert done.returncode == 0, done.stderr
    # one bucket, reduced once after the window's last micro-batch; then once for a 1-batch window
    assert done.stdout.split()[-2:] == ["1", "2"]


runner = CliRunner()


def test_strategy_ddp_refuses_a_process_no_launcher_started(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    result = runner.invoke(app, ["fit", str(QUICKSTART), "trainer.strategy=ddp"])
    assert result.exit_code == 2
    assert "torchrun" in result.output and "--nproc" in result.output


def test_nproc_inside_a_launched_process_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("WORLD_SIZE", "2")
    result = runner.invoke(app, ["fit", str(QUICKSTART), "--nproc", "2"])
    assert result.exit_code == 2
    assert "Drop --nproc" in result.output


def test_nproc_with_a_bad_config_fails_once_before_launching(tmp_path: Path) -> None:
    result = _bptrain("fit", str(QUICKSTART), "trainer.max_epochs=0", "--nproc", "2", cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr.count("invalid config") == 1  # checked once, not once per rank
    assert not (tmp_path / "runs").exists()


def test_without_a_launcher_everything_is_a_single_process(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    ctx = distributed.setup("cpu")
    assert (ctx.enabled, ctx.is_main, ctx.world_size) == (False, True, 1)
    model = torch.nn.Linear(2, 2)
    assert distributed.wrap(model, ctx) is model
    assert distributed.agree_on_signal(None) is None
    assert distributed.any_rank(True) and not distributed.any_rank(False)
    assert distributed.sum_over_ranks(1.5, 3) == [1.5, 3]
    assert "single process" in ctx.describe(64, 2)


def test_a_half_set_launch_environment_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WORLD_SIZE", "2")
    for name in ("RANK", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(name, raising=False)
    with pytest.raises(UserError, match="RANK, MASTER_ADDR, MASTER_PORT are not"):
        distributed.setup("cpu")


def test_a_ddp_run_stopped_mid_epoch_and_resumed_logs_the_epochs_of_an_uninterrupted_one(
    tmp_path: Path,
) -> None:
    """Each rank holds its own share of the epoch's running train/loss; the checkpoint (written
    by rank 0) records every rank's, and each rank resumes its own: the epoch's train/loss equals
    the uninterrupted run's, not rank 0's share counted on every rank."""
    # no LR schedule: a per-step schedule keeps the horizon of the run that set it (max_steps)
    args = ["fit", str(QUICKSTART), *COMMON, "data.batch_size=32", "scheduler={name: none}"]
    args += ["--nproc", "2"]
    (tmp_path / "a").mkdir(), (tmp_path / "b").mkdir()
    straight = _bptrain(*args, cwd=tmp_path / "a")
    assert straight.returncode == 0, straight.stdout + straight.stderr
    expected = _records(_only_run_dir(tmp_path / "a" / "runs"), "epoch")
    per_epoch = expected[0]["step"]
    stopped = _bptrain(*args, f"trainer.max_steps={per_epoch + per_epoch // 2}", cwd=tmp_path / "b")
    assert stopped.returncode == 0, stopped.stdout + stopped.stderr  # mid-epoch 2
    run = _only_run_dir(tmp_path / "b" / "runs")
    resumed = _bptrain(*args, "trainer.max_steps=null", "--resume", str(run), cwd=tmp_path / "b")
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    got = _records(run, "epoch")
    assert [(r["epoch"], r["step"], r["train/loss"]) for r in got] == [
        (r["epoch"], r["step"], r["train/loss"]) for r in expected
    ]
