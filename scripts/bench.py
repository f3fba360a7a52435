"""Benchmarks: bptrain against an equivalent hand-written PyTorch loop, in one command.

    python scripts/bench.py            # the full table, 5-6 minutes on 2 quiet CPU cores
    python scripts/bench.py --quick    # fewer steps and repetitions
    python scripts/bench.py --only budget --markdown results.md --json results.json
    python scripts/bench.py --gpu      # the GPU settings (benchmarks/gpu.py); --dry-run: the plan

The ``budget`` section runs the hand-written loop, ``bptrain fit`` and Lightning (from the
benchmark environment ``.venv-bench``, when it exists: docs/benchmarks.md) side by side.

Every comparison runs both sides in the same invocation, alternating (A B, B A, ...) over
several repetitions, and reports medians and the ratio bptrain / hand-written. The
hand-written loop is ``scripts/bench_handwritten.py``: the same data file, network,
initialisation, optimizer, batch size, steps and seed, so both runs end at the same loss
(checked and printed). What it does not do is bptrain's machinery: config validation, the
run directory, the fsynced atomic checkpoint, resume state, the console summary.

Timings on a shared machine are noisy. Each process runs with ``--threads`` intra-op
threads (default 1): with two threads on two busy cores, oversubscription makes step times
vary tenfold, and the overhead under test does not depend on the thread count. Timings
live here and in docs/benchmarks.md, never in unit tests.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from benchmarks.budget import Workload, budget
from benchmarks.checkpoint import checkpoint_and_eval
from benchmarks.common import SCRIPTS, Row, Settings, budget_table, machine, table
from benchmarks.data_path import data_path
from benchmarks.gpu import gpu_benchmark, markdown
from benchmarks.logging_cost import logging_cost
from benchmarks.startup import startup
from benchmarks.step import lockstep
from benchmarks.training import compare_training, overhead
from benchmarks.workloads import cnn1d_config, cnn_config, make_data, mlp_config


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="bptrain vs a hand-written PyTorch loop.")
    parser.add_argument(
        "--quick", action="store_true", help="about a minute: fewer steps and repetitions"
    )
    parser.add_argument(
        "--threads", type=int, default=1, help="intra-op threads per process (default 1)"
    )
    parser.add_argument(
        "--only",
        default="",
        help="comma-separated sections: budget,overhead,step,cnn,data,logging,startup,checkpoint",
    )
    parser.add_argument(
        "--reps", type=int, help="repetitions of the budget section (default 5, --quick 2)"
    )
    parser.add_argument(
        "--markdown", type=Path, help="also write the table (with the machine line) here"
    )
    parser.add_argument("--json", type=Path, help="also write the raw rows here")
    parser.add_argument(
        "--workdir", type=Path, help="keep runs and data here (default: a temp dir)"
    )
    parser.add_argument("--check", action="store_true", help="exit 1 when a budget row is missed")
    parser.add_argument(
        "--gpu",
        action="store_true",
        help="the GPU benchmark instead (bf16, fused AdamW, torch.compile, DDP vs FSDP): "
        "under 5 minutes on one GPU machine; runs nothing without CUDA",
    )
    parser.add_argument(
        "--dry-run", action="store_true", help="with --gpu: list what would run, run nothing"
    )
    parser.add_argument(
        "--gpu-on-cpu",
        action="store_true",
        help="with --gpu: run its plan on the CPU (a check, not a benchmark)",
    )
    args = parser.parse_args(argv)
    if args.gpu:
        return _gpu(args)

    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[var] = str(args.threads)
    import torch

    torch.set_num_threads(args.threads)
    sys.path.insert(0, str(SCRIPTS))
    work = args.workdir or Path(tempfile.mkdtemp(prefix="bptrain-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(filter(None, [str(SCRIPTS), os.environ.get("PYTHONPATH")])),
    }
    settings = Settings(args.quick, args.threads, work, env)
    only = set(filter(None, args.only.split(",")))
    wanted = lambda name: not only or name in only  # noqa: E731

    started = time.perf_counter()
    print(
        f"machine: {machine()}\nthreads per process: {args.threads}; work dir: {work}", flush=True
    )
    print(f"load average before: {' '.join(f'{v:.2f}' for v in os.getloadavg())}", flush=True)
    data = make_data(work)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    mlp_epochs = settings.pick(12, 4)
    mlp = mlp_config(work, data["mlp"], mlp_epochs)
    cnn = cnn_config(work, data["cnn"], settings.pick(4, 2))
    cnn1d_epochs = settings.pick(10, 4)
    workloads = [
        Workload("overhead-bound MLP", "mlp", mlp, data["mlp"], mlp_epochs, 250),
        Workload(
            "MNIST-1D-style CNN",
            "cnn1d",
            cnn1d_config(work, data["cnn1d"], cnn1d_epochs),
            data["cnn1d"],
            cnn1d_epochs,
            64,
        ),
    ]
    budget_rows: list[Row] = []
    rows: list[Row] = []

    def section(name: str, produce: Callable[[], list[Row]]) -> None:
        if not wanted(name):
            return
        t = time.perf_counter()
        new = produce()
        rows.extend(new)
        print(f"\n[{name}: {time.perf_counter() - t:.0f} s]\n{table(new)}", flush=True)

    if wanted("budget"):
        t = time.perf_counter()
        budget_rows = budget(settings, workloads, args.reps or settings.pick(5, 2))
        rows.extend(budget_rows)
        print(
            f"\n[budget: {time.perf_counter() - t:.0f} s]\n{budget_table(budget_rows)}", flush=True
        )
    section("overhead", lambda: overhead(settings, mlp, data["mlp"], mlp_epochs, device))
    section("step", lambda: lockstep(settings, mlp))
    section(
        "cnn",
        lambda: compare_training(
            settings,
            "compute-bound CNN",
            "cnn",
            cnn,
            data["cnn"],
            settings.pick(4, 2),
            32,
            settings.pick(3, 2),
            device,
        ),
    )
    section("data", lambda: data_path(settings))
    section("logging", lambda: logging_cost(settings, data["mlp"]))
    section("startup", lambda: startup(settings, mlp))
    if wanted("checkpoint") and not (work / "hw-mlp" / "last.pt").exists():
        compare_training(settings, "-", "mlp", mlp, data["mlp"], mlp_epochs, 250, 1, device)
    section("checkpoint", lambda: checkpoint_and_eval(settings, mlp))

    text = table(rows)
    if budget_rows:
        text = f"{budget_table(budget_rows)}\n\nAll rows:\n\n{text}"
    load = " ".join(f"{v:.2f}" for v in os.getloadavg())
    print(
        f"\n## all results ({time.perf_counter() - started:.0f} s, load average after: {load})\n\n{text}"
    )
    if args.markdown:
        args.markdown.write_text(
            f"Machine: {machine()}; {args.threads} thread(s) per process.\n\n{text}\n"
        )
    if args.json:
        args.json.write_text(
            json.dumps(
                {
                    "machine": machine(),
                    "threads": args.threads,
                    "load_average_after": os.getloadavg(),
                    "rows": [r.__dict__ | {"ratio": r.ratio} for r in rows],
                },
                indent=2,
            )
        )
    missed = [r for r in rows if r.ok is False]
    for r in missed:
        print(
            f"budget missed: {r.section} / {r.name}: {r.ratio or r.bptrain:.3f} (budget {r.budget})"
        )
    return 1 if missed and args.check else 0


def _gpu(args: argparse.Namespace) -> int:
    """``--gpu``: the GPU benchmark (benchmarks/gpu.py); exit 0 without CUDA, having run nothing."""
    sys.path.insert(0, str(SCRIPTS))
    if args.dry_run:
        work = args.workdir or Path(tempfile.gettempdir()) / "bptrain-bench-gpu-XXXX"
    else:
        work = args.workdir or Path(tempfile.mkdtemp(prefix="bptrain-bench-gpu-"))
        work.mkdir(parents=True, exist_ok=True)
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(filter(None, [str(SCRIPTS), os.environ.get("PYTHONPATH")])),
    }
    device = "cpu" if args.gpu_on_cpu else "cuda"
    report = gpu_benchmark(work, env, device, args.dry_run)
    if report is None:
        return 0
    text = markdown(report)
    print(f"\n{text}")
    json_path, md_path = args.json or Path("bench-gpu.json"), args.markdown or Path("bench-gpu.md")
    json_path.write_text(json.dumps(report, indent=2))
    md_path.write_text(text + "\n")
    print(f"wrote {json_path} and {md_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
