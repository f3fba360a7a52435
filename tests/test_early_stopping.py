"""Early stopping on crafted metric sequences (Keras's own test vectors), then in a real run."""

from __future__ import annotations

import json
import math

import pytest
from ckpt_helpers import run_dirs, run_fit, tiny_config

from bptrain.checkpoint import load_checkpoint
from bptrain.early_stopping import EarlyStopping
from bptrain.errors import UserError


def feed(stopper: EarlyStopping, values: list[float], key: str = "val/loss") -> int | None:
    """Feed values as epochs 1, 2, ...; return the epoch that stopped the run (None: never)."""
    for epoch, value in enumerate(values, start=1):
        if stopper.update({key: value}, epoch):
            return epoch
    return None


KERAS_LOSSES = [10.0, 9.0, 8.0, 9.0, 8.9, 8.8, 8.7, 8.6, 8.5]


@pytest.mark.parametrize(("patience", "keras_stopped_epoch"), [(0, 3), (1, 3), (2, 4), (3, 5)])
def test_patience_matches_keras(patience, keras_stopped_epoch):
    """keras early_stopping_test.test_early_stopping_patience: stopped_epoch == max(patience, 1) + 2 (0-based)."""
    stopper = EarlyStopping(patience=patience)
    assert feed(stopper, KERAS_LOSSES) == keras_stopped_epoch + 1  # bptrain epochs are 1-based
    assert stopper.best == 8.0 and stopper.best_epoch == 3


def test_best_epoch_for_restoring_weights_matches_keras():
    """keras test_early_stopping_final_weights_when_restoring_model_weights, first case."""
    stopper = EarlyStopping(patience=2)
    assert feed(stopper, [0.2, 0.15, 0.1, 0.11, 0.12]) == 5
    assert stopper.best_epoch == 3  # Keras restores epoch index 2


def test_baseline_never_beaten_matches_keras():
    """keras: no epoch beats baseline 0.5 -> train exactly `patience` epochs, best is still tracked."""
    stopper = EarlyStopping(patience=5, baseline=0.5)
    assert feed(stopper, [0.9, 0.8, 0.7, 0.71, 0.72, 0.73]) == 5
    assert stopper.best_epoch == 3 and stopper.best == 0.7
    assert "baseline" in stopper.reason


def test_beating_the_baseline_resets_the_wait():
    stopper = EarlyStopping(patience=2, baseline=0.5)
    assert feed(stopper, [0.9, 0.4, 0.45, 0.46]) == 4
    assert stopper.best_epoch == 2


def test_min_delta_is_strict():
    """An improvement must beat the best by MORE than min_delta (Keras: value - delta < best)."""
    stopper = EarlyStopping(patience=1, min_delta=0.5)
    assert feed(stopper, [10.0, 9.5, 9.4999]) == 2  # 9.5 improves by exactly 0.5: not enough
    assert stopper.best_epoch == 1
    stopper = EarlyStopping(patience=1, min_delta=0.5)
    assert feed(stopper, [10.0, 9.4999]) is None and stopper.best_epoch == 2


def test_max_mode_and_equal_values_are_not_improvements():
    stopper = EarlyStopping(monitor="val/acc", mode="max", patience=1)
    assert feed(stopper, [0.5, 0.7, 0.7], key="val/acc") == 3
    assert stopper.best_epoch == 2


def test_start_from_epoch_ignores_warmup_validations():
    stopper = EarlyStopping(patience=0, start_from_epoch=2)
    assert (
        feed(stopper, [1.0, 2.0, 3.0, 4.0]) == 4
    )  # epochs 1-2 ignored; epoch 3 is the first counted
    assert stopper.best_epoch == 3


def test_improving_over_the_best_never_stops_even_below_the_baseline():
    """Keras: a value that beats the best returns before the patience test, baseline or not."""
    stopper = EarlyStopping(patience=0, baseline=0.1)
    assert feed(stopper, [1.0, 0.9, 0.8, 0.85]) == 4


def test_the_first_epoch_never_stops_the_run():
    """Keras's `epoch > 0` guard: a non-improving first validation (here NaN, counted) does not stop."""
    stopper = EarlyStopping(patience=0, check_finite=False)
    assert feed(stopper, [math.nan, 1.0, 1.0]) == 3


