"""``bptrain sweep --search random|tpe``: hyperparameter search with Optuna, pruned per epoch.

The study lives on disk, in ``<logging.run_dir>/<name>-search/study.log`` (Optuna's journal file
storage, which takes a file lock for every write and is safe on a shared file system), so that
every process working on it shares one study: the ``--jobs N`` worker processes, a sweep started
again after Ctrl-C (it goes on where it stopped), and the tasks of a SLURM array
(``bptrain submit --sweep ... --array 0-7``). A worker takes trials until the study has
``--trials`` of them; taking one (count, then ``study.ask``) holds ``search.lock``, so two workers
never get the same trial and the study never overshoots.

Each trial is a normal run (``trial-0007/<timestamp>/``, with ``--seeds`` one per seed) trained by
``fit`` in the worker's process. A trial stopped by a signal is queued again with its values and
keeps its number: the worker that takes it resumes its runs from their ``last.pt``. The objective
is the run's best monitored validation metric (``trainer.checkpoint.monitor``, default
``val/loss``, direction from its ``mode``); the same metric is reported to the pruner after every
validation, and a trial the pruner stops ends with status ``pruned`` (with seeds: only the first
seed's run reports; a pruned trial runs no more seeds).

At the end ``best.yaml`` holds the best trial's resolved config (``bptrain fit best.yaml`` runs it
as is) and ``sweep.csv``/``sweep.json``/``sweep.md`` the table, in the grid sweep's shape.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich.console import Console

from bptrain.errors import UserError
from bptrain.search_space import Axis

SAMPLERS = ("random", "tpe")
PRUNERS = ("median", "halving", "none")
STUDY = "bptrain"


# ---------------------------------------------------------------------------- the search space
def distribution(axis: Axis) -> Any:
    """The Optuna distribution of an axis (search_space.py parses them): grid values are a choice."""
    from optuna.distributions import (
        CategoricalDistribution,
        FloatDistribution,
        IntDistribution,
    )

    if axis.kind == "int":
        return IntDistribution(int(axis.low), int(axis.high))
    if axis.is_range:
        return FloatDistribution(axis.low, axis.high, log=axis.kind == "loguniform")
    return CategoricalDistribution(list(axis.values))


def override(axis: Axis, value: Any) -> str:
    """The KEY=VALUE override a sampled value becomes (floats keep every digit)."""
    return f"{axis.key}={value!r}" if isinstance(value, float) else f"{axis.key}={value}"


def check_space(study: Any, space: list[Axis], seeds: list[int | None], where: Path) -> None:
    """A study continues only with the space it started with: say which axis changed and what to do."""
    saved = study.user_attrs.get("space")
    current = {axis.key: axis.spec for axis in space}
    if saved is None:
        study.set_user_attr("space", current)
        study.set_user_attr("seeds", seeds)
        return
    fix = (
        f"Run it with the same axes to continue the study, or start a new one: delete {where} or "
        "give this search another name with --set logging.name=NEW."
    )
    for key in {**saved, **current}:
        if saved.get(key) != current.get(key):
            was = saved.get(key, "(not an axis)")
            now = current.get(key, "(not an axis)")
            raise UserError(
                f"sweep axis '{key}': the study in {where} was started with {key}={was}, "
                f"this command has {key}={now}. {fix}"
            )
    if study.user_attrs.get("seeds") != seeds:
        raise UserError(
            f"--seeds: the study in {where} was started with seeds {study.user_attrs.get('seeds')}, "
            f"this command has {seeds}. {fix}"
        )


# ---------------------------------------------------------------------------- the study
def open_study(root: Path, sampler: str, pruner: str, direction: str, seed: int) -> Any:
    import optuna
    from optuna.storages.journal import JournalFileBackend, JournalStorage

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    storage = JournalStorage(JournalFileBackend(str(root / "study.log")))
    # workers sharing a study must not draw the same points, nor a resumed search repeat its own:
    # the seed mixes the config's seed, the worker and how many trials the study already has
    worker = int(
        os.environ.get("BPTRAIN_SEARCH_WORKER") or os.environ.get("SLURM_ARRAY_TASK_ID") or 0
    )
    done = (
        len(storage.get_all_trials(storage.get_study_id_from_name(STUDY)))
        if _exists(storage)
        else 0
    )
    sample_seed = (seed * 1000 + worker * 7919 + done * 104729) % 2**31
    samplers = {
        "random": lambda: optuna.samplers.RandomSampler(seed=sample_seed),
        "tpe": lambda: optuna.samplers.TPESampler(seed=sample_seed, n_startup_trials=5),
    }
    pruners = {
        "median": lambda: optuna.pruners.MedianPruner(n_startup_trials=3),
        "halving": lambda: optuna.pruners.SuccessiveHalvingPruner(),
        "none": lambda: optuna.pruners.NopPruner(),
    }
    study = optuna.create_study(
        storage=storage,
        study_name=STUDY,
        sampler=samplers[sampler](),
        pruner=pruners[pruner](),
        direction=direction,
        load_if_exists=True,
    )
    if study.direction.name.lower() != direction:
        raise UserError(
            f"the study in {root} was started to {study.direction.name.lower()} its metric; this "
            f"config's trainer.checkpoint.mode asks to {direction} it. Start a new study: delete "
            f"{root} or use --set logging.name=NEW."
        )
    return study


def _exists(storage: Any) -> bool:
    return any(s.study_name == STUDY for s in storage.get_all_studies())


class Pruned(Exception):
    """Raised by PruningReport when the pruner stops a trial; fit ends the run as ``pruned``."""


class PruningReport:
    """Reports the monitored metric of every validated epoch to the trial and asks whether to stop."""

    def __init__(self, trial: Any, monitor: str) -> None:
        self.trial, self.monitor = trial, monitor

    def epoch_end(self, metrics: dict[str, Any]) -> bool:
        """True when the pruner says stop (after the epoch is recorded and checkpointed)."""
        value = metrics.get(self.monitor)
        if not isinstance(value, int | float) or not math.isfinite(value):
            return False
        self.trial.report(float(value), int(metrics["epoch"]))
        return self.trial.should_prune()


# ---------------------------------------------------------------------------- running trials
@dataclass
class SearchArgs:
    config: Path
    axes: list[Axis]
    overrides: list[str]
    seeds: list[int | None]
    sampler: str
    pruner: str
    trials: int


def _direction(cfg: Any) -> tuple[str, str]:
    ckpt = cfg.trainer.checkpoint
    return ckpt.monitor, ("maximize" if ckpt.mode == "max" else "minimize")


def search_dir_for(cfg: Any) -> Path:
    return cfg.logging.run_dir / f"{cfg.logging.name or 'run'}-search"


def work(args: SearchArgs, console: Console, fit_trial: Callable[..., dict[str, Any]]) -> int:
    """Take and run trials until the study has ``args.trials``; return how many this worker ran."""
    import optuna
    from filelock import FileLock

    from bptrain.config import load_config

    base = load_config(args.config, args.overrides)
    root = search_dir_for(base)
    root.mkdir(parents=True, exist_ok=True)
    monitor, direction = _direction(base)
    space = args.axes
    lock = FileLock(str(root / "search.lock"))
    with lock:
        study = open_study(root, args.sampler, args.pruner, direction, base.seed)
        check_space(study, space, args.seeds, root)
    distributions = {axis.key: distribution(axis) for axis in space}
    by_key = {axis.key: axis for axis in space}
    ran = 0
    while True:
        with lock:  # count and ask under one lock: no two workers take the same or an extra trial
            counted = [t for t in study.get_trials(deepcopy=False) if _counts(t)]
            if len(counted) >= args.trials:
                return ran
            trial = study.ask(distributions)
        overrides = [override(by_key[k], v) for k, v in trial.params.items()]
        number = trial_number(trial)  # an interrupted trial goes on in its own directory
        trial.set_user_attr("overrides", overrides)
        trial.set_user_attr("worker", f"{os.uname().nodename}:{os.getpid()}")
        values, pruned = [], False
        try:
            for index, seed in enumerate(args.seeds):
                report = PruningReport(trial, monitor) if index == 0 else None
                summary = fit_trial(args, root, number, overrides, seed, report)
                if summary["status"] == "pruned":
                    pruned = True
                    break
                best = (summary.get("best") or {}).get(monitor)
                if isinstance(best, int | float) and math.isfinite(best):
                    values.append(float(best))
        except KeyboardInterrupt:
            _give_back(study, trial)
            raise
        except Exception as err:
            if type(err).__name__ == "Interrupted":  # a stop signal: the next sweep reruns it
                _give_back(study, trial)
                raise
            trial.set_user_attr("error", f"{type(err).__name__}: {err}")
            study.tell(trial, state=optuna.trial.TrialState.FAIL)
            console.print(f"trial {number} failed: {type(err).__name__}: {err}", markup=False)
            ran += 1
            continue
        ran += 1
        if pruned:
            study.tell(trial, state=optuna.trial.TrialState.PRUNED)
        elif values:
            study.tell(trial, sum(values) / len(values))
        else:
            trial.set_user_attr("error", f"no finite {monitor} (is there a validation split?)")
            study.tell(trial, state=optuna.trial.TrialState.FAIL)
        console.print(
            f"trial {number}: {' '.join(overrides)}: {_state(study, trial)}", markup=False
        )


def _retried(trial: Any) -> bool:
    return bool(trial.user_attrs.get("retried"))


def _counts(trial: Any) -> bool:
    """Whether a trial counts towards ``--trials``: not the interrupted one given back, nor its
    queued copy until a worker takes it (``study.ask`` takes queued trials first)."""
    return not _retried(trial) and trial.state.name != "WAITING"


def trial_number(trial: Any) -> int:
    """The number a trial shows and its directory has (``trial-0007``): a trial queued again after
    an interruption keeps the number it started with, so it resumes from that directory's last.pt."""
    return int(trial.user_attrs.get("resumed_from_trial", trial.number))


