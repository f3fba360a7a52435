"""Forward and backward hooks that watch one model while grad-inspect runs batches.

The recorder owns what must be observed *during* the passes: the forward order
of modules, the error signal ∂L/∂(module output) (a tensor hook on each output,
fired by the chain rule on the way back), output statistics, the local
derivative φ'(h) of every elementwise activation at its recorded
pre-activations h, which tensor feeds which module (so the mean-field theory is
applied only where a Linear really feeds an activation that feeds the next
Linear), and the first NaN/Inf in either pass.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn
from torch.utils.hooks import RemovableHandle

# Elementwise activations: φ' can be computed per entry, so E[φ'²] and dead units are defined.
ELEMENTWISE_ACTIVATIONS: tuple[type[nn.Module], ...] = (
    nn.ReLU,
    nn.ReLU6,
    nn.LeakyReLU,
    nn.PReLU,
    nn.RReLU,
    nn.ELU,
    nn.SELU,
    nn.CELU,
    nn.GELU,
    nn.SiLU,
    nn.Mish,
    nn.Softplus,
    nn.Sigmoid,
    nn.Tanh,
    nn.Hardtanh,
    nn.Hardsigmoid,
    nn.Hardswish,
    nn.Softsign,
    nn.Tanhshrink,
    nn.LogSigmoid,
)
# Bounded activations and the maximum of their derivative (saturation = φ' far below it).
SATURATING: dict[type[nn.Module], float] = {
    nn.Sigmoid: 0.25,
    nn.Tanh: 1.0,
    nn.Hardtanh: 1.0,
    nn.Hardsigmoid: 1 / 6,
    nn.Softsign: 1.0,
}
SATURATION_DERIVATIVE_SHARE = 0.01
SATURATED_SAMPLE_SHARE = 0.9
CHANNELS_FIRST: tuple[type[nn.Module], ...] = (
    nn.modules.conv._ConvNd,
    nn.modules.batchnorm._BatchNorm,
    nn.GroupNorm,
)


def first_tensor(value: object) -> Tensor | None:
    """The tensor a module 'outputs': itself, or the first tensor of a tuple (RNNs, attention)."""
    if isinstance(value, Tensor):
        return value
    if isinstance(value, tuple | list):
        for item in value:
            if isinstance(item, Tensor):
                return item
    return None


def is_activation(module: nn.Module) -> bool:
    return isinstance(module, ELEMENTWISE_ACTIVATIONS)


def local_derivative(module: nn.Module, pre_activation: Tensor) -> tuple[Tensor, Tensor]:
    """φ'(h) entrywise by autograd on a detached copy, and φ(h); the model's graph is untouched."""
    with torch.enable_grad():
        h = pre_activation.detach().float().requires_grad_(True)
        # clone() gives a non-leaf, so in-place activations (ReLU(inplace=True)) are allowed.
        out = type(module).forward(module, h.clone())
        (derivative,) = torch.autograd.grad(out.sum(), h)
    return derivative.detach(), out.detach()


def units_view(tensor: Tensor, channels_first: bool) -> Tensor:
    """(samples, units): units are features (last dim), or channels (dim 1) after convolutions."""
    if tensor.ndim <= 1:
        return tensor.reshape(-1, 1)
    if channels_first and tensor.ndim > 2:
        tensor = tensor.movedim(1, -1)
    return tensor.reshape(-1, tensor.shape[-1])


@dataclass
class Moments:
    """Running sums for a mean and std over every recorded entry."""

    total: float = 0.0
    total_sq: float = 0.0
    count: int = 0

    def add(self, tensor: Tensor) -> None:
        values = tensor.detach()
        if not bool(torch.isfinite(values).all()):
            values = values[torch.isfinite(values)]  # masked copy only in the rare non-finite case
        self.total += float(values.sum(dtype=torch.float64))
        self.total_sq += float(values.square().sum(dtype=torch.float64))
        self.count += values.numel()

    def mean(self) -> float | None:
        return self.total / self.count if self.count else None

    def std(self) -> float | None:
        if not self.count:
            return None
        mean = self.total / self.count
        return max(self.total_sq / self.count - mean * mean, 0.0) ** 0.5


@dataclass
class ActivationRecord:
    """What one activation module saw over all batches."""

    output: Moments = field(default_factory=Moments)
    derivative_sq: Moments = field(default_factory=Moments)
    alive: Tensor | None = None  # per unit: φ' ≠ 0 for at least one sample
    saturated: Tensor | None = None  # per unit: count of saturated samples
    samples: int = 0


@dataclass
class Nonfinite:
    module: str
    pass_: str
    batch: int
    detail: str


class Recorder:
    """Hooks on every leaf or parameter-owning module of a model; remove with ``close``."""

    def __init__(self, model: nn.Module) -> None:
        self.modules: dict[str, nn.Module] = {}
        self.order: list[str] = []
        self.output_moments: dict[str, Moments] = {}
        self.signal_sq: dict[str, float] = {}  # Σ over batches of ‖∂L/∂out‖²
        self.activations: dict[str, ActivationRecord] = {}
        self.producer: dict[str, str | None] = {}
        self.nonfinite: Nonfinite | None = None
        self.batch = 0
        self._owner: dict[int, str] = {}
        self._keep: list[Tensor] = []
        self._last_backward: str | None = None
        self._batch_signal: dict[str, float] = {}
        self._handles: list[RemovableHandle] = []
        for name, module in model.named_modules():
            leaf = not any(True for _ in module.children())
            owns = any(True for _ in module.parameters(recurse=False))
            if leaf or owns:
                path = name or "(root)"
                self.modules[path] = module
                self._handles.append(module.register_forward_pre_hook(self._pre_hook(path)))
                self._handles.append(module.register_forward_hook(self._post_hook(path)))

    def close(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()

    def start_batch(self, index: int) -> None:
        self.batch = index
        self._owner.clear()
        self._keep.clear()
        self._last_backward = None
        self._batch_signal = {}

    def end_batch(self) -> None:
        for path, value in self._batch_signal.items():
            self.signal_sq[path] = self.signal_sq.get(path, 0.0) + value
        self._owner.clear()
        self._keep.clear()

    def nonfinite_from_loss(self, batch: int, value: float) -> None:
        self.nonfinite = Nonfinite(
            "loss", "loss", batch, f"the loss is {value} while every module output is finite"
        )

    def _pre_hook(self, path: str) -> Callable[..., None]:
        def hook(module: nn.Module, inputs: tuple[object, ...]) -> None:
            tensor = first_tensor(inputs)
            if tensor is not None:
                self.producer[path] = self._owner.get(id(tensor))
            if is_activation(module) and tensor is not None and tensor.is_floating_point():
                self._record_activation(path, module, tensor)

        return hook

    def _post_hook(self, path: str) -> Callable[..., None]:
        def hook(module: nn.Module, inputs: tuple[object, ...], output: object) -> None:
            if path not in self.order:
                self.order.append(path)
            tensor = first_tensor(output)
            if tensor is None or not tensor.is_floating_point():
                return
            self._owner[id(tensor)] = path
            self._keep.append(tensor)
            self.output_moments.setdefault(path, Moments()).add(tensor)
            if self.nonfinite is None and not bool(torch.isfinite(tensor).all()):
                self.nonfinite = Nonfinite(path, "forward", self.batch, "output contains NaN/Inf")
            if tensor.requires_grad:
                tensor.register_hook(self._signal_hook(path))

        return hook

    def _signal_hook(self, path: str) -> Callable[[Tensor], None]:
        def hook(grad: Tensor) -> None:
            square = float(grad.detach().square().sum(dtype=torch.float64))
            self._batch_signal[path] = self._batch_signal.get(path, 0.0) + square
            if self.nonfinite is None and not bool(torch.isfinite(grad).all()):
                produced_by = self._last_backward or "the loss"
                self.nonfinite = Nonfinite(
                    path,
                    "backward",
                    self.batch,
                    f"∂L/∂output is NaN/Inf; it was produced by the backward of {produced_by}",
                )
            self._last_backward = path

        return hook

    def _record_activation(self, path: str, module: nn.Module, pre: Tensor) -> None:
        derivative, out = local_derivative(module, pre)
        record = self.activations.setdefault(path, ActivationRecord())
        channels_first = isinstance(self.modules.get(self.producer.get(path) or ""), CHANNELS_FIRST)
        d_units = units_view(derivative, channels_first)
        record.output.add(out)
        record.derivative_sq.add(derivative.square())
        alive = (d_units != 0).any(dim=0)
        record.alive = alive if record.alive is None else record.alive | alive
        bound = SATURATING.get(type(module))
        if bound is not None:
            saturated = (d_units.abs() < SATURATION_DERIVATIVE_SHARE * bound).sum(dim=0)
            record.saturated = (
                saturated if record.saturated is None else record.saturated + saturated
            )
        record.samples += d_units.shape[0]

    def signal_norm(self, path: str, batches: int) -> float | None:
        """RMS over batches of ‖∂L/∂out‖ (equal to the plain norm for one batch)."""
        if path not in self.signal_sq:
            return None
        return (self.signal_sq[path] / max(batches, 1)) ** 0.5

    def health(self, path: str) -> dict[str, float | None] | None:
        record = self.activations.get(path)
        if record is None or record.alive is None:
            return None
        saturated = None
        if record.saturated is not None:
            share = record.saturated.float() / max(record.samples, 1)
            saturated = float((share >= SATURATED_SAMPLE_SHARE).float().mean())
        return {
            "mean": record.output.mean(),
            "std": record.output.std(),
            "local_derivative_sq": record.derivative_sq.mean(),
            "dead_fraction": float((~record.alive).float().mean()),
            "saturated_fraction": saturated,
        }