def test_nan_stops_at_once_with_check_finite_and_counts_as_no_improvement_without():
    stopper = EarlyStopping(patience=5)
    assert feed(stopper, [1.0, math.nan]) == 2
    assert "nan" in stopper.reason and stopper.best_epoch == 1
    stopper = EarlyStopping(patience=1, check_finite=False)
    assert feed(stopper, [math.nan, 1.0, math.nan, math.nan]) == 3
    assert stopper.best == 1.0  # a NaN is never recorded as the best (Keras would record it first)


def test_missing_metric_lists_the_available_ones():
    stopper = EarlyStopping(monitor="val/acc")
    with pytest.raises(UserError, match=r"val/acc.*train/loss, val/loss"):
        stopper.update({"train/loss": 1.0, "val/loss": 1.0, "epoch": 1}, 1)


def test_negative_min_delta_is_refused():
    with pytest.raises(ValueError):
        EarlyStopping(min_delta=-0.1)


def test_state_dict_round_trip_continues_identically():
    values = [5.0, 4.0, 4.5, 3.0, 3.5, 3.6, 3.7]
    whole = EarlyStopping(patience=2)
    expected = feed(whole, values)
    first = EarlyStopping(patience=2)
    for epoch, value in enumerate(values[:3], start=1):
        first.update({"val/loss": value}, epoch)
    second = EarlyStopping(patience=2)
    second.load_state_dict(json.loads(json.dumps(first.state_dict())))
    stopped = None
    for epoch, value in enumerate(values[3:], start=4):
        if second.update({"val/loss": value}, epoch):
            stopped = epoch
            break
    assert stopped == expected == 6
    assert second.state_dict() == whole.state_dict()


# --------------------------------------------------------------------------- in a run


def test_early_stopping_in_a_run_reports_and_restores_best_weights(tmp_path):
    """A run whose lr makes val/loss worsen stops early; reason/best epoch reach summary and metrics."""
    cfg = tiny_config(
        tmp_path,
        optimizer={"name": "sgd", "lr": 3.0},  # diverging-ish: validation gets worse quickly
        scheduler={"name": "none"},
        trainer={
            "max_epochs": 30,
            "early_stopping": {"patience": 1, "restore_best_weights": True, "check_finite": False},
            "nan_policy": "ignore",
        },
    )
    summary = run_fit(cfg)
    (run,) = run_dirs(tmp_path)
    assert summary["status"] == "early_stopped", summary
    assert summary["stop_reason"].startswith("early stopping: val/loss did not improve")
    es = summary["early_stopping"]
    assert es["stopped_epoch"] < 30 and es["restored_best_weights"]
    events = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert any(e["type"] == "event" and e["event"] == "early_stopped" for e in events)
    stop_line = [e for e in events if e["type"] == "epoch" and "early_stop" in e]
    assert len(stop_line) == 1 and stop_line[0]["epoch"] == es["stopped_epoch"]
    # the final exported model is the best epoch's: its val/loss equals the best one
    from bptrain.inference import evaluate_checkpoint

    again = evaluate_checkpoint(cfg, run / "checkpoints/last.safetensors", "val")
    best_val = next(
        e["val/loss"] for e in events if e.get("epoch") == es["best_epoch"] and e["type"] == "epoch"
    )
    assert again["val/loss"] == pytest.approx(best_val, rel=1e-6)
    # stopping state survives resume: an early-stopped run stays stopped
    again_summary = run_fit(cfg, resume="auto")
    assert (
        again_summary["status"] == "early_stopped" and again_summary["epochs"] == summary["epochs"]
    )
    assert (
        load_checkpoint(run / "checkpoints/last.pt")["early_stopping"]["stopped_epoch"]
        == es["stopped_epoch"]
    )


def test_early_stopping_on_val_metric_without_validation_split_is_refused(tmp_path):
    cfg = tiny_config(
        tmp_path, data={"val_fraction": 0.0}, trainer={"early_stopping": {"monitor": "val/acc"}}
    )
    with pytest.raises(UserError, match="no validation split"):
        run_fit(cfg)