def _give_back(study: Any, trial: Any) -> None:
    """An interrupted trial is failed and queued again with the same values: the next worker to
    take it resumes its runs from their last checkpoints (``fit_trial``)."""
    import optuna

    trial.set_user_attr("retried", True)
    study.tell(trial, state=optuna.trial.TrialState.FAIL)
    study.enqueue_trial(trial.params, user_attrs={"resumed_from_trial": trial_number(trial)})


def _state(study: Any, trial: Any) -> str:
    frozen = study.get_trials(deepcopy=False)[trial.number]
    value = "" if frozen.value is None else f" {frozen.value:.4f}"
    return frozen.state.name.lower() + value


def trial_dirname(number: int, seed: int | None) -> str:
    return f"trial-{number:04d}" + (f"-seed{seed}" if seed is not None else "")


def fit_trial(
    args: SearchArgs,
    root: Path,
    number: int,
    overrides: list[str],
    seed: int | None,
    report: PruningReport | None,
) -> dict[str, Any]:
    """Train one trial (one seed) in this process, its console output in <root>/<trial>.log.

    A trial queued again after an interruption finds its runs as the grid sweep does: a run that
    finished with this config is not trained again, one that saved a checkpoint but no summary
    resumes from its last.pt (``fit --resume``)."""
    from bptrain.config import load_config, to_yaml
    from bptrain.sweep import finished_run, interrupted_run
    from bptrain.train import fit

    name = trial_dirname(number, seed)
    cfg = load_config(
        args.config,
        [
            *args.overrides,
            *overrides,
            *([f"seed={seed}"] if seed is not None else []),
            f"logging.run_dir={root}",
            f"logging.name={name}",
        ],
    )
    config_text = to_yaml(cfg)
    finished = finished_run(root / name, config_text)
    if finished is not None:
        return json.loads((finished / "summary.json").read_text(encoding="utf-8"))
    resume = interrupted_run(root / name, config_text)
    mode = "w" if resume is None else "a"  # a resumed run's log goes on after its first part
    with (
        (root / f"{name}.log").open(mode, encoding="utf-8") as log,
        contextlib.redirect_stdout(log),
    ):
        return fit(cfg, Console(file=log, width=120), resume=resume, pruning=report)


