"""The ``loss``, ``optimizer`` and ``scheduler`` sections: what is minimised, and how."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, field_validator, model_validator

from bptrain.config.base import Section

# --------------------------------------------------------------------------- loss


class LossConfig(Section):
    name: Literal["auto", "cross_entropy", "mse", "l1", "huber", "bce_with_logits", "nll"] = "auto"
    """`auto` picks cross_entropy for integer (class) targets and mse for real-valued targets. `nll` expects log-probabilities: built-in models then end in LogSoftmax."""
    label_smoothing: float = Field(0.0, ge=0.0, lt=1.0)
    """cross_entropy only: mix the one-hot targets with the uniform distribution."""
    class_weights: list[float] | None = None
    """cross_entropy/nll only: a weight per class, for imbalanced data."""
    huber_delta: float = Field(1.0, gt=0.0)
    """huber only: where the loss changes from quadratic to linear."""

    @model_validator(mode="after")
    def _options_match_loss(self) -> LossConfig:
        if self.label_smoothing and self.name not in ("auto", "cross_entropy"):
            raise ValueError(f"label_smoothing applies to cross_entropy, not {self.name}")
        if self.class_weights is not None and self.name not in ("auto", "cross_entropy", "nll"):
            raise ValueError(f"class_weights apply to cross_entropy and nll, not {self.name}")
        return self


# --------------------------------------------------------------------------- optimizer


class OptimizerCommon(Section):
    lr: float = Field(1e-3, gt=0.0)
    """Learning rate (the peak LR when a scheduler warms up or anneals)."""
    weight_decay: float = Field(0.0, ge=0.0)
    """L2 penalty (decoupled for adamw). Applied to weight matrices only unless decay_bias_and_norm is true."""
    decay_bias_and_norm: bool = False
    """Also apply weight decay to biases and normalisation weights (1-d parameters). Usually harmful, hence off."""


class SGDOptimizer(OptimizerCommon):
    name: Literal["sgd"]
    momentum: float = Field(0.0, ge=0.0, lt=1.0)
    """Heavy-ball momentum; 0 is plain SGD."""
    nesterov: bool = False
    """Nesterov momentum (needs momentum > 0)."""
    dampening: float = Field(0.0, ge=0.0, lt=1.0)
    """Dampening for momentum."""

    @model_validator(mode="after")
    def _nesterov_needs_momentum(self) -> SGDOptimizer:
        if self.nesterov and (self.momentum <= 0 or self.dampening != 0):
            raise ValueError("nesterov needs momentum > 0 and dampening = 0")
        return self


class MomentumOptimizer(SGDOptimizer):
    name: Literal["momentum"]  # type: ignore[assignment]
    """SGD with heavy-ball momentum (0.9 unless set): the classic `Momentum` optimizer."""
    momentum: float = Field(0.9, ge=0.0, lt=1.0)
    """Heavy-ball momentum."""


class AdamOptimizer(OptimizerCommon):
    name: Literal["adam", "adamw"]
    betas: tuple[float, float] = (0.9, 0.999)
    """Decay rates of the first and second moment estimates."""
    eps: float = Field(1e-8, gt=0.0)
    """Added to the denominator for numerical stability."""
    amsgrad: bool = False
    """Use the AMSGrad variant."""
    fused: bool | None = None
    """Use the fused CUDA kernel (null: PyTorch decides)."""


class RMSpropOptimizer(OptimizerCommon):
    name: Literal["rmsprop"]
    alpha: float = Field(0.99, gt=0.0, lt=1.0)
    """Smoothing constant of the squared-gradient average."""
    eps: float = Field(1e-8, gt=0.0)
    """Added to the denominator for numerical stability."""
    momentum: float = Field(0.0, ge=0.0, lt=1.0)
    """Momentum factor."""
    centered: bool = False
    """Normalise by the estimated variance of the gradient."""


class AdagradOptimizer(OptimizerCommon):
    name: Literal["adagrad"]
    lr_decay: float = Field(0.0, ge=0.0)
    """Learning-rate decay."""
    eps: float = Field(1e-10, gt=0.0)
    """Added to the denominator for numerical stability."""
    initial_accumulator_value: float = Field(0.0, ge=0.0)
    """Starting value of the squared-gradient sums."""


class LBFGSOptimizer(OptimizerCommon):
    name: Literal["lbfgs"]
    """Full-batch quasi-Newton. Each optimizer step re-evaluates the loss through a closure; best with a large batch_size and lr around 1."""
    lr: float = Field(1.0, gt=0.0)
    """Step length (1 is standard with the strong Wolfe line search)."""
    max_iter: int = Field(20, ge=1)
    """Inner iterations per optimizer step."""
    history_size: int = Field(100, ge=1)
    """Number of curvature pairs kept."""
    line_search_fn: Literal["strong_wolfe"] | None = "strong_wolfe"
    """Line search (strongly recommended); null uses a fixed step."""
    tolerance_grad: float = Field(1e-7, ge=0.0)
    """Stop inner iterations when the gradient's max-abs falls below this."""
    tolerance_change: float = Field(1e-9, ge=0.0)
    """Stop inner iterations when the loss or step changes less than this."""

    @field_validator("weight_decay")
    @classmethod
    def _no_weight_decay(cls, value: float) -> float:
        if value:
            raise ValueError(
                "lbfgs has no weight_decay; add an L2 term to the loss or use another optimizer"
            )
        return value


