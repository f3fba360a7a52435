"""The training loop. Read ``fit`` top to bottom: build the run, the epoch loop, the finish.

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

Checkpoints (``checkpoint.py`` writes them, ``run_state.py`` says what they hold) are
written at step boundaries only: every ``every_n_steps``, at epoch ends, and when a stop
signal was flagged (``faults.StopFlag``), so a resumed run continues at exactly the same
micro-batch.

Everything a run is made of (model, optimizer, trackers, run directory, ...) is built once
by ``build_run`` into a ``Run``; ``fit`` is the loop over it.
"""

from __future__ import annotations

import contextlib
import difflib
import errno
import math
import signal
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

import torch
from rich.console import Console
from torch import nn

from bptrain import collector, distributed
from bptrain.adversarial import AdversarialTraining, BatchLoss, build_adversarial
from bptrain.callbacks import CallbackList, RunInfo, build_callbacks
from bptrain.checkpoint import (
    BackgroundWriter,
    CheckpointTracker,
    host_copy,
    link_or_copy,
    rewind_run_dir,
    save_checkpoint,
    save_safetensors,
)
from bptrain.components import Components, build_components
from bptrain.config import Config, GradClip, LoggingConfig, to_dict, to_yaml
from bptrain.data import Batches, DataBundle
from bptrain.early_stopping import EarlyStopping
from bptrain.errors import TrainingError, UserError
from bptrain.evaluate import evaluate
from bptrain.faults import (
    Interrupted,
    NonFinite,
    NonFiniteGuard,
    StopFlag,
    full,
    locate_nonfinite,
    total_norm,
)
from bptrain.grads import LogStepRecorder
from bptrain.losses import Objective
from bptrain.metrics import EvalMetrics, write_tables
from bptrain.model_summary import example_batch, render, summarize
from bptrain.optim import build_optimizer, build_scheduler
from bptrain.preprocess import stored_preprocessing
from bptrain.progress import ConsoleProgress
from bptrain.resume import (
    FileStamp,
    load_resume,
    refuse_if_replaced,
    run_dir_of,
    version_warning,
)
from bptrain.run_state import BestWeights, DataOrder, LoopState, RandomState, RunState
from bptrain.runlock import RunDirLock
from bptrain.runlog import RunLog, create_run_dir, last_epoch_metrics, read_json, write_json
from bptrain.runtime import Precision, rng_state, seed_everything, set_rng_state, sum_dtype
from bptrain.steps import StepModule, UserStep, batch_size, check_user_step, to_device
from bptrain.summary import bytes_per_rank, count_parameters, print_run_header, print_summary
from bptrain.transfer import describe_init
from bptrain.version import __version__

if TYPE_CHECKING:
    from bptrain.sharding import ShardedState

__all__ = ["Interrupted", "Run", "StepResult", "build_run", "fit", "train_step"]


def fit(
    cfg: Config, console: Console, resume: str | None = None, pruning: Any = None
) -> dict[str, Any]:
    """Train as the config says; return the summary (also written to summary.json).

    ``pruning``: a search's trial (search.PruningReport): ``epoch_end(metrics)`` is called after
    each validated epoch is recorded and says whether to stop; the run then ends ``pruned``."""
    run = build_run(cfg, console, resume)  # from here this process owns run_dir (runlock.py)
    if run.recorded is not None:  # --resume of a run that had finished: nothing to train
        return _already_finished(run)
    run.pruning = pruning
    loop, accumulate = run.loop, cfg.trainer.accumulate_grad_batches
    info = RunInfo(run.run_dir, to_dict(cfg), run.model, run.dist.world_size, loop.epoch, loop.step)
    run.callbacks.on_fit_start(info)
    progress = ConsoleProgress(console, run.progress_mode, run.total_steps, cfg.trainer.max_epochs)
    collector.training_begins()  # what setup built is not walked by every collection (collector.py)
    started = time.perf_counter()
    epoch_metrics: dict[str, Any] = {}
    trained = False  # the loop ended as planned: _finish still writes in the run directory
    try:
        # exit waits for the last background checkpoint write, with the handlers still in place
        with run.stop.installed(drain=run.writer.close if run.writer else None):
            while not run.finished():
                run.model.train()
                run.data.train.set_epoch(loop.epoch)
                epoch_loss = torch.tensor(
                    loop.epoch_loss_sum, device=run.device, dtype=sum_dtype(run.device)
                )
                stopping: int | None = None  # the stop signal, once every rank agreed on it
                for window in _windows(run.data.train, accumulate, skip=loop.batch_in_epoch):
                    log_now = (loop.step + 1) % cfg.logging.log_every_n_steps == 0
                    if (
                        log_now
                        and run.recorder is not None
                        and _histogram_step(loop.step + 1, cfg.logging)
                    ):
                        run.recorder.arm_histograms()
                    result = train_step(
                        run.forward,
                        window,
                        run.step,  # the built-in loss(model(x), y) or the model's training_step
                        run.optimizer,
                        run.precision,
                        cfg.trainer.grad_clip,
                        measure_grad_norm=log_now,
                        guard=run.guard,
                        layers=run.recorder,
                        batch_loss=run.adversarial_loss(),
                    )
                    if not run.guard.last_skipped:  # a skipped step adds nothing to train/loss
                        epoch_loss.add_(result.loss, alpha=result.samples)  # exact in float64
                        loop.epoch_samples += result.samples
                    loop.batch_in_epoch += len(window)
                    loop.step += 1
                    run.step_schedule()
                    step_metrics = _log_step(run, result) if log_now else None
                    progress.step(loop.step, loop.epoch + 1, step_metrics)
                    run.callbacks.on_train_batch_end(loop.epoch, loop.step, step_metrics or {})
                    # every rank stops after the same step, even if only some got the signal
                    stopping = run.guard.agreed_signal(run.stop.signum)  # or saw a NaN (faults.py)
                    if stopping is not None or run.step_limit_reached():
                        break
                    if run.callbacks.agreed_stop:  # a callback asked: stop at this step boundary
                        break
                    if run.checkpoint_due_mid_epoch():
                        loop.epoch_loss_sum = float(epoch_loss)
                        run.save_last()
                loop.epoch_loss_sum = float(epoch_loss)
                if stopping is not None:  # save where we are: resume continues from here
                    raise _interrupted(run, stopping)
                if run.callbacks.agreed_stop:
                    run.save_last()
                    break
                epoch_metrics = _end_of_epoch(run, progress, started)
        trained = True
    except KeyboardInterrupt:  # a second Ctrl-C forced the stop: nothing saved, last.pt stands
        run.log.log(
            "event", loop.step, {"event": "interrupted", "signal": "SIGINT", "saved": False}
        )
        raise Interrupted(signal.SIGINT, run.run_dir, saved=False, step=loop.step) from None
    except NonFinite as err:
        raise _nan_failure(err, run) from None
    except OSError as err:  # metrics.jsonl, TensorBoard: a full disk is the usual suspect
        raise _io_failure(err, run) from None
    finally:
        progress.close()
        if not trained:  # failed or stopped: the run directory is free again
            run.lock.release()
            collector.training_ends()
    try:
        return _finish(run, epoch_metrics, started)
    finally:
        run.lock.release()
        collector.training_ends()


