"""Faults: full disks, unwritable run directories, NaN/Inf policies, signals during a save."""

from __future__ import annotations

import errno
import json
import math
import os
import signal
import textwrap

import pytest
import torch
from ckpt_helpers import assert_same_weights, run_dirs, run_fit, tiny_config, weights

import bptrain.checkpoint as checkpoint
from bptrain.checkpoint import load_checkpoint, save_checkpoint
from bptrain.errors import TrainingError, UserError
from bptrain.faults import Interrupted, StopFlag

# --------------------------------------------------------------------------- disk


def _half_write_then_enospc(state, handle):
    handle.write(b"PK\x03\x04 half a checkpoint")
    raise OSError(errno.ENOSPC, "No space left on device")


def test_full_disk_mid_write_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    path = tmp_path / "last.pt"
    save_checkpoint({"model": {"w": torch.ones(3)}}, path)
    monkeypatch.setattr(checkpoint.torch, "save", _half_write_then_enospc)
    with pytest.raises(
        TrainingError, match=r"No space left.*disk is full.*previous last.pt is intact"
    ):
        save_checkpoint({"model": {"w": torch.zeros(3)}}, path)
    monkeypatch.undo()
    assert torch.equal(load_checkpoint(path)["model"]["w"], torch.ones(3))
    assert list(tmp_path.iterdir()) == [path]  # no temporary file left behind


def test_failing_rename_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    path = tmp_path / "last.pt"
    save_checkpoint({"model": {"w": torch.ones(3)}}, path)

    def fail(*args):
        raise OSError(errno.EROFS, "Read-only file system")

    monkeypatch.setattr(checkpoint.os, "replace", fail)
    with pytest.raises(TrainingError, match="Read-only"):
        save_checkpoint({"model": {"w": torch.zeros(3)}}, path)
    monkeypatch.undo()
    assert torch.equal(load_checkpoint(path)["model"]["w"], torch.ones(3))
    assert list(tmp_path.iterdir()) == [path]


def test_full_disk_during_a_run_fails_cleanly_and_the_last_good_checkpoint_resumes(
    tmp_path, monkeypatch
):
    cfg = tiny_config(tmp_path, trainer={"max_epochs": 1})
    run_fit(cfg)
    (run,) = run_dirs(tmp_path)
    before = weights(run / "checkpoints/last.pt")
    monkeypatch.setattr(checkpoint.torch, "save", _half_write_then_enospc)
    longer = tiny_config(tmp_path, trainer={"max_epochs": 2})
    with pytest.raises(TrainingError, match="No space left"):
        run_fit(longer, resume="auto")
    monkeypatch.undo()
    assert_same_weights(weights(run / "checkpoints/last.pt"), before)
    assert not list((run / "checkpoints").glob(".*.tmp"))
    assert run_fit(longer, resume="auto")["epochs"] == 2


