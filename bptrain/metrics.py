"""Evaluation metrics: the ``metrics`` config section turned into torchmetrics objects.

torchmetrics owns the arithmetic and the DDP synchronisation (each metric's states
carry their own reduction, so a metric computed over the disjoint, complete
evaluation shards of all ranks equals the single-process value); bptrain owns *when*
metrics are updated (every evaluation batch), computed (once per evaluation: one
host sync) and reset, and how they are named in ``metrics.jsonl``: ``val/<key>``,
``test/<key>``.

Every metric receives the same ``(preds, target)``:

- classification: ``preds`` are class probabilities ``(N, C)`` (softmax of the logits;
  a single binary logit becomes the two columns ``[1 - p, p]``), ``target`` the class
  indices ``(N,)``; per-step labels are flattened so every step is one sample;
- regression: ``preds`` and ``target`` are ``(N,)`` for one output, ``(N, D)`` for several.

A ``class_path`` metric (any ``torchmetrics.Metric``) gets exactly these, so the user's
own metric needs no adapter. torchmetrics is imported lazily: ``bptrain --help`` stays fast.

The two default metrics, ``accuracy`` and ``mae``, are the exception: ``Accuracy`` and
``MeanAbsoluteError`` below count them without importing torchmetrics, whose import costs
about 2 s of CPU (it imports scipy.signal), a quarter of a short run, for a count every
hand-written loop makes. They give the same values, bit for bit, as torchmetrics'
``MulticlassAccuracy(average="micro")`` and ``MeanAbsoluteError`` (same operations, same
float32 arithmetic, the same all-gather-then-sum over ranks); ``tests/test_metrics_light.py``
pins that. Every other metric is torchmetrics'.
"""

from __future__ import annotations

import json
import re
import warnings
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from bptrain.class_path import instantiate, resolve
from bptrain.config.extend import (
    CLASSIFICATION_METRICS,
    METRIC_NAMES,
    REGRESSION_METRICS,
    check_metric_name,
)
from bptrain.errors import UserError

__all__ = [
    "CLASSIFICATION_METRICS",
    "METRIC_NAMES",
    "REGRESSION_METRICS",
    "EvalMetrics",
    "build_metrics",
    "check_metric_name",
    "default_key",
    "write_tables",
]

DEFAULT_METRICS = {"classification": ("accuracy",), "regression": ("mae",)}
TABLES = {"confusion_matrix"}  # written to the run directory, not logged as scalars


def default_key(entry: Any) -> str:
    """The name a metric is logged under (after ``val/``) when ``log_as`` does not say.

    ``accuracy`` logs as ``acc``, the name bptrain 0.1 used; averages other than macro get
    a suffix (``f1_micro``); ``top_k_accuracy`` with k=5 logs as ``top5_acc``.
    """
    if getattr(entry, "log_as", None):
        return entry.log_as
    if getattr(entry, "class_path", None):
        name = entry.class_path.replace(":", ".").rpartition(".")[2]
        return re.sub(r"(?<!^)(?=[A-Z])", "_", name).lower()
    name = entry.name
    if name == "accuracy":
        return "acc"
    if name == "top_k_accuracy":
        return f"top{entry.k}_acc"
    if name == "per_class_accuracy":
        return "class_acc"
    average = getattr(entry, "average", "macro")
    if name in ("precision", "recall", "f1", "auroc") and average != "macro":
        return f"{name}_{average}"
    return name


