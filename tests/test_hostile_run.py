"""Hostile and careless runs (issue 11): one process per run directory, no silent successes,
a resume never loses what the run directory records, a full disk is one clear line.

Each test is one case that once failed (exit 0 with nothing done, a lost summary, a traceback).
"""

from __future__ import annotations

import errno
import hashlib
import json
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from bptrain.checkpoint import load_checkpoint
from bptrain.cli import app

runner = CliRunner()


def flat(text: str) -> str:
    return " ".join(text.split())


@pytest.fixture
def config(tmp_path: Path) -> Path:
    path = tmp_path / "tiny.yaml"
    body = {
        "data": {"source": "moons", "n_samples": 64, "batch_size": 8},  # 7 steps an epoch
        "model": {"hidden": [8]},
        "trainer": {"max_epochs": 1},
        "logging": {"run_dir": str(tmp_path / "runs"), "tensorboard": False, "progress": "off"},
    }
    path.write_text(yaml.safe_dump(body))
    return path


def fit(config: Path, *args: str, code: int = 0) -> str:
    result = runner.invoke(app, ["fit", str(config), *args])
    assert result.exit_code == code, result.output
    assert "Traceback" not in result.output
    return flat(result.output)


def the_run(tmp_path: Path) -> Path:
    (run,) = (tmp_path / "runs" / "tiny").iterdir()
    return run


def fingerprint(run: Path) -> dict[str, str]:
    """Every file of the run directory (the lock file aside) and its content hash."""
    return {
        str(p.relative_to(run)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(run.rglob("*"))
        if p.is_file() and not p.name.startswith(".bptrain.lock")
    }


def epochs_logged(run: Path) -> list[int]:
    lines = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return [r["epoch"] for r in lines if r["type"] == "epoch"]


# --- one process owns a run directory ----------------------------------------------------------

HOLDER = """
import sys, time
from pathlib import Path
from bptrain.runlock import RunDirLock
lock = RunDirLock(Path(sys.argv[1])).acquire()
print("held", flush=True)
time.sleep(300)
"""


def test_a_second_fit_cannot_resume_a_run_another_process_holds(
    config: Path, tmp_path: Path
) -> None:
    fit(config)
    run = the_run(tmp_path)
    before = fingerprint(run)
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(run)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        out = fit(config, "trainer.max_epochs=2", "--resume", "auto", code=2)
        assert f"PID {holder.pid} on host" in out and "in use" in out
        assert fingerprint(run) == before  # nothing written
        holder.send_signal(signal.SIGKILL)
        holder.wait(timeout=30)
        fit(config, "trainer.max_epochs=2", "--resume", "auto")  # a dead holder never blocks
    finally:
        holder.kill()
        holder.wait(timeout=30)
    assert epochs_logged(run) == [1, 2]  # each epoch once
    assert not (run / ".bptrain.lock.json").exists()  # fit handed the directory back


def test_a_failed_fit_hands_the_run_directory_back(config: Path, tmp_path: Path) -> None:
    from bptrain.runlock import RunDirLock

    fit(config, "optimizer={name: adam, lr: 1.0e30}", "data.batch_size=64", code=1)
    with RunDirLock(the_run(tmp_path)):  # the same process: would time out if still held
        pass


# --- silent successes ----------------------------------------------------------------------------


def test_a_batch_larger_than_the_training_set_with_drop_last_is_refused(
    config: Path, tmp_path: Path
) -> None:
    out = fit(config, "data.batch_size=500", "data.drop_last=true", code=2)
    assert "data.batch_size 500 is larger than the training split" in out
    assert "data.drop_last: false" in out
    assert not (tmp_path / "runs").exists()


def test_max_steps_alone_decides_when_max_epochs_is_not_set(tmp_path: Path) -> None:
    path = tmp_path / "steps.yaml"
    body = {
        "data": {"source": "moons", "n_samples": 64, "batch_size": 8},  # 7 steps an epoch
        "model": {"hidden": [8]},
        "trainer": {"max_steps": 80},  # more than the 10 epochs max_epochs defaults to
        "logging": {"run_dir": str(tmp_path / "runs"), "tensorboard": False, "progress": "off"},
    }
    path.write_text(yaml.safe_dump(body))
    fit(path)
    summary = json.loads(next((tmp_path / "runs").glob("*/*/summary.json")).read_text())
    assert summary["steps"] == 80 and summary["stop_reason"] == "max_steps reached"


def test_max_epochs_and_max_steps_together_keep_whichever_comes_first(config: Path) -> None:
    fit(config, "trainer.max_steps=80")  # 0.1 configs set both: max_epochs 1 still ends it
    summary = json.loads(next(config.parent.glob("runs/*/*/summary.json")).read_text())
    assert summary["steps"] == 7 and summary["stop_reason"] == "max_epochs reached"


def test_no_limit_at_all_is_refused(config: Path, tmp_path: Path) -> None:
    out = fit(config, "trainer.max_epochs=null", code=2)
    assert "set trainer.max_epochs or trainer.max_steps" in out
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("trainer.checkpoint.monitor=val_loss", "Did you mean 'val/loss'?"),
        ("trainer.early_stopping={monitor: val/los}", "Did you mean 'val/loss'?"),
        ("trainer.early_stopping={monitor: accuracy}", "Did you mean 'val/acc'?"),
        ("trainer.checkpoint={monitor: val/f1, save_top_k: 2}", "never logs"),
        ("scheduler={name: reduce_on_plateau, monitor: val/accuracy}", "Did you mean 'val/acc'?"),
    ],
    ids=[
        "checkpoint_keras_name",
        "early_stopping_typo",
        "no_prefix",
        "unconfigured_metric",
        "plateau_scheduler",
    ],
)
def test_a_monitor_the_run_never_logs_is_refused_before_the_run_directory(
    override: str, message: str, config: Path, tmp_path: Path
) -> None:
    out = fit(config, override, code=2)
    assert message in out and "never logs" in out
    assert not (tmp_path / "runs").exists()


