"""The ``trainer`` and ``logging`` sections: how long and how to train, and what to record."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from bptrain.config.adversarial import AdversarialConfig
from bptrain.config.base import Section, UsablePath

# --------------------------------------------------------------------------- trainer


class GradClip(Section):
    max_norm: float | None = Field(None, gt=0.0)
    """Rescale gradients so their total norm is at most this (computed after AMP unscaling)."""
    norm_type: float = Field(2.0, gt=0.0)
    """Which p-norm max_norm refers to (inf allowed as .inf)."""
    max_value: float | None = Field(None, gt=0.0)
    """Clamp every gradient element to [-max_value, max_value]."""

    @model_validator(mode="after")
    def _exactly_one(self) -> GradClip:
        if (self.max_norm is None) == (self.max_value is None):
            raise ValueError("set exactly one of grad_clip.max_norm or grad_clip.max_value")
        return self


class CheckpointConfig(Section):
    """What goes under <run>/checkpoints/ and when (see docs/checkpointing.md)."""

    monitor: str = "val/loss"
    """Metric that ranks checkpoints (best.pt, top-k files) and summary.json's `best`, e.g. val/loss or val/acc."""
    mode: Literal["min", "max"] = "min"
    """Whether lower (min) or higher (max) values of `monitor` are better."""
    save_top_k: int = Field(0, ge=-1)
    """Keep the k best checkpoints as epoch=E-step=S-<monitor>=V.pt files (0: none besides best.pt, -1: every validation)."""
    save_best: bool = True
    """Maintain best.pt (+ best.safetensors): the checkpoint with the best `monitor` value so far."""
    save_last: bool = True
    """Write last.pt (what --resume continues from). Turning it off makes runs impossible to resume."""
    every_n_epochs: int = Field(1, ge=1)
    """Write last.pt every N epochs (always also after the final epoch and on a stop signal)."""
    every_n_steps: int | None = Field(None, ge=1)
    """Also write last.pt every N optimizer steps, mid-epoch (for long epochs and preemptible jobs)."""
    async_write: bool = True
    """Write last.pt (and best.pt, best.safetensors, top-k files) on a background thread: the loop only waits for the copy of the state to host memory, not for the disk. The write is still atomic (a kill during it leaves the previous last.pt), writes happen in order, and the run waits for the last one before it exits. false writes in the loop."""
    format: Literal["auto", "full", "sharded"] = "auto"
    """How the model and optimizer state is written. full: inside each .pt file (gathered to rank 0 under fsdp). sharded (strategy fsdp only): every rank writes its own shard into a step-N-<hex>.dcp/ directory (one per write) beside the .pt file, which holds the rest of the run's state and names that directory; eval, predict, export and init_from read it in one process, and `bptrain checkpoint consolidate` makes a single file of it. auto: sharded under strategy fsdp, else full. See docs/checkpointing.md."""


class EarlyStoppingConfig(Section):
    """Stop when `monitor` stops improving (Keras/Lightning semantics; see docs/checkpointing.md)."""

    monitor: str = "val/loss"
    """Metric to watch; checked after each validation (or each epoch for train/* metrics)."""
    mode: Literal["min", "max"] = "min"
    """Whether lower (min) or higher (max) values are better."""
    patience: int = Field(3, ge=0)
    """Validations in a row without improvement before stopping (counts validations, not epochs)."""
    min_delta: float = Field(0.0, ge=0.0)
    """An improvement must beat the best value by more than this (strictly). Negative values are refused."""
    baseline: float | None = None
    """The wait counter only resets once the metric beats this value (Keras `baseline`)."""
    start_from_epoch: int = Field(0, ge=0)
    """Ignore the validations of the first N epochs (warm-up)."""
    restore_best_weights: bool = False
    """At the end of the run (early stop or max_epochs/max_steps), load the weights of the best validation before testing and exporting."""
    check_finite: bool = True
    """Stop at once when the monitored value is NaN or infinite (Lightning); false counts it as no improvement (Keras)."""