@dataclass
class EvalMetrics:
    """The metrics of one evaluation: ``update`` per batch, ``compute`` once, then ``reset``.

    ``tables`` holds the non-scalar results of the last ``compute`` (the confusion matrix),
    for ``write_tables``.
    """

    metrics: dict[str, Any]  # logged key -> torchmetrics.Metric
    task: str
    # zero-sample (preds, target): a rank whose evaluation shard is empty (fewer samples than
    # ranks) feeds them once, so metrics that keep lists of tensors (AUROC) still sync
    empty: tuple[torch.Tensor, torch.Tensor] | None = None
    tables: dict[str, list[Any]] = field(default_factory=dict)
    updated: bool = False

    @property
    def argmax_only(self) -> bool:
        """Every metric takes only the argmax of the class scores (the default: accuracy alone),
        so evaluation can pass the logits and skip the softmax (``metric_inputs``)."""
        return bool(self.metrics) and all(type(m) is Accuracy for m in self.metrics.values())

    def to(self, device: torch.device) -> EvalMetrics:
        for metric in self.metrics.values():
            metric.to(device)
        return self

    def reset(self) -> None:
        for metric in self.metrics.values():
            metric.reset()
        self.updated = False

    def update(self, preds: torch.Tensor, target: torch.Tensor) -> None:
        for metric in self.metrics.values():
            metric.update(preds, target)
        self.updated = True

    def compute(self, prefix: str) -> dict[str, float]:
        """All metrics as ``{f"{prefix}/{key}": float}``; under DDP every rank must call it (it syncs)."""
        scalars: dict[str, torch.Tensor] = {}
        self.tables = {}
        if not self.updated and self.empty is not None:
            for metric in self.metrics.values():
                defaults = getattr(metric, "_defaults", {})  # torchmetrics' states
                if any(isinstance(d, list) for d in defaults.values()):
                    metric.update(*(t.to(metric.device) for t in self.empty))
        with (
            warnings.catch_warnings()
        ):  # a rank whose shard was empty: its states are still valid zeros
            warnings.filterwarnings("ignore", message=".*compute.*before.*update.*")
            for key, metric in self.metrics.items():
                _flatten(key, metric.compute(), scalars, self.tables)
        self.reset()
        if not scalars:
            return {}
        values = torch.stack([v.detach().float().reshape(()) for v in scalars.values()])
        return {f"{prefix}/{k}": v for k, v in zip(scalars, values.cpu().tolist(), strict=True)}

    def state_dict(self) -> dict[str, Any]:
        """Empty: metrics are reset after every evaluation and checkpoints are written between
        evaluations, so there is never metric state to save."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        pass


def _flatten(
    key: str, value: Any, scalars: dict[str, torch.Tensor], tables: dict[str, list[Any]]
) -> None:
    """A metric's result to scalars: 0-d as is, 1-d per index (``key/0``...), dicts per key, 2-d a table."""
    if isinstance(value, dict):
        for sub, v in value.items():
            _flatten(f"{key}/{sub}", v, scalars, tables)
        return
    if isinstance(value, list | tuple):
        value = torch.stack([torch.as_tensor(v) for v in value])
    value = torch.as_tensor(value)
    if value.ndim == 0:
        scalars[key] = value
    elif value.ndim == 1:
        for i, v in enumerate(value):
            scalars[f"{key}/{i}"] = v
    else:
        tables[key] = value.cpu().tolist()


def build_metrics(
    entries: Iterable[Any] | None,
    task: str | None,
    num_classes: int | None,
    num_outputs: int = 1,
) -> EvalMetrics:
    """The configured metrics (``None``: the task's defaults: accuracy, or MAE for regression).

    Each entry is a ``metrics:`` config item: a built-in ``name`` with options, or a
    ``class_path`` + ``init_args`` naming any ``torchmetrics.Metric``.
    """
    if entries is None:
        entries = [_Named(name) for name in DEFAULT_METRICS.get(task or "", ())]
    built: dict[str, Any] = {}
    for index, entry in enumerate(entries):
        where = f"metrics[{index}]"
        key = default_key(entry)
        if key in built:
            raise UserError(
                f"{where} would be logged as '{key}' like an earlier metric; give it another log_as."
            )
        if getattr(entry, "class_path", None):
            import torchmetrics

            cls = resolve(entry.class_path, f"{where}.class_path", base=torchmetrics.Metric)
            built[key] = instantiate(cls, f"{where}.class_path", entry.class_path, entry.init_args)
        else:
            built[key] = _builtin(entry, where, task, num_classes, num_outputs)
    empty = None
    if task == "classification" and num_classes:
        empty = (torch.zeros(0, num_classes), torch.zeros(0, dtype=torch.int64))
    elif task == "regression":
        shape = (0,) if num_outputs == 1 else (0, num_outputs)
        empty = (torch.zeros(shape), torch.zeros(shape))
    return EvalMetrics(built, task or "", empty)


