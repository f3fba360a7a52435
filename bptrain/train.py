"""The training loop. Read ``fit`` top to bottom: setup, the epoch loop, the finish.

Order of operations in one optimizer step (see ``train_step``):

1. forward every micro-batch of the accumulation window under autocast;
2. backward ``loss_i * n_i / n_window`` through the GradScaler: summed over the
   window this is exactly the gradient of the mean loss over all its samples,
   also for a last, shorter window at the end of an epoch;
3. unscale the gradients, *then* measure their norm and clip (clipping scaled
   gradients would clip against the wrong threshold);
4. check the loss and gradients per ``trainer.nan_policy`` (``faults.NonFiniteGuard``);
   ``scaler.step`` (skips the update if fp16 gradients overflowed), ``scaler.update``;
5. step a per-step LR schedule; zero the gradients (set to None: frees memory).

Host syncs (``.item()``, ``.tolist()``) happen only at log steps and epoch ends:
on a GPU each one stalls the pipeline.

Checkpoints (``checkpoint.py``) are written at step boundaries only: every
``every_n_steps``, at epoch ends, and when a stop signal was flagged
(``faults.StopFlag``), so a resumed run continues at exactly the same micro-batch.
"""

from __future__ import annotations

import math
import signal
import time
from pathlib import Path
from typing import Any

import torch
from rich.console import Console
from torch import nn

import bptrain
from bptrain import distributed
from bptrain.checkpoint import (
    CheckpointTracker,
    rewind_run_dir,
    save_checkpoint,
    save_safetensors,
)
from bptrain.config import Config, to_yaml
from bptrain.data import Batches, build_data
from bptrain.early_stopping import EarlyStopping
from bptrain.errors import TrainingError, UserError
from bptrain.evaluate import evaluate
from bptrain.faults import (
    Interrupted,
    NonFinite,
    NonFiniteGuard,
    StopFlag,
    locate_nonfinite,
    total_norm,
)
from bptrain.grads import LogStepRecorder
from bptrain.losses import Objective, build_objective
from bptrain.models import build_model, takes_token_ids
from bptrain.optim import build_optimizer, build_scheduler
from bptrain.progress import ConsoleProgress
from bptrain.resume import (
    Progress,
    checkpoint_state,
    load_resume,
    restore,
    run_dir_of,
)
from bptrain.runlog import RunLog, create_run_dir, write_json
from bptrain.runtime import Precision, seed_everything, sum_dtype
from bptrain.summary import count_parameters, print_run_header, print_summary
from bptrain.transfer import describe_init, freeze, init_from