@dataclass
class Run:
    """Everything one training run is made of, built once by ``build_run``; ``fit`` loops over it."""

    cfg: Config
    dist: distributed.Dist
    console: Console
    data: DataBundle
    objective: Objective
    step: Objective | UserStep  # what train_step computes per micro-batch (steps.py)
    metrics: EvalMetrics  # what evaluate measures besides the loss (metrics.py)
    callbacks: CallbackList  # the user's code at named points (callbacks.py)
    model: nn.Module  # what checkpoints save: never the DDP or compiled wrapper
    forward: nn.Module  # what the loop calls: the model (or its StepModule), maybe DDP / compiled
    optimizer: torch.optim.Optimizer
    scheduler: Any
    schedule_interval: str | None  # step | epoch | validation | None
    precision: Precision
    loop: LoopState
    total_steps: int
    guard: NonFiniteGuard
    tracker: CheckpointTracker
    stopper: EarlyStopping | None
    best_weights: BestWeights
    state: RunState  # the checkpoint contract: key -> the part above that owns that state
    run_dir: Path
    log: RunLog | distributed.NullLog
    recorder: LogStepRecorder | None  # per-layer norms and histograms at log steps (TensorBoard)
    adversarial: AdversarialTraining | None  # trainer.adversarial: attack each training batch
    stop: StopFlag
    resumed_from: Path | None
    sharded: ShardedState | None = None  # FSDP: the state its checkpoints hold (full or sharded)
    pruning: Any = None  # a search's trial: asked after each validation whether to stop
    pruned: bool = False
    writer: BackgroundWriter | None = None  # trainer.checkpoint.async_write
    # held from the run directory's first write until fit ends: one process per run (runlock.py)
    lock: RunDirLock = field(default_factory=lambda: RunDirLock(None))
    recorded: dict[str, Any] | None = None  # a finished run's summary.json, when resumed as is
    sharing: bool = False  # within one_state(): an epoch end's files share one state
    shared_state: dict[str, Any] | None = None  # that state, once the first file built it

    @property
    def device(self) -> torch.device:
        return self.dist.device

    @property
    def progress_mode(self) -> str:
        return self.cfg.logging.progress if self.dist.is_main else "off"

    def finished(self) -> bool:
        stopped = self.stopper is not None and self.stopper.should_stop
        return stopped or self.pruned or self.callbacks.agreed_stop or self.limits_reached()

    def limits_reached(self) -> bool:
        return _limits_reached(self.cfg, self.loop, len(self.data.train))

    def step_limit_reached(self) -> bool:
        max_steps = self.cfg.trainer.max_steps
        return max_steps is not None and self.loop.step >= max_steps

    def adversarial_loss(self) -> BatchLoss | None:
        """This step's loss on attacked inputs (trainer.adversarial), or None for the plain loss.
        A pure function of the step, so resume and DDP repeat the attack exactly."""
        if self.adversarial is None:
            return None
        return self.adversarial.for_step(self.loop.step, self.model, self.objective, self.precision)

    def step_schedule(self) -> None:
        """Step a per-step LR schedule. Past its horizon (an extended run) the LR stays at its
        final value; onecycle would raise if stepped further."""
        if self.schedule_interval == "step" and self.loop.step <= self.loop.schedule_steps:
            self.scheduler.step()

    def checkpoint_due_mid_epoch(self) -> bool:
        every = self.cfg.trainer.checkpoint.every_n_steps
        if not every or self.loop.step % every:
            return False
        return self.loop.batch_in_epoch < len(self.data.train)  # mid-epoch

    def checkpoint(self) -> dict[str, Any]:
        """The checkpoint's contents now (see run_state.py)."""
        self.guard.raise_if_failed()  # never save a model a lazily-detected NaN has poisoned
        self.loop.metrics_bytes = self.log.jsonl.tell()
        return self.state.save()

    def gather(self, weights: bool = True, shards: bool = True) -> None:
        """Before a checkpoint (every rank calls this): every rank's running epoch sums to the
        state rank 0 writes; FSDP: the full state to rank 0, or each rank's shard to disk
        (trainer.checkpoint.format); `weights`: also the full weights for the .safetensors
        exports; ``shards=False``: only those weights (no checkpoint follows)."""
        finite = self.guard.weights_finite(self.model)  # lazy (GPU) mode: never save NaN weights
        own = (self.loop.epoch_loss_sum, self.loop.epoch_samples, finite)
        gathered = distributed.all_gather_objects(own)  # every rank learns every verdict
        self.loop.rank_sums = [(loss, samples) for loss, samples, _ in gathered]
        if not all(ok for *_, ok in gathered):
            raise self.guard.poisoned_weights(self.model, here=not finite)
        if self.sharded is not None:
            self.sharded.gather(self.loop.step, weights, shards)

    def prune_shards(self) -> None:
        """Format sharded, after an epoch end's checkpoint files: delete the shard directories
        that none of them names. last.pt's write prunes too, but with save_last false (or between
        every_n_epochs) best/top-k alone would leave one full copy per epoch behind. Queued
        behind those files' writes when they go through the background writer."""
        sharded = self.sharded
        if sharded is not None and sharded.shard_dir is not None and self.dist.is_main:
            self.write(sharded.prune_unnamed, sharded.shard_dir)

    @contextlib.contextmanager
    def one_state(self) -> Iterator[None]:
        """At an epoch end, best.pt (or a top-k file) and last.pt hold the same state: within this
        block it is built and copied once, written once, and last.pt becomes a hard link of the
        file the tracker wrote (``link_or_copy``). Not with FSDP's sharded format (every write
        names its own shard directory), nor when a callback's ``on_checkpoint`` runs between
        the two files and may change its own state, which last.pt must then hold."""
        self.sharing = self.sharded is None and not self.callbacks.wants("on_checkpoint")
        try:
            with self.stop.saving():  # best.pt too: a signal while it is written is only recorded
                yield
        finally:
            self.sharing, self.shared_state = False, None

    def state_to_write(self) -> dict[str, Any]:
        """The checkpoint's contents as the writer takes them: with the background writer, a copy
        in host memory (the loop goes on changing the tensors in place while it is written)."""
        if self.shared_state is not None:
            return self.shared_state
        state = self.checkpoint()
        if self.writer is not None:  # the loop waits for the copy to host memory, not for the disk
            state = host_copy(state)
        if self.sharing:
            self.shared_state = state
        return state

    def write(self, write: Any, *args: Any) -> None:
        """``write(*args)`` now, or queued on the background writer (trainer.checkpoint.async_write)."""
        if self.writer is None:
            write(*args)
        else:
            self.writer.submit(write, *args)

    def save_last(self) -> None:
        if self.cfg.trainer.checkpoint.save_last:
            path = self.run_dir / "checkpoints" / "last.pt"
            with self.stop.saving():
                self.gather(weights=False)
                if self.dist.is_main:
                    same = self.tracker.written if self.shared_state is not None else None
                    if same is not None:  # this epoch's best.pt or top-k file: link it (one_state)
                        self.write(link_or_copy, same, path)
                    else:
                        write = self.sharded.write_file if self.sharded else save_checkpoint
                        self.write(write, self.state_to_write(), path)
            self.announce_checkpoint(path)

    def announce_checkpoint(self, path: Path) -> None:
        """``on_checkpoint`` (rank 0 only: CallbackList.enabled) once the file is on disk: with
        async_write it is queued, so a callback that copies or uploads it waits for the writer."""
        if self.writer is not None and self.callbacks.wants("on_checkpoint"):
            self.writer.wait()
        self.callbacks.on_checkpoint(path)

    def export(self, path: Path, background: bool = False) -> None:
        """The model's weights as .safetensors (best.safetensors, last.safetensors); `background`:
        through the async checkpoint writer when there is one, from a host copy taken now."""
        meta = {"format": "pt", "epoch": str(self.loop.epoch), "step": str(self.loop.step)}
        meta["bptrain"] = __version__
        if background and self.shared_state is not None:  # the copy best.pt was made of
            self.write(save_safetensors, self.shared_state["model"], path, meta)
            return
        weights = self.sharded.model_state if self.sharded else self.model.state_dict()
        if background and self.writer is not None:
            self.writer.submit(save_safetensors, host_copy(weights), path, meta)
        else:
            save_safetensors(weights, path, meta)

    def export_best(self, path: Path) -> None:
        self.export(path, background=True)