class TrainerConfig(Section):
    max_epochs: int | None = Field(10, ge=1)
    """Stop after this many epochs. The default 10 applies unless only max_steps is set: then max_steps alone decides (as in Lightning and the Hugging Face Trainer) and max_epochs is null."""
    max_steps: int | None = Field(None, ge=1)
    """Stop after this many optimizer steps, even mid-epoch (whichever limit comes first when both are set)."""
    device: str = "auto"
    """auto (cuda if available, then mps, else cpu), cpu, cuda, cuda:N or mps."""
    precision: Literal["32", "bf16", "fp16"] = "32"
    """32: float32. bf16: autocast to bfloat16. fp16: autocast to float16 with a dynamic GradScaler (on CPU too)."""
    grad_clip: GradClip | None = None
    """Gradient clipping: {max_norm: 1.0} (optionally norm_type) or {max_value: 0.5}. null disables it."""
    accumulate_grad_batches: int = Field(1, ge=1)
    """Micro-batches per optimizer step. The gradient equals that of one batch this many times larger."""
    val_every_n_epochs: int = Field(1, ge=1)
    """Validate every N epochs (and always after the last)."""
    deterministic: bool = False
    """Use deterministic algorithms (slower on GPU; CPU runs are reproducible anyway)."""
    compile: bool = False
    """Wrap the model in torch.compile."""
    strategy: Literal["auto", "ddp", "fsdp"] = "auto"
    """Multi-process training. auto: DistributedDataParallel when started by torchrun, `bptrain fit --nproc N` or srun with more than one process, else one process. ddp: also for a one-process launch, and refuse to run unlaunched. fsdp: shard parameters, gradients and optimizer state across the processes (FSDP2, per block; needs a launcher too). See docs/cluster.md."""
    fsdp_blocks: list[str] = Field(default_factory=list)
    """With strategy fsdp: class names of a class_path model's blocks to shard one by one (besides Linear, convolution, recurrent, embedding and transformer layers and bptrain's residual blocks, which always are)."""
    num_threads: int | None = Field(None, ge=1)
    """CPU threads torch uses for intra-op parallelism in this process (torch.set_num_threads). null: torch's default (one per core). Set 1 when several processes share a few cores."""
    checkpoint: CheckpointConfig = Field(default_factory=CheckpointConfig)
    """Checkpoint files and cadence."""
    early_stopping: EarlyStoppingConfig | None = None
    """Stop when a metric stops improving; null (default) trains to max_epochs/max_steps."""
    nan_policy: Literal["stop", "skip", "ignore"] = "stop"
    """On a non-finite loss or gradient: stop (write nan_report.json, keep the last good checkpoint, exit 1), skip the optimizer step (at most max_skipped_steps times), or ignore."""
    max_skipped_steps: int = Field(10, ge=0)
    """With nan_policy skip: stop (as `stop` does) once more steps than this were skipped in the run."""
    adversarial: AdversarialConfig | None = None
    """Adversarial training: attack each training batch (fgsm, pgd or trades) within epsilon, in raw input units. null (default): standard training. See docs/robustness.md."""
    activation_checkpointing: bool = False
    """Gradient checkpointing for the built-in mlp, cnn, cnn1d and transformer: keep only each block's input in the forward pass and recompute the block's activations in the backward pass. Less memory, about one extra forward pass of compute."""

    @field_validator("precision", mode="before")
    @classmethod
    def _precision_as_text(cls, value: Any) -> Any:
        return str(value) if isinstance(value, int) and not isinstance(value, bool) else value

    @model_validator(mode="after")
    def _max_steps_alone_decides(self) -> TrainerConfig:
        if self.max_steps is not None and "max_epochs" not in self.model_fields_set:
            self.__dict__["max_epochs"] = None  # not the default 10: it would end the run first
        if self.max_epochs is None and self.max_steps is None:
            raise ValueError("set trainer.max_epochs or trainer.max_steps: a run needs a limit")
        return self

    @model_validator(mode="after")
    def _fsdp_combinations(self) -> TrainerConfig:
        if self.strategy != "fsdp":
            if self.checkpoint.format == "sharded":
                raise ValueError(
                    "trainer.checkpoint.format sharded needs strategy fsdp (without it every rank "
                    "holds the whole state, and one file holds it); use format auto or full"
                )
            return self
        if self.precision == "fp16":
            raise ValueError(
                "strategy fsdp with precision fp16 is not supported (its GradScaler is not wired to "
                "sharded gradients); use precision bf16 (FSDP's mixed precision) or 32"
            )
        if self.early_stopping is not None and self.early_stopping.restore_best_weights:
            raise ValueError(
                "strategy fsdp cannot keep the best weights in memory "
                "(early_stopping.restore_best_weights); use checkpoints/best.pt instead"
            )
        if self.adversarial is not None:
            raise ValueError(
                "strategy fsdp with adversarial is not supported yet (the attack's input-gradient "
                "passes would run FSDP's gather/reduce hooks); use strategy ddp or auto"
            )
        return self

    @field_validator("device")
    @classmethod
    def _known_device(cls, value: str) -> str:
        if not re.fullmatch(r"auto|cpu|mps|cuda(:\d+)?", value):
            raise ValueError("expected auto, cpu, cuda, cuda:N or mps")
        return value


