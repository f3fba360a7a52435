"""The config schema: the one place where every option and its default lives.

A YAML file plus dotted command-line overrides become a validated ``Config``.
Every section forbids unknown keys (a typo must never pass silently), choices
are ``Literal`` names, and variants (data sources, models, optimizers,
schedulers) are discriminated unions so each variant only accepts its own keys.
Field docstrings become the descriptions shown by ``config schema`` and in
editors, so the docs and the validation can never drift apart.

This module imports pydantic and yaml but never torch: ``config validate`` and
``config show`` stay fast.
"""

from __future__ import annotations

import difflib
import re
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    Tag,
    ValidationError,
    field_validator,
    model_validator,
)

from bptrain.errors import ConfigError, UserError


class Section(BaseModel):
    """Base for every config section: unknown keys are errors, docs come from docstrings."""

    model_config = ConfigDict(
        extra="forbid",
        use_attribute_docstrings=True,
        validate_assignment=True,
    )


# --------------------------------------------------------------------------- data


class DataCommon(Section):
    batch_size: int = Field(64, ge=1)
    """Samples per batch. Under DDP this is per process (the global batch is batch_size x world size)."""
    shuffle: bool = True
    """Reshuffle the training set every epoch (the order is a pure function of seed and epoch)."""
    drop_last: bool = False
    """Drop the last, shorter training batch of each epoch."""
    val_fraction: float = Field(0.2, ge=0.0, lt=1.0)
    """Fraction of the training set held out for validation when the source has no validation split (seeded)."""
    test_fraction: float = Field(0.0, ge=0.0, lt=1.0)
    """Fraction held out as a test split when the source has none (seeded). 0 means no test split."""
    normalize: bool = False
    """Standardise inputs with the mean/std of the training split only: per feature for (N, F), per feature over samples and steps for sequences (N, T, F), per channel over samples and pixels for images (N, C, H, W). Token ids are never normalised."""
    loader: Literal["auto", "tensor", "dataloader"] = "auto"
    """How batches are made. `tensor`: whole batches indexed from in-memory tensors (on the training device when they fit); `dataloader`: a torch DataLoader with workers and pinned memory; `auto`: `tensor` for in-memory data."""
    num_workers: int = Field(2, ge=0)
    """DataLoader worker processes (only with loader: dataloader)."""

    @model_validator(mode="after")
    def _splits_leave_training_data(self) -> DataCommon:
        if self.val_fraction + self.test_fraction >= 1.0:
            raise ValueError(
                "val_fraction + test_fraction must be below 1 so some training data remains"
            )
        return self


class SpiralsData(DataCommon):
    source: Literal["spirals"]
    n_samples: int = Field(1500, ge=10)
    """Total samples generated (before the validation/test split)."""
    n_classes: int = Field(3, ge=2)
    """Number of interleaved spiral arms (= classes)."""
    noise: float = Field(0.2, ge=0.0)
    """Standard deviation of the Gaussian noise added to each point."""


class MoonsData(DataCommon):
    source: Literal["moons"]
    n_samples: int = Field(1000, ge=10)
    """Total samples generated (before the validation/test split)."""
    noise: float = Field(0.1, ge=0.0)
    """Standard deviation of the Gaussian noise added to each point."""


class BlobsData(DataCommon):
    source: Literal["blobs"]
    n_samples: int = Field(1000, ge=10)
    """Total samples generated (before the validation/test split)."""
    n_classes: int = Field(3, ge=2)
    """Number of Gaussian clusters (= classes)."""
    n_features: int = Field(2, ge=1)
    """Input dimension."""
    cluster_std: float = Field(1.0, gt=0.0)
    """Standard deviation of each cluster; centres are drawn uniformly in [-10, 10]."""


class XorData(DataCommon):
    source: Literal["xor"]
    n_samples: int = Field(1000, ge=10)
    """Total samples generated (before the validation/test split)."""
    noise: float = Field(0.1, ge=0.0)
    """Standard deviation of the Gaussian noise added to the inputs."""


class SineData(DataCommon):
    source: Literal["sine"]
    n_samples: int = Field(1000, ge=10)
    """Total samples generated (before the validation/test split)."""
    noise: float = Field(0.05, ge=0.0)
    """Standard deviation of the Gaussian noise added to the targets."""
    periods: float = Field(2.0, gt=0.0)
    """How many periods of sin(x) the inputs span."""


class DigitsData(DataCommon):
    source: Literal["digits"]
    """The UCI optical-recognition handwritten digits (1,797 8x8 images, 10 classes), shipped inside bptrain; no download."""
    test_fraction: float = Field(0.2, ge=0.0, lt=1.0)
    """Fraction held out as a test split when the source has none (seeded). 0 means no test split."""
    flatten: bool = True
    """Give each image as 64 features (for MLPs); false gives (1, 8, 8) images."""