def test_unwritable_run_directory_is_a_clear_error(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    cfg = tiny_config(tmp_path)
    cfg.logging.run_dir = blocker / "runs"
    with pytest.raises(UserError, match=r"cannot write the run directory.*logging.run_dir"):
        run_fit(cfg)


# --------------------------------------------------------------------------- NaN / Inf

POISON = textwrap.dedent(
    """
    import torch
    from torch import nn

    class InfGrad(torch.autograd.Function):
        @staticmethod
        def forward(ctx, x):
            return x.clone()

        @staticmethod
        def backward(ctx, grad):
            return grad * float("inf")

    class Poison(nn.Module):
        '''Output NaN (or, with grad=True, an inf gradient) on the training forward calls listed in `at`.'''

        def __init__(self, at, grad=False, forever=False):
            super().__init__()
            self.at, self.grad, self.forever, self.calls = set(at), grad, forever, 0

        def forward(self, h):
            if self.training and h.shape[0] > 2:
                self.calls += 1
                hit = self.calls in self.at or (self.forever and self.calls >= min(self.at))
                if hit:
                    return InfGrad.apply(h) if self.grad else h * float("nan")
            return h

    class Flaky(nn.Module):
        def __init__(self, at, grad=False, forever=False):
            super().__init__()
            self.hidden = nn.Linear(2, 16)
            self.poison = Poison(at, grad, forever)
            self.head = nn.Linear(16, 2)

        def forward(self, x):
            return self.head(self.poison(torch.relu(self.hidden(x))))
    """
)


@pytest.fixture
def flaky(tmp_path, monkeypatch):
    (tmp_path / "flaky_model.py").write_text(POISON)
    monkeypatch.syspath_prepend(str(tmp_path))

    def model(**init_args):
        return {"class_path": "flaky_model.Flaky", "init_args": init_args}

    return model


def test_nan_stop_writes_a_report_naming_the_layer_and_keeps_the_last_good_checkpoint(
    tmp_path, flaky
):
    cfg = tiny_config(tmp_path, model=flaky(at=[15], forever=True), trainer={"max_epochs": 3})
    with pytest.raises(
        TrainingError, match=r"poison.*step 15.*nan_report.json.*last good checkpoint"
    ):
        run_fit(cfg)
    (run,) = run_dirs(tmp_path)
    report = json.loads((run / "nan_report.json").read_text())
    assert report["step"] == 15 and report["epoch"] == 2 and report["nan_policy"] == "stop"
    assert report["first_nonfinite"] == "output of layer poison (Poison)"
    assert report["last_good_checkpoint"].endswith("last.pt")
    good = load_checkpoint(run / "checkpoints/last.pt")
    assert good["progress"]["step"] == 10  # epoch 1's checkpoint, written before the NaN
    assert all(torch.isfinite(v).all() for v in good["model"].values())


def test_nan_skip_skips_and_counts_then_stops_past_the_limit(tmp_path, flaky):
    cfg = tiny_config(
        tmp_path, model=flaky(at=[4, 12]), trainer={"max_epochs": 2, "nan_policy": "skip"}
    )
    summary = run_fit(cfg)
    assert summary["status"] == "completed" and summary["nonfinite"]["skipped_steps"] == 2
    assert math.isfinite(summary["final"]["train/loss"])
    (run,) = run_dirs(tmp_path)
    assert all(torch.isfinite(v).all() for v in weights(run / "checkpoints/last.pt").values())
    strict = tiny_config(
        tmp_path / "b",
        model=flaky(at=[4, 12]),
        trainer={"max_epochs": 2, "nan_policy": "skip", "max_skipped_steps": 1},
    )
    with pytest.raises(TrainingError, match=r"more than trainer\.max_skipped_steps=1"):
        run_fit(strict)


def test_inf_gradient_stops_fp32_but_fp16_counts_it_as_a_scaler_skip(tmp_path, flaky):
    poisoned = flaky(at=[7], grad=True)
    with pytest.raises(TrainingError, match="gradient of"):
        run_fit(tiny_config(tmp_path / "a", model=poisoned, trainer={"max_epochs": 1}))
    summary = run_fit(
        tiny_config(tmp_path / "b", model=poisoned, trainer={"max_epochs": 1, "precision": "fp16"})
    )
    assert summary["status"] == "completed"
    assert summary["nonfinite"]["amp_skipped_steps"] >= 1
    (run,) = run_dirs(tmp_path / "b")
    lines = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert lines[-1]["type"] != "event"
    assert any(x.get("amp_skipped_steps", 0) >= 1 for x in lines if x["type"] == "step")


def test_nan_ignore_trains_through(tmp_path, flaky):
    cfg = tiny_config(
        tmp_path, model=flaky(at=[3]), trainer={"max_epochs": 1, "nan_policy": "ignore"}
    )
    assert run_fit(cfg)["status"] == "completed"


# --------------------------------------------------------------------------- signals


def test_signals_during_a_save_are_only_recorded():
    flag = StopFlag()
    with flag.installed():
        with flag.saving():
            os.kill(os.getpid(), signal.SIGTERM)
            os.kill(os.getpid(), signal.SIGINT)
            os.kill(os.getpid(), signal.SIGINT)  # would force a stop outside a save
        assert flag.signum == signal.SIGTERM
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)  # second Ctrl-C, not saving: forced


def test_a_second_signal_while_saving_does_not_corrupt_last_pt(tmp_path, monkeypatch):
    """SIGUSR1 stops the run; while its last.pt is being written, SIGTERM and Ctrl-C arrive."""
    import bptrain.checkpoint as checkpoint
    import bptrain.train as train

    real_save = train.save_checkpoint
    calls = {"n": 0}

    def save_with_signals(state, path):
        calls["n"] += 1
        if calls["n"] == 1:  # the first save (epoch 1's best.pt) triggers the stop; a Ctrl-C
            os.kill(os.getpid(), signal.SIGUSR1)  # while it is written is only recorded too
            os.kill(os.getpid(), signal.SIGINT)
        else:
            os.kill(os.getpid(), signal.SIGTERM)
            os.kill(os.getpid(), signal.SIGINT)
        real_save(state, path)

    monkeypatch.setattr(train, "save_checkpoint", save_with_signals)  # last.pt
    monkeypatch.setattr(checkpoint, "save_checkpoint", save_with_signals)  # best.pt (epoch 1)
    # saves in the loop: with the background writer the first signal would arrive whenever its
    # thread reaches last.pt (behind epoch 1's best.pt), a step or an epoch later under load
    checkpoint = {"async_write": False}
    cfg = tiny_config(tmp_path, trainer={"max_epochs": 3, "checkpoint": checkpoint})
    with pytest.raises(Interrupted) as stopped:
        run_fit(cfg)
    assert stopped.value.signum == signal.SIGUSR1 and stopped.value.exit_code == 138
    assert stopped.value.saved and stopped.value.step == 11
    (run,) = run_dirs(tmp_path)
    assert load_checkpoint(run / "checkpoints/last.pt")["progress"]["step"] == 11