OptimizerConfig = Annotated[
    SGDOptimizer
    | MomentumOptimizer
    | AdamOptimizer
    | RMSpropOptimizer
    | AdagradOptimizer
    | LBFGSOptimizer,
    Field(discriminator="name"),
]

# --------------------------------------------------------------------------- scheduler


class NoScheduler(Section):
    name: Literal["none"]
    """A constant learning rate."""


class StepScheduler(Section):
    name: Literal["step"]
    """Per epoch: multiply the LR by gamma every step_size epochs."""
    step_size: int = Field(10, ge=1)
    """Epochs between decays."""
    gamma: float = Field(0.1, gt=0.0)
    """Multiplicative decay."""


class MultiStepScheduler(Section):
    name: Literal["multistep"]
    """Per epoch: multiply the LR by gamma at each milestone epoch."""
    milestones: list[int] = Field(default_factory=lambda: [30, 60, 90])
    """Epochs at which the LR decays."""
    gamma: float = Field(0.1, gt=0.0)
    """Multiplicative decay."""


class ExponentialScheduler(Section):
    name: Literal["exponential"]
    """Per epoch: multiply the LR by gamma after every epoch."""
    gamma: float = Field(0.95, gt=0.0)
    """Multiplicative decay per epoch."""


class CosineScheduler(Section):
    name: Literal["cosine"]
    """Per optimizer step: cosine annealing from lr to min_lr over the whole run."""
    min_lr: float = Field(0.0, ge=0.0)
    """The LR at the end of training."""


class OneCycleScheduler(Section):
    name: Literal["onecycle"]
    """Per optimizer step: the 1cycle policy (warm up to max_lr, then anneal far below lr) over the whole run."""
    max_lr: float | None = None
    """Peak LR; null uses optimizer.lr."""
    pct_start: float = Field(0.3, gt=0.0, lt=1.0)
    """Fraction of the run spent increasing the LR."""
    div_factor: float = Field(25.0, gt=0.0)
    """Initial LR = max_lr / div_factor."""
    final_div_factor: float = Field(1e4, gt=0.0)
    """Final LR = initial LR / final_div_factor."""
    anneal_strategy: Literal["cos", "linear"] = "cos"
    """Shape of the annealing."""


class WarmupCosineScheduler(Section):
    name: Literal["warmup_cosine"]
    """Per optimizer step: linear warmup from 0 for warmup_steps, then cosine annealing to min_lr at the end of the run."""
    warmup_steps: int = Field(100, ge=0)
    """Optimizer steps of linear warmup."""
    min_lr: float = Field(0.0, ge=0.0)
    """The LR at the end of training."""


class PlateauScheduler(Section):
    name: Literal["reduce_on_plateau"]
    """After each validation: multiply the LR by factor when `monitor` has not improved for `patience` validations."""
    monitor: str = "val/loss"
    """Metric to watch, e.g. val/loss or val/acc."""
    mode: Literal["min", "max"] = "min"
    """Whether lower (min) or higher (max) values of the metric are better."""
    factor: float = Field(0.1, gt=0.0, lt=1.0)
    """Multiplicative decay."""
    patience: int = Field(5, ge=0)
    """Validations without improvement before the LR decays."""
    threshold: float = Field(1e-4, ge=0.0)
    """Relative improvement that counts."""
    cooldown: int = Field(0, ge=0)
    """Validations to wait after a decay."""
    min_lr: float = Field(0.0, ge=0.0)
    """Lower bound on the LR."""


SchedulerConfig = Annotated[
    NoScheduler
    | StepScheduler
    | MultiStepScheduler
    | ExponentialScheduler
    | CosineScheduler
    | OneCycleScheduler
    | WarmupCosineScheduler
    | PlateauScheduler,
    Field(discriminator="name"),
]
