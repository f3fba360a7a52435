"""A non-finite loss on ONE rank: every rank takes the same decision at the same step.

Real two-process runs (``fit --nproc 2``, gloo on CPU), DDP and FSDP. The model's
``training_step`` adds NaN to its loss on rank 1 only, at one step: the gradients stay finite,
so nothing but the guard's agreed verdict can tell rank 0 (without it, rank 0 trains on while
rank 1 stops or skips, and the two leave each other waiting in a collective or drift apart).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

from bptrain.faults import NonFinite, NonFiniteGuard

ROOT = Path(__file__).resolve().parents[1]

MODEL = textwrap.dedent(
    """
    import os

    import torch
    import torch.distributed as dist
    from torch import nn


    class NanOnOneRank(nn.Module):
        '''An MLP whose training_step adds NaN to its loss (not its gradients) on rank `rank`
        at training_step call `at`; in eval mode it saves its weights to dump/rank<r>.pt.'''

        def __init__(self, at, rank=1, dump=None):
            super().__init__()
            self.at, self.rank, self.dump, self.calls = at, rank, dump, 0
            self.net = nn.Sequential(nn.Linear(2, 16), nn.ReLU(), nn.Linear(16, 2))

        def forward(self, x):
            if not self.training and self.dump:
                me = dist.get_rank() if dist.is_initialized() else 0
                torch.save(self.state_dict(), os.path.join(self.dump, f"rank{me}.pt"))
            return self.net(x)

        def training_step(self, batch):
            x, y = batch
            loss = nn.functional.cross_entropy(self(x), y)
            if self.training and torch.is_grad_enabled():
                self.calls += 1
                me = dist.get_rank() if dist.is_initialized() else 0
                if me == self.rank and self.calls == self.at:
                    loss = loss + torch.tensor(float("nan"))
            return loss
    """
)


def _config(tmp_path: Path, policy: str, strategy: str, dump: Path | None) -> Path:
    init = {"at": 4, **({"dump": str(dump)} if dump else {})}
    config = {
        "seed": 0,
        "data": {"source": "moons", "n_samples": 256, "batch_size": 16, "val_fraction": 0.25},
        "model": {"class_path": "nan_on_one_rank.NanOnOneRank", "init_args": init},
        "optimizer": {"name": "adam", "lr": 0.01},
        "trainer": {"max_epochs": 2, "nan_policy": policy, "strategy": strategy},
        "logging": {"tensorboard": False, "progress": "off", "log_every_n_steps": 1},
    }
    path = tmp_path / f"{policy}-{strategy}.yaml"
    path.write_text(json.dumps(config))
    return path


def _launch(tmp_path: Path, policy: str, strategy: str = "ddp", dump: Path | None = None):
    (tmp_path / "nan_on_one_rank.py").write_text(MODEL)
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    env.update(OMP_NUM_THREADS="1", PYTHONPATH=os.pathsep.join([str(tmp_path), str(ROOT)]))
    config = _config(tmp_path, policy, strategy, dump)
    done = subprocess.run(
        [sys.executable, "-m", "bptrain", "fit", str(config), "--nproc", "2"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
    )
    ended = time.time()
    (run,) = [p for p in (tmp_path / "runs").glob("*/*") if p.is_dir()]
    return done, run, ended


@pytest.mark.parametrize("strategy", ["ddp", "fsdp"])
def test_nan_on_one_rank_stops_every_rank_with_the_report(tmp_path, strategy):
    done, run, ended = _launch(tmp_path, "stop", strategy)
    output = done.stdout + done.stderr
    assert done.returncode == 1, output
    assert "Traceback" not in output, output  # no rank died in a collective the other left
    assert output.count("training failed") == 2, output  # each rank: the one clear message
    assert "on rank 1" in output
    report = json.loads((run / "nan_report.json").read_text())
    assert report["step"] == 4 and report["rank"] == 1 and report["ranks_nonfinite"] == [1]
    assert report["first_nonfinite"].startswith("loss")  # rank 1's own diagnosis, not rank 0's
    # within seconds of the NaN, not a collective's timeout
    assert ended - (run / "nan_report.json").stat().st_mtime < 30


def test_nan_skip_on_one_rank_skips_the_same_step_on_every_rank(tmp_path):
    dump = tmp_path / "weights"
    dump.mkdir()
    done, run, _ = _launch(tmp_path, "skip", dump=dump)
    assert done.returncode == 0, done.stdout + done.stderr
    summary = json.loads((run / "summary.json").read_text())
    assert summary["nonfinite"]["skipped_steps"] == 1 and summary["status"] == "completed"
    steps = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    skipped = [r["skipped_steps"] for r in steps if r["type"] == "step"]
    assert skipped[2] == 0 and skipped[3] == 1  # counted at step 4, on rank 0 too
    # the ranks stayed in sync: the same weights on both after the last evaluation
    zero, one = torch.load(dump / "rank0.pt"), torch.load(dump / "rank1.pt")
    assert all(torch.equal(zero[k], one[k]) for k in zero)


def _lazy_guard_on_rank(rank: int, port: int, results) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=2)
    try:
        guard = NonFiniteGuard("stop", 0, torch.device("cpu"), amp_scaler=False)
        guard.eager = False  # what it decides on a GPU: a device-side flag, no per-step read
        loss = torch.tensor(float("nan") if rank == 1 else 1.0)
        assert guard.step_ok(loss, None, nn.Linear(1, 1), dict)  # lazy: the update goes ahead
        guard.raise_if_failed()  # distributed: never alone (rank 0 would wait for rank 1)
        try:
            guard.agreed_signal(None)  # the step end's all-reduce carries the flag
            results.put((rank, "went on"))
        except NonFinite as err:
            results.put((rank, "here" if err.here else "another rank"))
    finally:
        dist.destroy_process_group()


def test_the_lazy_gpu_check_stops_every_rank_at_the_same_step_end():
    """The GPU path of nan_policy stop, on gloo: the flag set on rank 1 stops rank 0 too."""
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    ctx = mp.get_context("spawn")
    results = ctx.Queue()
    workers = [ctx.Process(target=_lazy_guard_on_rank, args=(r, port, results)) for r in (0, 1)]
    for worker in workers:
        worker.start()
    outcome = dict(results.get(timeout=120) for _ in workers)
    for worker in workers:
        worker.join(timeout=60)
    assert outcome == {0: "another rank", 1: "here"}