def test_a_monitor_of_a_configured_metric_is_accepted(config: Path, tmp_path: Path) -> None:
    fit(
        config,
        "metrics=[{name: f1}]",
        "trainer.checkpoint.monitor=val/f1",
        "trainer.checkpoint.mode=max",
    )
    assert (the_run(tmp_path) / "checkpoints" / "best.pt").is_file()


def test_a_non_finite_validation_loss_falls_under_nan_policy(config: Path, tmp_path: Path) -> None:
    # one step at an absurd lr: the training loss was finite, the weights after it are not
    out = fit(config, "data.batch_size=64", "optimizer={name: adam, lr: 1.0e30}", code=1)
    assert "the epoch's validation loss is nan" in out
    report = json.loads(next((tmp_path / "runs").glob("*/*/nan_report.json")).read_text())
    assert report["first_nonfinite"] == "epoch val/loss"


def test_nan_policy_ignore_lets_a_non_finite_validation_loss_through(config: Path) -> None:
    fit(
        config,
        "data.batch_size=64",
        "optimizer={name: adam, lr: 1.0e30}",
        "trainer.nan_policy=ignore",
    )


# --- a resume never loses what the run directory records ------------------------------------------


@pytest.mark.parametrize("extra", [[], ["trainer.max_epochs=1"]], ids=["as_is", "lowered_limit"])
def test_resuming_a_finished_run_is_a_no_op_that_says_so(
    extra: list[str], config: Path, tmp_path: Path
) -> None:
    fit(config, "trainer.max_epochs=2")
    run = the_run(tmp_path)
    before = fingerprint(run)
    assert "val/loss" in json.loads((run / "summary.json").read_text())["final"]
    out = fit(config, "trainer.max_epochs=2", *extra, "--resume", "auto")
    assert "had already finished (max_epochs reached): nothing to train" in out
    assert fingerprint(run) == before  # summary.json's final, metrics.jsonl's test line, ...


