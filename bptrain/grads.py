"""Per-layer gradient statistics: the one implementation behind ``fit``'s log steps and ``grad-inspect``.

This module owns what a "layer" is and how its numbers are computed. A layer is a
module that owns parameters directly (``recurse=False``), named by its module path
(``net.0``; the model itself is ``(root)``): ``layer_parameters`` groups a model that
way for everyone. ``GradFlowMonitor`` computes, per layer, ‖∇W‖, non-finite gradient
counts, ‖W‖ and the update ratio ‖ΔW‖/‖W‖ of one optimizer step, with multi-tensor
(``torch._foreach_*``) kernels into 0-dim device tensors; ``to_floats`` then moves a
whole dict to the host in one transfer.

Its two users want different trade-offs, chosen when the monitor is built:

* ``fit`` (``LogStepRecorder``, every ``log_every_n_steps`` steps): the parameters'
  own dtype, every layer combined in one float32 segment sum, no host
  synchronisation; frozen parameters (``requires_grad=False``) are not monitored,
  since they never receive gradients by design.
* ``grad-inspect`` (``float64=True, include_frozen=True``): every norm in float64,
  each layer's ‖·‖ combined as ``torch.linalg.vector_norm`` of its parameters' norms
  (as ``torch.nn.utils.get_total_norm`` does); frozen parameters count in ‖W‖ so
  the report can show them. Speed does not matter there; accuracy does.

Missing gradients are never hidden: a trainable parameter whose ``.grad`` is
``None`` (unused in the forward pass, or detached) is counted under
``missing_grads/layer/<path>``, and a layer none of whose parameters has a
gradient reports a ``nan`` norm.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn

GRAD_NORM = "grad_norm/layer/"
NONFINITE = "nonfinite_grads/layer/"
MISSING = "missing_grads/layer/"
UPDATE_RATIO = "update_ratio/layer/"
WEIGHT_NORM = "weight_norm/layer/"

LayerGroups = dict[str, list[tuple[str, nn.Parameter]]]


def layer_parameters(model: nn.Module, *, trainable_only: bool = False) -> LayerGroups:
    """Layer path -> its own parameters with their full names, in ``named_modules`` order."""
    groups: LayerGroups = {}
    for path, module in model.named_modules():
        own = [
            (f"{path}.{name}" if path else name, param)
            for name, param in module.named_parameters(recurse=False)
            if param.requires_grad or not trainable_only
        ]
        if own:
            groups[path or "(root)"] = own
    return groups


def norm_float64(tensors: list[Tensor]) -> float:
    """‖(t₁, t₂, ...)‖ in float64 (``nan`` for no tensors): grad-inspect's norm of a parameter set."""
    if not tensors:
        return float("nan")
    norms = torch._foreach_norm([t.detach().double() for t in tensors])
    return float(torch.linalg.vector_norm(torch.stack(list(norms))))


