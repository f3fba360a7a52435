"""The training loop. Read ``fit`` top to bottom: setup, the epoch loop, the finish.

Order of operations in one optimizer step (see ``train_step``):

1. forward every micro-batch of the accumulation window under autocast;
2. backward ``loss_i * n_i / n_window`` through the GradScaler: summed over the
   window this is exactly the gradient of the mean loss over all its samples,
   also for a last, shorter window at the end of an epoch;
3. unscale the gradients, *then* measure their norm and clip (clipping scaled
   gradients would clip against the wrong threshold);
4. ``scaler.step`` (skips the update if fp16 gradients overflowed), ``scaler.update``;
5. step a per-step LR schedule; zero the gradients (set to None: frees memory).

Host syncs (``.item()``, ``.tolist()``) happen only at log steps and epoch ends:
on a GPU each one stalls the pipeline.
"""

from __future__ import annotations

import math
import signal
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from rich.console import Console
from torch import nn

import bptrain
from bptrain import distributed
from bptrain.checkpoint import load_checkpoint, model_state, save_checkpoint
from bptrain.config import Config, to_dict, to_yaml
from bptrain.data import Batches, build_data
from bptrain.errors import TrainingError, UserError
from bptrain.evaluate import evaluate
from bptrain.losses import Objective, build_objective
from bptrain.models import build_model
from bptrain.optim import build_optimizer, build_scheduler
from bptrain.progress import ConsoleProgress
from bptrain.runlog import RunLog, create_run_dir, write_json
from bptrain.runtime import Precision, rng_state, seed_everything, set_rng_state
from bptrain.summary import print_run_header, print_summary

STOP_SIGNALS = (signal.SIGTERM, signal.SIGUSR1)


@dataclass
class Progress:
    """Where the run is. Saved in every checkpoint; enough to continue at the exact same micro-batch."""

    epoch: int = 0  # epochs completed
    step: int = 0  # optimizer steps completed
    batch_in_epoch: int = 0  # micro-batches of the current epoch already trained on
    epoch_loss_sum: float = 0.0  # running sums for the epoch's train/loss
    epoch_samples: int = 0
    best_value: float | None = None
    best_epoch: int | None = None
    best_metrics: dict[str, float] | None = None


class Interrupted(Exception):
    """Raised after the checkpoint is saved when a stop signal or Ctrl-C arrived."""

    def __init__(self, signum: int, run_dir: Path) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum, self.run_dir = signum, run_dir


