"""The Python API: ``load_run`` (a trained model ready to predict) and ``fit`` (train from a notebook).

``load_run`` is what ``predict``, ``export`` and ``eval`` use too, so the CLI and the API
load a run the same way: the checkpoint's config and weights, and the preprocessing fitted
on the training data (stored in the checkpoint; for checkpoints of bptrain 0.1, which
have none, it is re-fitted on the config's training data with a printed note).

    from bptrain import load_run
    run = load_run("runs/quickstart/20260101-120000")
    run.predict(x)["prediction"]
"""

from __future__ import annotations

import copy
import json
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from bptrain.checkpoint import load_checkpoint
from bptrain.config import Config, load_config, validate_config
from bptrain.errors import UserError
from bptrain.losses import Objective, build_objective
from bptrain.models import build_model
from bptrain.predict import decode, forward_batches
from bptrain.preprocess import Preprocessing, stored_preprocessing
from bptrain.runtime import Precision, resolve_device

__all__ = ["LoadedRun", "fit", "load_run", "locate_checkpoint"]


@dataclass
class LoadedRun:
    """A trained model with everything needed to use it.

    ``model`` is in eval mode on ``device``; ``preprocessing`` is what the training data
    fitted; ``config`` the resolved config the run trained with; ``metrics`` the lines of
    ``metrics.jsonl`` and ``summary`` its ``summary.json`` (None when absent).
    """

    model: nn.Module
    preprocessing: Preprocessing
    config: Config
    objective: Objective
    device: torch.device
    checkpoint: Path
    run_dir: Path | None = None
    metrics: list[dict[str, Any]] = field(default_factory=list)
    summary: dict[str, Any] | None = None

    @property
    def precision(self) -> Precision:
        return Precision.create(self.config.trainer.precision, self.device)

    def predict(self, x: Any, batch_size: int = 256) -> dict[str, np.ndarray]:
        """Predictions for raw inputs ``x`` (N, *input_shape), preprocessed as in training.

        Returns numpy arrays: ``prediction`` (the user's labels for classification, values for
        regression), and for classification ``probabilities`` (N, [T,] C) and ``class_index``.
        """
        x = np.asarray(x.detach().cpu() if isinstance(x, torch.Tensor) else x)
        self.preprocessing.check_inputs(tuple(x.shape), "predict")
        outputs = forward_batches(self, x, batch_size)
        return decode(outputs, self.preprocessing, self.objective)


def load_run(
    path: str | Path,
    checkpoint: str | Path | None = None,
    device: str = "cpu",
    quiet: bool = False,
) -> LoadedRun:
    """Load a trained model from a run directory, a checkpoint file or a config.

    ``path`` is a run directory (its ``checkpoints/best.pt``, else ``last.pt``), a ``.pt`` or
    ``.safetensors`` file inside one, or a YAML config (then ``checkpoint`` names the weights,
    or the newest run of that config is used). ``device``: ``cpu``, ``cuda``, ``mps`` or ``auto``.
    """
    config_path, ckpt, run_dir = locate_checkpoint(Path(path), checkpoint)
    saved = {} if ckpt.suffix == ".safetensors" else load_checkpoint(ckpt)
    cfg = _config(saved, config_path, run_dir, ckpt)
    target = resolve_device(device)
    preprocessing = _preprocessing(saved, cfg, run_dir, ckpt, quiet)
    objective = build_objective(cfg.loss, preprocessing.spec)
    model = build_model(cfg.model, preprocessing.spec, objective.name)
    from bptrain.transfer import load_into, load_weights

    load_into(model, load_weights(ckpt), ckpt)
    model.to(target).eval()
    objective.loss_fn.to(target)
    metrics, summary = _records(run_dir)
    return LoadedRun(model, preprocessing, cfg, objective, target, ckpt, run_dir, metrics, summary)


def locate_checkpoint(
    path: Path, checkpoint: str | Path | None
) -> tuple[Path | None, Path, Path | None]:
    """(config file or None, checkpoint, run directory or None) for a run dir, a checkpoint or a config."""
    if checkpoint is not None:
        ckpt = Path(checkpoint)
        if not ckpt.is_file():
            raise UserError(f"--checkpoint {ckpt}: no such file.")
    if path.is_dir():
        run_dir = path
        if checkpoint is None:
            ckpt = _default_checkpoint(run_dir)
        return (
            (run_dir / "config.yaml" if (run_dir / "config.yaml").is_file() else None),
            ckpt,
            run_dir,
        )
    if not path.exists():
        raise UserError(f"{path}: no such run directory, checkpoint or config file.")
    if path.suffix in (".yaml", ".yml"):
        if checkpoint is None:
            cfg = load_config(path)
            base = cfg.logging.run_dir / (cfg.logging.name or "run")
            runs = sorted(p for p in base.glob("*") if (p / "config.yaml").is_file())
            if not runs:
                raise UserError(
                    f"no run of {path} under {base}; train it first (bptrain fit {path}) or give --checkpoint."
                )
            run_dir = runs[-1]
            return path, _default_checkpoint(run_dir), run_dir
        return path, ckpt, _run_dir_of(ckpt)
    run_dir = _run_dir_of(path)
    config = run_dir / "config.yaml" if run_dir is not None else None
    return (config if config is not None and config.is_file() else None), path, run_dir


