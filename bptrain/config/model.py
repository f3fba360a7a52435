"""The ``model`` section: the built-in networks and ``class_path`` for your own nn.Module."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, Discriminator, Field, Tag, model_validator

from bptrain.config.base import Section, usable_path

Activation = Literal["sigmoid", "tanh", "relu", "leaky_relu", "elu", "selu", "gelu"]
Init = Literal[
    "xavier_uniform", "xavier_normal", "kaiming_uniform", "kaiming_normal", "orthogonal", "default"
]
Norm = Literal["none", "batchnorm", "layernorm"]


class TransferLearning(Section):
    """Keys of every model section, built-in or class_path: start from saved weights, freeze parameters.

    Declared once so no model kind can lack one (cnn, rnn and transformer once lacked init_strict).
    """

    init_from: Annotated[Path | None, AfterValidator(usable_path)] = None
    """Start from the weights in this checkpoint (.pt) or .safetensors file (transfer learning; ignored when resuming)."""
    init_strict: bool = True
    """With init_from: every weight must match the model's keys and shapes. false loads the matching keys and reports the missing/unexpected ones (shapes must still match)."""
    freeze: list[str] = Field(default_factory=list)
    """Parameter-name patterns (fnmatch, e.g. `net.0.*` or `blocks.0.*`) to freeze. A pattern that matches no parameter is an error that lists the names."""


class MLPModel(TransferLearning):
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


class CustomModel(TransferLearning):
    class_path: str = Field(pattern=r"^[A-Za-z_][\w.]*[.:][A-Za-z_]\w*$")
    """Your own nn.Module as `package.module.ClassName`, importable from the current directory or PYTHONPATH. It is built exactly as given: bptrain never re-initialises its weights. A config is code: only run configs you trust."""
    init_args: dict[str, Any] = Field(default_factory=dict)
    """Keyword arguments for the class's constructor."""


class CNNModel(TransferLearning):
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

    @model_validator(mode="after")
    def _channels_first_is_1d(self) -> CNNModel:
        if self.channels_first and self.name != "cnn1d":
            raise ValueError("channels_first applies to cnn1d; cnn images are always (N, C, H, W)")
        return self


class RNNModel(TransferLearning):
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


class TransformerModel(TransferLearning):
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
