"""Section ``step`` (and the per-step ``logging`` rows): bptrain's ``train_step`` against a
hand-written step, alternating step by step on two identical models."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from benchmarks.common import Row, Settings, median


def lockstep(settings: Settings, config: Path) -> list[Row]:
    """bptrain's ``train_step`` and a hand-written step, alternating step by step.

    Two identical models train side by side on the same batches; every step of one is timed
    right after a step of the other, so both see the same load, and the medians over hundreds
    of steps resolve differences of a few microseconds. The second pair of rows adds what a
    log step adds in ``fit`` (the gradient norm, the step record in metrics.jsonl).
    """
    import torch
    import torch.nn.functional as F

    from bptrain.config import load_config
    from bptrain.data import build_data
    from bptrain.faults import NonFiniteGuard
    from bptrain.losses import build_objective
    from bptrain.models import build_model
    from bptrain.optim import build_optimizer
    from bptrain.runlog import RunLog
    from bptrain.runtime import Precision
    from bptrain.train import _step_metrics, train_step

    cfg = load_config(config, ["trainer.device=cpu"])
    device = torch.device("cpu")
    data = build_data(cfg.data, seed=cfg.seed, device=device)
    objective = build_objective(cfg.loss, data.spec)
    precision = Precision.create("32", device)

    def setup() -> tuple[torch.nn.Module, torch.optim.Optimizer]:
        torch.manual_seed(0)
        model = build_model(cfg.model, data.spec, objective.name)
        return model, build_optimizer(cfg.optimizer, model)

    (ours, our_opt), (theirs, their_opt) = setup(), setup()
    out = settings.work / "lockstep"
    out.mkdir(exist_ok=True)
    log = RunLog(out, tensorboard=False)
    # what fit passes to train_step: trainer.nan_policy's check (on CPU: every step, eagerly)
    guard = NonFiniteGuard(
        cfg.trainer.nan_policy, cfg.trainer.max_skipped_steps, device, precision.scaler.is_enabled()
    )
    (settings.work / "lockstep-tb").mkdir(exist_ok=True)
    tb_log = RunLog(settings.work / "lockstep-tb", tensorboard=True)
    progress = type("P", (), {"epoch": 0})()

    def bptrain_step(x: torch.Tensor, y: torch.Tensor, logged: bool, to: Any = log) -> float:
        """What fit does for one step: train_step, and at a log step the norm and the record."""
        start = time.perf_counter()
        result = train_step(
            ours, [(x, y)], objective, our_opt, precision, cfg.trainer.grad_clip, logged, guard
        )
        if logged:
            to.log("step", 1, _step_metrics(progress, result, our_opt, precision, guard)[0])
        return time.perf_counter() - start

    def hand_step(x: torch.Tensor, y: torch.Tensor) -> float:
        start = time.perf_counter()
        loss = F.cross_entropy(theirs(x), y)
        loss.backward()
        their_opt.step()
        their_opt.zero_grad(set_to_none=True)
        return time.perf_counter() - start

    times: dict[str, list[float]] = {"bptrain": [], "hand": [], "logged": [], "plain": [], "tb": []}
    steps = settings.pick(1500, 500)
    batches = iter(())
    for i in range(steps + 50):
        try:
            x, y = next(batches)
        except StopIteration:
            data.train.set_epoch(i)
            batches = iter(data.train)
            x, y = next(batches)
        if i % 2:  # which of a pair goes first alternates
            mine, hand = bptrain_step(x, y, False), hand_step(x, y)
            logged, plain, tb = (
                bptrain_step(x, y, True),
                bptrain_step(x, y, False),
                bptrain_step(x, y, True, tb_log),
            )
        else:
            hand, mine = hand_step(x, y), bptrain_step(x, y, False)
            tb, plain, logged = (
                bptrain_step(x, y, True, tb_log),
                bptrain_step(x, y, False),
                bptrain_step(x, y, True),
            )
        if i >= 50:  # warm-up: optimizer state, allocator
            for key, value in zip(times, (mine, hand, logged, plain, tb), strict=True):
                times[key].append(value)
    log.close()
    tb_log.close()
    us = {k: median(v) * 1e6 for k, v in times.items()}
    extra = us["logged"] - us["plain"]
    default = 1 + extra / 50 / us["plain"]
    return [
        Row(
            "step",
            f"train_step vs hand-written step ({steps} lockstep pairs)",
            us["bptrain"],
            us["hand"],
            "us",
            "<= 1.03",
            us["bptrain"] / us["hand"] <= 1.03,
            note="forward, backward and AdamW step of the MLP; medians",
        ),
        Row(
            "logging",
            "log every step: grad norm + metrics.jsonl line vs no log",
            us["logged"],
            us["plain"],
            "us",
            "<= 1.03",
            us["logged"] / us["plain"] <= 1.03,
            note=f"+{extra:.0f} us per logged step",
        ),
        Row(
            "logging",
            "log every step with TensorBoard vs no log",
            us["tb"],
            us["plain"],
            "us",
            note=f"+{us['tb'] - us['plain']:.0f} us per logged step",
        ),
        Row(
            "logging",
            "default interval (1 step in 50) vs no log",
            us["plain"] + extra / 50,
            us["plain"],
            "us",
            "not measurable (<= 1.01)",
            default <= 1.01,
            note="computed from the row above",
        ),
    ]
