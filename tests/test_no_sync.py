"""The training loop never waits for the device between log steps.

On a GPU every ``.item()``, ``.tolist()``, ``float(t)``, ``if t:`` ... copies a value to the
host and stalls the pipeline. These tests count such calls made *by bptrain's own code*
during ``fit`` on CPU (the calls are the same on any device) and check that the count does
not grow with the number of steps: only log steps and epoch ends may read values back.

Where bptrain picks a code path by device, the tests run the GPU one: the non-finite guard
(``trainer.nan_policy: stop``) checks every step eagerly on CPU, where a host read costs
nothing, and lazily on a GPU; ``gpu_paths`` makes it take the lazy path here.
``nan_policy: skip`` must decide before each update and reads one value per step by design.
"""

from __future__ import annotations

import io
import sys
from collections import Counter
from pathlib import Path

import pytest
import torch
from rich.console import Console

import bptrain
from bptrain.config import load_config
from bptrain.faults import NonFiniteGuard
from bptrain.train import fit

PACKAGE = str(Path(bptrain.__file__).parent)
SYNCING = (
    "item",
    "tolist",
    "cpu",
    "numpy",
    "__float__",
    "__int__",
    "__index__",
    "__bool__",
    "__format__",
)


@pytest.fixture
def host_reads(monkeypatch: pytest.MonkeyPatch) -> Counter:
    """Count host reads of tensor values whose direct caller is a bptrain module."""
    counts: Counter = Counter()

    def counting(name: str):
        original = getattr(torch.Tensor, name)

        def wrapper(self, *args, **kwargs):
            caller = sys._getframe(1)
            if caller.f_code.co_filename.startswith(PACKAGE):
                counts[f"{Path(caller.f_code.co_filename).name}:{caller.f_lineno} {name}"] += 1
            return original(self, *args, **kwargs)

        return wrapper

    for name in SYNCING:
        monkeypatch.setattr(torch.Tensor, name, counting(name))
    return counts


@pytest.fixture
def gpu_paths(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make device-dependent choices as they are made on a GPU."""
    original = NonFiniteGuard.__init__

    def as_on_gpu(self, policy: str, *args, **kwargs) -> None:
        original(self, policy, *args, **kwargs)
        self.eager = policy == "skip"  # what __init__ decides for a CUDA device

    monkeypatch.setattr(NonFiniteGuard, "__init__", as_on_gpu)


def run(tmp_path: Path, batch_size: int, log_every: int, extra: list[str] = ()) -> None:
    tmp_path.mkdir(parents=True, exist_ok=True)
    config = tmp_path / "sync.yaml"
    config.write_text(
        "data: {source: blobs, n_samples: 480, n_features: 4, val_fraction: 0.25}\n"
        "model: {hidden: [16, 16]}\n",
        encoding="utf-8",
    )
    cfg = load_config(
        config,
        [
            f"data.batch_size={batch_size}",
            "trainer.max_epochs=2",
            "trainer.device=cpu",
            f"logging.log_every_n_steps={log_every}",
            f"logging.run_dir={tmp_path / 'runs'}",
            "logging.tensorboard=false",
            "logging.progress='off'",
            *extra,
        ],
    )
    fit(cfg, Console(file=io.StringIO()))


@pytest.mark.parametrize(
    "extra",
    [
        [],
        [
            "trainer.grad_clip.max_norm=1.0",
            "trainer.accumulate_grad_batches=2",
            "scheduler.name=cosine",
        ],
    ],
    ids=["defaults", "clip-accumulate-schedule"],
)
def test_host_reads_do_not_grow_with_steps(
    tmp_path: Path, host_reads: Counter, gpu_paths: None, extra: list[str]
):
    run(tmp_path / "few", batch_size=90, log_every=10**9, extra=extra)  # 4 steps per epoch
    few = dict(host_reads)
    host_reads.clear()
    run(tmp_path / "many", batch_size=10, log_every=10**9, extra=extra)  # 36 steps per epoch
    assert dict(host_reads) == few, "a host read per step crept into the loop"


def test_the_counter_sees_log_step_reads(tmp_path: Path, host_reads: Counter, gpu_paths: None):
    """Logging every step must read values every step: proves the counter is not blind."""
    run(tmp_path / "quiet", batch_size=10, log_every=10**9)
    quiet = sum(host_reads.values())
    host_reads.clear()
    run(tmp_path / "loud", batch_size=10, log_every=1)
    assert sum(host_reads.values()) >= quiet + 2 * 36