class NpzData(DataCommon):
    source: Literal["npz"]
    path: Path
    """An .npz file with arrays `x`, `y` and optionally `x_val`/`y_val` and `x_test`/`y_test`. Relative paths are resolved from the current directory."""


class CsvData(DataCommon):
    source: Literal["csv"]
    path: Path
    """A CSV file with a header row; every column but the target is a numeric feature. Relative paths are resolved from the current directory."""
    target: str
    """Name of the target column. Integer-valued targets make a classification task, others regression."""
    task: Literal["auto", "classification", "regression"] = "auto"
    """Override the task inferred from the target column."""


class AddingData(DataCommon):
    source: Literal["adding"]
    """The adding problem (Hochreiter & Schmidhuber, 1997): x is (N, length, 2) of (value in [0, 1], marker); exactly two steps are marked, one in each half, and the target is the sum of their values. Predicting the mean (1.0) gives MSE ~0.167; a plain RNN stays there as length grows, an LSTM or GRU drives it near 0."""
    n_samples: int = Field(4000, ge=10)
    """Total samples generated (before the validation/test split)."""
    length: int = Field(50, ge=2)
    """Sequence length T: the distance the error signal must travel back through time."""


class CopyData(DataCommon):
    source: Literal["copy"]
    """The copy (memory) task: x is (N, length + delay + length) token ids: `length` random symbols, `delay` blanks, a go-marker, blanks; the per-step target is blank (0) everywhere except the last `length` steps, which must repeat the symbols. Many-to-many classification; tokens: 0 blank, 1 go-marker, 2.. symbols."""
    n_samples: int = Field(3000, ge=10)
    """Total samples generated (before the validation/test split)."""
    length: int = Field(5, ge=1)
    """How many symbols to remember and repeat."""
    delay: int = Field(10, ge=0)
    """Blank steps between the symbols and the go-marker."""
    symbols: int = Field(8, ge=2)
    """Size of the symbol alphabet (the vocabulary is symbols + 2)."""


class MajorityData(DataCommon):
    source: Literal["majority"]
    """Sequence classification on token ids: x is (N, length) tokens from `vocab` symbols and the label is the most frequent token (planted so it is unique). Needs the whole sequence: a model reading only a prefix cannot solve it."""
    n_samples: int = Field(3000, ge=10)
    """Total samples generated (before the validation/test split)."""
    length: int = Field(24, ge=3)
    """Tokens per sequence."""
    vocab: int = Field(6, ge=2)
    """Number of distinct tokens (= classes)."""


class SineSeriesData(DataCommon):
    source: Literal["sine_series"]
    """Time-series forecasting: x is (N, length, 1) windows of sin(w t + phase) + noise with a random frequency and phase per sample; y is the next `horizon` values (N, horizon)."""
    n_samples: int = Field(3000, ge=10)
    """Total windows generated (before the validation/test split)."""
    length: int = Field(40, ge=2)
    """Steps in each input window."""
    horizon: int = Field(1, ge=1)
    """Steps to forecast."""
    noise: float = Field(0.05, ge=0.0)
    """Standard deviation of the Gaussian noise on the observed values (targets are noise-free)."""


class ShapesData(DataCommon):
    source: Literal["shapes"]
    """Small synthetic images of four shapes (0 square, 1 disc, 2 triangle, 3 cross) at random positions and sizes, with pixel noise: (N, 1, image_size, image_size)."""
    n_samples: int = Field(2000, ge=10)
    """Total images generated (before the validation/test split)."""
    image_size: int = Field(16, ge=8, le=128)
    """Height and width in pixels."""
    noise: float = Field(0.15, ge=0.0)
    """Standard deviation of the Gaussian pixel noise (pixels are in [0, 1] before noise)."""


class ImageFolderData(DataCommon):
    source: Literal["imagefolder"]
    """Images on disk as root/<class>/<image> (any format Pillow reads), one sub-directory per class in sorted order. Needs Pillow: pip install 'bptrain[images]'. Batches always come from a DataLoader with num_workers workers."""
    root: Path
    """The directory holding one sub-directory per class. Relative paths are resolved from the current directory."""
    image_size: int = Field(32, ge=4)
    """Every image is resized to image_size x image_size."""
    grayscale: bool = False
    """Read images as 1 channel instead of RGB (3)."""
    mean: list[float] | None = None
    """Per-channel mean to subtract (pixels are in [0, 1]); null with normalize: true computes it on the training split."""
    std: list[float] | None = None
    """Per-channel standard deviation to divide by; null with normalize: true computes it on the training split."""
    random_crop_padding: int = Field(0, ge=0)
    """Training augmentation: pad by this many pixels (zeros) and crop back to image_size at a random offset. 0 disables it."""
    horizontal_flip: bool = False
    """Training augmentation: flip each image left-right with probability 1/2."""

    @model_validator(mode="after")
    def _mean_std_together(self) -> ImageFolderData:
        channels = 1 if self.grayscale else 3
        for key in ("mean", "std"):
            value = getattr(self, key)
            if value is not None and len(value) != channels:
                raise ValueError(
                    f"{key} needs {channels} values (one per channel), got {len(value)}"
                )
        if (self.mean is None) != (self.std is None):
            raise ValueError("give both mean and std, or neither")
        return self