def fit(cfg: Config, console: Console, resume: str | None = None) -> dict[str, Any]:
    """Train as the config says; return the summary (also written to summary.json)."""
    # ------------------------------------------------------------------ setup
    # one rank of a DDP job when a launcher (torchrun, --nproc, srun) started us, else one process
    dist = distributed.setup(cfg.trainer.device, cfg.trainer.strategy)
    device = dist.device
    if not dist.is_main:  # rank 0 prints and writes; the others train silently
        console = Console(quiet=True)
    seed_everything(cfg.seed, cfg.trainer.deterministic)  # the same seed on every rank
    data = build_data(
        cfg.data, seed=cfg.seed, device=device, rank=dist.rank, world_size=dist.world_size
    )
    objective = build_objective(cfg.loss, data.spec)
    model = build_model(cfg.model, data.spec, objective.name).to(device)
    objective.loss_fn.to(device)
    optimizer = build_optimizer(cfg.optimizer, model)
    accumulate = cfg.trainer.accumulate_grad_batches
    steps_per_epoch = math.ceil(len(data.train) / accumulate)
    total_steps = cfg.trainer.max_epochs * steps_per_epoch
    if cfg.trainer.max_steps is not None:
        total_steps = min(total_steps, cfg.trainer.max_steps)
    scheduler, schedule_interval = build_scheduler(cfg.scheduler, optimizer, total_steps)
    precision = Precision.create(cfg.trainer.precision, device)
    forward = distributed.wrap(model, dist)  # DDP when distributed
    forward = (
        torch.compile(forward) if cfg.trainer.compile else forward
    )  # checkpoints save `model`, never the DDP or compiled wrapper

    state = Progress()
    checkpoint_path = distributed.broadcast(_resume_path(cfg, resume))  # rank 0 decides
    if checkpoint_path is not None:
        run_dir = checkpoint_path.parent.parent
        state = _restore(checkpoint_path, cfg, data.spec, model, optimizer, scheduler, precision)
    else:
        run_dir = distributed.broadcast(
            create_run_dir(cfg.logging.run_dir, cfg.logging.name or "run") if dist.is_main else None
        )
        if dist.is_main:
            (run_dir / "config.yaml").write_text(to_yaml(cfg), encoding="utf-8")
    log = RunLog(run_dir, cfg.logging.tensorboard) if dist.is_main else distributed.NullLog()
    print_run_header(
        console, run_dir, model, data, device, cfg, total_steps, resumed_from=checkpoint_path
    )
    console.print(dist.describe(cfg.data.batch_size, accumulate))

    def save_last() -> None:
        if not dist.is_main:
            return
        state_dict = _checkpoint_state(
            cfg, data.spec, model, optimizer, scheduler, precision, state
        )
        save_checkpoint(state_dict, run_dir / "checkpoints" / "last.pt")

    # ------------------------------------------------------------------ train
    progress = ConsoleProgress(
        console, cfg.logging.progress if dist.is_main else "off", total_steps
    )
    stop = _StopFlag()
    status, started = "completed", time.perf_counter()
    epoch_metrics: dict[str, float] = {}
    try:
        with stop.installed():
            while state.epoch < cfg.trainer.max_epochs and state.step < total_steps:
                model.train()
                data.train.set_epoch(state.epoch)
                epoch_loss = torch.tensor(state.epoch_loss_sum, device=device, dtype=torch.float64)
                for window in _windows(data.train, accumulate, skip=state.batch_in_epoch):
                    log_now = (state.step + 1) % cfg.logging.log_every_n_steps == 0
                    window_loss, window_samples, grad_norm = train_step(
                        forward,
                        window,
                        objective,
                        optimizer,
                        precision,
                        cfg,
                        measure_grad_norm=log_now,
                    )
                    epoch_loss += window_loss.double() * window_samples
                    state.epoch_samples += window_samples
                    state.batch_in_epoch += len(window)
                    state.step += 1
                    if scheduler is not None and schedule_interval == "step":
                        scheduler.step()

                    if log_now:
                        # train/loss averaged over ranks; grad_norm is of the synced gradients
                        window_loss = distributed.mean_over_ranks(window_loss)
                        step_metrics = _step_metrics(
                            state, window_loss, grad_norm, optimizer, precision
                        )
                        log.log("step", state.step, step_metrics)
                        progress.step(state.step, state.epoch + 1, step_metrics)
                    else:
                        progress.step(state.step, state.epoch + 1)
                    # every rank stops after the same step, even if only some got the signal
                    stop.signum = distributed.agree_on_signal(stop.received)
                    if stop.signum is not None or state.step >= total_steps:
                        break
                state.epoch_loss_sum = float(epoch_loss)
                if (
                    stop.signum is not None
                ):  # mid-epoch: save where we are, resume continues from here
                    save_last()
                    log.log(
                        "event",
                        state.step,
                        {"event": "interrupted", "signal": signal.Signals(stop.signum).name},
                    )
                    raise Interrupted(stop.signum, run_dir)

                # -------------------------------------------------- end of epoch
                loss_sum, samples = distributed.sum_over_ranks(
                    state.epoch_loss_sum, state.epoch_samples
                )
                epoch_metrics = {"epoch": state.epoch + 1, "train/loss": loss_sum / max(samples, 1)}
                if not math.isfinite(epoch_metrics["train/loss"]):
                    last_good = run_dir / "checkpoints" / "last.pt"
                    raise TrainingError(
                        f"training loss became {epoch_metrics['train/loss']} in epoch {state.epoch + 1} (step {state.step}). "
                        "Try a lower optimizer.lr, trainer.grad_clip.max_norm=1.0, or trainer.precision=32. "
                        f"The last good checkpoint is {last_good if last_good.exists() else 'not written yet'}."
                    )
                state.epoch += 1
                state.batch_in_epoch, state.epoch_loss_sum, state.epoch_samples = 0, 0.0, 0
                last_epoch = state.epoch >= cfg.trainer.max_epochs or state.step >= total_steps
                if data.val is not None and (
                    state.epoch % cfg.trainer.val_every_n_epochs == 0 or last_epoch
                ):
                    epoch_metrics.update(evaluate(model, data.val, objective, precision, "val"))
                    _track_best(state, epoch_metrics)
                    if scheduler is not None and schedule_interval == "validation":
                        scheduler.step(_monitored(epoch_metrics, cfg.scheduler.monitor))  # type: ignore[union-attr]
                if scheduler is not None and schedule_interval == "epoch":
                    scheduler.step()
                epoch_metrics["lr"] = optimizer.param_groups[0]["lr"]
                epoch_metrics["time"] = round(time.perf_counter() - started, 3)
                log.log("epoch", state.step, epoch_metrics)
                progress.epoch_end(state.epoch, state.step, epoch_metrics)
                save_last()
    except KeyboardInterrupt:
        stop.signum = signal.SIGINT
        save_last()
        log.log("event", state.step, {"event": "interrupted", "signal": "SIGINT"})
        raise Interrupted(signal.SIGINT, run_dir) from None
    finally:
        progress.close()

    # ------------------------------------------------------------------ finish
    test_metrics = (
        evaluate(model, data.test, objective, precision, "test") if data.test is not None else None
    )
    if test_metrics:
        log.log("test", state.step, test_metrics)
    summary = {
        "status": status,
        "run_dir": str(run_dir),
        "epochs": state.epoch,
        "steps": state.step,
        "wall_time_s": round(time.perf_counter() - started, 3),
        "final": epoch_metrics,
        "best": None
        if state.best_epoch is None
        else {"epoch": state.best_epoch, "monitor": "val/loss", **(state.best_metrics or {})},
        "test": test_metrics,
        "params": {
            "total": sum(p.numel() for p in model.parameters()),
            "trainable": sum(p.numel() for p in model.parameters() if p.requires_grad),
        },
        "device": str(device),
        "distributed": dist.summary(cfg.data.batch_size, accumulate),
        "precision": cfg.trainer.precision,
        "versions": {"bptrain": bptrain.__version__, "torch": str(torch.__version__)},
    }
    if dist.is_main:
        write_json(run_dir / "summary.json", summary)
    log.close()
    print_summary(console, summary)
    return summary