__all__ = ["Interrupted", "Progress", "fit", "train_step"]


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
        cfg.data,
        seed=cfg.seed,
        device=device,
        integer_inputs=takes_token_ids(cfg.model),
        rank=dist.rank,
        world_size=dist.world_size,
    )
    objective = build_objective(cfg.loss, data.spec)
    model = build_model(cfg.model, data.spec, objective.name, cfg.trainer.activation_checkpointing)
    saved, checkpoint_path = load_resume(cfg, resume)
    if saved is None and cfg.model.init_from is not None:  # resuming restores weights anyway
        console.print(describe_init(init_from(model, cfg.model.init_from, cfg.model.init_strict)))
    freeze(model, cfg.model.freeze)
    model.to(device)
    objective.loss_fn.to(device)
    optimizer = build_optimizer(cfg.optimizer, model)
    accumulate = cfg.trainer.accumulate_grad_batches
    steps_per_epoch = math.ceil(len(data.train) / accumulate)
    total_steps = cfg.trainer.max_epochs * steps_per_epoch
    if cfg.trainer.max_steps is not None:
        total_steps = min(total_steps, cfg.trainer.max_steps)
    # A per-step schedule keeps the horizon the run started with: extending a run continues at its final LR.
    horizon = saved["progress"]["schedule_steps"] if saved else total_steps
    scheduler, schedule_interval = build_scheduler(cfg.scheduler, optimizer, horizon)
    precision = Precision.create(cfg.trainer.precision, device)
    forward = distributed.wrap(model, dist)  # DDP when distributed
    forward = (
        torch.compile(forward) if cfg.trainer.compile else forward
    )  # checkpoints save `model`, never the DDP or compiled wrapper
    _check_monitors(cfg, data)

    state, best_weights = Progress(schedule_steps=total_steps), None
    if saved is not None:  # best_weights: kept for early_stopping.restore_best_weights
        state, best_weights = restore(
            saved, checkpoint_path, cfg, data, model, optimizer, scheduler, precision, console
        )
    run_dir = run_dir_of(checkpoint_path)
    if run_dir is not None and dist.is_main:
        rewind_run_dir(run_dir, state.metrics_bytes)
    elif run_dir is None:  # rank 0 names it, every rank writes into (rank 0) or reads from it
        run_dir = distributed.broadcast(
            _writable(lambda: create_run_dir(cfg.logging.run_dir, cfg.logging.name or "run"))
            if dist.is_main
            else None
        )
    ckpt, es_cfg = cfg.trainer.checkpoint, cfg.trainer.early_stopping
    tracker = CheckpointTracker(
        run_dir / "checkpoints", ckpt.monitor, ckpt.mode, ckpt.save_top_k, ckpt.save_best
    )
    stopper = EarlyStopping.from_config(es_cfg) if es_cfg is not None else None
    guard = NonFiniteGuard(
        cfg.trainer.nan_policy, cfg.trainer.max_skipped_steps, device, precision.scaler.is_enabled()
    )
    for part, owner in (
        ("checkpoint_tracker", tracker),
        ("early_stopping", stopper),
        ("nan_guard", guard),
    ):
        if saved is not None and owner is not None and saved.get(part) is not None:
            owner.load_state_dict(saved[part])
    if dist.is_main:
        _writable(lambda: (run_dir / "config.yaml").write_text(to_yaml(cfg), encoding="utf-8"))
    log = (
        _writable(lambda: RunLog(run_dir, cfg.logging.tensorboard))
        if dist.is_main
        else distributed.NullLog()
    )
    print_run_header(
        console, run_dir, model, data, device, cfg, total_steps, resumed_from=checkpoint_path
    )
    console.print(dist.describe(cfg.data.batch_size, accumulate))

    stop = StopFlag()
    # per-layer gradient norms and update ratios at log steps, for TensorBoard only
    layer_recorder = (
        LogStepRecorder(model, grad_norms=cfg.logging.grad_norms)
        if (cfg.logging.grad_norms or cfg.logging.histograms)
        and cfg.logging.tensorboard
        and dist.is_main
        else None
    )

    def current_state() -> dict[str, Any]:
        guard.raise_if_failed()  # never save a model a lazily-detected NaN has poisoned
        state.metrics_bytes = log.jsonl.tell()
        return checkpoint_state(
            cfg, data, model, optimizer, scheduler, precision, state,
            tracker, stopper, guard, best_weights,
        )  # fmt: skip

    def save_last() -> None:
        if ckpt.save_last and dist.is_main:
            with stop.saving():
                save_checkpoint(current_state(), run_dir / "checkpoints" / "last.pt")

    def export(path: Path) -> None:
        meta = {"format": "pt", "epoch": str(state.epoch), "step": str(state.step)}
        save_safetensors(model.state_dict(), path, {**meta, "bptrain": bptrain.__version__})

    # ------------------------------------------------------------------ train
    progress = ConsoleProgress(
        console, cfg.logging.progress if dist.is_main else "off", total_steps
    )
    status, stop_reason, started = "completed", None, time.perf_counter()
    stopping: int | None = None  # the stop signal, once every rank agreed on it
    epoch_metrics: dict[str, float] = {}
    try:
        with stop.installed():
            while (
                state.epoch < cfg.trainer.max_epochs
                and state.step < total_steps
                and not (stopper is not None and stopper.should_stop)
            ):
                model.train()
                data.train.set_epoch(state.epoch)
                epoch_loss = torch.tensor(
                    state.epoch_loss_sum, device=device, dtype=sum_dtype(device)
                )
                for window in _windows(data.train, accumulate, skip=state.batch_in_epoch):
                    log_now = (state.step + 1) % cfg.logging.log_every_n_steps == 0
                    if (
                        log_now
                        and layer_recorder is not None
                        and _histogram_step(state.step + 1, cfg)
                    ):
                        layer_recorder.arm_histograms()
                    window_loss, window_samples, grad_norm = train_step(
                        forward,
                        window,
                        objective,
                        optimizer,
                        precision,
                        cfg,
                        measure_grad_norm=log_now,
                        guard=guard,
                        layers=layer_recorder,
                    )
                    # a step skipped by nan_policy skip adds nothing to train/loss
                    if not guard.last_skipped:
                        epoch_loss += window_loss.to(epoch_loss.dtype) * window_samples
                        state.epoch_samples += window_samples
                    state.batch_in_epoch += len(window)
                    state.step += 1
                    # past the schedule's horizon (an extended run) the LR stays at its final value;
                    # onecycle would raise if stepped further
                    if schedule_interval == "step" and state.step <= state.schedule_steps:
                        scheduler.step()  # type: ignore[union-attr]

                    if log_now:
                        # train/loss averaged over ranks; grad_norm is of the synced gradients
                        window_loss = distributed.mean_over_ranks(window_loss)
                        step_metrics = _step_metrics(
                            state, window_loss, grad_norm, optimizer, precision, guard
                        )
                        layer_stats = layer_recorder.take() if layer_recorder else {}
                        clip = cfg.trainer.grad_clip
                        if clip is not None and clip.max_norm is not None:  # what clipping left
                            layer_stats["grad_norm_clipped"] = min(
                                step_metrics["grad_norm"], clip.max_norm
                            )
                        log.log("step", state.step, step_metrics, tb_only=layer_stats)
                        if layer_recorder is not None:
                            log.histograms(state.step, layer_recorder.take_histograms())
                        progress.step(state.step, state.epoch + 1, step_metrics)
                    else:
                        progress.step(state.step, state.epoch + 1)
                    # every rank stops after the same step, even if only some got the signal
                    stopping = distributed.agree_on_signal(stop.signum)
                    if stopping is not None or state.step >= total_steps:
                        break
                    if (
                        ckpt.every_n_steps
                        and state.step % ckpt.every_n_steps == 0
                        and state.batch_in_epoch < len(data.train)
                    ):
                        state.epoch_loss_sum = float(epoch_loss)
                        save_last()
                state.epoch_loss_sum = float(epoch_loss)
                if stopping is not None:  # save where we are: resume continues from here
                    save_last()
                    name = signal.Signals(stopping).name
                    log.log("event", state.step, {"event": "interrupted", "signal": name})
                    raise Interrupted(stopping, run_dir, saved=ckpt.save_last, step=state.step)

                # -------------------------------------------------- end of epoch
                loss_sum, samples = distributed.sum_over_ranks(
                    state.epoch_loss_sum, state.epoch_samples
                )
                epoch_metrics = {"epoch": state.epoch + 1, "train/loss": loss_sum / max(samples, 1)}
                guard.check_epoch_loss(epoch_metrics["train/loss"])
                state.epoch += 1
                state.batch_in_epoch, state.epoch_loss_sum, state.epoch_samples = 0, 0.0, 0
                last_epoch = state.epoch >= cfg.trainer.max_epochs or state.step >= total_steps
                validated = data.val is not None and (
                    state.epoch % cfg.trainer.val_every_n_epochs == 0 or last_epoch
                )
                if validated:
                    epoch_metrics.update(evaluate(model, data.val, objective, precision, "val"))
                    if scheduler is not None and schedule_interval == "validation":
                        scheduler.step(_monitored(epoch_metrics, cfg.scheduler.monitor))  # type: ignore[union-attr]
                if scheduler is not None and schedule_interval == "epoch":
                    scheduler.step()
                epoch_metrics["lr"] = optimizer.param_groups[0]["lr"]
                epoch_metrics["time"] = round(time.perf_counter() - started, 3)
                if stopper is not None and (validated or not stopper.monitor.startswith("val/")):
                    best_weights = _early_stopping(
                        stopper, es_cfg, epoch_metrics, model, best_weights
                    )
                log.log("epoch", state.step, epoch_metrics)
                progress.epoch_end(state.epoch, state.step, epoch_metrics)
                if dist.is_main:
                    tracker.update(epoch_metrics, state.epoch, state.step, current_state, export)
                stopping = stopper is not None and stopper.should_stop
                if state.epoch % ckpt.every_n_epochs == 0 or last_epoch or stopping:
                    save_last()
    except KeyboardInterrupt:  # a second Ctrl-C forced the stop: nothing saved, last.pt stands
        log.log("event", state.step, {"event": "interrupted", "signal": "SIGINT", "saved": False})
        raise Interrupted(signal.SIGINT, run_dir, saved=False, step=state.step) from None
    except NonFinite as err:
        raise _nan_failure(err, run_dir, state, cfg, log) from None
    except OSError as err:  # metrics.jsonl, TensorBoard: a full disk is the usual suspect
        last = run_dir / "checkpoints" / "last.pt"
        raise TrainingError(
            f"I/O error while training: {err}. "
            f"The last good checkpoint is {last if last.exists() else 'not written yet'}."
        ) from None
    finally:
        progress.close()

    # ------------------------------------------------------------------ finish
    if stopper is not None and stopper.should_stop:
        status, stop_reason = "early_stopped", f"early stopping: {stopper.reason}"
        console.print(
            f"[bold]early stopping[/bold] at epoch {stopper.stopped_epoch}: {stopper.reason}"
        )
        log.log("event", state.step, {"event": "early_stopped", **stopper.state_dict()})
    else:
        stop_reason = (
            "max_epochs reached" if state.epoch >= cfg.trainer.max_epochs else "max_steps reached"
        )
    if best_weights is not None:  # early_stopping.restore_best_weights, however the run ended
        model.load_state_dict(best_weights)
        console.print(f"restored the weights of the best epoch ({stopper.best_epoch})")  # type: ignore[union-attr]
    if dist.is_main:
        export(
            run_dir / "checkpoints" / "last.safetensors"
        )  # the final model: what test/* measures
    test_metrics = (
        evaluate(model, data.test, objective, precision, "test") if data.test is not None else None
    )
    if test_metrics:
        log.log("test", state.step, test_metrics)
    total_params, trainable_params = count_parameters(model)
    summary = {
        "status": status,
        "stop_reason": stop_reason,
        "run_dir": str(run_dir),
        "epochs": state.epoch,
        "steps": state.step,
        "wall_time_s": round(time.perf_counter() - started, 3),
        "final": epoch_metrics,
        "best": tracker.summary(),
        "early_stopping": None
        if stopper is None
        else {**stopper.state_dict(), "restored_best_weights": best_weights is not None},
        "test": test_metrics,
        "params": {
            "total": total_params,
            "trainable": trainable_params,
            "frozen": total_params - trainable_params,
        },
        "nonfinite": {"skipped_steps": guard.skipped, "amp_skipped_steps": int(guard.amp_skips)},
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


def _histogram_step(step: int, cfg: Config) -> bool:
    """Histograms at the first log step of every histogram_every_n_steps interval."""
    every, log_every = cfg.logging.histogram_every_n_steps, cfg.logging.log_every_n_steps
    return cfg.logging.histograms and step % max(every // log_every * log_every, log_every) == 0


def train_step(
    model: nn.Module,
    window: list[tuple[torch.Tensor, torch.Tensor]],
    objective: Objective,
    optimizer: torch.optim.Optimizer,
    precision: Precision,
    cfg: Config,
    measure_grad_norm: bool = False,
    guard: NonFiniteGuard | None = None,
    layers: LogStepRecorder | None = None,
) -> tuple[torch.Tensor, int, torch.Tensor | None]:
    """One optimizer step over an accumulation window.

    Returns (mean loss over the window's samples, number of samples, total gradient norm). The norm is the
    true one, unscaled and before clipping; it is computed only when clipping by norm needs it anyway or when
    `measure_grad_norm` asks (at log steps), since it costs a pass over all gradients. At those
    steps `layers` (if given) also records per-layer gradient norms and update-to-weight ratios.
    """
    layers = layers if measure_grad_norm else None
    device = precision.device
    window = [(x.to(device, non_blocking=True), y.to(device, non_blocking=True)) for x, y in window]
    window_samples = sum(len(x) for x, _ in window)
    scaler = precision.scaler

    def forward_backward() -> torch.Tensor:
        total: torch.Tensor | None = None
        for i, (x, y) in enumerate(window):
            # DDP: only the window's last backward all-reduces the accumulated gradients
            with distributed.no_sync(model, skip=i < len(window) - 1):
                with precision.autocast():
                    loss = objective.loss(model(x), y)
                    if len(x) != window_samples:  # weight only when accumulating: x * 1.0 is x
                        loss = loss * (len(x) / window_samples)
                scaler.scale(loss).backward()
            part = loss.detach().float()
            total = part if total is None else total + part
        return total  # type: ignore[return-value]

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
    if layers is not None:
        layers.before_update()
    grad_norm = clip_and_measure(model, cfg, measure_grad_norm)
    if guard is not None and not guard.step_ok(
        loss, grad_norm, model, lambda: locate_nonfinite(model, window[0], objective.loss)
    ):  # nan_policy skip: no update for this window
        scaler.update()
        optimizer.zero_grad(set_to_none=True)
        return loss, window_samples, grad_norm
    scaler.step(optimizer)
    scaler.update()
    if layers is not None:
        layers.after_update()
    if guard is not None:
        guard.after_update(scaler)
    optimizer.zero_grad(set_to_none=True)
    return loss, window_samples, grad_norm


def clip_and_measure(model: nn.Module, cfg: Config, measure: bool) -> torch.Tensor | None:
    """Clip as configured; return the pre-clip total L2 norm (or the configured p-norm) when known or asked for."""
    clip = cfg.trainer.grad_clip
    norm = None
    if clip is not None and clip.max_norm is not None:
        norm = torch.nn.utils.clip_grad_norm_(
            [p for p in model.parameters() if p.grad is not None],
            clip.max_norm,
            norm_type=clip.norm_type,
            foreach=True,
        )
    elif measure:  # the norm is a pass over every gradient: only at log steps
        grads = [p.grad for p in model.parameters() if p.grad is not None]
        if grads:
            norm = total_norm(grads)
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
    guard: NonFiniteGuard,
) -> dict[str, Any]:
    """The step line's values, fetched from the device in one transfer."""
    guard.raise_if_failed()  # a log step syncs anyway: the lazy NaN check costs nothing here
    values = torch.stack(
        [
            loss.float(),
            (grad_norm if grad_norm is not None else torch.full_like(loss, math.nan)).float(),
            guard.amp_skips.float(),
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
        metrics["amp_skipped_steps"] = int(values[2])
    if guard.policy == "skip":
        metrics["skipped_steps"] = guard.skipped
    return metrics


def _monitored(metrics: dict[str, float], key: str) -> float:
    if key not in metrics:
        raise UserError(
            f"the monitored metric '{key}' is not logged; available: {', '.join(sorted(metrics))}."
        )
    return metrics[key]


def _early_stopping(
    stopper: EarlyStopping,
    cfg: Any,
    metrics: dict[str, Any],
    model: nn.Module,
    best_weights: dict[str, torch.Tensor] | None,
) -> dict[str, torch.Tensor] | None:
    """Feed this epoch's metrics to early stopping; keep a CPU copy of the best weights if asked."""
    epoch = metrics["epoch"]
    if stopper.update(metrics, epoch):
        metrics["early_stop"] = stopper.reason
    if cfg.restore_best_weights and stopper.best_epoch == epoch:
        best_weights = {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}
    return best_weights


def _check_monitors(cfg: Config, data: Any) -> None:
    """Refuse before training a monitor that can never be logged, rather than after the first epoch."""
    es, ckpt = cfg.trainer.early_stopping, cfg.trainer.checkpoint
    if data.val is None:
        if es is not None and es.monitor.startswith("val/"):
            raise UserError(
                f"trainer.early_stopping.monitor is {es.monitor} but the data has no validation split. "
                "Set data.val_fraction > 0, or monitor train/loss."
            )
        if ckpt.save_top_k != 0 and ckpt.monitor.startswith("val/"):
            raise UserError(
                f"trainer.checkpoint.save_top_k ranks by {ckpt.monitor} but the data has no validation split. "
                "Set data.val_fraction > 0, monitor train/loss, or set save_top_k: 0."
            )


def _writable(create: Any) -> Any:
    """Run a run-directory write; an unwritable or full disk becomes a clear message (exit 2), not a traceback."""
    try:
        return create()
    except OSError as err:
        raise UserError(
            f"cannot write the run directory: {err}. Set logging.run_dir to a writable directory "
            "with free space (or fix its permissions)."
        ) from None


def _nan_failure(
    err: NonFinite, run_dir: Path, state: Progress, cfg: Config, log: RunLog | distributed.NullLog
) -> TrainingError:
    """Write nan_report.json and turn the failure into a TrainingError (exit 1) that says where to look."""
    last = run_dir / "checkpoints" / "last.pt"
    report = {
        "step": state.step + 1,  # the step that failed (not applied)
        "epoch": state.epoch + 1,
        "batch_in_epoch": state.batch_in_epoch,
        "nan_policy": cfg.trainer.nan_policy,
        **err.report,
        "last_good_checkpoint": str(last) if last.exists() else None,
    }
    if not isinstance(log, distributed.NullLog):  # under DDP rank 0 writes it
        write_json(run_dir / "nan_report.json", report)
    log.log(
        "event",
        state.step,
        {"event": "nonfinite", "first_nonfinite": report.get("first_nonfinite")},
    )
    return TrainingError(
        f"{err} at step {report['step']} (epoch {report['epoch']}); details in {run_dir / 'nan_report.json'}. "
        "Try a lower optimizer.lr, trainer.grad_clip.max_norm=1.0, or trainer.precision=32. "
        f"The last good checkpoint is {last if last.exists() else 'not written yet'}."
    )
