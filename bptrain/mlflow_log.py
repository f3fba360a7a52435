"""The optional MLflow record of a run: params, metrics, and the run's files as artifacts.

``logging.mlflow`` turns it on; it needs the ``mlflow`` extra (``pip install 'bptrain[mlflow]'``,
which installs ``mlflow-skinny``: the tracking client without the server, pandas or scikit-learn).
It records what the run directory records, so the two never disagree:

- params: the resolved config, flattened to dotted keys (``optimizer.lr``), scalars and lists;
- metrics: every ``metrics.jsonl`` record with its optimizer step (``train/loss``, ``val/acc``...),
  step lines buffered and written with the next epoch line (one store round trip per epoch);
- artifacts at the end: ``config.yaml``, ``summary.json`` and the best checkpoint (``best.pt``) or,
  without one, the final weights (``last.safetensors``);
- the run's status: FINISHED, FAILED (the loss went non-finite) or KILLED (interrupted). A resumed
  run continues the same MLflow run (its id is kept in ``<run dir>/mlflow.json``).

The client API (``MlflowClient``) is used rather than ``mlflow.start_run``: no global "active run",
so sweeps that run several trials in one process keep them apart. mlflow is imported here only.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from bptrain.errors import UserError

STATUS = {
    "completed": "FINISHED",
    "early_stopped": "FINISHED",
    "pruned": "KILLED",
    "interrupted": "KILLED",
}
MAX_PARAM_LENGTH = 6000  # MLflow's limit on a param value
BATCH = 100  # MLflow's limit on params per log_batch call


def _is_file_store(uri: str | None) -> bool:
    if uri is None:
        uri = os.environ.get("MLFLOW_TRACKING_URI")
    return uri is not None and ("://" not in uri or uri.startswith("file:"))


def flat_params(config: dict[str, Any], prefix: str = "") -> dict[str, str]:
    """{"optimizer": {"lr": 0.1}} -> {"optimizer.lr": "0.1"}; None and long values are left out."""
    out: dict[str, str] = {}
    for key, value in config.items():
        name = f"{prefix}.{key}" if prefix else str(key)
        if isinstance(value, dict):
            out.update(flat_params(value, name))
        elif value is not None:
            text = json.dumps(value) if isinstance(value, list | bool) else str(value)
            if len(text) <= MAX_PARAM_LENGTH:
                out[name] = text
    return out


class MlflowLog:
    """One bptrain run as one MLflow run; ``log`` mirrors RunLog.log, ``finish`` uploads the files."""

    def __init__(
        self,
        run_dir: Path,
        config: dict[str, Any],
        tracking_uri: str | None = None,
        experiment: str = "bptrain",
        run_name: str | None = None,
    ) -> None:
        if _is_file_store(tracking_uri):
            # MLflow 3 refuses its file store unless asked (it is "in maintenance mode"); a local
            # directory is what a laptop user means by tracking_uri: ./mlruns, so we ask for it.
            os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
        try:
            from mlflow.tracking import MlflowClient
        except ImportError:
            raise UserError(
                "logging.mlflow needs MLflow: pip install 'bptrain[mlflow]' (or mlflow-skinny), "
                "or remove logging.mlflow from the config."
            ) from None
        self.run_dir = run_dir
        self.client = MlflowClient(tracking_uri=tracking_uri)
        self.pending: list[Any] = []
        saved = run_dir / "mlflow.json"
        if saved.exists():  # a resumed run: continue its MLflow run
            self.run_id = json.loads(saved.read_text(encoding="utf-8"))["run_id"]
            self.client.update_run(self.run_id, status="RUNNING")
            return
        found = self.client.get_experiment_by_name(experiment)
        experiment_id = found.experiment_id if found else self.client.create_experiment(experiment)
        run = self.client.create_run(
            experiment_id,
            run_name=run_name or run_dir.parent.name,
            tags={"bptrain.run_dir": str(run_dir)},
        )
        self.run_id = run.info.run_id
        saved.write_text(
            json.dumps({"run_id": self.run_id, "tracking_uri": self.client.tracking_uri}) + "\n",
            encoding="utf-8",
        )
        from mlflow.entities import Param

        params = [Param(k, v) for k, v in flat_params(config).items()]
        for start in range(0, len(params), BATCH):
            self.client.log_batch(self.run_id, params=params[start : start + BATCH])

    def log(self, kind: str, step: int, metrics: dict[str, Any]) -> None:
        """Queue the record's numbers; anything but a step line writes the queue out."""
        import time

        from mlflow.entities import Metric

        stamp = int(time.time() * 1000)
        for key, value in metrics.items():
            if (
                isinstance(value, int | float)
                and not isinstance(value, bool)
                and key not in ("step", "epoch")
            ):
                self.pending.append(Metric(key, float(value), stamp, step))
        if kind != "step":
            self.flush()

    def flush(self) -> None:
        while self.pending:
            chunk, self.pending = self.pending[:1000], self.pending[1000:]
            self.client.log_batch(self.run_id, metrics=chunk)

    def finish(self, status: str) -> None:
        """Write what is queued, upload config, summary and best checkpoint, close the MLflow run."""
        self.flush()
        for name in ("config.yaml", "summary.json"):
            if (self.run_dir / name).exists():
                self.client.log_artifact(self.run_id, str(self.run_dir / name))
        checkpoints = self.run_dir / "checkpoints"
        for name in ("best.pt", "last.safetensors"):
            if (checkpoints / name).exists():
                self.client.log_artifact(self.run_id, str(checkpoints / name), "checkpoints")
                break
        self.client.set_terminated(self.run_id, status=STATUS.get(status, "FAILED"))
