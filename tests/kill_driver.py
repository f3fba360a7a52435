"""SIGKILL a training run at random moments, resume it each time, and check nothing was lost.

    python tests/kill_driver.py WORKDIR [--kills 20] [--mode fork|exec] [--seed 0] [--epochs 10]

``fork`` imports bptrain once and forks one child per attempt (fast: no interpreter
start-up per kill); ``exec`` runs ``python -m bptrain fit ... --resume auto`` as a real
subprocess each time (slow, the full CLI path). Either way the child is killed with
SIGKILL after a random delay; ``every_n_steps: 1`` makes a kill during a checkpoint
write likely. After every kill, the newest last.pt must load; leftover ``.tmp`` files
count the kills that landed mid-write. At the end, one unkilled ``--resume auto``
finishes the run, whose final weights and metric lines must equal an uninterrupted
reference run's. The result is printed and written to WORKDIR/result.json.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import yaml

CONFIG = {
    "seed": 1,
    "data": {"source": "moons", "n_samples": 200, "batch_size": 16},
    "model": {"name": "mlp", "hidden": [16], "dropout": 0.1},
    "optimizer": {"name": "adamw", "lr": 0.01},
    "scheduler": {"name": "warmup_cosine", "warmup_steps": 10},
    "trainer": {"max_epochs": 10, "checkpoint": {"every_n_steps": 1, "save_top_k": 2}},
    "logging": {"tensorboard": False, "progress": "off", "log_every_n_steps": 1},
}


def start(mode: str, config: Path, name: str) -> int | subprocess.Popen:
    overrides = [f"logging.name={name}"]
    if mode == "exec":
        cmd = [sys.executable, "-m", "bptrain", "fit", str(config), *overrides, "--resume", "auto"]
        return subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    pid = os.fork()
    if pid == 0:  # child: train, never return into the driver
        code = 1
        try:
            from rich.console import Console

            from bptrain.config import load_config
            from bptrain.train import fit

            fit(load_config(config, overrides), Console(file=io.StringIO()), resume="auto")
            code = 0
        finally:
            os._exit(code)
    return pid


def kill_after(child: int | subprocess.Popen, delay: float) -> bool:
    """SIGKILL after `delay` s; True if the child was still running (a real kill)."""
    deadline = time.monotonic() + delay
    while time.monotonic() < deadline:
        if finished(child):
            return False
        time.sleep(0.005)
    if finished(child):
        return False
    pid = child if isinstance(child, int) else child.pid
    os.kill(pid, signal.SIGKILL)
    wait(child)
    return True


def finished(child: int | subprocess.Popen) -> bool:
    if isinstance(child, int):
        pid, _ = os.waitpid(child, os.WNOHANG)
        if pid:
            _REAPED.add(child)
        return bool(pid) or child in _REAPED
    return child.poll() is not None


_REAPED: set[int] = set()


def wait(child: int | subprocess.Popen) -> int:
    if isinstance(child, int):
        if child in _REAPED:
            return 0
        _, status = os.waitpid(child, 0)
        _REAPED.add(child)
        return os.waitstatus_to_exitcode(status)
    return child.wait()


def newest_mtime(runs: Path) -> int:
    last = newest_last(runs)
    try:
        return last.stat().st_mtime_ns if last else 0
    except FileNotFoundError:
        return 0


def wait_for_checkpoint(child: int | subprocess.Popen, runs: Path, since: int) -> bool:
    """Wait until `child` has replaced last.pt (it is training); False if it finished first."""
    while newest_mtime(runs) <= since:
        if finished(child):
            return False
        time.sleep(0.002)
    return not finished(child)


def newest_last(runs: Path) -> Path | None:
    from bptrain.resume import _run_order

    found = sorted(runs.glob("*/checkpoints/last.pt"), key=_run_order)
    return found[-1] if found else None


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("workdir", type=Path)
    parser.add_argument("--kills", type=int, default=20)
    parser.add_argument("--mode", choices=["fork", "exec"], default="fork")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--epochs", type=int, default=10, help="10 steps each; more for more kills")
    args = parser.parse_args()
    # bptrain (and torch) are imported before any fork, but no torch op runs in this process
    # before the children are done with it, so forked children never inherit a busy thread pool.
    import torch._dynamo  # noqa: F401  (torch.optim imports it lazily: ~2 s per child otherwise)

    import bptrain.train  # noqa: F401  (import the whole stack once, before forking)
    from bptrain.checkpoint import load_checkpoint

    work = args.workdir.resolve()
    work.mkdir(parents=True, exist_ok=True)
    config = work / "kill.yaml"
    CONFIG["logging"]["run_dir"] = str(work / "runs")
    CONFIG["trainer"]["max_epochs"] = args.epochs
    config.write_text(yaml.safe_dump(CONFIG))
    rng = random.Random(args.seed)

    began = time.monotonic()
    reference = start(args.mode, config, "reference")
    startup = None  # seconds until the first step line: interpreter, imports, data, model
    while not finished(reference):
        if startup is None and any(
            p.stat().st_size for p in (work / "runs" / "reference").glob("*/metrics.jsonl")
        ):
            startup = time.monotonic() - began
        time.sleep(0.005)
    assert wait(reference) == 0, "the reference run failed"
    duration = time.monotonic() - began
    startup = startup or 0.0
    step_time = (duration - startup) / (CONFIG["trainer"]["max_epochs"] * 10)  # 10 steps per epoch

    runs = work / "runs" / "victim"
    kills = mid_write = loadable = 0
    steps_seen: list[int] = []
    seen_tmp: set[Path] = set()
    attempts = 0
    while kills < args.kills and attempts < args.kills * 3:
        attempts += 1
        child = start(args.mode, config, "victim")
        # One kill in five lands anywhere in start-up (imports, resuming); the others wait until
        # this child has written a checkpoint, then strike within the next ~5 steps' time: steps,
        # checkpoint writes and evaluations all get hit, whatever the machine's load.
        if rng.random() < 0.2:
            delay = rng.uniform(0.0, startup)
        else:
            if not wait_for_checkpoint(child, runs, newest_mtime(runs)):
                break
            delay = rng.uniform(0.0, 5 * step_time)
        if not kill_after(child, delay):
            break  # the run finished before the kill: nothing left to interrupt
        kills += 1
        tmp = set(runs.glob("*/checkpoints/.*.tmp")) - seen_tmp  # left by *this* kill
        seen_tmp |= tmp
        mid_write += bool(tmp)
        last = newest_last(runs)
        if last is not None:
            state = load_checkpoint(last)  # raises if a kill ever corrupted last.pt
            loadable += 1
            steps_seen.append(int(state["progress"]["step"]))

    final = start(args.mode, config, "victim")
    final_code = wait(final)
    from ckpt_compare import compare_runs

    ref_dir = newest_last(work / "runs" / "reference").parent.parent
    victim_dir = newest_last(runs).parent.parent
    same_weights, same_metrics = compare_runs(ref_dir, victim_dir)
    result = {
        "mode": args.mode,
        "uninterrupted_run_s": round(duration, 2),
        "startup_s": round(startup, 2),
        "kills": kills,
        "kills_with_a_checkpoint_write_in_flight": mid_write,
        "last_pt_loadable_after_kill": loadable,
        "kills_before_first_checkpoint": kills - loadable,
        "checkpoint_steps_after_kills": steps_seen,
        "final_exit_code": final_code,
        "final_weights_identical_to_uninterrupted": same_weights,
        "metric_lines_identical_to_uninterrupted": same_metrics,
    }
    (work / "result.json").write_text(json.dumps(result, indent=2))
    print(json.dumps(result))
    ok = final_code == 0 and same_weights and same_metrics and kills > 0
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