DataConfig = Annotated[
    SpiralsData
    | MoonsData
    | BlobsData
    | XorData
    | SineData
    | DigitsData
    | NpzData
    | CsvData
    | AddingData
    | CopyData
    | MajorityData
    | SineSeriesData
    | ShapesData
    | ImageFolderData,
    Field(discriminator="source"),
]

# --------------------------------------------------------------------------- model

Activation = Literal["sigmoid", "tanh", "relu", "leaky_relu", "elu", "selu", "gelu"]
Init = Literal[
    "xavier_uniform", "xavier_normal", "kaiming_uniform", "kaiming_normal", "orthogonal", "default"
]
Norm = Literal["none", "batchnorm", "layernorm"]


class MLPModel(Section):
    name: Literal["mlp"] = "mlp"
    """A multi-layer perceptron: Linear -> [norm] -> activation -> [dropout] per hidden layer, then a linear head."""
    hidden: list[Annotated[int, Field(ge=1)]] = Field(default_factory=lambda: [64, 64])
    """Widths of the hidden layers, input to output. An empty list is a linear model."""
    activation: Activation = "relu"
    """Hidden-layer nonlinearity."""
    init: Init = "kaiming_normal"
    """Weight initialisation of every Linear layer (biases start at 0 unless `default`). Kaiming suits the ReLU family, Xavier suits sigmoid/tanh; `default` keeps PyTorch's."""
    init_gain: float = Field(1.0, gt=0.0)
    """Multiplies the initial weights' standard deviation (sigma_w^2 scales by gain^2); for experiments with init scale."""
    norm: Norm = "none"
    """Normalisation after each hidden Linear layer."""
    dropout: float = Field(0.0, ge=0.0, lt=1.0)
    """Dropout probability after each hidden activation."""
    residual: bool = False
    """Add skip connections around hidden layers whose input and output widths match."""
    leaky_relu_slope: float = Field(0.01, gt=0.0, lt=1.0)
    """Negative slope of leaky_relu."""
    init_from: Path | None = None
    """Start from the weights in this checkpoint (.pt) or .safetensors file (transfer learning; ignored when resuming)."""
    init_strict: bool = True
    """With init_from: every weight must match the model's keys and shapes. false loads the matching keys and reports the missing/unexpected ones (shapes must still match)."""
    freeze: list[str] = Field(default_factory=list)
    """Parameter-name patterns (fnmatch, e.g. `net.0.*`) to freeze."""


class CustomModel(Section):
    class_path: str = Field(pattern=r"^[A-Za-z_][\w.]*[.:][A-Za-z_]\w*$")
    """Your own nn.Module as `package.module.ClassName`, importable from the current directory or PYTHONPATH. It is built exactly as given: bptrain never re-initialises its weights. A config is code: only run configs you trust."""
    init_args: dict[str, Any] = Field(default_factory=dict)
    """Keyword arguments for the class's constructor."""
    init_from: Path | None = None
    """Start from the weights in this checkpoint (.pt) or .safetensors file (transfer learning; ignored when resuming)."""
    init_strict: bool = True
    """With init_from: every weight must match the model's keys and shapes. false loads the matching keys and reports the missing/unexpected ones (shapes must still match)."""
    freeze: list[str] = Field(default_factory=list)
    """Parameter-name patterns (fnmatch, e.g. `encoder.*`) to freeze."""