def train_step(
    model: nn.Module,
    window: list[tuple[torch.Tensor, torch.Tensor]],
    objective: Objective,
    optimizer: torch.optim.Optimizer,
    precision: Precision,
    cfg: Config,
    measure_grad_norm: bool = False,
) -> tuple[torch.Tensor, int, torch.Tensor | None]:
    """One optimizer step over an accumulation window.

    Returns (mean loss over the window's samples, number of samples, total gradient norm). The norm is the
    true one, unscaled and before clipping; it is computed only when clipping by norm needs it anyway or when
    `measure_grad_norm` asks (at log steps), since it costs a pass over all gradients.
    """
    device = precision.device
    window = [(x.to(device, non_blocking=True), y.to(device, non_blocking=True)) for x, y in window]
    window_samples = sum(len(x) for x, _ in window)
    scaler = precision.scaler

    def forward_backward() -> torch.Tensor:
        total = torch.zeros((), device=device)
        for i, (x, y) in enumerate(window):
            # DDP: only the window's last backward all-reduces the accumulated gradients
            with distributed.no_sync(model, skip=i < len(window) - 1):
                with precision.autocast():
                    loss = objective.loss(model(x), y) * (len(x) / window_samples)
                scaler.scale(loss).backward()
            total += loss.detach().float()
        return total

    if isinstance(optimizer, torch.optim.LBFGS):
        # L-BFGS re-evaluates the loss several times per step, so the whole window runs inside a closure.
        # (fp16 is refused at config time: GradScaler cannot step closures.)
        norms: list[torch.Tensor | None] = []

        def closure() -> torch.Tensor:
            optimizer.zero_grad(set_to_none=True)
            loss = distributed.mean_over_ranks(forward_backward())  # the line search sees one loss
            norms.append(clip_and_measure(model, cfg, measure_grad_norm))
            return loss

        loss = optimizer.step(closure)
        optimizer.zero_grad(set_to_none=True)
        return loss, window_samples, norms[0]  # type: ignore[return-value]

    loss = forward_backward()
    scaler.unscale_(
        optimizer
    )  # true gradients from here on: the norm and the clipping see real values
    grad_norm = clip_and_measure(model, cfg, measure_grad_norm)
    scaler.step(optimizer)
    scaler.update()
    optimizer.zero_grad(set_to_none=True)
    return loss, window_samples, grad_norm


def clip_and_measure(model: nn.Module, cfg: Config, measure: bool) -> torch.Tensor | None:
    """Clip as configured; return the pre-clip total L2 norm (or the configured p-norm) when known or asked for."""
    clip = cfg.trainer.grad_clip
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    norm = None
    if clip is not None and clip.max_norm is not None:
        norm = torch.nn.utils.clip_grad_norm_(
            [p for p in model.parameters() if p.grad is not None],
            clip.max_norm,
            norm_type=clip.norm_type,
            foreach=True,
        )
    elif measure and grads:
        norm = torch.nn.utils.get_total_norm(grads, norm_type=2.0, foreach=True)
    if clip is not None and clip.max_value is not None:
        torch.nn.utils.clip_grad_value_(
            [p for p in model.parameters() if p.grad is not None], clip.max_value, foreach=True
        )
    return norm


def _windows(batches: Batches, size: int, skip: int):
    """Group micro-batches into accumulation windows, skipping those already trained on (resume)."""
    window = []
    for index, batch in enumerate(batches):
        if index < skip:
            continue
        window.append(batch)
        if len(window) == size:
            yield window
            window = []
    if window:
        yield window


