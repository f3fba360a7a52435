"""Reading every data source into NumPy arrays, with clear errors for bad files.

A source returns a ``Splits``: the training arrays and, when the source has them,
explicit validation and test arrays. Holding out fractions, normalising and
turning arrays into tensors happen later, the same way for every source.
"""

from __future__ import annotations

import csv
import difflib
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import numpy as np

from bptrain.config import (
    AddingData,
    BlobsData,
    CopyData,
    CsvData,
    DigitsData,
    MajorityData,
    MoonsData,
    NpzData,
    ShapesData,
    SineData,
    SineSeriesData,
    SpiralsData,
    XorData,
)
from bptrain.data import synthetic
from bptrain.errors import UserError

Arrays = tuple[np.ndarray, np.ndarray]


@dataclass
class Splits:
    train: Arrays
    val: Arrays | None = None
    test: Arrays | None = None
    class_names: list[str] | None = None  # csv string labels: index -> label
    feature_names: list[str] | None = None  # csv feature columns, in order


def read_source(cfg: object, seed: int, class_names: list[str] | None = None) -> Splits:
    """The source's arrays; `class_names` (from a trained model) maps csv string labels instead of fitting a mapping."""
    rng = np.random.default_rng(seed)
    if isinstance(cfg, SpiralsData):
        return Splits(synthetic.spirals(cfg.n_samples, cfg.n_classes, cfg.noise, rng))
    if isinstance(cfg, MoonsData):
        return Splits(synthetic.moons(cfg.n_samples, cfg.noise, rng))
    if isinstance(cfg, BlobsData):
        return Splits(
            synthetic.blobs(cfg.n_samples, cfg.n_classes, cfg.n_features, cfg.cluster_std, rng)
        )
    if isinstance(cfg, XorData):
        return Splits(synthetic.xor(cfg.n_samples, cfg.noise, rng))
    if isinstance(cfg, SineData):
        return Splits(synthetic.sine(cfg.n_samples, cfg.noise, cfg.periods, rng))
    if isinstance(cfg, DigitsData):
        return Splits(read_digits(cfg.flatten))
    if isinstance(cfg, NpzData):
        return read_npz(cfg.path, cfg.allow_non_finite)
    if isinstance(cfg, CsvData):
        table = read_csv(cfg.path, cfg.target, cfg.task, class_names, cfg.allow_non_finite)
        return Splits(
            (table.x, table.y), class_names=table.class_names, feature_names=table.features
        )
    if isinstance(cfg, AddingData):
        return Splits(synthetic.adding(cfg.n_samples, cfg.length, rng))
    if isinstance(cfg, CopyData):
        return Splits(synthetic.copy_task(cfg.n_samples, cfg.length, cfg.delay, cfg.symbols, rng))
    if isinstance(cfg, MajorityData):
        return Splits(synthetic.majority(cfg.n_samples, cfg.length, cfg.vocab, rng))
    if isinstance(cfg, SineSeriesData):
        return Splits(synthetic.sine_series(cfg.n_samples, cfg.length, cfg.horizon, cfg.noise, rng))
    if isinstance(cfg, ShapesData):
        return Splits(synthetic.shapes(cfg.n_samples, cfg.image_size, cfg.noise, rng))
    raise AssertionError(f"unhandled data source {cfg!r}")


def read_digits(flatten: bool) -> Arrays:
    """UCI optical digits (the set scikit-learn ships), bundled as bptrain/data/digits.npz (45 KB)."""
    with (
        resources.files("bptrain.data").joinpath("digits.npz").open("rb") as handle,
        np.load(handle) as arrays,
    ):
        x = arrays["x"].astype(np.float32) / 16.0
        y = arrays["y"].astype(np.int64)
    return (x if flatten else x.reshape(-1, 1, 8, 8)), y


def _check_file(path: Path, key: str) -> None:
    if not path.exists():
        raise UserError(
            f"{key}: file not found: {path} (relative paths are resolved from {Path.cwd()})"
        )
    if not path.is_file():
        raise UserError(f"{key}: not a file: {path}")