class CNNModel(Section):
    name: Literal["cnn", "cnn1d"]
    """Convolutional network. `cnn`: 2-D, for images (N, C, H, W) (2-D (N, H, W) inputs get one channel). `cnn1d`: 1-D, for signals and time series (N, T, F) (or (N, C, L) with channels_first). Per stage: [downsample] then conv blocks (conv -> [norm] -> activation), or residual blocks (a small ResNet); then global pooling, dropout and a linear head."""
    channels: list[Annotated[int, Field(ge=1)]] = Field(default_factory=lambda: [32, 64, 128])
    """Output channels of each stage. Every stage after the first halves the resolution first, unless it is already below 4."""
    blocks_per_stage: int = Field(1, ge=1)
    """Conv blocks (or residual blocks) per stage."""
    residual: bool = False
    """Use ResNet basic blocks (conv-norm-act-conv-norm plus a skip connection) instead of plain conv blocks."""
    kernel_size: int = Field(3, ge=1)
    """Kernel size of every conv (odd sizes keep the resolution)."""
    downsample: Literal["max", "avg", "stride"] = "max"
    """How a stage halves the resolution: max or average pooling, or a stride-2 first conv."""
    global_pool: Literal["avg", "max"] = "avg"
    """Pooling over the remaining positions before the head."""
    channels_first: bool = False
    """cnn1d only: inputs are (N, C, L) instead of (N, T, F)."""
    activation: Activation = "relu"
    """Nonlinearity after each conv (and norm)."""
    norm: Norm = "batchnorm"
    """Normalisation after each conv: batchnorm, layernorm (GroupNorm with one group: over channels and positions), or none."""
    init: Init = "kaiming_normal"
    """Weight initialisation of every conv and linear layer (see mlp)."""
    init_gain: float = Field(1.0, gt=0.0)
    """Multiplies the initial weights' standard deviation."""
    leaky_relu_slope: float = Field(0.01, gt=0.0, lt=1.0)
    """Negative slope of leaky_relu."""
    dropout: float = Field(0.0, ge=0.0, lt=1.0)
    """Dropout before the linear head."""
    init_from: Path | None = None
    """Start from the weights in this checkpoint (.pt) or .safetensors file."""
    freeze: list[str] = Field(default_factory=list)
    """Parameter-name patterns (fnmatch, e.g. `blocks.0.*`) to freeze."""

    @model_validator(mode="after")
    def _channels_first_is_1d(self) -> CNNModel:
        if self.channels_first and self.name != "cnn1d":
            raise ValueError("channels_first applies to cnn1d; cnn images are always (N, C, H, W)")
        return self


class RNNModel(Section):
    name: Literal["rnn"]
    """Recurrent network for sequences (N, T, F), or token ids (N, T) with vocab_size. Many-to-one (the last step, or a pooled summary, feeds a linear head; the output size follows the targets' shape) or many-to-many (a head at every step)."""
    cell: Literal["rnn", "lstm", "gru"] = "lstm"
    """rnn: the plain (Elman) cell, whose gradients vanish or explode over long sequences; lstm and gru: gated cells that keep an error path through time."""
    hidden_size: int = Field(64, ge=1)
    """Width of the hidden state."""
    num_layers: int = Field(1, ge=1)
    """Stacked recurrent layers."""
    bidirectional: bool = False
    """Also read the sequence backwards (the head sees both directions)."""
    dropout: float = Field(0.0, ge=0.0, lt=1.0)
    """Dropout between stacked layers and before the head."""
    activation: Literal["tanh", "relu"] = "tanh"
    """Nonlinearity of the plain rnn cell (lstm/gru have their own gates)."""
    norm: Literal["none", "layernorm"] = "none"
    """Normalise the features fed to the head."""
    init: Init = "default"
    """Input-to-hidden and head weights by this scheme; with anything but `default`, hidden-to-hidden weights are orthogonal and biases 0 (LSTM forget gates 1)."""
    output: Literal["auto", "last", "sequence"] = "auto"
    """last: one output per sequence (many-to-one); sequence: one per step (many-to-many); auto: sequence when the targets have a step axis of the input's length (class labels (N, T) or values (N, T, D)), else last."""
    pool: Literal["last", "mean", "max"] = "last"
    """Many-to-one summary of the steps: the last hidden state (both ends when bidirectional), or the mean/max over steps."""
    vocab_size: int | None = Field(None, ge=1)
    """Inputs are integer token ids below vocab_size (N, T), embedded before the recurrence. null: real-valued features."""
    embedding_dim: int = Field(32, ge=1)
    """Embedding width when vocab_size is set."""
    init_from: Path | None = None
    """Start from the weights in this checkpoint (.pt) or .safetensors file."""
    freeze: list[str] = Field(default_factory=list)
    """Parameter-name patterns (fnmatch, e.g. `rnn.*`) to freeze."""


