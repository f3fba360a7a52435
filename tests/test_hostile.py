"""Hostile and careless input outside the loop (issue 11): each test is one case that once failed.

Every case ends in one clear line and an exit code: 2 for a mistake the user can fix, 1 for a
runtime failure; never a traceback, never a command run from a value.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from bptrain.checkpoint import load_checkpoint, save_checkpoint
from bptrain.cli import app
from bptrain.errors import UserError
from bptrain.slurm import JobSpec, render

ROOT = Path(__file__).resolve().parents[1]
QUICKSTART = ROOT / "configs" / "quickstart.yaml"
runner = CliRunner()


def flat(text: str) -> str:
    return " ".join(text.split())


# --- generated SLURM scripts never execute a value ------------------------------------------


def _stub_bin(tmp_path: Path) -> dict[str, str]:
    """srun, scontrol and sbatch stubs on PATH: srun records its words, sbatch keeps the script."""
    fake = tmp_path / "bin"
    fake.mkdir(exist_ok=True)
    (fake / "srun").write_text('#!/bin/sh\nprintf "%s\\n" "$@" > "$WORDS"\nexit 0\n')
    (fake / "scontrol").write_text("#!/bin/sh\necho node1\n")
    (fake / "sbatch").write_text('#!/bin/sh\ncat > "$SCRIPT"\necho 4242\n')
    for tool in ("srun", "scontrol", "sbatch"):
        (fake / tool).chmod(0o755)
    return {
        **os.environ,
        "PATH": f"{fake}:{os.environ['PATH']}",
        "WORDS": str(tmp_path / "words"),
        "SCRIPT": str(tmp_path / "job.sbatch"),
        "SLURM_JOB_ID": "4242",
        "SLURM_JOB_NODELIST": "node1",
    }


def _run_script(script: str, tmp_path: Path) -> list[str]:
    env = _stub_bin(tmp_path)
    result = subprocess.run(
        ["bash", "-c", script], env=env, cwd=tmp_path, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr
    return (tmp_path / "words").read_text().splitlines()


def test_hostile_values_in_the_job_command_are_passed_verbatim_and_never_run(
    tmp_path: Path,
) -> None:
    marker = tmp_path / "PWNED"
    payloads = [
        f"$(touch {marker})",
        f"`touch {marker}`",
        f"'; touch {marker}; '",
        f'"; touch {marker}; "',
        f"$SLURM_JOB_ID$(touch {marker})",
    ]
    spec = JobSpec(
        config=tmp_path / f"q$(touch {marker}).yaml",
        overrides=[f"logging.progress={p}" for p in payloads],
        job_name="exp",
        python=f"/env/bin/python`touch {marker}`",
    )
    words = _run_script(render(spec), tmp_path)
    assert not marker.exists()
    rank = words.index("bptrain-rank")
    assert words[rank + 1 :] == [
        spec.python,
        "-m",
        "bptrain",
        "fit",
        str(spec.config),
        *spec.overrides,
        "logging.name=exp-job4242",
        "--resume",
        "auto",
    ]


HOSTILE_FIELDS = {
    "job_name_backticks": {"job_name": "`touch PWNED`"},
    "job_name_substitution": {"job_name": "n$(touch PWNED)"},
    "job_name_newline": {"job_name": "n\ntouch PWNED"},
    "partition_space": {"partition": "gpu --wrap=x"},
    "account_semicolon": {"account": "a;touch PWNED"},
    "output_quote": {"output": "log'x"},
    "workdir_space": {"workdir": Path("/tmp/my dir")},
    "sbatch_arg_newline": {"sbatch_args": ["--mem=1G\ntouch PWNED"]},
    "override_newline": {"overrides": ["seed=1\ntouch PWNED"]},
    "config_newline": {"config": Path("c\ntouch PWNED.yaml")},
    "python_escape": {"python": "python\x1b[2J"},
}


@pytest.mark.parametrize("fields", HOSTILE_FIELDS.values(), ids=HOSTILE_FIELDS)
def test_values_a_batch_script_cannot_carry_are_refused(fields: dict) -> None:
    spec = JobSpec(config=Path("c.yaml"))
    for name, value in fields.items():
        setattr(spec, name, value)
    with pytest.raises(UserError, match="control character|one plain word"):
        render(spec)


def test_submit_with_a_hostile_config_name_runs_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    marker = tmp_path / "PWNED"
    config = tmp_path / f"q$(touch {marker.name}).yaml"
    config.write_text(QUICKSTART.read_text())
    env = _stub_bin(tmp_path)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("PATH", env["PATH"])
    monkeypatch.setenv("SCRIPT", env["SCRIPT"])
    result = runner.invoke(app, ["submit", str(config), "--python=python"])
    assert result.exit_code == 0, result.output
    assert "submitted job 4242" in result.output
    words = _run_script((tmp_path / "job.sbatch").read_text(), tmp_path)
    assert str(config) in words and "logging.name=q__touch_PWNED_-job4242" in words
    assert not marker.exists()


def test_submit_refuses_a_hostile_job_name(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    args = ["submit", str(QUICKSTART), "--job-name", "`touch PWNED`", "--dry-run"]
    result = runner.invoke(app, args)
    assert result.exit_code == 2, result.output
    assert "one plain word" in flat(result.output) and "Traceback" not in result.output


def test_submit_makes_a_safe_job_name_of_a_hostile_run_name(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    args = ["submit", str(QUICKSTART), "logging.name=n$(touch PWNED)", "--dry-run"]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "#SBATCH --job-name=n__touch_PWNED_" in result.output
    assert 'logging.name=n__touch_PWNED_-job"$SLURM_JOB_ID"' in result.output
    assert "'logging.name=n$(touch PWNED)'" in result.output  # the override itself, single-quoted


# --- damaged checkpoints: one clear line, exit 2 --------------------------------------------


@pytest.fixture(scope="module")
def good_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    path = tmp_path_factory.mktemp("ckpt") / "good.pt"
    save_checkpoint({"model": {"w": torch.randn(64, 64)}, "step": 3}, path)
    return path.read_bytes()


DAMAGED = {
    "zero_bytes": (lambda good: b"", "empty (0 bytes)"),
    "truncated_half": (lambda good: good[: len(good) // 2], "truncated or damaged"),
    "truncated_header": (lambda good: good[:100], "truncated or damaged"),
    "random_bytes": (lambda good: os.urandom(4096), "not a PyTorch checkpoint"),
    "pickle_opcode_then_garbage": (
        lambda good: b"\x80\x02" + bytes(range(256)) * 8,
        "not a PyTorch checkpoint",
    ),
    "text_file": (lambda good: b"model:\n  w: [1, 2]\n", "not a PyTorch checkpoint"),
}


@pytest.mark.parametrize("case", DAMAGED.values(), ids=DAMAGED)
def test_a_damaged_checkpoint_says_what_is_wrong(
    case: tuple, good_checkpoint: bytes, tmp_path: Path
) -> None:
    make, reason = case
    path = tmp_path / "last.pt"
    path.write_bytes(make(good_checkpoint))
    with pytest.raises(UserError) as err:
        load_checkpoint(path)
    message = str(err.value)
    assert reason in message and "another checkpoint" in message
    assert "Errno" not in message and "()" not in message and "refusing" not in message


def test_eval_of_an_empty_checkpoint_exits_2_with_the_reason(tmp_path: Path) -> None:
    empty = tmp_path / "best.pt"
    empty.write_bytes(b"")
    result = runner.invoke(app, ["eval", str(QUICKSTART), "--checkpoint", str(empty)])
    assert result.exit_code == 2, result.output
    assert "empty (0 bytes)" in flat(result.output) and "Traceback" not in result.output


def test_a_damaged_safetensors_file_says_so(tmp_path: Path) -> None:
    from bptrain.transfer import load_weights

    path = tmp_path / "best.safetensors"
    path.write_bytes(b"")
    with pytest.raises(UserError, match="truncated or not a .safetensors file"):
        load_weights(path)


# --- one process owns a run directory -------------------------------------------------------

HOLDER = """
import sys, time
from pathlib import Path
from bptrain.runlock import RunDirLock
lock = RunDirLock(Path(sys.argv[1])).acquire()
print("held", flush=True)
time.sleep(300)
"""


def test_a_held_run_directory_is_refused_and_a_killed_holder_does_not_block(
    tmp_path: Path,
) -> None:
    import signal
    import socket
    import sys

    from bptrain.runlock import RunDirLock

    holder = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(tmp_path)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        with pytest.raises(UserError, match=f"PID {holder.pid} on host {socket.gethostname()}"):
            RunDirLock(tmp_path).acquire()
        holder.send_signal(signal.SIGKILL)
        holder.wait(timeout=30)
        with RunDirLock(tmp_path):  # the OS released the dead holder's lock
            pass
    finally:
        holder.kill()
        holder.wait(timeout=30)