def test_a_finished_run_killed_before_its_summary_keeps_its_final_metrics(
    config: Path, tmp_path: Path
) -> None:
    fit(config, "trainer.max_epochs=2")
    run = the_run(tmp_path)
    summary = json.loads((run / "summary.json").read_text())
    (run / "summary.json").unlink()  # what a SIGKILL between last.pt and the summary leaves
    fit(config, "trainer.max_epochs=2", "--resume", "auto")
    again = json.loads((run / "summary.json").read_text())
    assert again["final"] == summary["final"] and again["epochs"] == 2
    assert again["test"] == summary["test"] and epochs_logged(run) == [1, 2]


LATE_SIGTERM = """
import os, signal

class LateSigterm:
    '''SIGTERM at the run's last step: the epoch is trained, not yet ended.'''

    def on_train_batch_end(self, step, logs):
        if step == 14:
            os.kill(os.getpid(), signal.SIGTERM)
"""


def test_a_late_sigterm_then_resume_ends_the_last_epoch(
    config: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "late_sigterm.py").write_text(LATE_SIGTERM)
    monkeypatch.syspath_prepend(str(tmp_path))
    late = "callbacks=[{class_path: late_sigterm.LateSigterm}]"
    fit(config, "trainer.max_epochs=2", late, code=143)
    run = the_run(tmp_path)
    assert epochs_logged(run) == [1] and not (run / "summary.json").exists()
    fit(config, "trainer.max_epochs=2", "--resume", "auto")
    summary = json.loads((run / "summary.json").read_text())
    assert summary["epochs"] == 2 and summary["final"]["epoch"] == 2
    assert "val/loss" in summary["final"] and epochs_logged(run) == [1, 2]


def test_raising_a_limit_trains_the_extension(config: Path, tmp_path: Path) -> None:
    fit(config)
    fit(config, "trainer.max_epochs=2", "--resume", "auto")
    run = the_run(tmp_path)
    assert epochs_logged(run) == [1, 2]
    assert json.loads((run / "summary.json").read_text())["final"]["epoch"] == 2


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ("optimizer={name: sgd, lr: 0.1}", "'optimizer' section differs"),
        ("optimizer.lr=0.5", "optimizer.lr: 0.001 -> 0.5"),
        ("scheduler={name: cosine}", "'scheduler' section differs"),
        ("trainer.precision=fp16", "trainer.precision was 32, now fp16"),
    ],
    ids=["optimizer_kind", "optimizer_lr", "scheduler", "fp32_to_fp16"],
)
def test_a_refused_resume_modifies_nothing(
    change: str, message: str, config: Path, tmp_path: Path
) -> None:
    fit(config, "optimizer={name: adam, lr: 0.001}")
    run = the_run(tmp_path)
    before = fingerprint(run)
    args = ("optimizer={name: adam, lr: 0.001}", "trainer.max_epochs=2", change, "--resume", "auto")
    out = fit(config, *args, code=2)
    assert message in out
    assert fingerprint(run) == before


# --- a full disk ----------------------------------------------------------------------------------


def _disk_full(*args: object, **kwargs: object) -> None:
    raise OSError(errno.ENOSPC, "No space left on device")