class GradFlowMonitor:
    """Per-layer gradient flow of one model: ``fit``'s cheap device-side version by default."""

    def __init__(
        self, model: nn.Module, *, float64: bool = False, include_frozen: bool = False
    ) -> None:
        self.float64 = float64
        self.dtype = torch.float64 if float64 else torch.float32
        self.layers: list[str] = []
        self.params: list[nn.Parameter] = []
        self.layer_of: list[int] = []
        for path, own in layer_parameters(model, trainable_only=not include_frozen).items():
            self.layers.append(path)
            self.params.extend(p for _, p in own)
            self.layer_of.extend([len(self.layers) - 1] * len(own))
        self._index_cache: dict[tuple[torch.device, tuple[int, ...]], Tensor] = {}
        self._before: list[Tensor] | None = None

    def _norms(self, tensors: list[Tensor]) -> list[Tensor]:
        """‖t‖ of every tensor, in one multi-tensor kernel (in float64 when asked)."""
        if self.float64:
            tensors = [t.detach().double() for t in tensors]
        return list(torch._foreach_norm(tensors))

    def _layer_index(self, device: torch.device, layer_ids: tuple[int, ...]) -> Tensor:
        """Cached so a log step never copies an index from host to device (a hidden sync)."""
        key = (device, layer_ids)
        if key not in self._index_cache:
            self._index_cache[key] = torch.tensor(layer_ids, device=device, dtype=torch.long)
        return self._index_cache[key]

    def _per_layer_norm(self, norms: list[Tensor], layer_ids: tuple[int, ...]) -> Tensor:
        """Combine parameter norms into layer norms: ‖layer‖ = sqrt(Σ ‖p‖²).

        ``fit``: one segment sum for all layers (no per-layer kernels). float64: one
        ``vector_norm`` per layer, grad-inspect's numbers to the last bit.
        """
        stacked = torch.stack(norms).to(self.dtype)
        index = self._layer_index(stacked.device, layer_ids)
        if self.float64:
            return torch.stack(
                [torch.linalg.vector_norm(stacked[index == i]) for i in range(len(self.layers))]
            )
        squares = torch.zeros(len(self.layers), device=stacked.device).index_add_(
            0, index, stacked.square()
        )
        return squares.sqrt()

    def grad_stats(self) -> dict[str, Tensor]:
        """Per-layer ‖∇W‖ and non-finite gradient element counts, as 0-dim device tensors."""
        present = [i for i, p in enumerate(self.params) if p.grad is not None]
        stats: dict[str, Tensor] = {}
        missing = [0] * len(self.layers)
        for i, p in enumerate(self.params):
            if p.grad is None and p.requires_grad:  # a frozen parameter is not missing one
                missing[self.layer_of[i]] += 1
        if not present:
            nan = torch.tensor(float("nan"))
            for layer, path in enumerate(self.layers):
                stats[GRAD_NORM + path] = nan
                stats[MISSING + path] = torch.tensor(float(missing[layer]))
            return stats
        grads = [self.params[i].grad for i in present]
        layer_ids = tuple(self.layer_of[i] for i in present)
        norms = self._per_layer_norm(self._norms(grads), layer_ids)
        # g - g is 0 where g is finite and NaN where it is not; the L0 "norm" counts the NaNs.
        nonfinite = self._per_layer_count(
            list(torch._foreach_norm(torch._foreach_sub(grads, grads), 0)), layer_ids
        )
        has_grad = {self.layer_of[i] for i in present}
        for layer, path in enumerate(self.layers):
            if layer in has_grad:
                stats[GRAD_NORM + path] = norms[layer]
                stats[NONFINITE + path] = nonfinite[layer]
            else:
                stats[GRAD_NORM + path] = torch.full((), float("nan"), device=norms.device)
            if missing[layer]:
                stats[MISSING + path] = torch.full((), float(missing[layer]), device=norms.device)
        return stats

    def _per_layer_count(self, counts: list[Tensor], layer_ids: tuple[int, ...]) -> Tensor:
        stacked = torch.stack(counts).float()
        index = self._layer_index(stacked.device, layer_ids)
        return torch.zeros(len(self.layers), device=stacked.device).index_add_(0, index, stacked)

    def weight_norms(self) -> dict[str, Tensor]:
        """‖W‖ per layer (frozen parameters included when the monitor includes them)."""
        with torch.no_grad():
            ids = tuple(self.layer_of)
            norms = self._per_layer_norm(self._norms([p.detach() for p in self.params]), ids)
        return {WEIGHT_NORM + path: norms[i] for i, path in enumerate(self.layers)}

    def snapshot_weights(self) -> None:
        """Copy the weights before ``optimizer.step()`` so ``update_ratios`` can measure ΔW."""
        with torch.no_grad():
            self._before = [p.detach().clone() for p in self.params]

    def update_ratios(self) -> dict[str, Tensor]:
        """‖ΔW‖/‖W‖ per layer for the step since ``snapshot_weights`` (healthy: around 1e-3)."""
        if self._before is None:
            raise RuntimeError(
                "call snapshot_weights() before optimizer.step(), then update_ratios()"
            )
        with torch.no_grad():
            current = [p.detach() for p in self.params]
            deltas = torch._foreach_sub(current, self._before)
            ids = tuple(self.layer_of)
            delta_norm = self._per_layer_norm(self._norms(deltas), ids)
            weight_norm = self._per_layer_norm(self._norms(self._before), ids)
            ratios = delta_norm / weight_norm
        self._before = None
        return {UPDATE_RATIO + path: ratios[i] for i, path in enumerate(self.layers)}