def first_non_finite(array: np.ndarray) -> tuple[int, ...] | None:
    """The index of the first NaN or infinity in `array` (row-major), or None when all are finite.

    Values beyond float32's range count too: training converts the data to float32, where they
    become infinite.
    """
    if not np.issubdtype(array.dtype, np.floating) or array.size == 0:
        return None  # integers and booleans are always finite
    flat = array.reshape(-1)
    finite = np.isfinite(flat)
    if array.dtype.itemsize > 4:
        finite &= np.abs(flat) <= np.finfo(np.float32).max
    if finite.all():
        return None
    return tuple(int(i) for i in np.unravel_index(int(np.argmin(finite)), array.shape))


_NON_FINITE_FIX = (
    "A NaN or infinity in the data makes the loss NaN for every batch that holds it. Clean the "
    "data: replace or drop the samples that hold them (or, to train on them anyway, set "
    "data.allow_non_finite: true)."
)


def read_npz(path: Path, allow_non_finite: bool = False) -> Splits:
    _check_file(path, "data.path")
    try:
        # allow_pickle=False: an .npz of object arrays could run code when unpickled.
        with np.load(path, allow_pickle=False) as archive:
            arrays = {name: archive[name] for name in archive.files}
    except ValueError as err:
        raise UserError(
            f"data.path {path}: cannot read arrays ({err}). Object arrays are refused; save numeric arrays."
        ) from None
    except (OSError, EOFError) as err:
        raise UserError(f"data.path {path}: not a readable .npz file ({err}).") from None
    missing = [name for name in ("x", "y") if name not in arrays]
    if missing:
        raise UserError(
            f"data.path {path}: missing array(s) {', '.join(missing)}; found {', '.join(sorted(arrays)) or 'none'}. "
            "Save with np.savez(path, x=inputs, y=targets[, x_val=..., y_val=..., x_test=..., y_test=...])."
        )

    def pair(suffix: str) -> Arrays | None:
        xs, ys = f"x{suffix}", f"y{suffix}"
        if (xs in arrays) != (ys in arrays):
            raise UserError(
                f"data.path {path}: has {xs if xs in arrays else ys} without {ys if xs in arrays else xs}; give both or neither."
            )
        if xs not in arrays:
            return None
        x, y = arrays[xs], arrays[ys]
        for name, array in ((xs, x), (ys, y)):
            if array.ndim == 0:
                raise UserError(
                    f"data.path {path}: {name} is a single value (a 0-d array), not one entry per "
                    f"sample; save it with a leading sample axis, e.g. np.atleast_1d({name})."
                )
            bad = None if allow_non_finite else first_non_finite(array)
            if bad is not None:
                raise UserError(
                    f"data.path {path}: {name}[{', '.join(map(str, bad))}] is {array[bad]}. "
                    + _NON_FINITE_FIX
                )
        if len(x) != len(y):
            raise UserError(f"data.path {path}: {xs} has {len(x)} samples but {ys} has {len(y)}.")
        return x, y

    return Splits(pair(""), pair("_val"), pair("_test"))  # type: ignore[arg-type]


@dataclass
class CsvTable:
    x: np.ndarray
    y: np.ndarray
    features: list[str]  # feature column names, in the order of x's columns
    class_names: list[str] | None  # string labels in index order; None for numeric targets


def read_csv(
    path: Path,
    target: str,
    task: str,
    class_names: list[str] | None = None,
    allow_non_finite: bool = False,
) -> CsvTable:
    """A csv with a header: every column but `target` is a numeric feature.

    String labels become class indices in sorted order, or by `class_names` when given
    (a trained model's mapping; an unknown label is an error naming it). A NaN or infinite
    feature or numeric target (`nan`, `inf`, `1e39` beyond float32) is refused naming its line
    and column, unless `allow_non_finite`.
    """
    _check_file(path, "data.path")
    header, body = read_csv_rows(path, "data.path")
    if target not in header:
        close = difflib.get_close_matches(target, header, n=1)
        hint = f" Did you mean '{close[0]}'?" if close else ""
        raise UserError(
            f"data.target '{target}' is not a column of {path}.{hint} Columns: {', '.join(header)}."
        )
    t = header.index(target)
    features = [i for i in range(len(header)) if i != t]
    x = csv_features(path, header, body, features)
    labels = [row[t] for row in body]
    if not allow_non_finite:
        _refuse_non_finite_csv(path, header, body, x, features, t)
    y, names = _csv_targets(labels, task, path, class_names)
    return CsvTable(x, y, [header[i] for i in features], names)


