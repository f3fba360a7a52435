"""Resume is exact: an interrupted and resumed run ends bit-identical to one that never stopped (CPU)."""

from __future__ import annotations

import signal

import pytest
from ckpt_helpers import (
    assert_same_weights,
    metric_lines,
    run_dirs,
    run_fit,
    signal_at_step,
    tiny_config,
    weights,
)

from bptrain.errors import UserError
from bptrain.faults import Interrupted

# 160 training samples / batch 16 = 10 micro-batches per epoch.
VARIANTS = {
    "fp32-warmup_cosine-accumulate2": {"trainer": {"max_epochs": 3, "accumulate_grad_batches": 2}},
    "fp16-onecycle-gradclip": {
        "trainer": {"max_epochs": 3, "precision": "fp16", "grad_clip": {"max_norm": 1.0}},
        "scheduler": {"name": "onecycle"},
    },
    # adversarial training: the attack's random start is a function of (seed, step, micro-batch)
    "adversarial-pgd-fp16-accumulate2": {
        "trainer": {
            "max_epochs": 3,
            "precision": "fp16",
            "accumulate_grad_batches": 2,
            "adversarial": {
                "method": "pgd",
                "epsilon": 0.1,
                "steps": 2,
                "fraction": 0.5,
                "warmup_steps": 4,
            },
        }
    },
    "adversarial-trades-l2": {
        "trainer": {
            "max_epochs": 3,
            "adversarial": {"method": "trades", "epsilon": 0.3, "steps": 2, "norm": "l2"},
        }
    },
}


def _straight_and_resumed(tmp_path, monkeypatch, sections, stop_after_steps, signum):
    straight = run_fit(tiny_config(tmp_path / "a", **sections))
    cfg = tiny_config(tmp_path / "b", **sections)
    signal_at_step(monkeypatch, stop_after_steps, signum)
    with pytest.raises(Interrupted) as stopped:
        run_fit(cfg)
    assert stopped.value.signum == signum and stopped.value.step == stop_after_steps
    monkeypatch.undo()
    resumed = run_fit(cfg, resume="auto")
    (a,), (b,) = run_dirs(tmp_path / "a"), run_dirs(tmp_path / "b")
    return straight, resumed, a, b


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_resume_is_bit_exact_mid_epoch(tmp_path, monkeypatch, variant):
    """Stopped by SIGUSR1 in the middle of epoch 2 (shuffle, dropout, scheduler, accumulation or fp16)."""
    sections = VARIANTS[variant]
    steps_per_epoch = 10 // sections["trainer"].get("accumulate_grad_batches", 1)
    stop_at = steps_per_epoch + steps_per_epoch // 2 + 1
    straight, resumed, a, b = _straight_and_resumed(
        tmp_path, monkeypatch, sections, stop_at, signal.SIGUSR1
    )
    assert_same_weights(weights(a / "checkpoints/last.pt"), weights(b / "checkpoints/last.pt"))
    assert metric_lines(a) == metric_lines(b)  # every step line, epoch line and test line
    assert resumed["final"] == straight["final"] | {"time": resumed["final"]["time"]}
    assert resumed["test"] == straight["test"]


def test_resume_is_bit_exact_after_signal_at_epoch_end(tmp_path, monkeypatch):
    """SIGTERM on the last step of epoch 1: validation and the epoch line happen after resuming."""
    sections = VARIANTS["fp16-onecycle-gradclip"]
    straight, resumed, a, b = _straight_and_resumed(
        tmp_path, monkeypatch, sections, 10, signal.SIGTERM
    )
    assert_same_weights(weights(a / "checkpoints/last.pt"), weights(b / "checkpoints/last.pt"))
    assert metric_lines(a) == metric_lines(b)
    assert resumed["best"] == straight["best"]


@pytest.mark.parametrize("precision", ["32", "fp16"])
def test_extending_max_epochs_is_bit_exact_at_epoch_boundary(tmp_path, precision):
    """A 2-epoch run resumed with max_epochs 4 equals a 4-epoch run (per-epoch scheduler)."""
    sections = {
        "trainer": {"max_epochs": 4, "precision": precision},
        "scheduler": {"name": "step", "step_size": 1, "gamma": 0.7},
    }
    run_fit(tiny_config(tmp_path / "a", **sections))
    short = {**sections, "trainer": {"max_epochs": 2, "precision": precision}}
    run_fit(tiny_config(tmp_path / "b", **short))
    resumed = run_fit(tiny_config(tmp_path / "b", **sections), resume="auto")
    (a,), (b,) = run_dirs(tmp_path / "a"), run_dirs(tmp_path / "b")
    assert resumed["epochs"] == 4
    assert_same_weights(weights(a / "checkpoints/last.pt"), weights(b / "checkpoints/last.pt"))
    # the 2-epoch run also logged test/* after epoch 2; everything else matches line by line
    assert metric_lines(a, ("step", "epoch")) == metric_lines(b, ("step", "epoch"))