def to_floats(stats: dict[str, Tensor]) -> dict[str, float]:
    """Bring a dict of 0-dim tensors to the host in one transfer (one sync instead of one per key)."""
    if not stats:
        return {}
    # One transfer per device and dtype: fit's float32 stats go in one, float64 ones keep every bit.
    groups: dict[tuple[torch.device, torch.dtype], list[str]] = {}
    for key, value in stats.items():
        dtype = torch.float64 if value.dtype == torch.float64 else torch.float32
        groups.setdefault((value.device, dtype), []).append(key)
    floats: dict[str, float] = {}
    for (_, dtype), keys in groups.items():
        values = torch.stack([stats[k].detach().to(dtype).reshape(()) for k in keys]).tolist()
        floats.update(zip(keys, values, strict=True))
    return {key: floats[key] for key in stats}


class LogStepRecorder:
    """What ``fit`` records about the gradients of one log step, for TensorBoard.

    ``before_update`` runs after AMP unscaling and before clipping (so the per-layer norms are the
    true ones the user wants to read), ``after_update`` after ``optimizer.step()``; ``take``
    returns everything as floats in one host transfer. With ``arm_histograms`` before the step's
    forward pass, the step also keeps samples of activations, gradients and weights for histograms.

    Under FSDP (``sharded``) every rank holds a slice of each parameter and its gradient: every
    rank records, ``ShardedLayerNorms`` keeps per-layer sums of squares of the local slices, and
    ``take`` (called by every rank at the same log step) adds them up across ranks in one
    all-reduce, so the norms and ratios are those of the whole layers. Histograms of a slice
    would mislead, so a sharded recorder keeps none.
    """

    def __init__(self, model: nn.Module, grad_norms: bool = True, sharded: bool = False) -> None:
        self.model = model
        self.grad_norms = grad_norms  # False: histograms only, no per-layer scalars
        self.sharded = sharded
        self.monitor: GradFlowMonitor | ShardedLayerNorms = (
            ShardedLayerNorms(model) if sharded else GradFlowMonitor(model)
        )
        self.stats: dict[str, Tensor] = {}
        self.histograms: dict[str, Tensor] = {}
        self._hooks: list[torch.utils.hooks.RemovableHandle] = []
        self._armed = False

    def arm_histograms(self) -> None:
        """Record the outputs of parameter-free leaf modules (activations, pooling...) in the next forward."""

        def keep(name: str) -> Callable[[nn.Module, tuple, object], None]:
            def hook(module: nn.Module, args: tuple, output: object) -> None:
                if isinstance(output, Tensor) and output.is_floating_point():
                    self.histograms[f"activations/{name}"] = _sample(output)

            return hook

        if self.sharded:
            return
        self._armed = True
        for name, module in self.model.named_modules():
            if name and not list(module.children()) and not list(module.parameters(recurse=False)):
                self._hooks.append(module.register_forward_hook(keep(name)))

    def before_update(self) -> None:
        if self.grad_norms:
            self.stats = self.monitor.grad_stats()
            self.monitor.snapshot_weights()
        if self._armed:
            for handle in self._hooks:
                handle.remove()
            self._hooks, self._armed = [], False
            for name, param in self.model.named_parameters():
                if param.grad is not None:
                    self.histograms[f"gradients/{name}"] = _sample(param.grad)

    def after_update(self) -> None:
        if self.grad_norms:
            self.stats.update(self.monitor.update_ratios())
        if any(k.startswith("gradients/") for k in self.histograms):
            for name, param in self.model.named_parameters():
                self.histograms[f"weights/{name}"] = _sample(param)

    def take(self) -> dict[str, float]:
        if isinstance(self.monitor, ShardedLayerNorms):
            self.stats = self.monitor.reduce() if self.grad_norms else {}
        floats, self.stats = to_floats(self.stats), {}
        return floats

    def take_histograms(self) -> dict[str, Tensor]:
        taken, self.histograms = self.histograms, {}
        return taken


def _local(t: Tensor) -> Tensor:
    """This rank's slice of an FSDP parameter or gradient (a DTensor); any other tensor as it is."""
    to_local = getattr(t, "to_local", None)
    return (to_local() if to_local is not None else t).detach()


