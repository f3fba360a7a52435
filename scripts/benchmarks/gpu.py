"""``scripts/bench.py --gpu``: what the GPU settings buy, measured on one GPU machine in under five
minutes, ready to run the moment a GPU is available.

    python scripts/bench.py --gpu --dry-run    # the plan: what would run (any machine)
    python scripts/bench.py --gpu              # run it: bench-gpu.json and bench-gpu.md

Every variant is one ``bptrain fit`` of the same workload (an MLP 512 -> 4 x 2048 -> 10 of
about 13M parameters on 16,384 synthetic samples, batch 512, 3 epochs of 32 steps, no
checkpoints during the run), started by ``benchmarks/gpu_rank.py`` in its own process (under
``torchrun`` for DDP and FSDP: 2 processes when the machine has 2 GPUs or more, else 1). Each
rank writes its peak ``torch.cuda.max_memory_allocated()``; rank 0's metrics.jsonl gives the
steady-state step time (epochs 2+, so torch.compile's compilation is not counted). Compared:

- precision: fp32 vs bf16 autocast (``trainer.precision``);
- optimizer: foreach vs fused AdamW (``optimizer.fused``);
- compile: eager vs ``trainer.compile``;
- strategy: DDP vs FSDP (``trainer.strategy``), with peak memory per rank.

Without CUDA nothing runs (a message, exit 0). ``--gpu-on-cpu`` runs the same plan on the CPU
with gloo, without torch.compile: a check that the script works, not a benchmark.
"""

from __future__ import annotations

import itertools
import json
import os
import shutil
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from benchmarks.common import SCRIPTS, epoch_records, median, write_yaml

STEPS_PER_EPOCH = 32  # 16,384 samples / batch 512
EPOCHS = 3
VARIANT_TIMEOUT_S = 150  # one variant that hangs must not eat the machine's time
TOTAL_S = 290  # the whole plan: what is left when this runs out is reported as not run


@dataclass
class Variant:
    name: str
    group: str  # precision | optimizer | compile | strategy
    overrides: list[str] = field(default_factory=list)
    nproc: int | None = None  # None: a plain process; N: torchrun --nproc-per-node N
    baseline: str | None = None  # the variant this one is compared with (None: it is a baseline)


def plan(device_count: int, device: str = "cuda") -> list[Variant]:
    """What ``--gpu`` runs, in order. ``device="cpu"`` (the check) leaves torch.compile out."""
    nproc = 2 if device_count > 1 else 1
    variants = [
        Variant("fp32, foreach AdamW", "precision", ["optimizer.fused=false"]),
        Variant(
            "bf16 autocast",
            "precision",
            ["trainer.precision=bf16", "optimizer.fused=false"],
            baseline="fp32, foreach AdamW",
        ),
        Variant(
            "fused AdamW", "optimizer", ["optimizer.fused=true"], baseline="fp32, foreach AdamW"
        ),
        Variant(
            "torch.compile",
            "compile",
            ["trainer.compile=true", "optimizer.fused=false"],
            baseline="fp32, foreach AdamW",
        ),
        Variant(f"DDP, {nproc} process(es)", "strategy", ["trainer.strategy=ddp"], nproc),
        Variant(
            f"FSDP, {nproc} process(es)",
            "strategy",
            ["trainer.strategy=fsdp"],
            nproc,
            baseline=f"DDP, {nproc} process(es)",
        ),
    ]
    if device == "cpu":
        variants = [v for v in variants if v.group != "compile"]
    return variants


def describe(variants: list[Variant], work: Path) -> str:
    lines = [
        f"the GPU benchmark would run {len(variants)} fits of the workload (config {work / 'gpu.yaml'}):"
    ]
    for v in variants:
        launcher = f"torchrun --nproc-per-node {v.nproc}" if v.nproc else "python"
        against = f", compared with '{v.baseline}'" if v.baseline else ""
        lines.append(
            f"  - {v.name} [{v.group}]: {launcher} benchmarks/gpu_rank.py {' '.join(v.overrides)}{against}"
        )
    lines.append(
        f"each: {EPOCHS} epochs of {STEPS_PER_EPOCH} steps, steady-state step time (epochs 2+) and "
        "peak torch.cuda.max_memory_allocated per rank; at most "
        f"{VARIANT_TIMEOUT_S} s per variant and {TOTAL_S} s in all"
    )
    return "\n".join(lines)


def make_workload(work: Path, device: str) -> Path:
    """Synthetic 512-feature samples of 10 classes, 32 batches per epoch, and the config every
    variant starts from. On the CPU (the check) a small version: batch 64, hidden 256 x 2."""
    import numpy as np

    batch, hidden = (512, [2048] * 4) if device == "cuda" else (64, [256] * 2)
    n, n_val = STEPS_PER_EPOCH * batch, 4 * batch
    rng = np.random.default_rng(0)
    centres = rng.normal(0.0, 1.0, (10, 512))
    y = rng.integers(0, 10, n + n_val)
    x = (centres[y] + rng.normal(0.0, 2.0, (n + n_val, 512))).astype(np.float32)
    data = work / "gpu.npz"
    np.savez(data, x=x[:n], y=y[:n], x_val=x[n:], y_val=y[n:])
    return write_yaml(
        work / "gpu.yaml",
        f"""
seed: 0
data: {{source: npz, path: {data}, batch_size: {batch}}}
model: {{name: mlp, hidden: {hidden}}}
optimizer: {{name: adamw, lr: 1.0e-4, weight_decay: 0.01}}
trainer:
  max_epochs: {EPOCHS}
  device: {device}
  checkpoint: {{save_last: false, save_best: false, save_top_k: 0}}
logging: {{run_dir: {work / "runs"}, progress: "off", tensorboard: false, report: false, log_every_n_steps: 16}}
""",
    )


