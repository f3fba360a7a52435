"""Section ``gpu``: CUDA-only rows (mixed precision, channels_last, host synchronisations per
epoch); ``--gpu-on-cpu`` runs their code on the CPU as a check."""

from __future__ import annotations

import io
import time
from collections.abc import Callable
from pathlib import Path

from benchmarks.common import (
    Row,
    Settings,
    alternate,
    epoch_records,
    median,
    paired,
    steady_step_ms,
)


def gpu_rows(settings: Settings, cnn: Path, data: Path, device: str = "cuda") -> list[Row]:
    """The CNN under each precision, the fused optimizer, torch.compile and channels_last (CUDA only).

    ``device="cpu"`` (``--gpu-on-cpu``) runs the same code on the CPU to check it, without
    torch.compile; its numbers mean nothing.
    """
    import torch

    if device == "cuda" and not torch.cuda.is_available():
        return [
            Row(
                "gpu",
                "fp32/bf16/fp16, fused AdamW, trainer.compile, channels_last, host syncs",
                None,
                note=f"skipped: no CUDA device here (torch {torch.__version__}); run on a GPU machine",
            )
        ]
    from rich.console import Console

    from bptrain.config import load_config
    from bptrain.train import fit

    variants = {
        "fp32": [],
        "bf16": ["trainer.precision=bf16"],
        "fp16": ["trainer.precision=fp16"],
        "fused AdamW": ["optimizer.fused=true"],
        "bf16 + fused AdamW": ["trainer.precision=bf16", "optimizer.fused=true"],
    }
    if device == "cuda":
        variants["trainer.compile"] = ["trainer.compile=true"]
    common = [f"trainer.device={device}", "logging.progress='off'", "logging.tensorboard=false"]

    def runner(overrides: list[str]) -> Callable[[int], float]:
        def run(rep: int) -> float:
            cfg = load_config(cnn, [*overrides, *common, "trainer.max_epochs=4"])
            summary = fit(cfg, Console(file=io.StringIO()))
            return steady_step_ms(epoch_records(Path(summary["run_dir"]) / "metrics.jsonl"), 32)

        return run

    rows = []
    try:
        runs = alternate(settings.pick(3, 1), {k: runner(v) for k, v in variants.items()})
        for name in variants:
            ratio = paired(runs[name], runs["fp32"])
            rows.append(
                Row(
                    "gpu",
                    f"CNN step, {name} vs fp32",
                    median(runs[name]),
                    median(runs["fp32"]),
                    "ms",
                    pair_ratio=ratio,
                )
            )
    except Exception as err:  # report, never hide: the row says what failed
        rows.append(
            Row("gpu", "precision/fused/compile", None, note=f"failed: {type(err).__name__}: {err}")
        )
    for produce in (_channels_last_row, _sync_row):
        try:
            rows.append(produce(settings, cnn, data, device))
        except Exception as err:
            rows.append(
                Row("gpu", produce.__name__, None, note=f"failed: {type(err).__name__}: {err}")
            )
    return rows


def _channels_last_row(settings: Settings, cnn: Path, data: Path, device: str) -> Row:
    """bptrain has no channels_last option: measure what it would buy, on a bare bf16 loop."""
    import numpy as np
    import torch
    import torch.nn.functional as F
    from bench_models import SmallCNN

    with np.load(data) as arrays:
        x, y = (
            torch.as_tensor(arrays["x"][:64]).to(device),
            torch.as_tensor(arrays["y"][:64]).to(device),
        )

    def sync() -> None:
        if device == "cuda":
            torch.cuda.synchronize()

    def step_ms(channels_last: bool) -> float:
        torch.manual_seed(0)
        fmt = torch.channels_last if channels_last else torch.contiguous_format
        model = SmallCNN().to(device).to(memory_format=fmt)
        opt = torch.optim.AdamW(model.parameters(), fused=device == "cuda")
        xb = x.contiguous(memory_format=fmt)
        for i in range(60):
            if i == 10:
                sync()
                start = time.perf_counter()
            with torch.autocast(device, torch.bfloat16):
                loss = F.cross_entropy(model(xb), y)
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
        sync()
        return (time.perf_counter() - start) / 50 * 1000

    runs = alternate(3, {"cl": lambda r: step_ms(True), "nchw": lambda r: step_ms(False)})
    return Row(
        "gpu",
        "channels_last vs NCHW (bf16, bare loop)",
        median(runs["cl"]),
        median(runs["nchw"]),
        "ms",
        pair_ratio=paired(runs["cl"], runs["nchw"]),
        note="bptrain has no channels_last option yet: this says whether it should",
    )


def _sync_row(settings: Settings, cnn: Path, data: Path, device: str) -> Row:
    """Count host-device synchronisations in fits that never log steps, 2 vs 4 epochs."""
    import warnings

    import torch
    from rich.console import Console

    from bptrain.config import load_config
    from bptrain.train import fit

    if device != "cuda":
        return Row(
            "gpu", "host syncs per epoch", None, note="needs CUDA (torch.cuda.set_sync_debug_mode)"
        )

    def syncs(epochs: int) -> int:
        overrides = [f"trainer.max_epochs={epochs}", "logging.log_every_n_steps=1000000000"]
        cfg = load_config(
            cnn,
            [
                *overrides,
                "trainer.device=cuda",
                "logging.progress='off'",
                "logging.tensorboard=false",
            ],
        )
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            torch.cuda.set_sync_debug_mode("warn")
            try:
                fit(cfg, Console(file=io.StringIO()))
            finally:
                torch.cuda.set_sync_debug_mode("default")
        return sum("synchroniz" in str(w.message) for w in caught)

    two, four = syncs(2), syncs(4)
    return Row(
        "gpu",
        "host syncs per extra epoch of 32 steps (no step logging)",
        (four - two) / 2,
        unit="syncs",
        note=f"2 epochs: {two}, 4 epochs: {four}; per-epoch work only (epoch loss, validation, checkpoint)",
    )