# --------------------------------------------------------------------------- logging


class MlflowConfig(Section):
    """Also record the run in MLflow (needs `pip install 'bptrain[mlflow]'`): the config as params, every metric with its step, and config.yaml, summary.json and the best checkpoint as artifacts."""

    tracking_uri: str | None = None
    """Where: a directory (`mlruns`, `file:///abs/mlruns`), `sqlite:///mlflow.db`, or a server (`http://host:5000`). null: MLflow's default (the MLFLOW_TRACKING_URI environment variable, else its local default)."""
    experiment: str = "bptrain"
    """MLflow experiment the run goes in (created if missing)."""
    run_name: str | None = None
    """MLflow run name; null: logging.name."""


MAX_NAME_BYTES = 200
"""logging.name is a directory name: 255 bytes at most on common file systems, less -sweep etc."""


class LoggingConfig(Section):
    run_dir: UsablePath = Path("runs")
    """Parent directory of run directories: each run writes <run_dir>/<name>/<timestamp>/."""
    name: str | None = None
    """Run name; defaults to the config file's name. One directory name under run_dir: no '/', '\\' or '..', at most 200 bytes."""
    tensorboard: bool = True
    """Write TensorBoard events under <run>/tb/."""
    log_every_n_steps: int = Field(50, ge=1)
    """Interval of the step lines in metrics.jsonl (train/loss, lr, grad_norm) and of the plain-text progress."""
    grad_norms: bool = True
    """Every log_every_n_steps, record per-layer gradient norms (after AMP unscaling, before clipping), non-finite gradient counts and update-to-weight ratios in <run>/grad_norms.jsonl (the report's heatmaps) and TensorBoard, with the clipped total norm."""
    histograms: bool = False
    """Also write TensorBoard histograms of weights, gradients and activations (the outputs of parameter-free modules such as activations) every histogram_every_n_steps."""
    histogram_every_n_steps: int = Field(500, ge=1)
    """Interval of the histograms (they cost far more than scalars); rounded to a log step."""
    report: bool = True
    """Write <run>/report.html when fit ends (as `bptrain report RUN_DIR` does): curves, LR, gradient-flow heatmaps, events, config; one self-contained file."""
    progress: Literal["auto", "rich", "plain", "off"] = "auto"
    """Console progress: auto is a live bar on a terminal and one plain line per log interval otherwise (batch jobs, CI)."""
    mlflow: MlflowConfig | None = None
    """Also log to MLflow (`logging.mlflow: {tracking_uri: sqlite:///mlflow.db}`); null: off."""

    @field_validator("name")
    @classmethod
    def _one_directory_name(cls, value: str | None) -> str | None:
        """The run directory is <run_dir>/<name>/...: a name must not lead outside run_dir."""
        if value is None:
            return value
        if (
            value.strip() in ("", ".", "..")
            or any(c in value for c in "/\\")
            or any(ord(c) < 32 or ord(c) == 127 for c in value)
        ):
            raise ValueError(
                "must be one directory name inside logging.run_dir: no '/', '\\', control "
                "characters, and not '', '.' or '..' (set logging.run_dir to choose where runs go)"
            )
        if len(value.encode("utf-8", "surrogatepass")) > MAX_NAME_BYTES:
            raise ValueError(
                f"must be one directory name of at most {MAX_NAME_BYTES} bytes (file systems "
                "allow 255, and sweeps and searches add a suffix)"
            )
        return value