def build_run(cfg: Config, console: Console, resume: str | None = None) -> Run:
    """Setup, in order: processes and seeds, the checkpoint to resume, components, optimizer and
    schedule, trackers, the restored state, the run directory and its log."""
    # one rank of a DDP job when a launcher (torchrun, --nproc, srun) started us, else one process
    dist = distributed.setup(cfg.trainer.device, cfg.trainer.strategy)
    if not dist.is_main:  # rank 0 prints and writes; the others train silently
        console = Console(quiet=True)
    seed_everything(cfg.seed, cfg.trainer.deterministic)  # the same seed on every rank
    if cfg.trainer.num_threads is not None:
        torch.set_num_threads(cfg.trainer.num_threads)
    saved, checkpoint_path, stamp = load_resume(cfg, resume)  # refuses a changed model or data
    parts = build_components(
        cfg,
        dist.device,
        init_weights=saved is None,  # resuming restores the weights anyway
        rank=dist.rank,
        world_size=dist.world_size,
        preprocessing=stored_preprocessing(saved, checkpoint_path),  # resumed: as it began
    )
    if parts.init_report is not None:
        console.print(describe_init(parts.init_report))
    model, data = parts.model, parts.data
    layers = _layer_table(model, data, dist.device) if dist.is_main else None  # before wrapping
    # FSDP shards the model in place: the optimizer comes after
    forward = _forward(cfg, parts, dist)
    optimizer = build_optimizer(cfg.optimizer, model)
    total_steps = _total_steps(cfg, data.train)
    # A per-step schedule keeps the horizon the run started with: extending a run continues at its final LR.
    loop = LoopState(
        schedule_steps=saved["progress"]["schedule_steps"] if saved else total_steps,
        world_size=dist.world_size,
        rank=dist.rank,
    )
    scheduler, schedule_interval = build_scheduler(cfg.scheduler, optimizer, loop.schedule_steps)
    precision = Precision.create(cfg.trainer.precision, dist.device)
    forward = torch.compile(forward) if cfg.trainer.compile else forward
    _check_monitors(cfg, data)
    _check_monitored_names(cfg, parts)  # before the run directory exists
    adversarial = build_adversarial(  # exit 2 if the data cannot be attacked as configured
        cfg.trainer.adversarial, data, cfg.seed, dist.rank, dist.world_size, parts.objective
    )

    run_dir = _run_dir(cfg, checkpoint_path, dist)
    ckpt, es = cfg.trainer.checkpoint, cfg.trainer.early_stopping
    sharded = _sharded_state(model, optimizer, cfg, run_dir / "checkpoints")
    tracker = CheckpointTracker(
        run_dir / "checkpoints", ckpt.monitor, ckpt.mode, ckpt.save_top_k, ckpt.save_best
    )
    stopper = EarlyStopping.from_config(es) if es is not None else None
    best_weights = BestWeights(enabled=es is not None and es.restore_best_weights)
    callbacks = build_callbacks(cfg.callbacks, enabled=dist.is_main)
    guard = NonFiniteGuard(
        cfg.trainer.nan_policy,
        cfg.trainer.max_skipped_steps,
        dist.device,
        precision.scaler.is_enabled(),
    )
    warn = lambda text: console.print(f"[yellow]warning:[/yellow] {text}")  # noqa: E731
    state = RunState(
        {
            "model": sharded.model_part if sharded else model,
            "optimizer": sharded.optimizer_part if sharded else optimizer,
            **({"shards": sharded.shards_part} if sharded else {}),  # format sharded: shard dir
            "scheduler": scheduler,
            "scaler": precision.scaler,
            "progress": loop,
            "checkpoint_tracker": tracker,
            "early_stopping": stopper,
            "early_stopping_best_weights": best_weights,
            "nan_guard": guard,
            "rng": RandomState(),
            "data_order": DataOrder(cfg.seed, data.train, loop, warn),  # after progress: its epoch
            "preprocessing": data.preprocessing,  # what eval, predict and export must apply
            "callbacks": callbacks,  # each callback's own state_dict, when it has one
            # (metrics have none to save: they are reset after every evaluation, and checkpoints
            # are written between evaluations)
        },
        cfg,
        data.spec,
    )
    if saved is not None:
        state.restore(saved, str(checkpoint_path))
        if (note := version_warning(saved, checkpoint_path)) is not None:  # type: ignore[arg-type]
            warn(note)
    finished = saved is not None and (  # resumed where the run had already stopped
        (stopper is not None and stopper.should_stop) or _limits_reached(cfg, loop, len(data.train))
    )
    resumed_here = (checkpoint_path, stamp) if run_dir_of(checkpoint_path) is not None else None
    lock, log, recorded = _open_run_dir(
        run_dir, cfg, data, dist.is_main, loop, resumed_here, finished
    )
    print_run_header(
        console, run_dir, model, data, dist.device, cfg, total_steps, resumed_from=checkpoint_path
    )
    if layers is not None:
        console.print(layers)
    console.print(dist.describe(cfg.data.batch_size, cfg.trainer.accumulate_grad_batches))
    recorder = _layer_recorder(cfg, model, cfg.trainer.strategy == "fsdp", dist.is_main)
    stop, writer = _signals_and_writer(ckpt.async_write and dist.is_main)
    guard.stop_signal = lambda: stop.signum  # agreed across ranks with the guard's verdict
    return Run(
        cfg=cfg, dist=dist, console=console, data=data, objective=parts.objective,
        step=parts.step, metrics=parts.metrics, callbacks=callbacks, model=model,
        forward=forward, optimizer=optimizer, scheduler=scheduler,
        schedule_interval=schedule_interval, precision=precision, loop=loop,
        total_steps=total_steps, guard=guard, tracker=tracker, stopper=stopper,
        best_weights=best_weights, state=state, run_dir=run_dir, log=log, recorder=recorder,
        stop=stop, resumed_from=checkpoint_path, sharded=sharded,
        writer=writer, lock=lock, recorded=recorded,
        adversarial=adversarial,
    )  # fmt: skip