def test_a_full_disk_writing_the_summary_is_one_clear_line(
    config: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import bptrain.train

    monkeypatch.setattr(bptrain.train, "write_json", _disk_full)
    out = fit(config, code=1)
    assert "No space left on device" in out and "The disk is full: free space" in out
    assert "continue it with --resume auto" in out
    load_checkpoint(the_run(tmp_path) / "checkpoints" / "last.pt")  # the last good one


def test_a_full_disk_writing_metrics_keeps_the_last_good_checkpoint(
    config: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from bptrain.runlog import RunLog

    write = RunLog.log

    def full_at_epoch_2(self: RunLog, kind: str, step: int, *args: object, **kwargs: object):
        if kind == "epoch" and step > 7:
            _disk_full()
        return write(self, kind, step, *args, **kwargs)

    monkeypatch.setattr(RunLog, "log", full_at_epoch_2)
    out = fit(config, "trainer.max_epochs=2", code=1)
    assert "The disk is full: free space" in out
    last = the_run(tmp_path) / "checkpoints" / "last.pt"
    assert f"the last good checkpoint is {last}" in out
    assert load_checkpoint(last)["progress"]["epoch"] == 1


@pytest.mark.parametrize("async_write", ["true", "false"])
def test_a_full_disk_writing_a_checkpoint_keeps_the_previous_one(
    async_write: str, config: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import torch

    save, calls = torch.save, []

    def full_on_the_second_last_pt(obj: object, handle: object, *args: object, **kw: object):
        calls.append(1)
        if len(calls) == 2:
            _disk_full()
        return save(obj, handle, *args, **kw)  # type: ignore[arg-type]

    monkeypatch.setattr(torch, "save", full_on_the_second_last_pt)
    out = fit(
        config,
        "trainer.max_epochs=2",
        "trainer.checkpoint={save_best: false}",
        f"trainer.checkpoint.async_write={async_write}",
        code=1,
    )
    assert "The disk is full" in out and "The previous last.pt is intact" in out
    last = the_run(tmp_path) / "checkpoints" / "last.pt"
    assert load_checkpoint(last)["progress"]["epoch"] == 1
    assert not list(last.parent.glob(".*.tmp"))


def test_a_resume_watching_another_metric_starts_early_stopping_afresh(
    config: Path, tmp_path: Path
) -> None:
    fit(config, "trainer.early_stopping={monitor: val/loss, patience: 5}")
    watch_acc = "trainer.early_stopping={monitor: val/acc, mode: max, patience: 5}"
    fit(config, watch_acc, "trainer.max_epochs=2", "--resume", "auto")
    state = load_checkpoint(the_run(tmp_path) / "checkpoints" / "last.pt")["early_stopping"]
    # not the val/loss best of epoch 1 compared against accuracies
    assert state["monitor"] == "val/acc" and state["best_epoch"] == 2


def test_a_resume_whose_checkpoint_was_replaced_before_it_took_the_run_is_refused(
    config: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Another fit still training the run writes a newer last.pt (and ends) while this one is
    building its model: continuing would cut that fit's epochs from metrics.jsonl and train them
    again. Refused once the lock is held, before anything is written."""
    import bptrain.train as train_module

    fit(config, "trainer.max_epochs=2")
    run = the_run(tmp_path)
    last = run / "checkpoints" / "last.pt"
    build = train_module.build_components

    def build_while_the_other_fit_saves(*args, **kwargs):  # type: ignore[no-untyped-def]
        parts = build(*args, **kwargs)
        newer = last.with_name("newer.tmp")
        newer.write_bytes(last.read_bytes())
        newer.replace(last)  # what checkpoint.py's atomic write does
        return parts

    monkeypatch.setattr(train_module, "build_components", build_while_the_other_fit_saves)
    before = fingerprint(run)
    out = fit(config, "trainer.max_epochs=3", "--resume", str(run), code=2)
    assert "was replaced while this process was starting" in out
    assert fingerprint(run) == before


def test_resuming_on_more_processes_with_max_epochs_alone_trains_every_epoch(
    tmp_path: Path,
) -> None:
    """max_epochs alone: a run stopped mid-epoch on one process and resumed on two finishes its
    epochs (its steps were counted at the one-process epoch length; the limit is epochs)."""
    import os

    path = tmp_path / "ddp.yaml"
    body = {
        "data": {"source": "moons", "n_samples": 256, "batch_size": 16},  # 13 steps, 7 on 2 ranks
        "model": {"hidden": [8]},
        "trainer": {"max_epochs": 2, "max_steps": 20},  # stops mid-epoch 2 on one process
        "logging": {"run_dir": str(tmp_path / "runs"), "tensorboard": False, "progress": "off"},
    }
    path.write_text(yaml.safe_dump(body))
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    env["OMP_NUM_THREADS"] = "1"
    command = [sys.executable, "-m", "bptrain", "fit", str(path)]
    first = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert first.returncode == 0, first.stderr
    (run,) = (tmp_path / "runs" / "ddp").iterdir()
    resumed = subprocess.run(
        [*command, "trainer.max_steps=null", "--resume", str(run), "--nproc", "2"],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert resumed.returncode == 0, resumed.stderr
    summary = json.loads((run / "summary.json").read_text())
    assert summary["epochs"] == 2, summary
    assert epochs_logged(run)[-1] == 2