@dataclass(frozen=True)
class _Named:
    """A default metric: a name with every option at its default."""

    name: str
    average: str = "macro"
    k: int = 5
    num_classes: int | None = None
    log_as: str | None = None


def _builtin(entry: Any, where: str, task: str | None, num_classes: int | None, outputs: int):
    name = entry.name
    classes = getattr(entry, "num_classes", None) or num_classes
    if name in CLASSIFICATION_METRICS:
        if task == "regression":
            raise UserError(
                f"{where}: '{name}' is a classification metric, but the data has real-valued "
                f"targets. For regression use one of: {', '.join(REGRESSION_METRICS)}."
            )
        if not classes:
            raise UserError(
                f"{where}: '{name}' needs the number of classes, which the data does not tell; "
                f"set {where}.num_classes (or data.num_classes)."
            )
        if name == "accuracy":
            return Accuracy()
        from torchmetrics import classification as tc

        average = getattr(entry, "average", "macro")
        multiclass: dict[str, Callable[[], Any]] = {
            "accuracy": lambda: tc.MulticlassAccuracy(classes, average="micro"),
            "top_k_accuracy": lambda: tc.MulticlassAccuracy(
                classes, top_k=min(entry.k, classes), average="micro"
            ),
            "precision": lambda: tc.MulticlassPrecision(classes, average=average),
            "recall": lambda: tc.MulticlassRecall(classes, average=average),
            "f1": lambda: tc.MulticlassF1Score(classes, average=average),
            "auroc": lambda: tc.MulticlassAUROC(classes, average=_auroc_average(average, where)),
            "per_class_accuracy": lambda: tc.MulticlassAccuracy(classes, average="none"),
            "confusion_matrix": lambda: tc.MulticlassConfusionMatrix(classes),
        }
        return _no_checks(multiclass[name])
    if task == "classification":
        raise UserError(
            f"{where}: '{name}' is a regression metric, but the data has class labels. "
            f"For classification use one of: {', '.join(CLASSIFICATION_METRICS)}."
        )
    if name == "mae":
        return MeanAbsoluteError()
    from torchmetrics import regression as tr

    regression: dict[str, Callable[[], Any]] = {
        "rmse": lambda: tr.MeanSquaredError(squared=False, num_outputs=1),
        "r2": lambda: tr.R2Score(multioutput="uniform_average"),
        "mape": tr.MeanAbsolutePercentageError,
    }
    return regression[name]()


class _Counts:
    """A metric whose states are sums (counts, sums of errors): ``update`` adds to them,
    ``compute`` sums them over ranks (all-gather, then a sum in rank order, as torchmetrics
    does) and divides. The light twin of a ``torchmetrics.Metric`` for the default metrics."""

    _dtypes: dict[str, torch.dtype] = {}  # noqa: RUF012  state name -> dtype

    def __init__(self) -> None:
        self.device = torch.device("cpu")
        self.reset()

    def to(self, device: torch.device | str) -> _Counts:
        self.device = torch.device(device)
        self.states = {k: v.to(self.device) for k, v in self.states.items()}
        return self

    def reset(self) -> None:
        self.states = {
            k: torch.zeros((), dtype=d, device=self.device) for k, d in self._dtypes.items()
        }

    def _synced(self) -> dict[str, torch.Tensor]:
        dist = torch.distributed
        if not (dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1):
            return self.states
        synced = {}
        for key, value in self.states.items():
            gathered = [torch.zeros_like(value) for _ in range(dist.get_world_size())]
            dist.all_gather(gathered, value)
            synced[key] = torch.stack(gathered).sum(dim=0)
        return synced