def _step_metrics(
    state: Progress,
    loss: torch.Tensor,
    grad_norm: torch.Tensor | None,
    optimizer: torch.optim.Optimizer,
    precision: Precision,
) -> dict[str, Any]:
    """The step line's values, fetched from the device in one transfer."""
    values = torch.stack(
        [
            loss.float(),
            (grad_norm if grad_norm is not None else torch.full_like(loss, math.nan)).float(),
        ]
    ).tolist()
    metrics = {
        "epoch": state.epoch + 1,
        "train/loss": values[0],
        "lr": optimizer.param_groups[0]["lr"],
        "grad_norm": values[1],
    }
    if precision.scaler.is_enabled():
        metrics["loss_scale"] = precision.scaler.get_scale()
    return metrics


def _monitored(metrics: dict[str, float], key: str) -> float:
    if key not in metrics:
        raise UserError(
            f"the monitored metric '{key}' is not logged; available: {', '.join(sorted(metrics))}."
        )
    return metrics[key]


def _track_best(state: Progress, metrics: dict[str, float]) -> None:
    value = metrics["val/loss"]
    if math.isfinite(value) and (state.best_value is None or value < state.best_value):
        state.best_value, state.best_epoch = value, state.epoch
        state.best_metrics = {k: v for k, v in metrics.items() if k.startswith(("val/", "train/"))}


class _StopFlag:
    """Turns SIGTERM/SIGUSR1 (what SLURM sends before preemption or the time limit) into a flag.

    The handler only records the signal; the loop saves a checkpoint at the next optimizer-step
    boundary. Saving inside a signal handler can deadlock (the handler may interrupt a write).
    Under DDP the decision is `received` all-reduced over ranks; kept apart from it, a signal that
    lands while that all-reduce runs is not overwritten by its result, but taken at the next step.
    """

    def __init__(self) -> None:
        self.received: int | None = None  # set by the handler, any time
        self.signum: int | None = None  # the loop's decision, taken at step boundaries

    def _handler(self, signum: int, frame: object) -> None:
        self.received = signum

    class _Installed:
        def __init__(self, flag: _StopFlag) -> None:
            self.flag, self.previous = flag, {}

        def __enter__(self) -> None:
            try:
                for sig in STOP_SIGNALS:
                    self.previous[sig] = signal.signal(sig, self.flag._handler)
            except ValueError:  # not the main thread (e.g. inside some test runners): no handlers
                self.previous = {}

        def __exit__(self, *exc: object) -> None:
            for sig, handler in self.previous.items():
                signal.signal(sig, handler)

    def installed(self) -> _StopFlag._Installed:
        return _StopFlag._Installed(self)


def _checkpoint_state(
    cfg, spec, model, optimizer, scheduler, precision, state: Progress
) -> dict[str, Any]:
    return {
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict() if scheduler is not None else None,
        "scaler": precision.scaler.state_dict(),
        "progress": asdict(state),
        "rng": rng_state(),
        "config": to_dict(cfg),
        "data_spec": {
            "task": spec.task,
            "input_shape": list(spec.input_shape),
            "num_classes": spec.num_classes,
            "target_shape": list(spec.target_shape),
        },
        "versions": {"bptrain": bptrain.__version__, "torch": str(torch.__version__)},
    }


def _resume_path(cfg: Config, resume: str | None) -> Path | None:
    """`auto`: the newest run of this config name that has a last.pt (None: start fresh); else a path."""
    if resume is None:
        return None
    if resume == "auto":
        base = cfg.logging.run_dir / (cfg.logging.name or "run")
        candidates = sorted(base.glob("*/checkpoints/last.pt"), key=lambda p: p.parent.parent.name)
        return candidates[-1] if candidates else None
    path = Path(resume)
    if path.is_dir():
        path = path / "checkpoints" / "last.pt"
    if not path.is_file():
        raise UserError(
            f"--resume {resume}: no checkpoint there. Give a last.pt file, a run directory, or 'auto'."
        )
    return path


def _restore(path, cfg, spec, model, optimizer, scheduler, precision) -> Progress:
    saved = load_checkpoint(path)
    old_cfg, new_cfg = saved.get("config", {}), to_dict(cfg)
    for section in ("model", "data"):
        if old_cfg.get(section) != new_cfg.get(section):
            raise UserError(
                f"cannot resume from {path}: the config's '{section}' section differs from the checkpoint's. "
                "Resume with the same model and data (only limits such as trainer.max_epochs may change), or start a new run."
            )
    model.load_state_dict(model_state(saved, path))
    optimizer.load_state_dict(saved["optimizer"])
    if scheduler is not None and saved.get("scheduler") is not None:
        scheduler.load_state_dict(saved["scheduler"])
    precision.scaler.load_state_dict(saved["scaler"])
    set_rng_state(saved["rng"])
    return Progress(**saved["progress"])