def test_ctrl_c_saves_at_the_step_boundary_and_hints_how_to_resume(tmp_path, monkeypatch):
    from ckpt_helpers import signal_at_step

    signal_at_step(monkeypatch, 5, signal.SIGINT)
    with pytest.raises(Interrupted) as stopped:
        run_fit(tiny_config(tmp_path))
    assert stopped.value.exit_code == 130 and stopped.value.saved
    (run,) = run_dirs(tmp_path)
    assert load_checkpoint(run / "checkpoints/last.pt")["progress"]["step"] == 5
    hint = stopped.value.hint("bptrain fit tiny.yaml")
    assert hint.endswith(f"Resume with: bptrain fit tiny.yaml --resume {run}")


def test_the_fused_non_finite_check_falls_back_when_a_later_gradient_does_not_fit_it():
    """FiniteGrads settles on the fused kernel at the first step with gradients; a sparse
    gradient that appears later (an embedding unused at step 1) falls back to the total norm
    instead of crashing, and a NaN is still caught either way."""
    from torch import nn

    from bptrain.faults import FiniteGrads

    model = nn.ModuleDict({"dense": nn.Linear(3, 2), "emb": nn.Embedding(5, 2, sparse=True)})
    check = FiniteGrads()
    model["dense"](torch.randn(4, 3)).sum().backward()
    assert check.check(model)  # fused: dense float32 gradients only
    model["emb"](torch.tensor([1, 2])).sum().backward()  # now a sparse gradient too
    assert check.check(model)
    model["dense"].weight.grad[0, 0] = float("nan")
    assert not check.check(model)


def test_the_fused_check_reports_each_step_on_its_own():
    """The fused check's flag is zeroed after a hit, not before every step: a finite step after
    a non-finite one (nan_policy skip goes on) is finite again, and a NaN at the very first
    step (when the check settles on the kernel) is caught."""
    from torch import nn

    from bptrain.faults import FiniteGrads

    model, check = nn.Linear(3, 2), FiniteGrads()
    for bad in (True, False, False, True, True, False, True):
        model.zero_grad(set_to_none=True)
        model(torch.randn(4, 3)).sum().backward()
        if bad:
            model.weight.grad[1, 2] = -math.inf
        assert check.check(model) is (not bad)
    assert check._fused  # the kernel, not the fallback, gave these answers


def test_the_lazy_gpu_check_never_saves_weights_a_hidden_nan_gradient_poisoned(
    tmp_path, monkeypatch
):
    """On a GPU the check is lazy: the loss every step, the gradients only where a norm is
    computed anyway. A NaN gradient with a finite loss at another step is applied unseen; the
    next checkpoint looks at the weights and stops instead of overwriting the good last.pt.
    Run here on CPU with the GPU's choice (as tests/test_no_sync.py's gpu_paths)."""
    import bptrain.train as train
    from bptrain.faults import NonFiniteGuard

    original = NonFiniteGuard.__init__

    def as_on_gpu(self, policy, *args, **kwargs):
        original(self, policy, *args, **kwargs)
        self.eager = policy == "skip"

    real = train.clip_and_measure
    calls = {"n": 0}

    def poison_step_6(model, clip, measure):
        calls["n"] += 1
        if calls["n"] == 6:  # after backward, before the update; the loss stays finite
            next(model.parameters()).grad[0] = math.nan
        return real(model, clip, measure)

    monkeypatch.setattr(NonFiniteGuard, "__init__", as_on_gpu)
    monkeypatch.setattr(train, "clip_and_measure", poison_step_6)
    cfg = tiny_config(
        tmp_path,
        trainer={"max_epochs": 2, "checkpoint": {"every_n_steps": 3}},  # last.pt at 3, 6, 9
        logging={"log_every_n_steps": 1000},  # no log step: no norm sees the gradient
    )
    with pytest.raises(TrainingError, match="weights became non-finite"):
        run_fit(cfg)
    (run,) = run_dirs(tmp_path)
    last = load_checkpoint(run / "checkpoints/last.pt")
    assert last["progress"]["step"] == 3  # the step-6 save was refused, step 3's stands
    assert all(torch.isfinite(t).all() for t in last["model"].values())
    report = json.loads((run / "nan_report.json").read_text())
    assert report["first_nonfinite"].startswith("weights")
    assert report["nonfinite_parameters"] == [next(iter(last["model"]))]
