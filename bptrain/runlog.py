"""The run directory and its metric records: ``metrics.jsonl``, ``grad_norms.jsonl`` and TensorBoard.

Every line of metrics.jsonl is one JSON object with a ``type`` (``step``,
``epoch``, ``test`` or ``event``), the global optimizer ``step`` and the metric
values, flushed as it is written, so a crash keeps everything logged so far and
``tail -f`` shows progress.
"""

from __future__ import annotations

import json
import math
import numbers
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from bptrain.layerlog import LayerLogWriter


def create_run_dir(parent: Path, name: str) -> Path:
    """<parent>/<name>/<YYYYmmdd-HHMMSS>[-N]: sortable, and never reuses a directory."""
    stamp = time.strftime("%Y%m%d-%H%M%S")
    base = parent / name
    base.mkdir(parents=True, exist_ok=True)
    for suffix in ["", *(f"-{i}" for i in range(1, 1000))]:
        candidate = base / f"{stamp}{suffix}"
        try:
            candidate.mkdir()
            return candidate
        except FileExistsError:
            continue
    raise RuntimeError(f"could not create a new run directory under {base}")


def _json_safe(value: Any) -> Any:
    """Strict JSON has no NaN or Infinity: NaN becomes null, an infinity the string "inf"/"-inf"."""
    if isinstance(value, numbers.Real) and not isinstance(value, numbers.Integral):
        value = float(value)  # also NumPy's float32/float64
        if not math.isfinite(value):
            return None if math.isnan(value) else ("inf" if value > 0 else "-inf")
        return value
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_json_safe(v) for v in value]
    return value


def dumps(data: Any, indent: int | None = None) -> str:
    """JSON that strict parsers accept (no bare NaN/Infinity); every file and --json output uses it."""
    return json.dumps(_json_safe(data), indent=indent, default=str, allow_nan=False)


def write_json(path: Path, data: dict[str, Any]) -> None:
    """Atomically (tmp + rename): a failed write (a full disk) leaves the previous file and no tmp."""
    tmp = path.with_suffix(path.suffix + ".tmp")
    try:
        tmp.write_text(dumps(data, indent=2) + "\n", encoding="utf-8")
        tmp.replace(path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def read_json(path: Path) -> dict[str, Any] | None:
    """A JSON object written by ``write_json`` (None: missing, cut short or not an object)."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def last_epoch_metrics(run_dir: Path) -> dict[str, Any]:
    """The values of the last epoch line in metrics.jsonl ({} when there is none): what a run
    records as its final metrics, for a resume that trains no further epoch."""
    last: dict[str, Any] = {}
    try:
        with (run_dir / "metrics.jsonl").open(encoding="utf-8") as handle:
            for line in handle:
                if '"epoch"' not in line:
                    continue
                try:
                    record = json.loads(line)
                except ValueError:  # a line cut by a kill
                    continue
                if isinstance(record, dict) and record.get("type") == "epoch":
                    last = record
    except OSError:
        return {}
    return {k: v for k, v in last.items() if k not in ("type", "step")}


# TensorBoard tags that differ from the metrics.jsonl key: the epoch mean of the training loss
# gets its own curve, so `train/loss` (the per-step values) does not zig-zag between the two.
EPOCH_TAGS = {"train/loss": "train/loss_epoch"}


class RunLog:
    """Appends metrics to metrics.jsonl and (optionally) TensorBoard and MLflow.

    ``config`` (the resolved config as a dict) becomes TensorBoard hparams and MLflow params;
    ``close(summary)`` adds the final and best metrics to TensorBoard's HParams tab and closes
    the MLflow run (tracking.py, mlflow_log.py)."""

    def __init__(
        self,
        run_dir: Path,
        tensorboard: bool,
        config: dict[str, Any] | None = None,
        mlflow: Any = None,
    ) -> None:
        self.run_dir = run_dir
        self.jsonl = (run_dir / "metrics.jsonl").open("a", encoding="utf-8")
        self.layer_log: LayerLogWriter | None = None
        self.config = config or {}
        self.tb = None
        if tensorboard:
            from torch.utils.tensorboard import (
                SummaryWriter,  # imported lazily: it is slow to import
            )

            # max_queue: a log step adds a dozen scalars (per-layer norms); with the default
            # queue of 10 the loop waited for TensorBoard's writer thread at every log step
            # (a median 9 ms per log step on a loaded 2-core machine), now it only enqueues
            self.tb = SummaryWriter(log_dir=str(run_dir / "tb"), max_queue=1000)
        from bptrain.tracking import open_mlflow

        self.mlflow = open_mlflow(mlflow, run_dir, self.config)

    def log(
        self, kind: str, step: int, metrics: dict[str, Any], tb_only: dict[str, float] | None = None
    ) -> None:
        self.jsonl.write(dumps({"type": kind, "step": step, **metrics}) + "\n")
        self.jsonl.flush()
        if self.tb is not None:
            renamed = EPOCH_TAGS if kind == "epoch" else {}
            for key, value in {**metrics, **(tb_only or {})}.items():
                if (
                    isinstance(value, int | float)
                    and not isinstance(value, bool)
                    and key not in ("step", "epoch")
                ):
                    self.tb.add_scalar(renamed.get(key, key), value, step)
        if self.mlflow is not None:
            self.mlflow.log(kind, step, metrics)

    def layers(self, step: int, stats: dict[str, float]) -> None:
        """Per-layer gradient norms and update ratios to grad_norms.jsonl (what the report's heatmaps read)."""
        if self.layer_log is None:
            from bptrain.layerlog import LayerLogWriter

            self.layer_log = LayerLogWriter(self.run_dir)
        self.layer_log.write(step, stats)

    def histograms(self, step: int, values: dict[str, Any]) -> None:
        """TensorBoard histograms (weights, gradients, activations); a no-op without TensorBoard."""
        if self.tb is not None:
            for tag, tensor in values.items():
                self.tb.add_histogram(tag, tensor.cpu(), step)

    def close(self, summary: dict[str, Any] | None = None) -> None:
        """Close the files; with the run's summary, record its hparams row and finish MLflow."""
        self.jsonl.close()
        if self.layer_log is not None:
            self.layer_log.close()
        if self.tb is not None:
            if summary is not None:
                from bptrain.tracking import write_hparams

                write_hparams(self.tb, self.config, summary)
            self.tb.close()
        if self.mlflow is not None and summary is not None:
            self.mlflow.finish(str(summary.get("status", "completed")))
