"""SLURM batch scripts for ``bptrain submit``: render one for a config, and hand it to sbatch.

The script starts one bptrain process per task with ``srun``; each becomes a DDP rank through
torch's standard variables (RANK, LOCAL_RANK, WORLD_SIZE from SLURM_PROCID, SLURM_LOCALID,
SLURM_NTASKS; MASTER_ADDR is the first node of the job). ``exec`` keeps python itself as the
task's process, so the signals SLURM sends to the job's steps reach every rank directly.

Preemption and time limits: ``--signal=USR1@<seconds>`` makes SLURM send SIGUSR1 to every task
that long before the time limit (not to the batch shell, which keeps waiting for srun). bptrain
saves ``checkpoints/last.pt`` at the next step boundary and exits 138; the script then runs
``scontrol requeue``, and the requeued job starts the same script again, which resumes with
``--resume auto`` from the newest checkpoint of this job's run (the run name carries the job id,
which stays the same across requeues).

This module imports neither torch nor the training code: rendering is pure text.
"""

from __future__ import annotations

import re
import shlex
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

from bptrain.errors import UserError

# 128 + signal number: bptrain stopped on that signal after saving checkpoints/last.pt.
EXIT_SIGUSR1, EXIT_SIGTERM = 138, 143


@dataclass
class JobSpec:
    """What to run and what to ask SLURM for; every field maps to a `bptrain submit` option."""

    config: Path
    overrides: list[str] = field(default_factory=list)
    job_name: str = "bptrain"
    nodes: int = 1
    gpus_per_node: int = 0
    ntasks_per_node: int | None = None  # default: one per GPU, else 1
    cpus_per_task: int | None = None
    time: str | None = None
    partition: str | None = None
    account: str | None = None
    warn_seconds: int = 120
    requeue_on_sigterm: bool = False
    python: str = sys.executable
    workdir: Path | None = None  # default: where sbatch runs
    output: str = "slurm-%x-%j.out"
    sbatch_args: list[str] = field(default_factory=list)
    # a search: the job is an array whose tasks are workers of one Optuna study (bptrain sweep
    # --search ... --worker); `sweep` holds the arguments after `bptrain sweep CONFIG`
    sweep: list[str] | None = None
    array: str | None = None  # sbatch --array, e.g. 0-7 or 0-15%4

    @property
    def tasks_per_node(self) -> int:
        return self.ntasks_per_node or max(self.gpus_per_node, 1)


def default_job_name(run_name: str | None) -> str:
    """The job name for a run name (e.g. a config file's stem): one safe word, e.g. 'q_touch_X_'."""
    return re.sub(r"[^\w.+-]", "_", run_name or "bptrain") or "bptrain"


def render(spec: JobSpec) -> str:
    """The batch script, every choice commented, for `sbatch` (or `submit --dry-run`) to show."""
    _check(spec)
    tasks = spec.tasks_per_node
    directives = [
        ("job-name", spec.job_name, ""),
        ("nodes", spec.nodes, ""),
        ("ntasks-per-node", tasks, "one bptrain process (one DDP rank) per task"),
        (
            "gpus-per-node",
            spec.gpus_per_node or None,
            "one GPU per task: rank uses cuda:LOCAL_RANK",
        ),
        ("cpus-per-task", spec.cpus_per_task, ""),
        ("time", spec.time, ""),
        ("partition", spec.partition, ""),
        ("account", spec.account, ""),
        (
            "signal",
            f"USR1@{spec.warn_seconds}",
            "warn every task (not the batch shell) before the time limit",
        ),
        ("requeue", True, "allow requeueing (scontrol requeue, preemption)"),
        ("open-mode", "append", "requeued runs append to the same log"),
        ("array", spec.array, "each array task is one worker of the study"),
        ("output", spec.output, ""),
        ("chdir", spec.workdir, ""),
    ]
    lines = ["#!/bin/bash", _HEADER.format(config=spec.config, workers=spec.nodes * tasks)]
    for key, value, comment in directives:
        if value is None:
            continue
        text = f"#SBATCH --{key}" if value is True else f"#SBATCH --{key}={value}"
        lines.append(f"{text:<44}# {comment}".rstrip(" #") if comment else text)
    lines += [f"#SBATCH {arg}" for arg in spec.sbatch_args]
    if spec.sweep is not None:
        command = _sweep_command(spec)
    else:  # every value is single-quoted for the batch shell; only the job id expands
        command = [
            shlex.join((spec.python, "-m", "bptrain", "fit", str(spec.config))),
            *(shlex.quote(override) for override in spec.overrides),
            shlex.quote(f"logging.name={spec.job_name}-job") + '"$SLURM_JOB_ID" --resume auto',
        ]
    requeue_codes = (
        f"{EXIT_SIGUSR1}|{EXIT_SIGTERM}" if spec.requeue_on_sigterm else f"{EXIT_SIGUSR1}"
    )
    body = _BODY.format(
        srun_options=_srun_options(spec),
        command=" \\\n    ".join(command),
        requeue_codes=requeue_codes,
        sigterm_note=_SIGTERM_REQUEUE if spec.requeue_on_sigterm else _SIGTERM_NO_REQUEUE,
    )
    return "\n".join(lines) + "\n" + body


