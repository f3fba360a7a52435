"""``bptrain export``: a trained model as ONNX, torch.export (.pt2), TorchScript or safetensors, verified.

Every artifact is checked after it is written: it is loaded back the way a user would load it
(onnxruntime for ONNX, ``torch.export.load`` for .pt2, ``torch.jit.load``, a fresh model for
safetensors), run on a real batch of the run's data, and compared with the eager model; the
command reports the max abs difference and fails above ``TOLERANCE``. With a dynamic batch
dimension the check uses a batch of another size than the one traced, so a batch size baked
into the graph is caught here, not in production.

Preprocessing is either folded into the graph (``--fold-preprocessing``: the artifact takes raw
inputs) or not (it takes standardised inputs); either way ``<artifact>.preprocessing.json``
is written beside it (the README documents its fields). A model that cannot be exported is
a ``UserError`` (exit 2) naming the module being traced and the operator when known.
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn

from bptrain.errors import TrainingError, UserError
from bptrain.version import __version__

if TYPE_CHECKING:
    from bptrain.api import LoadedRun

FORMATS = {
    "onnx": ".onnx",
    "torch.export": ".pt2",
    "torchscript": ".ts.pt",
    "safetensors": ".safetensors",
}
TOLERANCE = 1e-4
TRACE_BATCH = 2  # traced with 2 samples: a batch of 1 would let the exporter specialise the size
VERIFY_BATCH = 16


@dataclass
class ExportOptions:
    fmt: str
    output: Path | None = None
    dynamic_batch: bool = True
    opset: int | None = None
    fold_preprocessing: bool = False


class WithPreprocessing(nn.Module):
    """The training standardisation followed by the model: the exported graph takes raw inputs."""

    def __init__(self, preprocess: nn.Module, model: nn.Module) -> None:
        super().__init__()
        self.preprocess, self.model = preprocess, model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(self.preprocess(x))


def export_run(run: LoadedRun, options: ExportOptions) -> dict[str, Any]:
    """Write, reload and verify the artifact; return the report the command prints."""
    if options.fmt not in FORMATS:
        raise UserError(f"--format {options.fmt}: choose one of {', '.join(FORMATS)}.")
    prep = run.preprocessing
    model = run.model.to("cpu").eval()
    # safetensors holds the model's weights only: preprocessing stays in the JSON beside it
    fold = options.fold_preprocessing and prep.mean is not None and options.fmt != "safetensors"
    module: nn.Module = WithPreprocessing(prep.as_module(), model).eval() if fold else model
    raw, verified_on = real_batch(run, VERIFY_BATCH)
    # what the artifact takes: raw inputs when preprocessing is folded in, else standardised ones
    batch = raw if fold else prep.transform(raw)
    batch = batch if prep.integer_inputs else batch.float()
    example = batch[:TRACE_BATCH] if options.dynamic_batch else batch
    if options.dynamic_batch and len(batch) <= TRACE_BATCH:
        batch = torch.cat([batch, batch[:1]])  # verify on another size than the traced one
    path = options.output or default_path(run, options.fmt)
    path.parent.mkdir(parents=True, exist_ok=True)
    with torch.no_grad():
        expected = module(batch)
    writer, runner = {
        "onnx": (_write_onnx, _run_onnx),
        "torch.export": (_write_pt2, _run_pt2),
        "torchscript": (_write_torchscript, _run_torchscript),
        "safetensors": (_write_safetensors, lambda p: _run_safetensors(p, run)),
    }[options.fmt]
    with _explain_failure(module, options.fmt), warnings.catch_warnings():
        # the exporters' internal deprecation notices say nothing about the user's model
        warnings.simplefilter("ignore", FutureWarning)
        warnings.simplefilter("ignore", UserWarning)
        writer(module, example, path, options)
    actual = runner(path)(batch)
    diff = float(np.max(np.abs(np.asarray(actual, dtype=np.float64) - expected.double().numpy())))
    sidecar = path.with_name(path.name + ".preprocessing.json")
    prep.write_json(
        sidecar,
        folded=fold,
        artifact=path.name,
        artifact_format=options.fmt,
        input={"name": "input", "shape": ["batch" if options.dynamic_batch else len(example), *prep.spec.input_shape],
               "dtype": "int64" if prep.integer_inputs else "float32",
               "takes": "raw inputs" if fold or prep.mean is None else "standardised inputs: apply mean/std first"},
        output=_output_description(run),
    )  # fmt: skip
    report = {
        "format": options.fmt,
        "path": str(path),
        "preprocessing": str(sidecar),
        "folded_preprocessing": fold,
        "dynamic_batch": options.dynamic_batch,
        "opset": options.opset if options.fmt == "onnx" else None,
        "verified_on": f"{verified_on}, batch of {len(batch)}",
        "max_abs_diff": diff,
        "tolerance": TOLERANCE,
    }
    if not diff <= TOLERANCE:  # also catches NaN
        raise TrainingError(
            f"export verification failed: {path} and the eager model differ by {diff:.3g} "
            f"(max abs) on {report['verified_on']}, above {TOLERANCE}. The file is kept for inspection."
        )
    return report


def default_path(run: LoadedRun, fmt: str) -> Path:
    """<run>/exports/<checkpoint stem><suffix>, or beside the checkpoint when it is not in a run."""
    base = run.run_dir / "exports" if run.run_dir is not None else run.checkpoint.parent
    return base / f"{run.checkpoint.stem}{FORMATS[fmt]}"


def real_batch(run: LoadedRun, n: int) -> tuple[torch.Tensor, str]:
    """Up to n raw inputs from the run's data (validation, else test, else training split).

    When the data cannot be read here (a file moved, a cluster path), random inputs in the
    training range are used instead, and the report says so.
    """
    from bptrain.data import build_data

    prep, cfg = run.preprocessing, run.config
    try:
        data = build_data(
            cfg.data,
            seed=cfg.seed,
            device=torch.device("cpu"),
            integer_inputs=prep.integer_inputs,
            preprocessing=prep,
        )
    except UserError as err:
        return _random_batch(prep, n), f"random inputs (the run's data could not be read: {err})"
    for name in ("val", "test", "train"):
        batches = getattr(data, name)
        if batches is None:
            continue
        xs, count = [], 0
        for x, _ in batches:
            xs.append(x.cpu())
            count += len(x)
            if count >= n:
                break
        x = torch.cat(xs)[:n]
        if prep.mean is not None and prep.std is not None:  # back to raw units
            x = x * prep.std + prep.mean
        return x, f"the {name} split of {cfg.data.source}"
    return _random_batch(prep, n), "random inputs"


def _random_batch(prep: Any, n: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(0)
    shape = (n, *prep.spec.input_shape)
    if prep.integer_inputs:
        return torch.randint(0, prep.spec.token_range or 2, shape, generator=generator)
    x = torch.randn(shape, generator=generator)
    if prep.mean is not None and prep.std is not None:
        x = x * prep.std + prep.mean
    return x


def _output_description(run: LoadedRun) -> dict[str, Any]:
    prep, objective = run.preprocessing, run.objective
    if prep.spec.task == "regression":
        return {
            "name": "output",
            "meaning": "regression values",
            "shape": ["batch", *prep.spec.target_shape],
        }
    meaning = (
        "one logit per sample: P(class 1) = sigmoid(output)"
        if objective.binary
        else "log-probabilities per class (exp gives probabilities)"
        if objective.name == "nll"
        else "logits per class (softmax gives probabilities)"
    )
    labels = [prep.label_of(i) for i in range(prep.spec.num_classes or 0)]
    return {"name": "output", "meaning": meaning, "class_names": labels}


def _dynamic_shapes(options: ExportOptions) -> Any:
    return ({0: torch.export.Dim("batch", min=1)},) if options.dynamic_batch else None


# ------------------------------------------------------------------ one writer and runner per format


def _write_onnx(
    module: nn.Module, example: torch.Tensor, path: Path, options: ExportOptions
) -> None:
    try:
        import onnx  # noqa: F401  (the exporter needs it; fail with the install hint first)
        import onnxscript  # noqa: F401
    except ImportError:
        raise UserError(
            "ONNX export needs onnx and onnxscript (and onnxruntime to verify): pip install 'bptrain[export]'."
        ) from None
    _quiet_exporter_logs()
    torch.onnx.export(
        module,
        (example,),
        str(path),
        dynamo=True,
        input_names=["input"],
        output_names=["output"],
        opset_version=options.opset,
        dynamic_shapes=_dynamic_shapes(options),
        verbose=False,
        report=False,
    )


def _run_onnx(path: Path) -> Callable[[torch.Tensor], np.ndarray]:
    try:
        import onnxruntime
    except ImportError:
        raise UserError(
            "verifying ONNX needs onnxruntime: pip install 'bptrain[export]'."
        ) from None
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    return lambda x: session.run(None, {name: x.numpy()})[0]


def _write_pt2(
    module: nn.Module, example: torch.Tensor, path: Path, options: ExportOptions
) -> None:
    program = torch.export.export(module, (example,), dynamic_shapes=_dynamic_shapes(options))
    torch.export.save(program, str(path))


def _run_pt2(path: Path) -> Callable[[torch.Tensor], np.ndarray]:
    program = torch.export.load(str(path))
    loaded = program.module()
    return lambda x: _no_grad(loaded, x)


def _write_torchscript(
    module: nn.Module, example: torch.Tensor, path: Path, options: ExportOptions
) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter(
            "ignore"
        )  # TorchScript's deprecation notice; the check below is what counts
        traced = torch.jit.trace(module, example, check_trace=False)
        torch.jit.save(traced, str(path))


def _run_torchscript(path: Path) -> Callable[[torch.Tensor], np.ndarray]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # TorchScript is deprecated, not broken
        loaded = torch.jit.load(str(path), map_location="cpu")
    return lambda x: _no_grad(loaded, x)


def _write_safetensors(
    module: nn.Module, example: torch.Tensor, path: Path, options: ExportOptions
) -> None:
    from bptrain.checkpoint import save_safetensors

    save_safetensors(module.state_dict(), path, {"format": "pt", "bptrain": __version__})


def _run_safetensors(path: Path, run: LoadedRun) -> Callable[[torch.Tensor], np.ndarray]:
    """A fresh model built from the config, loaded from the file: what a user of the weights does."""
    from bptrain.models import build_model
    from bptrain.transfer import load_into, load_weights

    fresh = build_model(run.config.model, run.preprocessing.spec, run.objective.name)
    load_into(fresh, load_weights(path), path)
    fresh.eval()
    return lambda x: _no_grad(fresh, x)


def _no_grad(module: Any, x: torch.Tensor) -> np.ndarray:
    with torch.no_grad():
        return module(x).detach().float().numpy()


def _quiet_exporter_logs() -> None:
    import logging

    for name in ("torch.onnx", "torch.export", "torch._export", "onnxscript"):
        logging.getLogger(name).setLevel(logging.ERROR)


# ------------------------------------------------------------------ saying why an export failed


@contextmanager
def _explain_failure(module: nn.Module, fmt: str) -> Iterator[None]:
    """Turn an exporter's exception into a UserError naming the module being traced and the operator."""
    names = {m: name or type(module).__name__ for name, m in module.named_modules()}
    stack: list[nn.Module] = []
    deepest: list[nn.Module] = []

    def enter(m: nn.Module, *_: Any) -> None:
        stack.append(m)

    def leave(m: nn.Module, *_: Any) -> None:
        if stack and stack[-1] is m:
            stack.pop()

    handles = [m.register_forward_pre_hook(enter) for m in names] + [
        m.register_forward_hook(leave) for m in names
    ]
    try:
        yield
    except (UserError, KeyboardInterrupt):
        raise
    except (
        Exception
    ) as err:  # the exporters raise many types; all mean "this model does not export"
        deepest = list(stack)
        where = (
            f"in module '{names[deepest[-1]]}' ({type(deepest[-1]).__name__})"
            if deepest
            else "in the model"
        )
        op = _operator(str(err))
        first = next(
            (line.strip() for line in str(err).splitlines() if line.strip()), type(err).__name__
        )
        raise UserError(
            f"cannot export to {fmt} {where}"
            + (f", operator {op}" if op else "")
            + f": {type(err).__name__}: {first[:400]}. "
            "Try --format torch.export or torchscript, or make the module traceable "
            "(no data-dependent Python control flow, no .item()/.tolist() in forward)."
        ) from None
    finally:
        for handle in handles:
            handle.remove()


def _operator(message: str) -> str | None:
    """The aten/onnx operator an exporter message names, if it names one."""
    found = re.search(r"\b(aten(?:::|\.)[A-Za-z_0-9.]+)", message)
    if found:
        return found.group(1).rstrip(".")
    found = re.search(r"OpOverload\(op='([^']+)'", message)
    return found.group(1) if found else None
