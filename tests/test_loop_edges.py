"""Edges of the loop: fp16 with nan_policy skip, the AMP-skip count across a resume, and a
run that max_steps stopped mid-epoch, extended and resumed."""

from __future__ import annotations

import signal
import textwrap

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

from bptrain.checkpoint import load_checkpoint

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

    class StepPoison(nn.Module):
        '''An MLP for 2-d inputs: at the training forward calls in `nan_at` its hidden output is
        NaN (a non-finite loss), at those in `inf_grad_at` its gradient is inf (an fp16 overflow).
        The call count is a buffer: it is in the checkpoint, so a resumed run counts on.'''

        def __init__(self, nan_at=(), inf_grad_at=()):
            super().__init__()
            self.nan_at, self.inf_grad_at = set(nan_at), set(inf_grad_at)
            self.register_buffer("calls", torch.zeros((), dtype=torch.int64))
            self.hidden = nn.Linear(2, 16)
            self.head = nn.Linear(16, 2)

        def forward(self, x):
            h = torch.relu(self.hidden(x))
            if self.training and torch.is_grad_enabled():
                self.calls += 1
                if int(self.calls) in self.nan_at:
                    h = h * float("nan")
                elif int(self.calls) in self.inf_grad_at:
                    h = InfGrad.apply(h)
            return self.head(h)
    """
)


@pytest.fixture
def poison(tmp_path, monkeypatch):
    (tmp_path / "step_poison.py").write_text(POISON)
    monkeypatch.syspath_prepend(str(tmp_path))
    return lambda **init_args: {"class_path": "step_poison.StepPoison", "init_args": init_args}


FP16 = {"max_epochs": 2, "precision": "fp16"}


def test_fp16_a_step_nan_policy_skipped_is_not_also_an_amp_skip(tmp_path, poison):
    """The scaler lowers its scale for the policy-skipped step too: the next step must not be
    counted as one the scaler skipped."""
    clean = run_fit(tiny_config(tmp_path / "a", model=poison(), trainer=FP16))
    skipping = {**FP16, "nan_policy": "skip"}
    summary = run_fit(tiny_config(tmp_path / "b", model=poison(nan_at=[4]), trainer=skipping))
    assert summary["nonfinite"]["skipped_steps"] == 1
    assert summary["nonfinite"]["amp_skipped_steps"] == clean["nonfinite"]["amp_skipped_steps"]


def test_fp16_amp_skip_at_the_first_resumed_step_is_counted(tmp_path, poison, monkeypatch):
    """The AMP-skip detector's state is in the checkpoint: stopped after step 5, resumed, the
    scaler's skip of step 6 counts as it does in the run that never stopped."""
    model = poison(inf_grad_at=[6])
    straight = run_fit(tiny_config(tmp_path / "a", model=model, trainer=FP16))
    assert straight["nonfinite"]["amp_skipped_steps"] >= 1
    cfg = tiny_config(tmp_path / "b", model=model, trainer=FP16)
    signal_at_step(monkeypatch, 5, signal.SIGUSR1)
    with pytest.raises(Exception, match="SIGUSR1"):
        run_fit(cfg)
    monkeypatch.undo()
    (run,) = run_dirs(tmp_path / "b")
    assert load_checkpoint(run / "checkpoints/last.pt")["nan_guard"]["prev_scale"] is not None
    resumed = run_fit(cfg, resume="auto")
    assert resumed["nonfinite"] == straight["nonfinite"]


def test_raising_max_steps_resumes_mid_epoch_bit_exactly(tmp_path):
    """max_steps 15 stops in the middle of epoch 2 (10 steps per epoch): that epoch is not booked
    as finished, so raising max_steps to 25 and resuming continues at its 6th micro-batch and
    equals a run that went to 25 at once: every step and epoch line, and the final weights
    (dropout draws from the RNG; the per-epoch schedule must not step at the early stop)."""
    sections = {"scheduler": {"name": "step", "step_size": 1, "gamma": 0.7}}
    straight = run_fit(tiny_config(tmp_path / "a", trainer={"max_steps": 25}, **sections))
    short = run_fit(tiny_config(tmp_path / "b", trainer={"max_steps": 15}, **sections))
    (run,) = run_dirs(tmp_path / "b")
    progress = load_checkpoint(run / "checkpoints/last.pt")["progress"]
    assert (progress["epoch"], progress["batch_in_epoch"], short["epochs"]) == (1, 5, 1)
    assert "val/loss" in short["final"] and short["stop_reason"] == "max_steps reached"
    cfg = tiny_config(tmp_path / "b", trainer={"max_steps": 25}, **sections)
    resumed = run_fit(cfg, resume="auto")
    (a,) = run_dirs(tmp_path / "a")
    assert (
        (resumed["steps"], resumed["epochs"]) == (25, 2) == (straight["steps"], straight["epochs"])
    )
    assert_same_weights(weights(a / "checkpoints/last.pt"), weights(run / "checkpoints/last.pt"))
    assert metric_lines(a, ("step", "epoch")) == metric_lines(run, ("step", "epoch"))
    assert resumed["final"] == straight["final"] | {"time": resumed["final"]["time"]}