def _sweep_command(spec: JobSpec) -> list[str]:
    """One worker of the study: it runs trials until the study has --trials, then exits 0.

    The run name is not made per job: every task, and a later array, shares the one study in
    <logging.run_dir>/<name>-search/. A trial stopped by the time-limit warning is handed back to
    the study (run again by the next worker, from its checkpoint) and the task requeued."""
    words = [spec.python, "-m", "bptrain", "sweep", str(spec.config), *(spec.sweep or [])]
    for override in spec.overrides:
        words += ["--set", override]
    return [shlex.join(words) + " --worker"]


def submit(script: str) -> str:
    """Pass the script to sbatch on stdin; return the job id."""
    sbatch = shutil.which("sbatch")
    if sbatch is None:
        raise UserError(
            "sbatch not found: run `bptrain submit` on a SLURM login node (or set up a local one: "
            "scripts/slurm/local_cluster.sh), or use --dry-run to print the script."
        )
    result = subprocess.run(
        [sbatch, "--parsable"], input=script, text=True, capture_output=True, check=False
    )
    if result.returncode != 0:
        raise UserError(f"sbatch refused the job: {result.stderr.strip() or result.stdout.strip()}")
    return result.stdout.strip().split(";")[0]


# sbatch reads an #SBATCH line word by word with its own quoting rules, not the shell's: a value
# there must be one plain word. (In the command line, values are shlex-quoted instead.)
_DIRECTIVE_UNSAFE = re.compile(r"[\s'\"\\#`$;]")


def _refuse_unsafe_values(spec: JobSpec) -> None:
    """No control character anywhere (a newline would start a shell line), one word per #SBATCH value."""
    named = {
        "the config path": str(spec.config),
        "--python": spec.python,
        "--sbatch-arg": "".join(spec.sbatch_args),
        "--sweep": "".join(spec.sweep or []),
        **{f"the override {o!r}": o for o in spec.overrides},
    }
    directives = {
        "--job-name (or logging.name)": spec.job_name,
        "--partition": spec.partition,
        "--account": spec.account,
        "--output": spec.output,
        "the working directory (--chdir)": None if spec.workdir is None else str(spec.workdir),
    }
    for what, value in {**named, **directives}.items():
        if value is not None and any(ord(c) < 32 or ord(c) == 127 for c in value):
            raise UserError(
                f"{what} contains a control character (newline, tab, escape...): {value!r}. "
                "A batch script cannot carry it safely; remove it."
            )
    for what, value in directives.items():
        if value is not None and (value == "" or _DIRECTIVE_UNSAFE.search(value)):
            raise UserError(
                f"{what} {value!r} must be one plain word for its #SBATCH line: no spaces, quotes, "
                "backslashes or any of # ` $ ;. Choose another value"
                + (" (or submit from another directory)." if "chdir" in what else ".")
            )


def _check(spec: JobSpec) -> None:
    _refuse_unsafe_values(spec)
    if spec.time is not None and not re.fullmatch(r"(\d+-)?\d+(:\d{1,2}){0,2}", spec.time):
        raise UserError(
            f"--time {spec.time}: use a SLURM time, e.g. 30 (minutes), 4:00:00 or 1-12:00:00."
        )
    if spec.warn_seconds < 1:
        raise UserError("--warn-seconds must be at least 1.")
    if spec.array is not None:
        if spec.sweep is None:
            raise UserError(
                "--array runs the tasks of a search: add --sweep AXIS (repeatable) --search tpe "
                "--trials N, e.g. --sweep 'optimizer.lr=loguniform(1e-4,1e-1)'."
            )
        if not re.fullmatch(r"\d+(-\d+)?(:\d+)?(,\d+(-\d+)?(:\d+)?)*(%\d+)?", spec.array):
            raise UserError(
                f"--array {spec.array}: use SLURM's syntax, e.g. 0-7, 0-15%4 (at most 4 at once) or 1,3,5."
            )
    if spec.sweep is not None and (spec.nodes > 1 or spec.tasks_per_node > 1):
        raise UserError(
            "a search job runs one process per array task: drop --nodes/--ntasks-per-node/"
            "--gpus-per-node above 1 and use --array 0-N for N+1 workers."
        )
    if spec.gpus_per_node and spec.ntasks_per_node not in (None, spec.gpus_per_node):
        raise UserError(
            f"--ntasks-per-node {spec.ntasks_per_node} with --gpus-per-node {spec.gpus_per_node}: "
            "bptrain runs one process per GPU; drop --ntasks-per-node."
        )


