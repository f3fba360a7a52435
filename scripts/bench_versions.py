"""This bptrain against another version of it (e.g. 0.1), on the overhead-bound MLP, side by side.

    git worktree add /tmp/bptrain-0.1 fb30af7          # the reference tree, once
    python scripts/bench_versions.py --ref /tmp/bptrain-0.1 [--reps 7] [--epochs 4]

Both sides run ``python -m bptrain fit`` on the same config and data in separate processes
(PYTHONPATH picks the tree), alternating A B / B A over the repetitions, with one intra-op
thread each. Reported: the median steady-state step time of each side (an epoch after the
first, divided by its steps: the steps, logging, validation and the checkpoint), the median
of per-repetition ratios, and the final train/loss of both (they must match: same math).
Timings belong here, never in unit tests.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from benchmarks.common import alternate, epoch_records, median, paired, steady_step_ms
from benchmarks.workloads import make_data, mlp_config, newest_run

HERE = Path(__file__).resolve().parents[1]
STEPS_PER_EPOCH = 250  # 16,000 samples / batch 64


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ref", type=Path, required=True, help="the other bptrain source tree")
    parser.add_argument("--reps", type=int, default=7)
    parser.add_argument("--epochs", type=int, default=4)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        data = make_data(work)["mlp"]
        config = mlp_config(work, data, args.epochs)

        def runner(tree: Path, name: str):
            def run(rep: int) -> tuple[float, float]:
                env = {**os.environ, "PYTHONPATH": str(tree), "OMP_NUM_THREADS": "1"}
                cmd = [sys.executable, "-m", "bptrain", "fit", str(config), "trainer.device=cpu",
                       f"logging.name={name}", "logging.progress=off"]  # fmt: skip
                subprocess.run(cmd, cwd=work, env=env, check=True, capture_output=True)
                records = epoch_records(newest_run(work, name) / "metrics.jsonl")
                return steady_step_ms(records, STEPS_PER_EPOCH), records[-1]["train/loss"]

            return run

        results = alternate(
            args.reps, {"this": runner(HERE, "this"), "ref": runner(args.ref, "ref")}
        )
    ours, theirs = ([ms for ms, _ in results[k]] for k in ("this", "ref"))
    print(f"steady-state step, median of {args.reps}: this {median(ours):.3f} ms, "
          f"ref {median(theirs):.3f} ms; paired ratio this/ref {paired(ours, theirs):.3f}")  # fmt: skip
    print(f"final train/loss: this {results['this'][0][1]}, ref {results['ref'][0][1]}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