class TransformerModel(Section):
    name: Literal["transformer"]
    """A small Transformer encoder for sequences: token embedding (vocab_size) or a linear projection of (N, T, F) features, positional encoding, pre-norm blocks (self-attention and an MLP, each inside a residual), a final LayerNorm, then a pooled head (many-to-one) or a head per step (many-to-many)."""
    d_model: int = Field(64, ge=1)
    """Width of the token representations."""
    num_heads: int = Field(4, ge=1)
    """Attention heads (must divide d_model)."""
    num_layers: int = Field(2, ge=1)
    """Encoder blocks."""
    ff_mult: int = Field(4, ge=1)
    """The MLP inside each block is d_model -> ff_mult * d_model -> d_model."""
    dropout: float = Field(0.1, ge=0.0, lt=1.0)
    """Dropout on attention weights, inside the blocks and on the embeddings."""
    activation: Literal["relu", "gelu"] = "gelu"
    """Nonlinearity of the block MLP."""
    positional: Literal["sinusoidal", "learned", "none"] = "sinusoidal"
    """Positional encoding added to the inputs; attention alone ignores order."""
    max_len: int = Field(1024, ge=1)
    """Longest sequence the positional encoding covers."""
    causal: bool = False
    """Each step attends only to itself and earlier steps."""
    pool: Literal["mean", "max", "last", "cls"] = "mean"
    """Many-to-one summary: mean/max over steps, the last step, or a learned [CLS] token put in front."""
    output: Literal["auto", "pooled", "sequence"] = "auto"
    """pooled: one output per sequence; sequence: one per step; auto: sequence when the targets have a step axis of the input's length."""
    vocab_size: int | None = Field(None, ge=1)
    """Inputs are integer token ids below vocab_size (N, T). null: real-valued features (N, T, F), projected linearly."""
    init: Init = "default"
    """Weight initialisation of the linear layers (see mlp); `default` keeps PyTorch's."""
    init_from: Path | None = None
    """Start from the weights in this checkpoint (.pt) or .safetensors file."""
    freeze: list[str] = Field(default_factory=list)
    """Parameter-name patterns (fnmatch, e.g. `blocks.0.*`) to freeze."""

    @model_validator(mode="after")
    def _heads_divide_width(self) -> TransformerModel:
        if self.d_model % self.num_heads:
            raise ValueError(f"num_heads ({self.num_heads}) must divide d_model ({self.d_model})")
        return self


def _model_kind(value: Any) -> str:
    if isinstance(value, dict):
        return "custom" if "class_path" in value else str(value.get("name", "mlp"))
    return "custom" if isinstance(value, CustomModel) else getattr(value, "name", "mlp")


ModelConfig = Annotated[
    Annotated[MLPModel, Tag("mlp")]
    | Annotated[CNNModel, Tag("cnn")]
    | Annotated[CNNModel, Tag("cnn1d")]
    | Annotated[RNNModel, Tag("rnn")]
    | Annotated[TransformerModel, Tag("transformer")]
    | Annotated[CustomModel, Tag("custom")],
    Discriminator(
        _model_kind,
        custom_error_type="invalid_model",
        custom_error_message="model.name must be one of: mlp, cnn, cnn1d, rnn, transformer (or give model.class_path for your own nn.Module)",
    ),
]

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
    max_epochs: int = Field(10, ge=1)
    """Stop after this many epochs."""
    max_steps: int | None = Field(None, ge=1)
    """Stop after this many optimizer steps, even mid-epoch (whichever limit comes first)."""
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
    strategy: Literal["auto", "ddp"] = "auto"
    """Multi-process training. auto: DistributedDataParallel when started by torchrun, `bptrain fit --nproc N` or srun with more than one process, else one process. ddp: also for a one-process launch, and refuse to run unlaunched. See docs/cluster.md."""
    checkpoint: CheckpointConfig = Field(default_factory=CheckpointConfig)
    """Checkpoint files and cadence."""
    early_stopping: EarlyStoppingConfig | None = None
    """Stop when a metric stops improving; null (default) trains to max_epochs/max_steps."""
    nan_policy: Literal["stop", "skip", "ignore"] = "stop"
    """On a non-finite loss or gradient: stop (write nan_report.json, keep the last good checkpoint, exit 1), skip the optimizer step (at most max_skipped_steps times), or ignore."""
    max_skipped_steps: int = Field(10, ge=0)
    """With nan_policy skip: stop (as `stop` does) once more steps than this were skipped in the run."""
    activation_checkpointing: bool = False
    """Gradient checkpointing for the built-in mlp, cnn, cnn1d and transformer: keep only each block's input in the forward pass and recompute the block's activations in the backward pass. Less memory, about one extra forward pass of compute."""

    @field_validator("precision", mode="before")
    @classmethod
    def _precision_as_text(cls, value: Any) -> Any:
        return str(value) if isinstance(value, int) and not isinstance(value, bool) else value

    @field_validator("device")
    @classmethod
    def _known_device(cls, value: str) -> str:
        if not re.fullmatch(r"auto|cpu|mps|cuda(:\d+)?", value):
            raise ValueError("expected auto, cpu, cuda, cuda:N or mps")
        return value


# --------------------------------------------------------------------------- logging