def _srun_options(spec: JobSpec) -> str:
    options = [f"--ntasks-per-node={spec.tasks_per_node}"]
    if spec.cpus_per_task:  # since SLURM 22.05 srun no longer inherits it from sbatch
        options.append(f"--cpus-per-task={spec.cpus_per_task}")
    return " ".join(options)


_HEADER = """\
# Rendered by `bptrain submit` for {config}: {workers} DDP process(es).
# Submit with `sbatch THIS_FILE`; see docs/cluster.md. batch_size in the config is per process:
# the global batch is batch_size x {workers} (x trainer.accumulate_grad_batches)."""

_SIGTERM_NO_REQUEUE = """\
# 143 (SIGTERM: scancel, preemption, the time limit itself) is not requeued here: scancel means
# stop, and a cluster that preempts with PreemptMode=REQUEUE requeues the job by itself (the next
# run resumes from last.pt). `bptrain submit --requeue-on-sigterm` also requeues on 143."""

_SIGTERM_REQUEUE = """\
# Also 143 (SIGTERM: preemption, the time limit; note: also scancel, so cancel such a job with
# `scancel --signal=KILL JOBID`)."""

_BODY = """
set -uo pipefail

# torch.distributed's env:// rendezvous: rank 0 runs on the job's first node; the port is derived
# from the job id so jobs sharing a node do not collide.
export MASTER_ADDR=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)
export MASTER_PORT=$((20000 + SLURM_JOB_ID % 20000))
export OMP_NUM_THREADS=${{SLURM_CPUS_PER_TASK:-1}}

# SIGTERM (scancel, preemption, time limit) reaches this shell too: note it and keep waiting for
# srun, whose tasks are saving their checkpoint.
trap 'echo "[bptrain-job] batch shell got SIGTERM; waiting for bptrain to save"' TERM

echo "[bptrain-job] $(date -Is) job $SLURM_JOB_ID, restart ${{SLURM_RESTART_COUNT:-0}}, nodes $SLURM_JOB_NODELIST"
# One process per task. --kill-on-bad-exit=0: a rank that stops on a signal (exit 138) must not
# get its peers killed while rank 0 is still writing the checkpoint.
srun {srun_options} --kill-on-bad-exit=0 \\
    bash -c 'export RANK=$SLURM_PROCID LOCAL_RANK=$SLURM_LOCALID WORLD_SIZE=$SLURM_NTASKS; exec "$@"' bptrain-rank \\
    {command}
code=$?
echo "[bptrain-job] $(date -Is) bptrain exited with $code"

# 138: stopped by the SIGUSR1 warning after saving checkpoints/last.pt. Requeue: this job goes
# back to the queue and, when it runs again, --resume auto continues from that checkpoint.
{sigterm_note}
case $code in
    {requeue_codes})
        echo "[bptrain-job] requeueing job $SLURM_JOB_ID to continue from its checkpoint"
        scontrol requeue "$SLURM_JOB_ID"  # ends this script; the job starts again later
        ;;
esac
exit $code
"""


# The templates shipped in scripts/slurm/ are these specs rendered (a test keeps them in sync):
# regenerate with `python -m bptrain.slurm scripts/slurm`.
EXAMPLES = {
    "single_node.sbatch": JobSpec(
        config=Path("configs/quickstart.yaml"),
        job_name="quickstart",
        gpus_per_node=4,
        cpus_per_task=8,
        time="04:00:00",
        partition="gpu",
        python="python",
    ),
    "multi_node.sbatch": JobSpec(
        config=Path("configs/quickstart.yaml"),
        job_name="quickstart",
        nodes=2,
        gpus_per_node=4,
        cpus_per_task=8,
        time="04:00:00",
        partition="gpu",
        python="python",
    ),
}

if __name__ == "__main__":
    for name, example in EXAMPLES.items():
        (Path(sys.argv[1]) / name).write_text(render(example), encoding="utf-8")