def _run_dir(cfg: Config, checkpoint_path: Path | None, dist: distributed.Dist) -> Path:
    """A resumed run continues in its run directory; rank 0 names a new one, every rank uses it."""
    return run_dir_of(checkpoint_path) or distributed.broadcast(
        _writable(lambda: create_run_dir(cfg.logging.run_dir, cfg.logging.name or "run"))
        if dist.is_main
        else None
    )


def _layer_recorder(
    cfg: Config, model: nn.Module, sharded: bool, is_main: bool
) -> LogStepRecorder | None:
    """Per-layer norms go to grad_norms.jsonl (and TensorBoard); histograms only to TensorBoard.

    Rank 0 records; under FSDP every rank does (its slices), and the norms are reduced over ranks.
    """
    record_layers = cfg.logging.grad_norms or (cfg.logging.histograms and cfg.logging.tensorboard)
    if not record_layers or not (is_main or sharded):
        return None
    return LogStepRecorder(model, grad_norms=cfg.logging.grad_norms, sharded=sharded)


def _layer_table(model: nn.Module, data: DataBundle, device: torch.device) -> Any:
    """The fit header's compact layer table (``bptrain summary CONFIG`` shows it all).

    Computed before DDP/FSDP wrapping: a forward of a sharded model on rank 0 alone would hang.
    None for a user dataset (samples of any structure: no input shape to make a batch from).
    """
    if not data.spec.input_shape:
        return None
    tokens = data.preprocessing is not None and data.preprocessing.integer_inputs
    return render(summarize(model, example_batch(data.spec, device, tokens)), compact=True)


def _open_run_dir(
    run_dir: Path,
    cfg: Config,
    data: DataBundle,
    is_main: bool,
    loop: LoopState,
    resumed_here: tuple[Path, FileStamp | None] | None,
    finished: bool,
) -> tuple[RunDirLock, RunLog | distributed.NullLog, dict[str, Any] | None]:
    """Take the run directory (this process owns it until fit ends: runlock.py), then write:
    cut metrics.jsonl back to the checkpoint, config.yaml, the log. Returns (lock, log, recorded).

    Resuming a run that had finished and whose summary.json records this very checkpoint writes
    nothing: ``recorded`` is that summary (on every rank), and fit returns it as it is.
    """
    lock, log, recorded = RunDirLock(None), distributed.NullLog(), None
    if is_main:
        lock = _writable(lambda: RunDirLock(run_dir).acquire())
        try:
            if resumed_here is not None:  # the checkpoint read before the lock is still the newest
                refuse_if_replaced(*resumed_here)
            recorded = _recorded_summary(run_dir, loop) if finished and resumed_here else None
            if recorded is None:
                if resumed_here:  # drop what was logged after the checkpoint
                    rewind_run_dir(run_dir, loop.metrics_bytes)
                _writable(lambda: _write_run_files(run_dir, cfg, data))
                log = _writable(
                    lambda: RunLog(
                        run_dir, cfg.logging.tensorboard, to_dict(cfg), cfg.logging.mlflow
                    )
                )
        except BaseException:
            lock.release()
            raise
    return lock, log, distributed.broadcast(recorded)


def _recorded_summary(run_dir: Path, loop: LoopState) -> dict[str, Any] | None:
    """summary.json, if it records the run as of the resumed checkpoint (not an older end:
    a run extended, then killed after its last checkpoint, must still be finished and tested)."""
    summary = read_json(run_dir / "summary.json")
    if summary is None or (summary.get("epochs"), summary.get("steps")) != (loop.epoch, loop.step):
        return None
    return summary


def _already_finished(run: Run) -> dict[str, Any]:
    """fit on a run resumed after its end: say so, show what it recorded, change nothing."""
    recorded = run.recorded or {}
    if run.writer is not None:
        run.writer.close()
    run.lock.release()
    print_summary(run.console, recorded, written=False)
    run.console.print(
        f"the run in {run.run_dir} had already finished ({recorded.get('stop_reason', 'done')}): "
        "nothing to train, its files are unchanged. To train further, raise trainer.max_epochs "
        "or trainer.max_steps (an early-stopped run stays stopped).",
        soft_wrap=True,
    )
    return recorded


def _write_run_files(run_dir: Path, cfg: Config, data: DataBundle) -> None:
    """config.yaml (rerun it as it is) and preprocessing.json (what predict and export apply)."""
    (run_dir / "config.yaml").write_text(to_yaml(cfg), encoding="utf-8")
    if data.preprocessing is not None:
        data.preprocessing.write_json(run_dir / "preprocessing.json")


def _forward(cfg: Config, parts: Components, dist: distributed.Dist) -> nn.Module:
    """What the loop calls: the model, or the StepModule routing to its training_step (tried once
    on a real batch first), wrapped by DDP or FSDP when distributed. A training_step goes through
    StepModule.forward so that DDP sees the call and synchronises its gradients."""
    model = parts.model
    if not isinstance(parts.step, UserStep):
        return distributed.wrap(
            model, dist, cfg.trainer.strategy, cfg.trainer.precision, cfg.trainer.fsdp_blocks
        )
    wants_preds = bool(cfg.metrics) and parts.data.val is not None
    check_user_step(model, next(iter(parts.data.train)), dist.device, wants_preds)
    return distributed.wrap(
        StepModule(model),
        dist,
        cfg.trainer.strategy,
        cfg.trainer.precision,
        cfg.trainer.fsdp_blocks,
    )