class ShardedLayerNorms(GradFlowMonitor):
    """``fit``'s per-layer statistics under FSDP: local sums of squares, reduced once in ``reduce``.

    ``grad_stats`` and ``update_ratios`` (the same calls ``LogStepRecorder`` makes on a
    ``GradFlowMonitor``) keep per-layer Σ‖slice‖² of the gradients, of the update and of the
    weights before it, and non-finite counts; ``reduce`` (a collective) sums the stacked vector
    over ranks with one ``all_reduce`` and returns the usual keys. ‖layer‖ = sqrt(Σ over ranks
    and parameters of ‖slice‖²) is exactly the norm of the whole, unsharded layer.
    """

    def __init__(self, model: nn.Module) -> None:
        super().__init__(model)
        self._sums: dict[str, Tensor] = {}
        self._missing: list[int] = []

    def _squares(self, tensors: list[Tensor], layer_ids: tuple[int, ...]) -> Tensor:
        if not tensors:
            return torch.zeros(len(self.layers))
        norms = torch.stack(list(torch._foreach_norm(tensors))).float()
        index = self._layer_index(norms.device, layer_ids)
        return torch.zeros(len(self.layers), device=norms.device).index_add_(
            0, index, norms.square()
        )

    def grad_stats(self) -> dict[str, Tensor]:
        present = [i for i, p in enumerate(self.params) if p.grad is not None]
        grads = [_local(self.params[i].grad) for i in present]  # type: ignore[arg-type]
        ids = tuple(self.layer_of[i] for i in present)
        self._missing = [0] * len(self.layers)
        for i, p in enumerate(self.params):
            if p.grad is None and p.requires_grad:
                self._missing[self.layer_of[i]] += 1
        has_grad = torch.zeros(len(self.layers))
        has_grad[list(set(ids))] = 1.0
        self._sums = {
            "grad": self._squares(grads, ids),
            "nonfinite": self._per_layer_count(
                list(torch._foreach_norm(torch._foreach_sub(grads, grads), 0)), ids
            )
            if grads
            else torch.zeros(len(self.layers)),
            "has_grad": has_grad,
        }
        return {}

    def snapshot_weights(self) -> None:
        with torch.no_grad():
            self._before = [_local(p).clone() for p in self.params]

    def update_ratios(self) -> dict[str, Tensor]:
        if self._before is None:
            raise RuntimeError(
                "call snapshot_weights() before optimizer.step(), then update_ratios()"
            )
        with torch.no_grad():
            ids = tuple(self.layer_of)
            deltas = torch._foreach_sub([_local(p) for p in self.params], self._before)
            self._sums["delta"] = self._squares(deltas, ids)
            self._sums["weight"] = self._squares(self._before, ids)
        self._before = None
        return {}

    def reduce(self) -> dict[str, Tensor]:
        """Sum the recorded local squares over ranks (one all-reduce) and finish the statistics."""
        if not self._sums:
            return {}
        keys = list(self._sums)
        device = self._sums["grad"].device
        stacked = torch.stack([self._sums[k].to(device) for k in keys])
        if torch.distributed.is_initialized():
            torch.distributed.all_reduce(stacked)
        sums = dict(zip(keys, stacked, strict=True))
        self._sums = {}
        stats: dict[str, Tensor] = {}
        grad_norm = sums["grad"].sqrt()
        ratio = sums["delta"].sqrt() / sums["weight"].sqrt() if "delta" in sums else None
        for layer, path in enumerate(self.layers):
            if sums["has_grad"][layer] > 0:
                stats[GRAD_NORM + path] = grad_norm[layer]
                stats[NONFINITE + path] = sums["nonfinite"][layer]
            else:
                stats[GRAD_NORM + path] = torch.full((), float("nan"), device=device)
            if self._missing and self._missing[layer]:
                stats[MISSING + path] = torch.full((), float(self._missing[layer]), device=device)
            if ratio is not None:
                stats[UPDATE_RATIO + path] = ratio[layer]
        return stats


def _sample(t: Tensor, limit: int = 65536) -> Tensor:
    """At most `limit` values of a tensor, detached and copied (the original is overwritten next step)."""
    flat = t.detach().reshape(-1)
    if flat.numel() > limit:
        flat = flat[:: flat.numel() // limit + 1]
    return flat.float().clone()
