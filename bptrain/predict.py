"""``bptrain predict``: a trained model's predictions for new inputs, in the user's own labels.

Inputs: ``.npz`` (array ``x``, optional ``y``), ``.csv`` (the training csv's columns; the
target column is optional) or a directory of images (flat, or ``root/<class>/`` with labels).
Each input goes through the run's training preprocessing (``bptrain.preprocess``), never
statistics of its own. Outputs: ``.csv``, ``.npz`` or ``.jsonl`` with the predicted class (the
original label strings), the class probabilities, or the regression values, plus the target
and whether the prediction is correct when the input has targets.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch

from bptrain.errors import UserError
from bptrain.losses import Objective
from bptrain.preprocess import Preprocessing


class LoadedRun(Protocol):
    """What prediction needs of a run (``bptrain.api.LoadedRun`` is one); a protocol, so that this
    module does not import the API that calls it."""

    model: torch.nn.Module
    device: torch.device
    preprocessing: Preprocessing
    objective: Objective
    checkpoint: Path

    @property
    def precision(self) -> Any: ...


OUTPUT_SUFFIXES = (".csv", ".npz", ".jsonl")
PROGRESS_MIN_BATCHES = 20  # show a progress bar only when it is worth one


@dataclass
class Inputs:
    """Raw inputs read from a file, and their targets (class indices or values) when the file has them."""

    x: np.ndarray
    target: np.ndarray | None = None
    ids: list[str] | None = None  # image file names


# ------------------------------------------------------------------ reading inputs


def read_inputs(path: Path, prep: Preprocessing) -> Inputs:
    """Read `path` for a model with preprocessing `prep`; every mismatch names the column or shape."""
    if not path.exists():
        raise UserError(f"--input {path}: no such file or directory.")
    if path.is_dir():
        inputs = _read_images(path, prep)
    elif path.suffix == ".npz":
        inputs = _read_npz(path, prep)
    elif path.suffix == ".csv":
        inputs = _read_csv(path, prep)
    else:
        raise UserError(
            f"--input {path}: unsupported input; give a .npz (arrays x[, y]), a .csv or a directory of images."
        )
    prep.check_inputs(tuple(inputs.x.shape), f"--input {path}")
    return inputs


def _read_npz(path: Path, prep: Preprocessing) -> Inputs:
    if path.stat().st_size == 0:
        raise UserError(f"--input {path}: the file is empty.")
    try:
        with np.load(path, allow_pickle=False) as archive:  # no pickles: an .npz could run code
            arrays = {name: archive[name] for name in archive.files}
    except (ValueError, OSError, EOFError) as err:
        raise UserError(f"--input {path}: not a readable .npz of numeric arrays ({err}).") from None
    if "x" not in arrays:
        raise UserError(
            f"--input {path}: no array 'x' (found {', '.join(sorted(arrays)) or 'none'}); "
            "save inputs with np.savez(path, x=inputs[, y=targets])."
        )
    x, y = arrays["x"], arrays.get("y")
    if y is not None and len(y) != len(x):
        raise UserError(f"--input {path}: x has {len(x)} samples but y has {len(y)}.")
    target = None
    if y is not None:
        if y.dtype.kind in "US":
            target = prep.encode_labels([str(v) for v in y.reshape(-1)], f"--input {path}, array y")
            target = target.reshape(y.shape)
        else:
            target = _numeric_target(y, prep, f"--input {path}, array y")
    return Inputs(x, target)


def _numeric_target(y: np.ndarray, prep: Preprocessing, where: str) -> np.ndarray:
    if prep.spec.task == "regression":
        return y.astype(np.float32).reshape(len(y), *prep.spec.target_shape)
    if prep.class_names is not None or y.dtype.kind not in "iub":
        raise UserError(
            f"{where}: targets must be the training labels ({', '.join(map(repr, prep.class_names or []))})"
            if prep.class_names
            else f"{where}: class labels must be integers 0..{(prep.spec.num_classes or 1) - 1}."
        )
    if y.size and (y.min() < 0 or y.max() >= (prep.spec.num_classes or 0)):
        raise UserError(
            f"{where}: label {int(y.max()) if y.max() >= 0 else int(y.min())} is out of range; "
            f"the model knows {prep.spec.num_classes} classes (0..{(prep.spec.num_classes or 1) - 1})."
        )
    return y.astype(np.int64).reshape(len(y), *prep.spec.target_shape)


def _read_csv(path: Path, prep: Preprocessing) -> Inputs:
    from bptrain.data.sources import csv_features, read_csv_rows

    if path.stat().st_size == 0:
        raise UserError(f"--input {path}: the file is empty.")
    header, body = read_csv_rows(path, "--input")
    duplicated = sorted({c for c in header if header.count(c) > 1})
    if duplicated:
        raise UserError(
            f"--input {path}: column(s) {', '.join(map(repr, duplicated))} appear twice."
        )
    if prep.feature_names is not None:  # trained on a csv: the same columns, by name
        features, target = prep.feature_names, prep.target_name
        missing = [c for c in features if c not in header]
        extra = [c for c in header if c not in features and c != target]
        if missing or extra:
            parts = []
            if missing:
                parts.append(f"missing column(s) {', '.join(map(repr, missing))}")
            if extra:
                parts.append(f"unexpected column(s) {', '.join(map(repr, extra))}")
            raise UserError(
                f"--input {path}: {'; '.join(parts)}. The model takes the training columns "
                f"{', '.join(map(repr, features))}"
                + (f" (and optionally the target {target!r})." if target else ".")
            )
        columns = [header.index(c) for c in features]
    else:  # trained on arrays: every column is a feature, in order
        target = None
        columns = list(range(len(header)))
        if len(prep.spec.input_shape) != 1 or len(columns) != prep.spec.input_shape[0]:
            raise UserError(
                f"--input {path}: {len(columns)} column(s), but the model takes inputs of shape "
                f"(N, {', '.join(map(str, prep.spec.input_shape))}): give one column per feature "
                "(or a .npz for multi-dimensional inputs)."
            )
    x = csv_features(path, header, body, columns)
    y = None
    if target is not None and target in header:
        t = header.index(target)
        y = prep.encode_labels([row[t] for row in body], f"--input {path}, column {target!r}")
        if prep.spec.task == "regression":
            y = y.reshape(len(y), *prep.spec.target_shape)
    return Inputs(x, y)


def _read_images(root: Path, prep: Preprocessing) -> Inputs:
    from bptrain.data.images import IMAGE_SUFFIXES, load_image

    if prep.image is None:
        raise UserError(
            f"--input {root} is a directory of images, but the model was trained on {prep.source} data, "
            "not an image folder; give a .npz or .csv."
        )
    classes = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    files = sorted(p for p in root.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    labels: list[str] | None = None
    if classes and not files:  # root/<class>/<image>: labelled
        labelled = [
            (p, name)
            for name in classes
            for p in sorted((root / name).rglob("*"))
            if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES
        ]
        files, labels = [p for p, _ in labelled], [name for _, name in labelled]
    if not files:
        raise UserError(f"--input {root}: no images ({', '.join(sorted(IMAGE_SUFFIXES))}).")
    size, grayscale = int(prep.image["size"]), bool(prep.image["grayscale"])
    x = torch.stack([load_image(p, size, grayscale) for p in files]).numpy()
    target = prep.encode_labels(labels, f"--input {root}, class directories") if labels else None
    return Inputs(x, target, [str(p.relative_to(root)) for p in files])


# ------------------------------------------------------------------ running the model


@torch.inference_mode()
def forward_batches(
    run: LoadedRun, x: np.ndarray, batch_size: int, progress: bool = False
) -> torch.Tensor:
    """The model's raw outputs (float32, on the CPU) for raw inputs, batch by batch, under the run's precision."""
    model, prep, precision = run.model, run.preprocessing, run.precision
    starts = range(0, len(x), batch_size)
    bar = _progress(len(starts)) if progress and len(starts) >= PROGRESS_MIN_BATCHES else None
    outputs = []
    try:
        for start in starts:
            batch = prep.transform(x[start : start + batch_size]).to(run.device)
            with precision.autocast():
                out = model(batch)
            outputs.append(out.float().cpu())
            if bar is not None:
                bar[0].advance(bar[1])
    finally:
        if bar is not None:
            bar[0].stop()
    return torch.cat(outputs)


def _progress(total: int) -> tuple[Any, Any]:
    from rich.console import Console
    from rich.progress import Progress

    bar = Progress(console=Console(stderr=True), transient=True)
    task = bar.add_task("predicting", total=total)
    bar.start()
    return bar, task


def decode(
    outputs: torch.Tensor, prep: Preprocessing, objective: Objective
) -> dict[str, np.ndarray]:
    """Raw outputs -> {"prediction", and for classification "probabilities", "class_index"}."""
    n, spec = len(outputs), prep.spec
    if spec.task == "regression":
        return {"prediction": outputs.reshape(n, *spec.target_shape).numpy()}
    if objective.binary:  # one logit: P(class 1)
        p1 = torch.sigmoid(outputs.reshape(n, *spec.target_shape))
        probabilities = torch.stack([1 - p1, p1], dim=-1)
    elif objective.name == "nll":  # the model outputs log-probabilities
        probabilities = outputs.exp()
    else:
        probabilities = torch.softmax(outputs, dim=-1)
    probabilities = probabilities.reshape(n, *spec.target_shape, -1)
    index = probabilities.argmax(dim=-1).numpy()
    names = prep.class_names
    prediction = np.asarray(names)[index] if names is not None else index
    return {"prediction": prediction, "probabilities": probabilities.numpy(), "class_index": index}


# ------------------------------------------------------------------ writing outputs


def write_outputs(
    path: Path, result: dict[str, np.ndarray], inputs: Inputs, prep: Preprocessing
) -> None:
    """Write predictions as csv, npz or jsonl (by suffix), with target and correctness when known."""
    columns = _columns(result, inputs, prep)
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".npz":
        arrays = {k: np.asarray(v) for k, v in result.items()}
        if inputs.target is not None:
            arrays["target"] = _target_labels(inputs.target, prep)
            if "class_index" in result:
                arrays["correct"] = result["class_index"] == inputs.target
        if prep.class_names is not None:
            arrays["classes"] = np.asarray(prep.class_names)
        if inputs.ids is not None:
            arrays["id"] = np.asarray(inputs.ids)
        np.savez(path, **arrays)
    elif path.suffix == ".jsonl":
        with path.open("w", encoding="utf-8") as handle:
            for row in columns:
                handle.write(json.dumps(row) + "\n")
    elif path.suffix == ".csv":
        import csv

        if prep.spec.task == "classification" and prep.spec.target_shape:
            raise UserError(
                f"--output {path}: this model predicts a class per step {tuple(prep.spec.target_shape)}; "
                "a csv has one row per sample. Write .jsonl or .npz instead."
            )
        flat = [_flatten(row) for row in columns]
        with path.open("w", newline="", encoding="utf-8") as handle:
            writer = csv.DictWriter(handle, fieldnames=list(flat[0]))
            writer.writeheader()
            writer.writerows(flat)
    else:
        raise UserError(f"--output {path}: write .csv, .npz or .jsonl.")


def _target_labels(target: np.ndarray, prep: Preprocessing) -> np.ndarray:
    if prep.spec.task == "classification" and prep.class_names is not None:
        return np.asarray(prep.class_names)[target]
    return target


def _columns(
    result: dict[str, np.ndarray], inputs: Inputs, prep: Preprocessing
) -> list[dict[str, Any]]:
    """One JSON-ready record per sample."""
    rows = []
    labels = [str(prep.label_of(i)) for i in range(prep.spec.num_classes or 0)]
    for i in range(len(result["prediction"])):
        row: dict[str, Any] = {}
        if inputs.ids is not None:
            row["id"] = inputs.ids[i]
        row["prediction"] = result["prediction"][i].tolist()
        if "probabilities" in result:
            p = result["probabilities"][i]
            row["probabilities"] = (
                dict(zip(labels, p.tolist(), strict=True)) if p.ndim == 1 else p.tolist()
            )
        if inputs.target is not None:
            row["target"] = _target_labels(inputs.target[i : i + 1], prep)[0].tolist()
            if "class_index" in result:
                hits = np.asarray(result["class_index"][i] == inputs.target[i])
                row["correct"] = bool(hits) if hits.ndim == 0 else hits.tolist()
        rows.append(row)
    return rows


def _flatten(row: dict[str, Any]) -> dict[str, Any]:
    """csv form of a record: probabilities as p_<label> columns, vector values as name_<i> columns."""
    flat: dict[str, Any] = {}
    for key, value in row.items():
        if isinstance(value, dict):
            flat.update({f"p_{label}": v for label, v in value.items()})
        elif isinstance(value, list):
            if len(value) == 1:
                flat[key] = value[0]
            else:
                flat.update({f"{key}_{j}": v for j, v in enumerate(value)})
        else:
            flat[key] = value
    return flat


def run_predict(
    run: LoadedRun, input_path: Path, output_path: Path, batch_size: int
) -> dict[str, Any]:
    """The whole command: read, preprocess, predict in batches, write; returns what it did."""
    if output_path.suffix not in OUTPUT_SUFFIXES:
        raise UserError(f"--output {output_path}: write .csv, .npz or .jsonl.")
    inputs = read_inputs(input_path, run.preprocessing)
    outputs = forward_batches(run, inputs.x, batch_size, progress=True)
    result = decode(outputs, run.preprocessing, run.objective)
    write_outputs(output_path, result, inputs, run.preprocessing)
    report: dict[str, Any] = {
        "input": str(input_path),
        "output": str(output_path),
        "checkpoint": str(run.checkpoint),
        "samples": len(inputs.x),
    }
    if inputs.target is not None and "class_index" in result:
        report["accuracy"] = float(np.mean(result["class_index"] == inputs.target))
    elif inputs.target is not None:
        report["mse"] = float(np.mean((result["prediction"] - inputs.target) ** 2))
    return report