def _sharded_state(
    model: nn.Module, optimizer: torch.optim.Optimizer, cfg: Config, directory: Path
) -> ShardedState | None:
    """FSDP: the state checkpoints hold, full or sharded (None unless strategy fsdp is launched)."""
    if cfg.trainer.strategy != "fsdp" or not torch.distributed.is_initialized():
        return None
    from bptrain.sharding import ShardedState  # imported here: only FSDP runs load FSDP

    return ShardedState(model, optimizer, directory, cfg.trainer.checkpoint.format != "full")


def _signals_and_writer(background: bool) -> tuple[StopFlag, BackgroundWriter | None]:
    """The stop-signal flag and, with trainer.checkpoint.async_write, the background writer: a
    signal during a background write is only recorded, as during a write in the loop."""
    stop = StopFlag()
    writer = BackgroundWriter() if background else None
    if writer is not None:
        stop.writing = writer.busy
    return stop, writer


def _total_steps(cfg: Config, train: Batches) -> int:
    """The run's optimizer steps: max_steps alone when max_epochs is not set (Lightning, HF)."""
    if len(train) == 0:  # drop_last dropped the only, short batch: the run would train nothing
        raise UserError(
            f"data.batch_size {cfg.data.batch_size} is larger than the training split (this "
            "process's share of it) and data.drop_last is true: every epoch would have 0 batches "
            "and nothing would train. Lower data.batch_size or set data.drop_last: false."
        )
    steps_per_epoch = math.ceil(len(train) / cfg.trainer.accumulate_grad_batches)
    max_epochs, max_steps = cfg.trainer.max_epochs, cfg.trainer.max_steps
    if max_epochs is None:  # config validation made sure max_steps is set then
        return max_steps  # type: ignore[return-value]
    total = max_epochs * steps_per_epoch
    return total if max_steps is None else min(total, max_steps)


def _limits_reached(cfg: Config, loop: LoopState, batches: int) -> bool:
    """max_epochs or max_steps reached. An epoch whose every batch has trained is ended first
    (validation, its epoch line): a stop signal at its last step left it trained but not ended.

    Epochs are counted as epochs and steps against max_steps only, never against max_epochs
    times this run's epoch length: a run resumed on another number of processes has another
    epoch length, and its earlier steps were counted with the old one."""
    max_epochs, max_steps = cfg.trainer.max_epochs, cfg.trainer.max_steps
    if max_epochs is not None and loop.epoch >= max_epochs:
        return True
    return max_steps is not None and loop.step >= max_steps and loop.batch_in_epoch < batches


class StepResult(NamedTuple):
    """What one optimizer step reports. The norms stay on the device (read only at log steps)."""

    loss: torch.Tensor  # mean loss over the window's samples
    samples: int
    grad_norm: torch.Tensor | None  # the true total norm: unscaled, before clipping
    clipped_norm: torch.Tensor | None  # what clipping by norm left (None without clipping by norm)
    logs: dict[str, torch.Tensor] = {}  # a training_step's other values, window means  # noqa: RUF012


def train_step(
    model: nn.Module,
    window: list[Any],
    objective: Objective | UserStep,
    optimizer: torch.optim.Optimizer,
    precision: Precision,
    clip: GradClip | None,
    measure_grad_norm: bool = False,
    guard: NonFiniteGuard | None = None,
    layers: LogStepRecorder | None = None,
    batch_loss: BatchLoss | None = None,
) -> StepResult:
    """One optimizer step over an accumulation window.

    The gradient norm is computed only when clipping by norm needs it anyway or when
    `measure_grad_norm` asks (at log steps), since it costs a pass over all gradients. At those
    steps `layers` (if given) also records per-layer gradient norms and update-to-weight ratios.
    `objective.compute(model, batch)` is the micro-batch's loss: the built-in ``loss(model(x), y)``
    or the model's own ``training_step`` (``steps.UserStep``); everything around it is the same.
    `batch_loss` (adversarial training) replaces ``objective.compute`` per (x, y) micro-batch;
    autocast, loss scaling, accumulation and clipping stay here.
    """
    layers = layers if measure_grad_norm else None
    window = [to_device(batch, precision.device) for batch in window]  # (x, y) tuples or dicts
    sizes = [batch_size(batch) for batch in window]
    window_samples = sum(sizes)
    scaler = precision.scaler
    logs: dict[str, torch.Tensor] = {}

    def forward_backward() -> torch.Tensor:
        total: torch.Tensor | None = None
        for i, (batch, n) in enumerate(zip(window, sizes, strict=True)):
            # DDP: only the window's last backward all-reduces the accumulated gradients
            with distributed.no_sync(model, skip=i < len(window) - 1):
                with precision.autocast():
                    if batch_loss is None:
                        loss, logged = objective.compute(model, batch)
                    else:  # adversarial training: the loss on attacked inputs (adversarial.py)
                        loss, logged = batch_loss(model, batch[0], batch[1], i), {}
                    if n != window_samples:  # weight only when accumulating: x * 1.0 is x
                        loss = loss * (n / window_samples)
                scaler.scale(loss).backward()
            part = loss.detach().float()
            total = part if total is None else total + part
            for key, value in logged.items():  # the same sample weighting as the loss
                value = value.float() * (n / window_samples)
                logs[key] = logs[key] + value if key in logs else value
        return total  # type: ignore[return-value]

    if isinstance(optimizer, torch.optim.LBFGS):
        # L-BFGS re-evaluates the loss several times per step, so the whole window runs inside a closure.
        # (fp16 is refused at config time: GradScaler cannot step closures.)
        norms: list[tuple[torch.Tensor | None, torch.Tensor | None]] = []

        def closure() -> torch.Tensor:
            optimizer.zero_grad(set_to_none=True)
            loss = distributed.mean_over_ranks(forward_backward())  # the line search sees one loss
            norms.append(clip_and_measure(model, clip, measure_grad_norm))
            return loss

        loss = optimizer.step(closure)
        optimizer.zero_grad(set_to_none=True)
        return StepResult(loss, window_samples, *norms[0], logs)  # type: ignore[arg-type]

    loss = forward_backward()
    scaler.unscale_(optimizer)  # true gradients from here on: the norm and clipping see real values
    if layers is not None:
        layers.before_update()
    grad_norm, clipped_norm = clip_and_measure(model, clip, measure_grad_norm)
    if guard is not None and not guard.step_ok(
        loss, grad_norm, model, lambda: locate_nonfinite(model, window[0], _step_loss(objective))
    ):  # nan_policy skip: no update for this window
        scaler.update()
        guard.after_update(scaler, count=False)  # counted as skipped_steps, not as an AMP skip
        optimizer.zero_grad(set_to_none=True)
        return StepResult(loss, window_samples, grad_norm, clipped_norm, logs)
    scaler.step(optimizer)
    scaler.update()
    if layers is not None:
        layers.after_update()
    if guard is not None:
        guard.after_update(scaler)
    optimizer.zero_grad(set_to_none=True)
    return StepResult(loss, window_samples, grad_norm, clipped_norm, logs)


