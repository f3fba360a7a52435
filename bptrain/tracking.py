"""What a run tells the tools that compare runs: TensorBoard's HParams tab and MLflow.

``RunLog`` (runlog.py) calls these at the start and the end of a run, so the loop never sees them:

- TensorBoard: the resolved config's values as hparams and the run's final and best metrics
  (``hparams/final/val/acc``, ``hparams/best/val/loss``...), written into the run's own ``tb/``
  (not a sub-run, as ``SummaryWriter.add_hparams`` would), so each run is one row of the HParams
  tab with its curves next to it.
- MLflow (``logging.mlflow``): see mlflow_log.py.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

SKIPPED = ("logging.",)  # where a run writes, not what it is


def hparams_of(config: dict[str, Any], prefix: str = "") -> dict[str, float | int | str | bool]:
    """The config flattened to dotted keys; lists and None become text (TensorBoard takes scalars)."""
    out: dict[str, float | int | str | bool] = {}
    for key, value in config.items():
        name = f"{prefix}.{key}" if prefix else str(key)
        if name.startswith(SKIPPED):
            continue
        if isinstance(value, dict):
            out.update(hparams_of(value, name))
        elif isinstance(value, bool | int | float | str):
            out[name] = value
        else:
            out[name] = json.dumps(value)
    return out


def summary_metrics(summary: dict[str, Any]) -> dict[str, float]:
    """final/<metric>, best/<metric> and test/<metric> numbers of a summary, for the HParams tab."""
    out: dict[str, float] = {}
    for part in ("final", "best"):
        for key, value in (summary.get(part) or {}).items():
            if "/" in key and isinstance(value, int | float) and not isinstance(value, bool):
                out[f"hparams/{part}/{key}"] = float(value)
    for key, value in (summary.get("test") or {}).items():
        if isinstance(value, int | float) and not isinstance(value, bool):
            out[f"hparams/{key}"] = float(value)
    return out


def write_hparams(writer: Any, config: dict[str, Any], summary: dict[str, Any]) -> None:
    """One HParams row for this run, in the run's own event file."""
    from torch.utils.tensorboard.summary import hparams

    metrics = summary_metrics(summary)
    step = int(summary.get("steps") or 0)
    experiment, start, end = hparams(hparams_of(config), metrics)
    file_writer = writer._get_file_writer()  # add_hparams would make a separate sub-run instead
    for record in (experiment, start, end):
        file_writer.add_summary(record, step)
    for key, value in metrics.items():
        writer.add_scalar(key, value, step)
    writer.flush()


def open_mlflow(settings: Any, run_dir: Path, config: dict[str, Any]) -> Any:
    """The MLflow record of this run when logging.mlflow is set, else None."""
    if settings is None:
        return None
    from bptrain.mlflow_log import MlflowLog

    return MlflowLog(
        run_dir,
        config,
        tracking_uri=settings.tracking_uri,
        experiment=settings.experiment,
        run_name=settings.run_name,
    )
