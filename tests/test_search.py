"""``bptrain sweep --search random|tpe``: an Optuna study on disk, pruned per epoch, shared by
worker processes and resumed sweeps; its table and best.yaml. Through the CLI."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from ckpt_helpers import signal_at_step

from tests.conftest import TINY, deep_merge

# optuna is in the test extra (CI installs it); a venv made before it was added: install.sh --test
optuna = pytest.importorskip("optuna", reason="needs optuna: bash scripts/install.sh --test")


def _config(tmp_path: Path, **trainer) -> Path:
    data = deep_merge(
        TINY,
        {
            "data": {"n_samples": 240, "batch_size": 40},
            "trainer": {"max_epochs": 3, **trainer},
            "logging": {"run_dir": str(tmp_path / "runs")},
        },
    )
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def _study(root: Path):
    from optuna.storages.journal import JournalFileBackend, JournalStorage

    storage = JournalStorage(JournalFileBackend(str(root / "study.log")))
    return optuna.load_study(study_name="bptrain", storage=storage)


def test_tpe_search_writes_the_grid_table_and_a_best_yaml_fit_runs(cli, tmp_path: Path) -> None:
    config = _config(tmp_path)
    result = cli(
        "sweep", config, "optimizer.lr=loguniform(1e-3,1e-1)", "model.hidden=[8],[16,16]",
        "--search", "tpe", "--trials", "3", "--pruner", "none",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    root = tmp_path / "runs" / "tiny-search"
    trials = _study(root).get_trials()
    assert [t.state.name for t in trials] == ["COMPLETE"] * 3
    for trial in trials:
        assert 1e-3 <= trial.params["optimizer.lr"] <= 1e-1
        assert trial.params["model.hidden"] in ("[8]", "[16,16]")
        # the objective is the run's best monitored metric (val/loss by default)
        (run,) = (root / f"trial-{trial.number:04d}").glob("*/summary.json")
        summary = json.loads(run.read_text())
        assert trial.value == summary["best"]["val/loss"]
        saved = yaml.safe_load((run.parent / "config.yaml").read_text())
        assert saved["optimizer"]["lr"] == trial.params["optimizer.lr"]
    table = json.loads((root / "sweep.json").read_text())
    assert len(table["rows"]) == 3 and {r["status"] for r in table["rows"]} == {"ok"}
    assert "best val/loss" in table["rows"][0] and (root / "sweep.csv").exists()
    best = min(trials, key=lambda t: t.value)
    best_cfg = yaml.safe_load((root / "best.yaml").read_text())
    assert best_cfg["optimizer"]["lr"] == best.params["optimizer.lr"]
    rerun = cli("fit", root / "best.yaml", "logging.name=best-again")
    assert rerun.exit_code == 0, rerun.output
    (again,) = (tmp_path / "runs" / "best-again").glob("*/summary.json")
    assert json.loads(again.read_text())["best"]["val/loss"] == best.value


def test_median_pruner_stops_bad_trials_after_an_epoch(cli, tmp_path: Path) -> None:
    config = _config(tmp_path, max_epochs=3)
    result = cli(
        "sweep", config, "optimizer.lr=choice(0.05,0.03,0.00001)",
        "--search", "random", "--trials", "6", "--pruner", "median",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    root = tmp_path / "runs" / "tiny-search"
    trials = _study(root).get_trials()
    pruned = [t for t in trials if t.state.name == "PRUNED"]
    assert pruned, [(t.params, t.state.name) for t in trials]
    for trial in pruned:
        assert trial.params["optimizer.lr"] == "0.00001"  # only the hopeless LR is pruned
        (run,) = (root / f"trial-{trial.number:04d}").glob("*/summary.json")
        summary = json.loads(run.read_text())
        assert summary["status"] == "pruned"
        assert summary["epochs"] < 3
        assert sorted(trial.intermediate_values) == list(range(1, summary["epochs"] + 1))
    rows = json.loads((root / "sweep.json").read_text())["rows"]
    assert sum(r["status"] == "pruned" for r in rows) == len(pruned)
    assert "pruned" in result.output


def test_a_resumed_search_continues_the_study_and_a_changed_space_is_refused(cli, tmp_path):
    config = _config(tmp_path, max_epochs=1)
    axes = ["optimizer.lr=uniform(0.001,0.05)", "data.batch_size=int(16,64)"]
    first = cli("sweep", config, *axes, "--search", "random", "--trials", "2", "--pruner", "none")
    assert first.exit_code == 0, first.output
    second = cli("sweep", config, *axes, "--search", "random", "--trials", "3", "--pruner", "none")
    assert second.exit_code == 0, second.output
    root = tmp_path / "runs" / "tiny-search"
    trials = _study(root).get_trials()
    assert len(trials) == 3 and all(t.state.name == "COMPLETE" for t in trials)
    assert len({t.params["optimizer.lr"] for t in trials}) == 3  # no point drawn twice
    for trial in trials:  # every trial trained once
        assert len(list((root / f"trial-{trial.number:04d}").glob("*/summary.json"))) == 1

    changed = cli(
        "sweep", config, "optimizer.lr=uniform(0.001,0.1)", "data.batch_size=int(16,64)",
        "--search", "random", "--trials", "4",
    )  # fmt: skip
    assert changed.exit_code == 2
    assert "sweep axis 'optimizer.lr'" in changed.output
    assert "uniform(0.001,0.05)" in changed.output and "logging.name=NEW" in changed.output


def test_a_trial_stopped_by_sigterm_resumes_from_its_last_checkpoint(cli, tmp_path, monkeypatch):
    """The trial is queued again with its values; the next sweep continues its run in place
    (fit --resume from last.pt) instead of training it again from scratch."""
    config = _config(tmp_path, max_epochs=2)
    axes = ["optimizer.lr=uniform(0.001,0.05)", "--search", "random", "--pruner", "none"]
    signal_at_step(monkeypatch, 7, signal.SIGTERM)  # in the second epoch (5 steps each)
    stopped = cli("sweep", config, *axes, "--trials", "1")
    assert stopped.exit_code == 143, stopped.output
    monkeypatch.undo()
    root = tmp_path / "runs" / "tiny-search"
    (run,) = (root / "trial-0000").iterdir()
    assert (run / "checkpoints" / "last.pt").exists() and not (run / "summary.json").exists()

    again = cli("sweep", config, *axes, "--trials", "1")
    assert again.exit_code == 0, again.output
    first, resumed = _study(root).get_trials()
    assert first.state.name == "FAIL" and first.user_attrs["retried"]
    assert resumed.user_attrs["resumed_from_trial"] == 0 and resumed.params == first.params
    assert list((root / "trial-0000").iterdir()) == [run]  # the same run went on, no new one
    summary = json.loads((run / "summary.json").read_text())
    assert summary["status"] == "completed" and resumed.value == summary["best"]["val/loss"]
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in records if r["type"] == "epoch"] == [1, 2]  # none twice
    steps = [r["step"] for r in records if r["type"] == "step"]
    assert steps == sorted(set(steps))  # the steps before the signal were not trained again
    (row,) = json.loads((root / "sweep.json").read_text())["rows"]
    assert row["variant"].startswith("#0 ") and row["status"] == "ok"
    assert "trial 0: optimizer.lr=" in again.output  # shown under the number it started with


@pytest.mark.slow
@pytest.mark.skipif(os.environ.get("BPTRAIN_SLOW") != "1", reason="slow: run with BPTRAIN_SLOW=1")
def test_two_jobs_share_one_study_and_never_run_the_same_trial(tmp_path: Path) -> None:
    config = _config(tmp_path, max_epochs=1)
    result = subprocess.run(
        [
            sys.executable, "-m", "bptrain", "sweep", str(config),
            "optimizer.lr=loguniform(1e-3,1e-1)", "--search", "random",
            "--trials", "6", "--jobs", "2", "--pruner", "none",
        ],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    root = tmp_path / "runs" / "tiny-search"
    trials = _study(root).get_trials()
    assert len(trials) == 6 and all(t.state.name == "COMPLETE" for t in trials)
    workers = {t.user_attrs["worker"] for t in trials}
    assert len(workers) == 2, workers  # both processes took trials
    for trial in trials:
        runs = list((root / f"trial-{trial.number:04d}").glob("*/summary.json"))
        assert len(runs) == 1, (trial.number, runs)
    logs = [(root / f"worker-{i}.log").read_text() for i in range(2)]
    taken = [
        {int(line.split()[1].rstrip(":")) for line in log.splitlines() if line.startswith("trial ")}
        for log in logs
    ]
    assert not taken[0] & taken[1] and taken[0] | taken[1] == set(range(6))


def test_bad_distributions_are_usage_errors(cli, tmp_path: Path) -> None:
    config = _config(tmp_path)
    for axis, hint in [
        ("optimizer.lr=loguniform(0,1)", "0 < LOW"),
        ("optimizer.lr=uniform(0.1)", "uniform(LOW,HIGH)"),
        ("data.batch_size=int(1.5,4)", "int(LOW,HIGH)"),
        ("optimizer.lr=choice(0.1)", "two or more values"),
        ("optimizer.lr=randint(1,2)", "unknown distribution"),
    ]:
        result = cli("sweep", config, axis, "--search", "tpe", "--trials", "2")
        assert result.exit_code == 2, (axis, result.output)
        assert hint in result.output and axis.split("=")[0] in result.output
    grid = cli("sweep", config, "optimizer.lr=loguniform(1e-4,1e-1)")
    assert grid.exit_code == 2 and "--search random" in grid.output


def test_submit_sweep_renders_an_array_of_workers_with_every_value_quoted(cli, tmp_path):
    config = _config(tmp_path)
    result = cli(
        "submit", config, "model.hidden=[8, 8]", "--sweep", "optimizer.lr=loguniform(1e-4,1e-1)",
        "--sweep", "model.dropout=choice(0.0,0.2)", "--search", "tpe", "--trials", "16",
        "--array", "0-3%2", "--dry-run",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    script = result.stdout
    assert "#SBATCH --array=0-3%2" in script
    (line,) = [ln for ln in script.splitlines() if " -m bptrain sweep " in ln]
    assert "'optimizer.lr=loguniform(1e-4,1e-1)'" in line
    assert "'model.dropout=choice(0.0,0.2)'" in line
    assert "--set 'model.hidden=[8, 8]'" in line
    assert "--search tpe --trials 16 --pruner median" in line and line.endswith("--worker")
    assert "logging.name=" not in line  # every task and a later array share one study

    for args, hint in [
        (["--array", "0-3"], "--array runs the tasks of a search"),
        (["--sweep", "optimizer.lr=loguniform(0,1)", "--array", "0-3"], "0 < LOW"),
        (["--sweep", "optimizer.lr=choice(0.1,0.2)", "--array", "0-3;rm"], "SLURM's syntax"),
    ]:
        bad = cli("submit", config, *args, "--dry-run")
        assert bad.exit_code == 2, (args, bad.output)
        assert hint in bad.output