def _step_loss(objective: Objective | UserStep):
    """The step's loss alone, for ``locate_nonfinite``'s replay."""
    return lambda model, batch: objective.compute(model, batch)[0]


def clip_and_measure(
    model: nn.Module, clip: GradClip | None, measure: bool
) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """Clip as configured. Returns (the pre-clip total norm, the norm clipping by norm left), each
    None when neither clipping nor `measure` needed it. The norm is the configured p-norm when clipping."""
    if clip is None and not measure:  # most steps: nothing to do
        return None, None
    by_norm = clip is not None and clip.max_norm is not None
    grads = [p for p in model.parameters() if p.grad is not None]
    norm = clipped = None
    if by_norm:
        norm = full(  # FSDP: the global norm over every rank's shard
            torch.nn.utils.clip_grad_norm_(
                grads,
                clip.max_norm,  # type: ignore[union-attr, arg-type]
                norm_type=clip.norm_type,  # type: ignore[union-attr]
                foreach=True,
            )
        )
        if measure:  # clip_grad_norm_ scales by max_norm / (norm + 1e-6) when norm > max_norm
            clipped = norm.clamp(max=clip.max_norm)  # type: ignore[union-attr]
    elif measure and grads:  # the norm is a pass over every gradient: only at log steps
        norm = total_norm([p.grad for p in grads])  # type: ignore[misc]
    if clip is not None and clip.max_value is not None:
        torch.nn.utils.clip_grad_value_(grads, clip.max_value, foreach=True)
    return norm, clipped


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