def _refuse_non_finite_csv(
    path: Path,
    header: list[str],
    body: list[list[str]],
    x: np.ndarray,
    features: list[int],
    target: int,
) -> None:
    """The first NaN/infinite feature, or numeric target, as an error naming its line and column."""
    found: list[tuple[int, int]] = []
    bad = first_non_finite(x)
    if bad is not None:
        found.append((bad[0], features[bad[1]]))
    try:
        targets = np.array([float(row[target]) for row in body], dtype=np.float64)
    except ValueError:
        targets = None  # string labels: class names, never a number
    bad = None if targets is None else first_non_finite(targets)
    if bad is not None:
        found.append((bad[0], target))
    if found:
        row, col = min(found)
        raise UserError(
            f"{path}, line {row + 2}, column '{header[col]}': {body[row][col]!r} is not a finite "
            "float32 number. " + _NON_FINITE_FIX
        )


def read_csv_rows(path: Path, key: str) -> tuple[list[str], list[list[str]]]:
    """Header and data rows; an empty file or a header without rows is an error."""
    try:
        with path.open(newline="", encoding="utf-8") as handle:
            rows = list(csv.reader(handle))
    except (OSError, UnicodeDecodeError, csv.Error) as err:
        raise UserError(f"{key} {path}: cannot read it as csv ({err}).") from None
    if len(rows) < 2:
        raise UserError(
            f"{key} {path}: expected a header row and at least one data row, found {len(rows)} row(s)."
        )
    return rows[0], rows[1:]


@np.errstate(over="ignore")  # beyond float32 becomes inf, without a warning: read_csv names it
def csv_features(
    path: Path, header: list[str], body: list[list[str]], columns: list[int]
) -> np.ndarray:
    """The given columns as float32 (N, len(columns)); a non-number is named by line and column."""
    x = np.empty((len(body), len(columns)), dtype=np.float32)
    for line, row in enumerate(body, start=2):
        if len(row) != len(header):
            raise UserError(
                f"{path}, line {line}: {len(row)} fields, but the header has {len(header)}."
            )
        for j, col in enumerate(columns):
            try:
                x[line - 2, j] = float(row[col])
            except ValueError:
                raise UserError(
                    f"{path}, line {line}, column '{header[col]}': {row[col]!r} is not a number. "
                    "Feature columns must be numeric (encode categories first)."
                ) from None
    return x


def _csv_targets(
    labels: list[str], task: str, path: Path, class_names: list[str] | None
) -> tuple[np.ndarray, list[str] | None]:
    if class_names is not None:  # a trained model's mapping: apply it, never re-fit
        lookup = {name: i for i, name in enumerate(class_names)}
        unknown = sorted({v for v in labels if v not in lookup})
        if unknown:
            raise UserError(
                f"data.path {path}: unknown label(s) {', '.join(map(repr, unknown[:8]))} in the target "
                f"column; the model was trained on {', '.join(map(repr, class_names))}."
            )
        return np.array([lookup[v] for v in labels], dtype=np.int64), class_names
    try:
        values = np.array([float(v) for v in labels], dtype=np.float64)
    except ValueError:
        if task == "regression":
            raise UserError(
                f"data.path {path}: data.task is regression but the target column has non-numeric values."
            ) from None
        names = sorted(set(labels))  # string labels become class indices in sorted order
        lookup = {name: i for i, name in enumerate(names)}
        return np.array([lookup[v] for v in labels], dtype=np.int64), names
    integral = bool(np.all(values == np.round(values))) and values.min() >= 0
    if task == "classification" or (task == "auto" and integral):
        if not integral:
            raise UserError(
                f"data.path {path}: data.task is classification but the targets are not non-negative integers."
            )
        return values.astype(np.int64), None
    return values.astype(np.float32), None