# ---------------------------------------------------------------------------- the command
def run_search(
    args: SearchArgs, jobs: int, worker: bool, console: Console
) -> tuple[list[dict[str, Any]], Path]:
    """Run (or continue) the search with ``jobs`` worker processes; return the table and its dir."""
    from bptrain.config import load_config

    try:
        import optuna  # noqa: F401
    except ImportError as err:
        raise UserError(
            f"--search needs Optuna ({err}): pip install 'bptrain[search]' (or optuna), then run "
            "it again."
        ) from None
    base = load_config(args.config, args.overrides)
    root = search_dir_for(base)
    if args.trials < 1:
        raise UserError("--trials must be at least 1.")
    console.print(
        f"{args.sampler} search of {args.trials} trial(s), pruner {args.pruner}, "
        f"on {_direction(base)[0]}, study {root / 'study.log'}"
    )
    if jobs <= 1 or worker:
        work(args, console, fit_trial)
    else:
        _spawn_workers(jobs, root)
    return finish(args, root, console)


def _spawn_workers(jobs: int, root: Path) -> None:
    """--jobs N: N copies of this command with --worker, each with 1/N of the CPU threads."""
    threads = str(max(1, (os.cpu_count() or 1) // jobs))
    env = {**os.environ, "OMP_NUM_THREADS": threads, "MKL_NUM_THREADS": threads}
    argv = [a for a in sys.argv[1:] if not a.startswith("--jobs")]
    if "--jobs" in sys.argv:  # "--jobs N" as two words
        i = sys.argv.index("--jobs")
        argv = sys.argv[1:i] + sys.argv[i + 2 :]
    command = [sys.executable, "-m", "bptrain", *argv, "--worker"]
    root.mkdir(parents=True, exist_ok=True)
    procs = []
    for index in range(jobs):
        log = (root / f"worker-{index}.log").open("w", encoding="utf-8")
        worker_env = {**env, "BPTRAIN_SEARCH_WORKER": str(index)}
        proc = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=worker_env)
        procs.append((proc, log))
    try:
        for proc, log in procs:
            proc.wait()
            log.close()
    except KeyboardInterrupt:  # the workers got the same Ctrl-C; let them save
        for proc, _ in procs:
            proc.wait()
        raise


def finish(args: SearchArgs, root: Path, console: Console) -> tuple[list[dict[str, Any]], Path]:
    """The table of every finished trial (the grid sweep's shape) and best.yaml."""
    import optuna

    with contextlib.suppress(Exception):
        optuna.logging.set_verbosity(optuna.logging.WARNING)
    from filelock import FileLock
    from optuna.storages.journal import JournalFileBackend, JournalStorage

    # one writer at a time: the last worker to finish writes the complete table
    with FileLock(str(root / "search.lock")):
        storage = JournalStorage(JournalFileBackend(str(root / "study.log")))
        study = optuna.load_study(study_name=STUDY, storage=storage)
        return _finish(args, root, study, console)


def _finish(
    args: SearchArgs, root: Path, study: Any, console: Console
) -> tuple[list[dict[str, Any]], Path]:
    from bptrain import sweep

    trials = [t for t in study.get_trials(deepcopy=False) if not _retried(t)]
    outcomes, states = [], {}
    for trial in trials:
        overrides = trial.user_attrs.get("overrides", [])
        number = trial_number(trial)
        for seed in args.seeds:
            label = f"#{number} " + " ".join(overrides)
            variant = sweep.Variant(tuple(overrides), seed, label=label)
            outcomes.append(_outcome(variant, root / trial_dirname(number, seed), trial))
            states[label] = trial.state.name.lower()
    rows = sweep.aggregate(outcomes)
    for row in rows:
        state = states[row["variant"]]
        if state != "complete":
            row["status"] = state  # pruned, fail, running (a worker still on it)
    sweep.write_tables(root, rows, outcomes)
    sweep.print_table(console, rows)
    completed = [t for t in trials if t.state.name == "COMPLETE"]
    if completed:
        write_best(args, root, study.best_trial, console)
    counts = {
        s: sum(1 for t in trials if t.state.name.lower() == s)
        for s in ("complete", "pruned", "fail", "running")
    }
    epochs = sum(int(o.summary.get("epochs") or 0) for o in outcomes if o.summary)
    console.print(
        f"trials: {counts['complete']} complete, {counts['pruned']} pruned, {counts['fail']} failed"
        + (f", {counts['running']} running" if counts["running"] else "")
        + f"; {epochs} training epochs in all"
    )
    console.print(f"wrote {root}/sweep.csv, sweep.json, sweep.md; tensorboard --logdir {root}")
    return rows, root


def _outcome(variant: Any, trial_dir: Path, trial: Any) -> Any:
    from bptrain import sweep

    runs = sorted(trial_dir.glob("*/summary.json"))
    if runs:
        return sweep._outcome_from(variant, runs[-1].parent)
    return sweep.Outcome(
        variant,
        trial.state.name.lower(),
        error=trial.user_attrs.get("error") or ("" if trial.state.name == "RUNNING" else "no run"),
    )


def write_best(args: SearchArgs, root: Path, best: Any, console: Console) -> Path:
    """best.yaml: the base config with the best trial's values, resolved; fit runs it as is."""
    from bptrain.config import load_config, to_yaml

    overrides = best.user_attrs.get("overrides", [])
    number = trial_number(best)
    cfg = load_config(args.config, [*args.overrides, *overrides])
    path = root / "best.yaml"
    header = (
        f"# best trial #{number} of the search in {root}: {' '.join(overrides)}\n"
        f"# objective {best.value:.6g}; run it with: bptrain fit {path}\n"
    )
    path.write_text(header + to_yaml(cfg), encoding="utf-8")
    console.print(f"best trial #{number} ({best.value:.4f}): {' '.join(overrides)} -> {path}")
    (root / "best.json").write_text(
        json.dumps({"trial": number, "value": best.value, "overrides": overrides}) + "\n",
        encoding="utf-8",
    )
    return path