def _run_dir_of(ckpt: Path) -> Path | None:
    return ckpt.parent.parent if ckpt.parent.name == "checkpoints" else None


def _default_checkpoint(run_dir: Path) -> Path:
    """best.pt (the best validation) if the run kept one, else last.pt; none: say what the run's status is."""
    for name in ("best.pt", "last.pt"):
        if (run_dir / "checkpoints" / name).is_file():
            return run_dir / "checkpoints" / name
    raise UserError(
        f"{run_dir} has no checkpoint (checkpoints/best.pt or last.pt); the run's status: {run_status(run_dir)}."
    )


def run_status(run_dir: Path) -> str:
    """What a run directory says about its run, in a few words (for errors)."""
    summary = run_dir / "summary.json"
    if summary.is_file():
        try:
            data = json.loads(summary.read_text(encoding="utf-8"))
            return f"{data.get('status')} ({data.get('stop_reason')}), but its checkpoints were removed or never saved (trainer.checkpoint.save_last/save_best)"
        except ValueError:
            pass
    if (run_dir / "nan_report.json").is_file():
        return f"failed on a non-finite loss before any checkpoint was written (see {run_dir / 'nan_report.json'})"
    events = [r for r in _read_jsonl(run_dir / "metrics.jsonl") if r.get("type") == "event"]
    if events and events[-1].get("event") == "interrupted":
        return f"interrupted by {events[-1].get('signal')} before its first checkpoint"
    if not (run_dir / "config.yaml").is_file():
        return "not a bptrain run directory (no config.yaml)"
    return "no summary.json: still running, or stopped before its first checkpoint"


def _config(
    saved: dict[str, Any], config_path: Path | None, run_dir: Path | None, ckpt: Path
) -> Config:
    """The config the weights were trained with: the checkpoint's own, else the run's config.yaml."""
    if isinstance(saved.get("config"), dict):
        return validate_config(dict(saved["config"]), source=f"{ckpt} (its config)")
    if config_path is not None:
        return load_config(config_path)
    raise UserError(
        f"{ckpt} holds no config and no config.yaml is beside it; give the config: "
        f"bptrain predict CONFIG --checkpoint {ckpt}."
    )


def _preprocessing(
    saved: dict[str, Any], cfg: Config, run_dir: Path | None, ckpt: Path, quiet: bool
) -> Preprocessing:
    """The checkpoint's preprocessing; else the run's preprocessing.json; else re-fitted (0.1 checkpoints)."""
    stored = stored_preprocessing(saved, ckpt)
    if stored is not None:
        return stored
    if run_dir is not None and (run_dir / "preprocessing.json").is_file():
        return Preprocessing.read_json(run_dir / "preprocessing.json")
    from bptrain.data import build_data
    from bptrain.models import takes_token_ids

    if not quiet:
        print(
            f"note: {ckpt} stores no preprocessing (written by bptrain 0.1, or a weights-only file); "
            f"re-fitting it on the config's training data ({cfg.data.source}) as training did.",
            file=sys.stderr,
        )
    data = build_data(
        cfg.data,
        seed=cfg.seed,
        device=torch.device("cpu"),
        integer_inputs=takes_token_ids(cfg.model),
    )
    return data.preprocessing  # type: ignore[return-value]


def _records(run_dir: Path | None) -> tuple[list[dict[str, Any]], dict[str, Any] | None]:
    if run_dir is None:
        return [], None
    summary = None
    if (run_dir / "summary.json").is_file():
        try:
            summary = json.loads((run_dir / "summary.json").read_text(encoding="utf-8"))
        except ValueError:
            summary = None
    return _read_jsonl(run_dir / "metrics.jsonl"), summary


def _read_jsonl(path: Path) -> list[dict[str, Any]]:
    if not path.is_file():
        return []
    records = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            records.append(json.loads(line))
        except ValueError:
            continue  # a line cut by a kill
    return records


def fit(
    config: str | Path | dict[str, Any] | Config,
    overrides: list[str] | dict[str, Any] | None = None,
    resume: str | None = None,
    quiet: bool = False,
) -> dict[str, Any]:
    """Train as ``bptrain fit`` does and return the summary (also written to summary.json).

    ``config`` is a YAML path, a dict of sections, or a ``Config``; ``overrides`` are
    ``KEY=VALUE`` strings or a ``{"optimizer.lr": 3e-4}`` dict.
    """
    from rich.console import Console

    from bptrain.config import apply_override, parse_override
    from bptrain.train import fit as run_fit

    items = (
        [f"{k}={json.dumps(v) if not isinstance(v, str) else v}" for k, v in overrides.items()]
        if isinstance(overrides, dict)
        else list(overrides or [])
    )
    if isinstance(config, str | Path):
        cfg = load_config(config, items)
    else:
        from bptrain.config import to_dict

        data = to_dict(config) if isinstance(config, Config) else copy.deepcopy(dict(config))
        for text in items:
            keys, value = parse_override(text)
            apply_override(data, keys, value, text)
        cfg = validate_config(data)
    return run_fit(cfg, Console(quiet=quiet), resume=resume)
