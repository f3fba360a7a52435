"""Optimizers and learning-rate schedules from config, one table each.

Weight decay goes to weight matrices and conv kernels only: decaying biases and
normalisation gains (the 1-d parameters) pulls them toward zero for no benefit,
so they get none unless ``decay_bias_and_norm`` asks for it.

Schedules and the granularity at which the loop steps them:
- per optimizer step: cosine, onecycle, warmup_cosine (horizon = the run's total optimizer steps);
- per epoch: step, multistep, exponential;
- per validation: reduce_on_plateau (it reads the monitored metric).

``class_path`` names the user's own (or any torch) optimizer and scheduler: the optimizer
still gets the parameter groups above, and the scheduler declares its ``interval``.
"""

from __future__ import annotations

import math
from functools import partial
from typing import Any, Literal

import torch
from torch import nn
from torch.optim import lr_scheduler

from bptrain import config as C
from bptrain.class_path import instantiate, resolve
from bptrain.errors import UserError

Interval = Literal["step", "epoch", "validation", "never"]


def param_groups(model: nn.Module, weight_decay: float, decay_bias_and_norm: bool) -> list[dict]:
    decay, no_decay = [], []
    for param in model.parameters():
        if not param.requires_grad:
            continue
        (decay if param.ndim >= 2 or decay_bias_and_norm else no_decay).append(param)
    groups = [{"params": decay, "weight_decay": weight_decay}]
    if no_decay:
        groups.append({"params": no_decay, "weight_decay": 0.0})
    return groups


def refuse_unrepresentable(cfg: object, section: str) -> None:
    """Hyperparameters must be finite float32 numbers: the update multiplies float32 weights by them.

    `optimizer.lr=1e308` would otherwise fail mid-step with torch's "value cannot be converted
    to type float without overflow".
    """
    limit = torch.finfo(torch.float32).max
    for key, value in cfg.model_dump().items():  # type: ignore[attr-defined]
        for number in value if isinstance(value, (list, tuple)) else [value]:
            if isinstance(number, float) and not (math.isfinite(number) and abs(number) <= limit):
                raise UserError(
                    f"{section}.{key}={number} is beyond what float32 training can use "
                    f"(at most {limit:.3g}); set a realistic value."
                )


def build_optimizer(cfg: C.OptimizerConfig, model: nn.Module) -> torch.optim.Optimizer:
    refuse_unrepresentable(cfg, "optimizer")
    groups = param_groups(model, cfg.weight_decay, cfg.decay_bias_and_norm)
    if not any(group["params"] for group in groups):
        raise UserError("the model has no trainable parameters: nothing would train.")
    if getattr(cfg, "class_path", None) is not None:
        return _user_optimizer(cfg, groups)
    if isinstance(cfg, C.SGDOptimizer):  # also `momentum`
        return torch.optim.SGD(
            groups, lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.nesterov, dampening=cfg.dampening
        )
    if isinstance(cfg, C.AdamOptimizer):
        cls = torch.optim.AdamW if cfg.name == "adamw" else torch.optim.Adam
        return cls(
            groups, lr=cfg.lr, betas=cfg.betas, eps=cfg.eps, amsgrad=cfg.amsgrad, fused=cfg.fused
        )
    if isinstance(cfg, C.RMSpropOptimizer):
        return torch.optim.RMSprop(
            groups,
            lr=cfg.lr,
            alpha=cfg.alpha,
            eps=cfg.eps,
            momentum=cfg.momentum,
            centered=cfg.centered,
        )
    if isinstance(cfg, C.AdagradOptimizer):
        return torch.optim.Adagrad(
            groups,
            lr=cfg.lr,
            lr_decay=cfg.lr_decay,
            eps=cfg.eps,
            initial_accumulator_value=cfg.initial_accumulator_value,
        )
    if isinstance(cfg, C.LBFGSOptimizer):
        params = [p for g in groups for p in g["params"]]  # L-BFGS takes a single parameter group
        return torch.optim.LBFGS(
            params,
            lr=cfg.lr,
            max_iter=cfg.max_iter,
            history_size=cfg.history_size,
            line_search_fn=cfg.line_search_fn,
            tolerance_grad=cfg.tolerance_grad,
            tolerance_change=cfg.tolerance_change,
        )
    raise AssertionError(f"unhandled optimizer {cfg!r}")