def _histogram_step(step: int, logging: LoggingConfig) -> bool:
    """Histograms at the first log step of every histogram_every_n_steps interval."""
    every, log_every = logging.histogram_every_n_steps, logging.log_every_n_steps
    return (
        logging.histograms
        and logging.tensorboard
        and step % max(every // log_every * log_every, log_every) == 0
    )


def _log_step(run: Run, result: StepResult) -> dict[str, Any]:
    """A step line in metrics.jsonl; per-layer norms, the clipped norm and histograms to TensorBoard."""
    # train/loss averaged over ranks; grad_norm is of the synced gradients
    result = result._replace(loss=distributed.mean_over_ranks(result.loss))
    metrics, clipped = _step_metrics(run.loop, result, run.optimizer, run.precision, run.guard)
    metrics.update(
        _extra_values(result.logs, "train")
    )  # what a training_step returned besides loss
    layer_stats = run.recorder.take() if run.recorder else {}
    if clipped is not None:
        layer_stats["grad_norm_clipped"] = clipped
    run.log.log("step", run.loop.step, metrics, tb_only=layer_stats)
    if run.recorder is not None:
        if run.cfg.logging.grad_norms:
            run.log.layers(run.loop.step, layer_stats)
        run.log.histograms(run.loop.step, run.recorder.take_histograms())
    return metrics


def _extra_values(logs: dict[str, torch.Tensor], prefix: str) -> dict[str, float]:
    """A training_step's other returned values, averaged over ranks, in one transfer."""
    if not logs:
        return {}
    values = distributed.mean_over_ranks(torch.stack([v.float() for v in logs.values()]))
    return {f"{prefix}/{k}": v for k, v in zip(logs, values.tolist(), strict=True)}


def _step_metrics(
    loop: LoopState,
    result: StepResult,
    optimizer: torch.optim.Optimizer,
    precision: Precision,
    guard: NonFiniteGuard,
) -> tuple[dict[str, Any], float | None]:
    """The step line's values and the clipped norm, fetched from the device in one transfer."""
    guard.raise_if_failed()  # a log step syncs anyway: the lazy NaN check costs nothing here
    nan = torch.full_like(result.loss, math.nan)
    values = torch.stack(
        [
            result.loss.float(),
            (result.grad_norm if result.grad_norm is not None else nan).float(),
            guard.amp_skips.float(),
            (result.clipped_norm if result.clipped_norm is not None else nan).float(),
        ]
    ).tolist()
    metrics = {
        "epoch": loop.epoch + 1,
        "train/loss": values[0],
        "lr": optimizer.param_groups[0]["lr"],
        "grad_norm": values[1],
    }
    if precision.scaler.is_enabled():
        metrics["loss_scale"] = precision.scaler.get_scale()
        metrics["amp_skipped_steps"] = int(values[2])
    if guard.policy == "skip":
        metrics["skipped_steps"] = guard.skipped
    return metrics, None if result.clipped_norm is None else values[3]


def _end_of_epoch(run: Run, progress: ConsoleProgress, started: float) -> dict[str, Any]:
    """The epoch's train/loss, validation, epoch-wise schedules, early stopping, the epoch line,
    best/top-k checkpoints and last.pt. Returns the epoch's metrics."""
    cfg, loop = run.cfg, run.loop
    loss_sum, samples = distributed.sum_over_ranks(loop.epoch_loss_sum, loop.epoch_samples)
    metrics: dict[str, Any] = {"epoch": loop.epoch + 1, "train/loss": loss_sum / max(samples, 1)}
    run.guard.check_epoch_loss(metrics["train/loss"])
    if loop.batch_in_epoch < len(run.data.train):  # max_steps ended the run mid-epoch
        return _end_mid_epoch(run, progress, started, metrics)
    loop.epoch += 1
    loop.batch_in_epoch, loop.epoch_loss_sum, loop.epoch_samples = 0, 0.0, 0
    last_epoch = run.limits_reached()
    validated = run.data.val is not None and (
        loop.epoch % cfg.trainer.val_every_n_epochs == 0 or last_epoch
    )
    if validated:
        metrics.update(_evaluate(run, run.data.val, "val", progress.validation))  # type: ignore[arg-type]
        run.guard.check_epoch_loss(metrics["val/loss"], "val/loss")  # nan_policy, as train/loss
        if run.schedule_interval == "validation":
            run.scheduler.step(_monitored(metrics, cfg.scheduler.monitor))  # type: ignore[union-attr]
    if run.schedule_interval == "epoch":
        run.scheduler.step()
    metrics["lr"] = run.optimizer.param_groups[0]["lr"]
    metrics["time"] = round(time.perf_counter() - started, 3)
    stopper = run.stopper
    if stopper is not None and (validated or not stopper.monitor.startswith("val/")):
        if stopper.update(metrics, metrics["epoch"]):
            metrics["early_stop"] = stopper.reason
        if stopper.best_epoch == metrics["epoch"]:
            run.best_weights.keep(run.model)
    run.log.log("epoch", loop.step, metrics)
    progress.epoch_end(loop.epoch, loop.step, metrics)
    if validated:  # before this epoch's checkpoints: they hold the callbacks' updated state
        run.callbacks.on_validation_end(loop.epoch, loop.step, metrics)
    run.pruned = validated and run.pruning is not None and run.pruning.epoch_end(metrics)
    stopped = (
        (stopper is not None and stopper.should_stop) or run.pruned or run.callbacks.agreed_stop
    )
    due = loop.epoch % cfg.trainer.checkpoint.every_n_epochs == 0 or last_epoch or stopped
    _save_checkpoints(run, metrics, loop.epoch, save_last=due)
    return metrics


def _end_mid_epoch(
    run: Run, progress: ConsoleProgress, started: float, metrics: dict[str, Any]
) -> dict[str, Any]:
    """max_steps reached mid-epoch: the run ends, its epoch does not. The final model is validated,
    ranked (best.pt, top-k) and logged as the epoch so far, but the loop stays where it is, so
    that raising max_steps and resuming continues at the next micro-batch exactly as a run that
    never stopped: no epoch-wise or plateau schedule step, no early-stopping update, validation
    leaves the RNG as it found it, and the epoch line comes after last.pt (a resume drops it)."""
    loop = run.loop
    validated = run.data.val is not None
    if validated:
        rng = rng_state()
        metrics.update(_evaluate(run, run.data.val, "val", progress.validation))  # type: ignore[arg-type]
        set_rng_state(rng)
        run.guard.check_epoch_loss(metrics["val/loss"], "val/loss")  # nan_policy, as train/loss
    metrics["lr"] = run.optimizer.param_groups[0]["lr"]
    metrics["time"] = round(time.perf_counter() - started, 3)
    _save_checkpoints(run, metrics, loop.epoch + 1, save_last=True)
    run.log.log("epoch", loop.step, metrics)
    progress.epoch_end(loop.epoch + 1, loop.step, metrics)
    if validated:
        run.callbacks.on_validation_end(loop.epoch + 1, loop.step, metrics)
    return metrics


def _save_checkpoints(run: Run, metrics: dict[str, Any], epoch: int, save_last: bool) -> None:
    """An epoch end's files: best.pt and the top-k files as the tracker ranks `metrics` (rank 0),
    then last.pt when due; one state, copied and written once (``Run.one_state``)."""
    with run.one_state():
        run.gather()  # FSDP: every rank takes part; the tracker (rank 0) may write best/top-k
        if run.dist.is_main:
            best = run.tracker.update(
                metrics, epoch, run.loop.step, run.state_to_write, run.export_best, run.writer
            )
            if best and run.cfg.trainer.checkpoint.save_best:
                run.announce_checkpoint(run.run_dir / "checkpoints" / "best.pt")
        if save_last:
            run.save_last()
    run.prune_shards()


def _finish(run: Run, epoch_metrics: dict[str, Any], started: float) -> dict[str, Any]:
    """Restore the best weights if asked, export the final model, test it, write summary.json."""
    cfg, loop, stopper, console = run.cfg, run.loop, run.stopper, run.console
    if run.pruned:
        status, stop_reason = "pruned", f"pruned by the search after epoch {loop.epoch}"
        console.print(f"[bold]pruned[/bold] by the search after epoch {loop.epoch}")
        run.log.log("event", loop.step, {"event": "pruned"})
    elif stopper is not None and stopper.should_stop:
        status, stop_reason = "early_stopped", f"early stopping: {stopper.reason}"
        console.print(
            f"[bold]early stopping[/bold] at epoch {stopper.stopped_epoch}: {stopper.reason}"
        )
        run.log.log("event", loop.step, {"event": "early_stopped", **stopper.state_dict()})
    elif run.callbacks.agreed_stop:
        status = "stopped"
        stop_reason = f"stopped by a callback: {run.callbacks.stop_reason or 'on rank 0'}"
        console.print(f"[bold]{stop_reason}[/bold]")
        run.log.log("event", loop.step, {"event": "stopped", "reason": stop_reason})
    else:
        status = "completed"
        max_epochs = cfg.trainer.max_epochs  # None: max_steps alone decided
        by_epochs = max_epochs is not None and loop.epoch >= max_epochs
        stop_reason = "max_epochs reached" if by_epochs else "max_steps reached"
    restored = run.best_weights.weights is not None
    if restored:  # early_stopping.restore_best_weights, however the run ended
        run.model.load_state_dict(run.best_weights.weights)  # type: ignore[arg-type]
        console.print(f"restored the weights of the best epoch ({stopper.best_epoch})")  # type: ignore[union-attr]
    run.gather(shards=False)  # the weights to export; no checkpoint file is written here
    if run.dist.is_main:  # the final model: what test/* measures
        run.export(run.run_dir / "checkpoints" / "last.safetensors")
    test = run.data.test
    test_metrics = _evaluate(run, test, "test") if test else None
    if test_metrics:
        run.log.log("test", loop.step, test_metrics)
    total_params, trainable_params = count_parameters(run.model)
    accumulate = cfg.trainer.accumulate_grad_batches
    summary = {
        "status": status,
        "stop_reason": stop_reason,
        "run_dir": str(run.run_dir),
        "epochs": loop.epoch,
        "steps": loop.step,
        "wall_time_s": round(time.perf_counter() - started, 3),
        "final": epoch_metrics or _recorded_final(run),
        "best": run.tracker.summary(),
        "early_stopping": None
        if stopper is None
        else {**stopper.state_dict(), "restored_best_weights": restored},
        "test": test_metrics,
        "params": {
            "total": total_params,
            "trainable": trainable_params,
            "frozen": total_params - trainable_params,
        },
        "nonfinite": {
            "skipped_steps": run.guard.skipped,
            "amp_skipped_steps": int(run.guard.amp_skips),
        },
        "memory_per_rank": bytes_per_rank(run.model, run.optimizer),
        "device": str(run.device),
        "distributed": run.dist.summary(cfg.data.batch_size, accumulate),
        "precision": cfg.trainer.precision,
        "versions": {"bptrain": __version__, "torch": str(torch.__version__)},
    }
    if run.dist.is_main:
        try:
            write_json(run.run_dir / "summary.json", summary)
        except OSError as err:
            raise _io_failure(err, run) from None
    run.callbacks.on_fit_end(summary)
    run.log.close(summary)
    print_summary(console, summary)
    _write_report(run)
    return summary


def _recorded_final(run: Run) -> dict[str, Any]:
    """A resume that trained no epoch (the run had finished before its summary was written):
    the final metrics are those metrics.jsonl recorded for the last epoch."""
    if run.resumed_from is None:
        return {}
    run.console.print(
        "no epoch ended after this resume (the run had finished training): summary.json's "
        "final metrics are the last epoch's in metrics.jsonl"
    )
    return last_epoch_metrics(run.run_dir) if run.dist.is_main else {}


def _write_report(run: Run) -> None:
    """logging.report: <run>/report.html, so the run can be looked at without TensorBoard.

    A report that cannot be written is a warning, never a failed run: training is done by now.
    """
    if not (run.cfg.logging.report and run.dist.is_main):
        return
    from bptrain.report import write_report

    started = time.perf_counter()
    try:
        path = write_report([run.run_dir])
    except Exception as err:  # the run's results are already safe on disk
        run.console.print(f"[yellow]warning:[/yellow] the report could not be written: {err}")
        return
    took = time.perf_counter() - started
    run.console.print(f"wrote {path} ({took:.2f} s)", soft_wrap=True, markup=False, highlight=False)


def _evaluate(run: Run, batches: Batches, prefix: str, on_batch: Any = None) -> dict[str, float]:
    """Loss and metrics over a split; tables (the confusion matrix) go to the run directory."""
    metrics = evaluate(
        run.model, batches, run.objective, run.precision, prefix, run.metrics, on_batch
    )
    if run.dist.is_main and run.metrics.tables:
        write_tables(run.run_dir, prefix, run.metrics.tables)
    return metrics


def _monitored(metrics: dict[str, float], key: str) -> float:
    if key not in metrics:
        raise UserError(
            f"the monitored metric '{key}' is not logged; available: {', '.join(sorted(metrics))}."
        )
    return metrics[key]


def _check_monitors(cfg: Config, data: DataBundle) -> None:
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


def _check_monitored_names(cfg: Config, parts: Components) -> None:
    """Refuse a monitor the epoch line never holds: it would rank nothing (no best.pt, no top-k)
    and stop nothing, and the run would end "completed" all the same.

    The epoch line holds train/loss, val/loss and val/<key> of each metric (vector results as
    val/<key>/<i>, dicts as val/<key>/<name>); a model's own validation_step may log any val/ name.
    """
    ckpt, es = cfg.trainer.checkpoint, cfg.trainer.early_stopping
    monitors = {"trainer.early_stopping.monitor": es.monitor} if es is not None else {}
    if ckpt.save_best or ckpt.save_top_k:
        monitors["trainer.checkpoint.monitor"] = ckpt.monitor
    if getattr(cfg.scheduler, "monitor", None):  # plateau, or a class_path on validation
        monitors["scheduler.monitor"] = cfg.scheduler.monitor  # type: ignore[union-attr]
    keys = ["train/loss", "val/loss", *(f"val/{key}" for key in parts.metrics.metrics)]
    own_val_names = isinstance(parts.step, UserStep)
    for where, name in monitors.items():
        if name in keys or any(name.startswith(f"{key}/") for key in keys[2:]):
            continue
        if own_val_names and name.startswith("val/"):
            continue
        close = [  # as written, Keras style (val_loss), or without the val/ prefix (accuracy)
            match
            for guess in (name, name.replace("_", "/", 1), f"val/{name}")
            for match in difflib.get_close_matches(guess, keys, n=1, cutoff=0.6)
        ]
        hint = f" Did you mean '{close[0]}'?" if close else ""
        raise UserError(
            f"{where} is '{name}', a metric this run never logs.{hint} Its epoch lines hold "
            f"{', '.join(keys)} (each entry of metrics: adds val/<its key>)."
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


def _io_failure(err: OSError, run: Run) -> TrainingError:
    """A failed write in the run directory (exit 1): what failed, the fix, what is safe."""
    last = run.run_dir / "checkpoints" / "last.pt"
    fix = (
        " The disk is full: free space (or set logging.run_dir to a disk with room)"
        if err.errno == errno.ENOSPC
        else " Check that logging.run_dir is writable"
    )
    kept = f"; the last good checkpoint is {last}" if last.exists() else ""
    resume = ", then continue it with --resume auto." if last.exists() else "."
    return TrainingError(f"I/O error while training: {err}.{fix}{kept}{resume}")


def _interrupted(run: Run, signum: int) -> Interrupted:
    """A stop signal every rank agreed on: save last.pt at this step boundary, log the event."""
    run.save_last()
    name = signal.Signals(signum).name
    run.log.log("event", run.loop.step, {"event": "interrupted", "signal": name})
    saved = run.cfg.trainer.checkpoint.save_last
    return Interrupted(signum, run.run_dir, saved=saved, step=run.loop.step)


def _nan_failure(err: NonFinite, run: Run) -> TrainingError:
    """Write nan_report.json and turn the failure into a TrainingError (exit 1) that says where to look.

    Distributed, every rank is here (the verdict is agreed: faults.NonFiniteGuard): the report
    and the message are those of the first rank that saw the non-finite value itself."""
    loop, run_dir = run.loop, run.run_dir
    last = run_dir / "checkpoints" / "last.pt"
    seen = distributed.all_gather_objects((err.here, str(err), err.report))
    ranks = [r for r, (here, _, _) in enumerate(seen) if here] or [0]
    # the origin: a rank whose own loss went non-finite (DDP averages one rank's NaN gradients
    # into every rank's), else the first that saw a non-finite value
    bad_loss = [r for r in ranks if not math.isfinite(seen[r][2].get("loss", 0.0))]
    rank = (bad_loss or ranks)[0]
    _, message, found = seen[rank]
    report = {
        "step": loop.step + 1,  # the step that failed (not applied)
        "epoch": loop.epoch + 1,
        "batch_in_epoch": loop.batch_in_epoch,
        "nan_policy": run.cfg.trainer.nan_policy,
        **found,
        "last_good_checkpoint": str(last) if last.exists() else None,
    }
    if len(seen) > 1:
        report.update(rank=rank, ranks_nonfinite=ranks)
        message = f"{message} on rank {rank}" if len(ranks) < len(seen) else message
    if run.dist.is_main:  # under DDP rank 0 writes it
        write_json(run_dir / "nan_report.json", report)
    first = report.get("first_nonfinite")
    run.log.log("event", loop.step, {"event": "nonfinite", "first_nonfinite": first})
    _write_report(run)  # see where it went non-finite
    return TrainingError(
        f"{message} at step {report['step']} (epoch {report['epoch']}); details in {run_dir / 'nan_report.json'}. "
        "Try a lower optimizer.lr, trainer.grad_clip.max_norm=1.0, or trainer.precision=32. "
        f"The last good checkpoint is {last if last.exists() else 'not written yet'}."
    )
