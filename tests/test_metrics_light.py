"""The default metrics (accuracy, MAE) are counted without importing torchmetrics (its import
costs about 2 s of CPU): they must give torchmetrics' values bit for bit, also over ranks, and a
run with the default metrics must not import torchmetrics at all."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp
from torchmetrics.classification import MulticlassAccuracy
from torchmetrics.regression import MeanAbsoluteError as TMMeanAbsoluteError

from bptrain.metrics import Accuracy, MeanAbsoluteError, build_metrics


def _batches(seed: int, classes: int = 7) -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    out = []
    for n in (64, 64, 13, 1):
        logits = torch.randn(n, classes, generator=g) * 3
        logits[0, :2] = 5.0  # a tie: the first of equal maxima wins on both sides
        out.append((logits.softmax(-1), torch.randint(0, classes, (n,), generator=g)))
    return out


def test_accuracy_matches_torchmetrics_bit_for_bit() -> None:
    for seed in range(5):
        ours, theirs = Accuracy(), MulticlassAccuracy(7, average="micro", validate_args=False)
        for preds, target in _batches(seed):
            ours.update(preds, target)
            theirs.update(preds, target)
        assert ours.compute().item() == theirs.compute().item()
    ours.reset()
    assert ours.compute().item() == 0.0  # no samples: 0, as torchmetrics' safe division gives


def test_mae_matches_torchmetrics_bit_for_bit() -> None:
    g = torch.Generator().manual_seed(0)
    for shape in ((64,), (64, 3)):
        ours, theirs = MeanAbsoluteError(), TMMeanAbsoluteError()
        for _ in range(6):
            preds, target = torch.randn(*shape, generator=g), torch.randn(*shape, generator=g) * 9
            ours.update(preds, target)
            theirs.update(preds, target)
        assert ours.compute().item() == theirs.compute().item()


def test_defaults_are_the_light_metrics_others_torchmetrics() -> None:
    cls = build_metrics(None, "classification", 10).metrics
    reg = build_metrics(None, "regression", None).metrics
    assert isinstance(cls["acc"], Accuracy) and isinstance(reg["mae"], MeanAbsoluteError)
    f1 = type("E", (), {"name": "f1", "average": "macro", "log_as": None})()
    assert isinstance(build_metrics([f1], "classification", 10).metrics["f1"], torch.nn.Module)


def _ranks(rank: int, world: int, port: int, results: dict) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.distributed.init_process_group("gloo", rank=rank, world_size=world)
    try:
        ours, theirs = Accuracy(), MulticlassAccuracy(7, average="micro", validate_args=False)
        mae, tm_mae = MeanAbsoluteError(), TMMeanAbsoluteError()
        for preds, target in _batches(rank):
            ours.update(preds, target)
            theirs.update(preds, target)
            mae.update(preds[:, 0], target.float())
            tm_mae.update(preds[:, 0], target.float())
        results[rank] = (
            ours.compute().item(),
            theirs.compute().item(),
            mae.compute().item(),
            tm_mae.compute().item(),
        )
    finally:
        torch.distributed.destroy_process_group()


def test_light_metrics_sync_over_ranks_as_torchmetrics() -> None:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with mp.Manager() as manager:
        results = manager.dict()
        mp.spawn(_ranks, args=(2, port, results), nprocs=2)
        values = dict(results)
    for acc, tm_acc, mae, tm_mae in values.values():
        assert acc == tm_acc and mae == tm_mae
    assert values[0] == values[1]  # every rank sees the metric over both shards


def test_fit_with_default_metrics_does_not_import_torchmetrics(tmp_path: Path) -> None:
    script = f"""
import sys
from bptrain.api import fit
summary = fit({{"data": {{"source": "digits", "batch_size": 64}}, "model": {{"name": "mlp", "hidden": [16]}},
    "trainer": {{"max_epochs": 1, "device": "cpu"}},
    "logging": {{"run_dir": {str(tmp_path)!r}, "progress": "off", "report": False, "tensorboard": False}}}})
assert "val/acc" in summary["final"], summary["final"]
print("torchmetrics" in sys.modules)
"""
    out = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=False, timeout=300
    )
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().splitlines()[-1] == "False"


@pytest.mark.parametrize("name", ["accuracy", "mae"])
def test_named_default_metric_is_light(name: str) -> None:
    entry = type("E", (), {"name": name, "log_as": None})()
    task = "classification" if name == "accuracy" else "regression"
    built = build_metrics([entry], task, 3 if task == "classification" else None).metrics
    assert type(next(iter(built.values()))).__name__ in ("Accuracy", "MeanAbsoluteError")


def test_accuracy_alone_is_counted_on_the_logits_without_a_softmax() -> None:
    """The default evaluation passes accuracy the logits (argmax_only): the same count as on
    the probabilities, without a softmax per batch; any other metric gets probabilities."""
    from bptrain.metrics import metric_inputs

    alone = build_metrics(None, "classification", 7)
    with_f1 = build_metrics(
        [type("E", (), {"name": n, "average": "macro"})() for n in ("accuracy", "f1")],
        "classification",
        7,
    )
    assert alone.argmax_only and not with_f1.argmax_only
    assert not build_metrics(None, "regression", None).argmax_only
    for seed in range(5):
        on_logits, on_probs = Accuracy(), Accuracy()
        for probs, target in _batches(seed):
            logits = probs.log() * 1.7 + 0.3  # another scale and shift: the same argmax
            preds, tgt = metric_inputs(logits, target, "classification", False, False, True)
            assert preds is not None and torch.equal(preds, logits)  # passed as they are
            on_logits.update(preds, tgt)
            on_probs.update(
                *metric_inputs(logits, target, "classification", False, False, scores=False)
            )
        assert on_logits.compute().item() == on_probs.compute().item()