class LoggingConfig(Section):
    run_dir: Path = Path("runs")
    """Parent directory of run directories: each run writes <run_dir>/<name>/<timestamp>/."""
    name: str | None = None
    """Run name; defaults to the config file's name."""
    tensorboard: bool = True
    """Write TensorBoard events under <run>/tb/."""
    log_every_n_steps: int = Field(50, ge=1)
    """Interval of the step lines in metrics.jsonl (train/loss, lr, grad_norm) and of the plain-text progress."""
    grad_norms: bool = True
    """Log to TensorBoard every log_every_n_steps: per-layer gradient norms (after AMP unscaling, before clipping), non-finite gradient counts, update-to-weight ratios, and the clipped total norm."""
    histograms: bool = False
    """Also write TensorBoard histograms of weights, gradients and activations (the outputs of parameter-free modules such as activations) every histogram_every_n_steps."""
    histogram_every_n_steps: int = Field(500, ge=1)
    """Interval of the histograms (they cost far more than scalars); rounded to a log step."""
    progress: Literal["auto", "rich", "plain", "off"] = "auto"
    """Console progress: auto is a live bar on a terminal and one plain line per log interval otherwise (batch jobs, CI)."""


# --------------------------------------------------------------------------- root


class Config(Section):
    """A bptrain run: what to train, on what, how, and where to write it."""

    seed: int = 0
    """Seeds Python, NumPy and torch, the data split and the data order. Same config + seed = same metrics on CPU."""
    data: DataConfig
    """Where the samples come from; see data.source."""
    model: ModelConfig = Field(default_factory=MLPModel)
    """The network: a built-in (name) or your own nn.Module (class_path)."""
    loss: LossConfig = Field(default_factory=LossConfig)
    """The training objective."""
    optimizer: OptimizerConfig = Field(default_factory=lambda: AdamOptimizer(name="adamw"))
    """The optimizer and its hyper-parameters."""
    scheduler: SchedulerConfig = Field(default_factory=lambda: NoScheduler(name="none"))
    """The learning-rate schedule."""
    trainer: TrainerConfig = Field(default_factory=TrainerConfig)
    """How long and how to train."""
    logging: LoggingConfig = Field(default_factory=LoggingConfig)
    """Where and what to log."""

    @model_validator(mode="after")
    def _compatible_choices(self) -> Config:
        if self.optimizer.name == "lbfgs" and self.trainer.precision == "fp16":
            raise ValueError(
                "optimizer lbfgs cannot run with precision fp16 (GradScaler does not support closures); use precision 32 or bf16"
            )
        return self


# --------------------------------------------------------------------------- loading

# YAML 1.1 (PyYAML) reads `3e-4` as a string; users write it, so resolve floats as YAML 1.2 does.
_FLOAT_RE = re.compile(
    r"""^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?
    |[-+]?(?:[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)
    |\.[0-9_]+(?:[eE][-+]?[0-9]+)?
    |[-+]?\.(?:inf|Inf|INF)
    |\.(?:nan|NaN|NAN))$""",
    re.X,
)


class YamlLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` (no Python objects, ever) with YAML 1.2 scalars: 3e-4 is a float, `off` is a string."""


# YAML 1.1 also reads yes/no/on/off as booleans, which turns `progress: off` into False.
YamlLoader.yaml_implicit_resolvers = {
    first: [(tag, regexp) for tag, regexp in resolvers if tag != "tag:yaml.org,2002:bool"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
YamlLoader.add_implicit_resolver(
    "tag:yaml.org,2002:bool", re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), list("tTfF")
)
YamlLoader.add_implicit_resolver("tag:yaml.org,2002:float", _FLOAT_RE, list("-+0123456789."))

KeyPath = tuple[str | int, ...]


def parse_yaml(text: str, source: str) -> tuple[Any, dict[KeyPath, int]]:
    """Parse YAML safely and return (data, {key path: line number}) for error messages."""
    try:
        node = yaml.compose(text, Loader=YamlLoader)
        lines: dict[KeyPath, int] = {}
        _index_lines(node, (), lines, source)
        data = yaml.load(text, Loader=YamlLoader) if node is not None else None
    except yaml.constructor.ConstructorError as err:
        mark = err.problem_mark
        where = f"{source}, line {mark.line + 1}" if mark else source
        raise ConfigError(
            f"{where}: {err.problem}.\n  bptrain reads YAML with safe_load: Python object tags such as !!python/object "
            "are refused. Write plain values (numbers, strings, lists, mappings)."
        ) from None
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f"{source}, line {mark.line + 1}, column {mark.column + 1}" if mark else source
        problem = getattr(err, "problem", None) or str(err)
        raise ConfigError(f"{where}: invalid YAML: {problem}") from None
    return data, lines


def _index_lines(
    node: yaml.Node | None, path: KeyPath, lines: dict[KeyPath, int], source: str
) -> None:
    if isinstance(node, yaml.MappingNode):
        seen: dict[str, int] = {}
        for key_node, value_node in node.value:
            key = key_node.value
            line = key_node.start_mark.line + 1
            if key in seen:
                dotted = ".".join(str(p) for p in (*path, key))
                raise ConfigError(
                    f"{source}, line {line}: key '{dotted}' is given twice (first on line {seen[key]}); keep one."
                )
            seen[key] = line
            lines[(*path, key)] = line
            _index_lines(value_node, (*path, key), lines, source)
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            lines[(*path, i)] = item.start_mark.line + 1
            _index_lines(item, (*path, i), lines, source)


def parse_override(text: str) -> tuple[list[str], Any]:
    """Split ``a.b.c=value`` into (["a", "b", "c"], value parsed as YAML)."""
    key, sep, value = text.partition("=")
    if not sep or not key or not re.fullmatch(r"[A-Za-z_][\w]*(\.[\w]+)*", key):
        raise ConfigError(
            f"override '{text}': expected KEY=VALUE with a dotted key, e.g. optimizer.lr=3e-4 or model.hidden=[128,128]"
        )
    try:
        parsed = yaml.load(value, Loader=YamlLoader) if value.strip() else None
    except yaml.YAMLError as err:
        raise ConfigError(
            f"override '{text}': the value is not valid YAML ({getattr(err, 'problem', err)})"
        ) from None
    return key.split("."), parsed


def apply_override(data: dict[str, Any], keys: list[str], value: Any, text: str) -> None:
    node: Any = data
    for depth, key in enumerate(keys[:-1]):
        child = node.get(key) if isinstance(node, dict) else None
        if child is None:
            child = {}
            node[key] = child
        if not isinstance(child, dict):
            dotted = ".".join(keys[: depth + 1])
            raise ConfigError(
                f"override '{text}': {dotted} is a value ({child!r}), not a section with keys."
            )
        node = child
    # Changing a variant's name drops the options of the old variant only if they are unknown to the new one;
    # pydantic will still reject the leftovers with a clear message.
    node[keys[-1]] = value


def load_config(path: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> Config:
    """Read a YAML config, apply ``key.path=value`` overrides, and validate the result."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise UserError(f"config file not found: {path}") from None
    except IsADirectoryError:
        raise UserError(f"config path is a directory, not a YAML file: {path}") from None
    except (OSError, UnicodeDecodeError) as err:
        raise UserError(f"cannot read config file {path}: {err}") from None
    data, lines = parse_yaml(text, str(path))
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(
            f"{path}: the top level must be a mapping of sections (seed, data, model, ...), not {type(data).__name__}."
        )
    origins: dict[KeyPath, str] = {key: f"{path}, line {line}" for key, line in lines.items()}
    for text_override in overrides:
        keys, value = parse_override(text_override)
        apply_override(data, keys, value, text_override)
        origins[tuple(keys)] = f"command-line override '{text_override}'"
    data.setdefault("logging", {})
    if isinstance(data["logging"], dict) and data["logging"].get("name") is None:
        data["logging"]["name"] = path.stem
    return validate_config(data, origins, str(path))


def validate_config(
    data: dict[str, Any], origins: dict[KeyPath, str] | None = None, source: str = "config"
) -> Config:
    try:
        return Config.model_validate(data)
    except ValidationError as err:
        raise ConfigError(format_validation_error(err, data, origins or {}, source)) from None


def format_validation_error(
    err: ValidationError, data: Any, origins: dict[KeyPath, str], source: str
) -> str:
    messages = []
    for problem in err.errors(include_url=False):
        path = _clean_loc(problem["loc"], data)
        if problem["type"] in ("union_tag_invalid", "union_tag_not_found"):
            path = (*path, str(problem.get("ctx", {}).get("discriminator", "name")).strip("'"))
        where = _origin(path, origins) or source
        dotted = ".".join(str(p) for p in path) or "(top level)"
        messages.append(f"{where}: {dotted}: {_describe(problem, path, data)}")
    count = len(messages)
    header = f"invalid config ({count} problem{'s' if count > 1 else ''}):"
    return "\n".join([header, *("  - " + m for m in messages)])


def _clean_loc(loc: tuple[Any, ...], data: Any) -> KeyPath:
    """Drop the union tags pydantic puts into locations so the path matches the user's keys."""
    path: list[str | int] = []
    node = data
    for part in loc:
        if (isinstance(node, dict) and part in node) or (
            isinstance(node, list) and isinstance(part, int) and part < len(node)
        ):
            path.append(part)
            node = node[part]
        elif isinstance(node, dict | list):
            # Either a union tag (skip it) or a missing/unknown key (keep it).
            if isinstance(part, str) and _is_union_tag(part):
                continue
            path.append(part)
            node = None
        else:
            if isinstance(part, str) and _is_union_tag(part):
                continue
            path.append(part)
    return tuple(path)


def _is_union_tag(part: str) -> bool:
    return part in _UNION_TAGS or "[" in part or part.startswith("function-")


def _origin(path: KeyPath, origins: dict[KeyPath, str]) -> str | None:
    for end in range(len(path), 0, -1):
        if path[:end] in origins:
            return origins[path[:end]]
    return None


def _describe(problem: dict[str, Any], path: KeyPath, data: Any) -> str:
    kind = problem["type"]
    if kind == "extra_forbidden":
        valid = _valid_keys(path[:-1], data)
        key = str(path[-1]) if path else ""
        close = difflib.get_close_matches(key, valid, n=1, cutoff=0.5)
        hint = f" Did you mean '{close[0]}'?" if close else ""
        listing = f" Valid keys here: {', '.join(valid)}." if valid else ""
        return f"unknown key '{key}'.{hint}{listing}"
    if kind == "missing":
        return "this key is required but missing."
    if kind == "union_tag_invalid":
        ctx = problem.get("ctx", {})
        got, options = ctx.get("tag"), str(ctx.get("expected_tags", ""))
        close = difflib.get_close_matches(
            str(got), re.findall(r"'([^']+)'", options), n=1, cutoff=0.6
        )
        hint = f" Did you mean '{close[0]}'?" if close else ""
        return f"unknown choice {got!r}; expected one of {options}.{hint}"
    if kind == "union_tag_not_found":
        return "this key is required: it selects the variant."
    if kind == "literal_error":
        got = problem.get("input")
        options = problem.get("ctx", {}).get("expected", "")
        close = difflib.get_close_matches(
            str(got), re.findall(r"'([^']+)'", options), n=1, cutoff=0.6
        )
        hint = f" Did you mean '{close[0]}'?" if close else ""
        return f"got {got!r}; expected one of {options}.{hint}"
    got = problem.get("input")
    msg = problem["msg"]
    if msg.startswith("Value error, "):
        msg = msg[len("Value error, ") :]
    shown = "" if isinstance(got, dict) else f" (got {got!r})"
    return f"{msg}{shown}."


def _valid_keys(path: KeyPath, data: Any) -> list[str]:
    model = _model_at(path, data)
    if model is None:
        return []
    tags = [k for k in ("name", "source", "class_path") if k in model.model_fields]
    return tags + [k for k in model.model_fields if k not in tags]


def _model_at(path: KeyPath, data: Any) -> type[BaseModel] | None:
    model: type[BaseModel] | None = Config
    node = data
    for key in path:
        if model is None or not isinstance(key, str) or key not in model.model_fields:
            return None
        node = node.get(key) if isinstance(node, dict) else None
        model = _pick_model(model.model_fields[key].annotation, node)
    return model


def _pick_model(annotation: Any, value: Any) -> type[BaseModel] | None:
    members = models_in(annotation)
    if len(members) <= 1:
        return members[0] if members else None
    if isinstance(value, dict) and "class_path" in value:
        return CustomModel
    for member in members:
        for tag_field in ("name", "source"):
            field = member.model_fields.get(tag_field)
            if (
                field is not None
                and isinstance(value, dict)
                and value.get(tag_field) in getattr(field.annotation, "__args__", ())
            ):
                return member
    return members[0]


def models_in(annotation: Any) -> list[type[BaseModel]]:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    found: list[type[BaseModel]] = []
    for arg in getattr(annotation, "__args__", ()) or ():
        found.extend(models_in(arg))
    if hasattr(annotation, "__origin__") and getattr(annotation, "__metadata__", None):
        found.extend(models_in(annotation.__origin__))
    return list(dict.fromkeys(found))


def _collect_union_tags() -> set[str]:
    tags = {"custom"}
    for field in Config.model_fields.values():
        for member in models_in(field.annotation):
            for tag_field in ("name", "source"):
                if tag_field in member.model_fields:
                    tags.update(
                        str(v)
                        for v in getattr(member.model_fields[tag_field].annotation, "__args__", ())
                    )
    return tags


_UNION_TAGS = _collect_union_tags()


class _Dumper(yaml.SafeDumper):
    """Block-style sections, flow-style lists of plain values ([64, 64])."""


def _represent_list(dumper: yaml.SafeDumper, value: list[Any]) -> yaml.Node:
    flat = all(not isinstance(v, dict | list) for v in value)
    return dumper.represent_sequence("tag:yaml.org,2002:seq", value, flow_style=flat)


_Dumper.add_representer(list, _represent_list)


def _tag_first(value: Any) -> Any:
    if isinstance(value, dict):
        ordered = {k: value[k] for k in ("name", "source", "class_path") if k in value}
        ordered.update({k: _tag_first(v) for k, v in value.items() if k not in ordered})
        return ordered
    return value


def to_dict(config: Config) -> dict[str, Any]:
    """The resolved config as plain JSON-compatible data, variant names first."""
    return _tag_first(config.model_dump(mode="json"))


def to_yaml(config: Config) -> str:
    """The resolved config, every default spelled out, as YAML (for config.yaml and `config show`)."""
    return yaml.dump(to_dict(config), Dumper=_Dumper, sort_keys=False, width=100)


def json_schema() -> dict[str, Any]:
    return Config.model_json_schema()