def test_extending_a_onecycle_run_keeps_the_schedule_horizon(tmp_path):
    """onecycle raises when stepped past total_steps: an extended run holds the final LR instead."""
    sections = {"scheduler": {"name": "onecycle"}, "trainer": {"max_epochs": 2}}
    first = run_fit(tiny_config(tmp_path, **sections))
    longer = {**sections, "trainer": {"max_epochs": 3}}
    resumed = run_fit(tiny_config(tmp_path, **longer), resume="auto")
    assert resumed["run_dir"] == first["run_dir"] and resumed["steps"] == 30
    assert resumed["final"]["lr"] == pytest.approx(first["final"]["lr"])  # stays at the final LR


def test_resume_auto_without_a_run_starts_fresh_and_on_a_finished_run_does_nothing(tmp_path):
    cfg = tiny_config(tmp_path, trainer={"max_epochs": 1})
    first = run_fit(cfg, resume="auto")
    again = run_fit(cfg, resume="auto")
    assert again["run_dir"] == first["run_dir"] and again["steps"] == first["steps"] == 10
    assert len(run_dirs(tmp_path)) == 1


@pytest.mark.parametrize(
    ("section", "change"),
    [("model", {"hidden": [32]}), ("data", {"batch_size": 8})],
)
def test_resume_refuses_a_changed_model_or_data_section(tmp_path, section, change):
    run_fit(tiny_config(tmp_path, trainer={"max_epochs": 1}))
    changed = tiny_config(tmp_path, trainer={"max_epochs": 2}, **{section: change})
    with pytest.raises(UserError, match=rf"'{section}' section differs.*{section}\."):
        run_fit(changed, resume="auto")


def test_metrics_after_the_last_checkpoint_are_not_duplicated(tmp_path):
    """A kill after last.pt leaves extra metric lines; resuming cuts metrics.jsonl back first."""
    cfg = tiny_config(tmp_path, trainer={"max_epochs": 1})
    run_fit(cfg)
    (run,) = run_dirs(tmp_path)
    original = (run / "metrics.jsonl").read_text()
    with (run / "metrics.jsonl").open("a") as handle:  # what a killed run would have logged
        handle.write('{"type": "step", "step": 11}\n')
    run_fit(tiny_config(tmp_path, trainer={"max_epochs": 2}), resume="auto")
    lines = (run / "metrics.jsonl").read_text()
    assert lines.startswith(original) and '"step": 11}' not in lines


def test_a_mid_epoch_checkpoint_resumed_on_another_world_size_continues_after_its_samples():
    from bptrain.run_state import LoopState

    saved = LoopState(
        epoch=1, step=9, batch_in_epoch=6, world_size=1, rank_sums=[(3.0, 96)]
    ).state_dict()
    rank0, rank1 = LoopState(world_size=2, rank=0), LoopState(world_size=2, rank=1)
    rank0.load_state_dict(saved)  # rank r trains positions r, r+2, ...: 3 batches each
    rank1.load_state_dict(saved)
    assert rank0.batch_in_epoch == rank1.batch_in_epoch == 3
    # the epoch's train/loss sums every rank's share: rank 0 holds what was trained before
    assert (rank0.epoch_loss_sum, rank0.epoch_samples) == (3.0, 96)
    assert (rank1.epoch_loss_sum, rank1.epoch_samples) == (0.0, 0)
    assert rank1.world_size == 2 and rank1.rank == 1  # the run's own, not the file's
    rank0.rank_sums = [(3.5, 112), (0.5, 16)]  # what Run.gather records at the next save
    back = LoopState(world_size=1)
    back.load_state_dict(rank0.state_dict())
    assert (back.batch_in_epoch, back.epoch_loss_sum, back.epoch_samples) == (6, 4.0, 128)
    older = {k: v for k, v in saved.items() if k not in ("world_size", "rank_sums")}  # 0.1 files
    untouched = LoopState(world_size=2)
    untouched.load_state_dict(older)
    assert untouched.batch_in_epoch == 6


def test_each_rank_resumes_its_own_share_of_the_epoch_sums_on_the_same_world_size():
    from bptrain.run_state import LoopState

    saved = LoopState(
        batch_in_epoch=4, world_size=2, epoch_loss_sum=1.0, epoch_samples=64,
        rank_sums=[(1.0, 64), (2.0, 64)],
    ).state_dict()  # fmt: skip
    rank1 = LoopState(world_size=2, rank=1)
    rank1.load_state_dict(saved)
    assert (rank1.batch_in_epoch, rank1.epoch_loss_sum, rank1.epoch_samples) == (4, 2.0, 64)