def run_variant(
    v: Variant, config: Path, work: Path, env: dict[str, str], timeout: float
) -> dict[str, Any]:
    out = (
        work
        / "gpu-out"
        / v.name.replace(" ", "_").replace(",", "").replace("(", "").replace(")", "")
    )
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    rank_script = str(SCRIPTS / "benchmarks" / "gpu_rank.py")
    args = [rank_script, str(out), str(config), f"logging.name={out.name}", *v.overrides]
    if v.nproc:
        torchrun = Path(sys.executable).with_name("torchrun")
        cmd = [str(torchrun), "--standalone", f"--nproc-per-node={v.nproc}", *args]
    else:
        cmd = [sys.executable, *args]
    started = time.perf_counter()
    try:
        proc = subprocess.run(
            cmd, env=env, capture_output=True, text=True, timeout=timeout, check=False
        )
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout:.0f} s"}
    wall = time.perf_counter() - started
    if proc.returncode != 0:
        return {"error": f"exit {proc.returncode}: {(proc.stderr or proc.stdout)[-800:]}"}
    ranks = [json.loads(p.read_text()) for p in sorted(out.glob("rank*.json"))]
    records = epoch_records(Path(ranks[0]["run_dir"]) / "metrics.jsonl")
    times = [r["time"] for r in records]
    step_ms = median([b - a for a, b in itertools.pairwise(times)]) / STEPS_PER_EPOCH * 1000
    return {
        "wall_s": round(wall, 2),
        "step_ms": round(step_ms, 3),
        "peak_memory_mb": [
            None if r["peak_bytes"] is None else round(r["peak_bytes"] / 2**20, 1) for r in ranks
        ],
        "final_val_loss": records[-1].get("val/loss"),
    }


def gpu_benchmark(
    work: Path, env: dict[str, str], device: str, dry_run: bool
) -> dict[str, Any] | None:
    """Run (or, with dry_run, only list) the plan. None when there is nothing to run (no CUDA)."""
    import torch

    cuda = torch.cuda.is_available()
    count = torch.cuda.device_count() if cuda else 0
    variants = plan(count if device == "cuda" else 1, device)
    if dry_run:
        print(describe(variants, work))
        if device == "cuda" and not cuda:
            print(
                f"(no CUDA device here, torch {torch.__version__}: without --dry-run nothing would run)"
            )
        return None
    if device == "cuda" and not cuda:
        print(
            f"no CUDA device here (torch {torch.__version__}, torch.cuda.is_available() is False): "
            "the GPU benchmark runs nothing. Run it on a GPU machine; `--gpu --dry-run` lists what it runs."
        )
        return None
    config = make_workload(work, device)
    env = {**env, "OMP_NUM_THREADS": env.get("OMP_NUM_THREADS", "1")}
    results: dict[str, dict[str, Any]] = {}
    started = time.perf_counter()
    for v in variants:
        left = TOTAL_S - (time.perf_counter() - started)
        if left < 20:
            results[v.name] = {**asdict(v), "error": f"not run: the plan's {TOTAL_S} s were spent"}
            continue
        print(f"gpu: {v.name} ...", flush=True)
        timeout = min(VARIANT_TIMEOUT_S, left)
        results[v.name] = {**asdict(v), **run_variant(v, config, work, env, timeout)}
        print(f"  {results[v.name]}", flush=True)
    name = (
        torch.cuda.get_device_name()
        if cuda and device == "cuda"
        else "CPU (a check, not a benchmark)"
    )
    return {
        "device": name,
        "device_count": count,
        "torch": torch.__version__,
        "total_s": round(time.perf_counter() - started, 1),
        "load_average": os.getloadavg(),
        "variants": results,
    }


def markdown(report: dict[str, Any]) -> str:
    lines = [
        f"GPU benchmark on {report['device']} ({report['device_count']} visible), torch {report['torch']}, "
        f"{report['total_s']} s in total.",
        "",
        "| variant | compared with | step | ratio | peak memory per rank | note |",
        "|---|---|---:|---:|---|---|",
    ]
    variants = report["variants"]
    for name, r in variants.items():
        if "error" in r:
            lines.append(
                f"| {name} | {r['baseline'] or '-'} | - | - | - | failed: {r['error'][:200]} |"
            )
            continue
        base = variants.get(r["baseline"] or "", {})
        ratio = f"{r['step_ms'] / base['step_ms']:.3f}" if base.get("step_ms") else "-"
        memory = ", ".join("-" if m is None else f"{m:,.0f} MB" for m in r["peak_memory_mb"])
        lines.append(
            f"| {name} | {r['baseline'] or '-'} | {r['step_ms']:.2f} ms | {ratio} | {memory} | "
            f"val/loss {r['final_val_loss']:.4g} |"
        )
    return "\n".join(lines)