def warmup_cosine_factor(step: int, warmup_steps: int, total_steps: int, min_ratio: float) -> float:
    """LR multiplier at optimizer step `step`: linear warmup to 1, then cosine down to min_ratio at total_steps."""
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
    return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


def build_scheduler(
    cfg: C.SchedulerConfig, optimizer: torch.optim.Optimizer, total_steps: int
) -> tuple[lr_scheduler.LRScheduler | lr_scheduler.ReduceLROnPlateau | None, Interval]:
    """Return the scheduler and when the loop must step it."""
    refuse_unrepresentable(cfg, "scheduler")
    base_lr = optimizer.param_groups[0]["lr"]
    if getattr(cfg, "class_path", None) is not None:
        return _user_scheduler(cfg, optimizer)
    if isinstance(cfg, C.NoScheduler):
        return None, "never"
    if isinstance(cfg, C.StepScheduler):
        return lr_scheduler.StepLR(optimizer, step_size=cfg.step_size, gamma=cfg.gamma), "epoch"
    if isinstance(cfg, C.MultiStepScheduler):
        return lr_scheduler.MultiStepLR(
            optimizer, milestones=cfg.milestones, gamma=cfg.gamma
        ), "epoch"
    if isinstance(cfg, C.ExponentialScheduler):
        return lr_scheduler.ExponentialLR(optimizer, gamma=cfg.gamma), "epoch"
    if isinstance(cfg, C.CosineScheduler):
        return lr_scheduler.CosineAnnealingLR(
            optimizer, T_max=total_steps, eta_min=cfg.min_lr
        ), "step"
    if isinstance(cfg, C.OneCycleScheduler):
        return (
            lr_scheduler.OneCycleLR(
                optimizer,
                max_lr=cfg.max_lr or base_lr,
                total_steps=total_steps,
                pct_start=cfg.pct_start,
                div_factor=cfg.div_factor,
                final_div_factor=cfg.final_div_factor,
                anneal_strategy=cfg.anneal_strategy,
            ),
            "step",
        )
    if isinstance(cfg, C.WarmupCosineScheduler):
        factor = partial(
            warmup_cosine_factor,
            warmup_steps=cfg.warmup_steps,
            total_steps=total_steps,
            min_ratio=cfg.min_lr / base_lr,
        )
        return lr_scheduler.LambdaLR(optimizer, factor), "step"
    if isinstance(cfg, C.PlateauScheduler):
        return (
            lr_scheduler.ReduceLROnPlateau(
                optimizer,
                mode=cfg.mode,
                factor=cfg.factor,
                patience=cfg.patience,
                threshold=cfg.threshold,
                cooldown=cfg.cooldown,
                min_lr=cfg.min_lr,
            ),
            "validation",
        )
    raise AssertionError(f"unhandled scheduler {cfg!r}")


def _user_optimizer(cfg: Any, groups: list[dict]) -> torch.optim.Optimizer:
    """``optimizer.class_path``: any ``torch.optim.Optimizer`` subclass, given bptrain's parameter
    groups (no weight decay on 1-d parameters) and ``lr``, plus ``init_args``."""
    key = "optimizer.class_path"
    cls = resolve(cfg.class_path, key, base=torch.optim.Optimizer)
    optimizer = instantiate(cls, key, cfg.class_path, cfg.init_args, groups, lr=cfg.lr)
    return optimizer


def _user_scheduler(cfg: Any, optimizer: torch.optim.Optimizer) -> tuple[Any, Interval]:
    """``scheduler.class_path``: an LR scheduler built on the optimizer, stepped every
    ``interval`` (step or epoch), or after each validation with the ``monitor``ed metric."""
    key = "scheduler.class_path"
    cls = resolve(
        cfg.class_path, key, base=(lr_scheduler.LRScheduler, lr_scheduler.ReduceLROnPlateau)
    )
    plateau = issubclass(cls, lr_scheduler.ReduceLROnPlateau)
    if plateau and cfg.monitor is None:
        raise UserError(
            f"{key} '{cfg.class_path}' steps on a metric: set scheduler.monitor "
            "(e.g. val/loss); it is then stepped after each validation."
        )
    scheduler = instantiate(cls, key, cfg.class_path, cfg.init_args, optimizer)
    return scheduler, "validation" if cfg.monitor is not None else cfg.interval