class Accuracy(_Counts):
    """Top-1 accuracy over all samples: what ``MulticlassAccuracy(average="micro")`` computes
    (the argmax of the class scores against the target; correct / samples in float32). The
    scores are the logits when accuracy is the only metric (``EvalMetrics.argmax_only``), else
    the probabilities: the softmax is monotonic, so the argmax is the same, except where a
    float32 softmax rounds two nearly equal top probabilities to one value and the argmax of
    the logits still picks the larger logit."""

    _dtypes = {"correct": torch.int64, "total": torch.int64}  # noqa: RUF012

    def update(self, preds: torch.Tensor, target: torch.Tensor) -> None:
        if preds.ndim == target.ndim + 1:
            preds = preds.argmax(dim=1)
        self.states["correct"] += (preds.flatten() == target.flatten()).sum()
        self.states["total"] += target.numel()

    def compute(self) -> torch.Tensor:
        s = self._synced()
        correct, total = s["correct"].float(), s["total"].float()
        return torch.where(total != 0, correct / total, torch.zeros((), device=self.device))


class MeanAbsoluteError(_Counts):
    """The mean absolute error over all values: what torchmetrics' ``MeanAbsoluteError`` computes
    (per batch the float32 sum of ``|preds - target|``, summed over batches, over the count)."""

    _dtypes = {"sum_abs_error": torch.float32, "total": torch.int64}  # noqa: RUF012

    def update(self, preds: torch.Tensor, target: torch.Tensor) -> None:
        preds, target = preds.reshape(-1), target.reshape(-1)
        self.states["sum_abs_error"] += torch.sum(torch.abs(preds - target), dim=0)
        self.states["total"] += target.shape[0]

    def compute(self) -> torch.Tensor:
        s = self._synced()
        return s["sum_abs_error"] / s["total"]


def _no_checks(make: Callable[[], Any]) -> Any:
    """Built-in classification metrics skip torchmetrics' input validation: bptrain shapes
    their inputs itself, and the checks cost a host sync per batch."""
    metric = make()
    metric.validate_args = False
    return metric


def _auroc_average(average: str, where: str) -> str:
    if average == "micro":
        raise UserError(f"{where}: auroc averages macro or weighted, not micro.")
    return average


def write_tables(run_dir: Path, prefix: str, tables: dict[str, list[Any]]) -> None:
    """Write each table (the confusion matrix) as ``<key>_<prefix>.json`` in the run directory,
    replacing the previous evaluation's: rows are true classes, columns predicted ones."""
    for key, rows in tables.items():
        path = run_dir / f"{key.replace('/', '_')}_{prefix}.json"
        tmp = path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps({"rows": "true class", "columns": "predicted class", key: rows}))
        tmp.replace(path)


def metric_inputs(
    output: torch.Tensor,
    target: torch.Tensor,
    task: str,
    binary: bool,
    log_probs: bool,
    scores: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The model's output and the targets as every metric receives them (see the module docstring).

    ``scores``: multi-class outputs as they are (logits or log-probabilities), for metrics that
    only take their argmax (``EvalMetrics.argmax_only``): the softmax cannot change it and
    costs about a third of the default evaluation's per-batch overhead."""
    output = output.float()
    if task == "classification":
        if binary:
            p = torch.sigmoid(output.reshape(-1))
            return torch.stack([1 - p, p], dim=-1), target.reshape(-1).long()
        if scores:
            return output.reshape(-1, output.shape[-1]), target.reshape(-1)
        probs = output.exp() if log_probs else output.softmax(dim=-1)
        return probs.reshape(-1, probs.shape[-1]), target.reshape(-1)
    preds, target = output.reshape(len(output), -1), target.reshape(len(target), -1).float()
    if preds.shape[1] == 1:
        return preds[:, 0], target[:, 0]
    return preds, target
