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


# --- careless data: NaN/Inf, 0-d arrays, values beyond float32 -------------------------------


def _npz(tmp_path: Path, **arrays: object) -> Path:
    import numpy as np

    path = tmp_path / "data.npz"
    np.savez(path, **arrays)
    return path


def _bad_npz_cases() -> dict[str, tuple[dict, str]]:
    import numpy as np

    x = np.zeros((10, 3), np.float32)
    x_nan = x.copy()
    x_nan[4, 2] = np.nan
    y_inf = np.zeros(10)
    y_inf[7] = -np.inf
    x_huge = np.zeros((10, 3))
    x_huge[1, 0] = 1e300
    y = np.arange(10) % 2
    return {
        "nan_input": ({"x": x_nan, "y": y}, r"x\[4, 2\] is nan"),
        "inf_val_target": ({"x": x, "y": y, "x_val": x, "y_val": y_inf}, r"y_val\[7\] is -inf"),
        "beyond_float32": ({"x": x_huge, "y": y}, r"x\[1, 0\] is 1e\+300"),
        "zero_d_input": ({"x": np.float32(3.0), "y": y}, "x is a single value"),
        "zero_d_target": ({"x": x, "y": np.int64(1)}, "y is a single value"),
    }


@pytest.mark.parametrize("case", list(_bad_npz_cases()))
def test_careless_npz_data_is_refused_naming_array_and_index(case: str, tmp_path: Path) -> None:
    from bptrain.data.sources import read_npz

    arrays, message = _bad_npz_cases()[case]
    with pytest.raises(UserError, match=message):
        read_npz(_npz(tmp_path, **arrays))


def _config(tmp_path: Path, data: dict, **sections: dict) -> Path:
    import yaml

    path = tmp_path / "run.yaml"
    body = {
        "data": data,
        "trainer": {"max_epochs": 1},
        "logging": {"run_dir": str(tmp_path / "runs"), "tensorboard": False, "progress": "off"},
    }
    for key, value in sections.items():
        body[key] = {**body.get(key, {}), **value}
    path.write_text(yaml.safe_dump(body))
    return path


def test_fit_on_nan_data_exits_2_before_creating_a_run_directory(tmp_path: Path) -> None:
    arrays, _ = _bad_npz_cases()["nan_input"]
    config = _config(tmp_path, {"source": "npz", "path": str(_npz(tmp_path, **arrays))})
    result = runner.invoke(app, ["fit", str(config)])
    assert result.exit_code == 2, result.output
    assert "x[4, 2] is nan" in flat(result.output) and "Traceback" not in result.output
    assert not (tmp_path / "runs").exists()


# --- models and hyperparameters that cannot train ---------------------------------------------


def test_a_class_path_model_without_parameters_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "noparams.py").write_text(
        "import torch\n"
        "class Doubler(torch.nn.Module):\n"
        "    def forward(self, x):\n"
        "        return x * 2.0\n"
    )
    monkeypatch.chdir(tmp_path)
    config = _config(
        tmp_path, {"source": "moons", "n_samples": 64}, model={"class_path": "noparams.Doubler"}
    )
    result = runner.invoke(app, ["fit", str(config)])
    assert result.exit_code == 2, result.output
    assert "has no parameters" in flat(result.output) and "Traceback" not in result.output


@pytest.mark.timeout(120)  # before the estimate, this allocated for minutes
def test_a_model_too_big_for_memory_is_refused_before_allocating(tmp_path: Path) -> None:
    config = _config(
        tmp_path, {"source": "moons", "n_samples": 64}, model={"hidden": [2_000_000_000]}
    )
    result = runner.invoke(app, ["fit", str(config)])
    assert result.exit_code == 2, result.output
    assert "10,000,000,002 parameters" in flat(result.output)
    assert not (tmp_path / "runs").exists()


@pytest.mark.timeout(120)
def test_a_huge_class_label_is_refused_and_named(tmp_path: Path) -> None:
    import numpy as np

    y = np.arange(16) % 2
    y[5] = 10**9
    path = _npz(tmp_path, x=np.zeros((16, 2), np.float32), y=y)
    result = runner.invoke(
        app, ["fit", str(_config(tmp_path, {"source": "npz", "path": str(path)}))]
    )
    assert result.exit_code == 2, result.output
    assert "largest class label is 1000000000" in flat(result.output)


@pytest.mark.parametrize(
    "override",
    ["optimizer.lr=1e308", "scheduler.max_lr=1e300"],
    ids=["lr", "onecycle_max_lr"],
)
def test_a_learning_rate_beyond_float32_is_refused(override: str, tmp_path: Path) -> None:
    config = _config(
        tmp_path,
        {"source": "moons", "n_samples": 64},
        optimizer={"name": "sgd", "lr": 0.1},
        scheduler={"name": "onecycle"} if "max_lr" in override else {"name": "none"},
    )
    result = runner.invoke(app, ["fit", str(config), override])
    assert result.exit_code == 2, result.output
    assert "beyond what float32 training can use" in flat(result.output)
    assert "Traceback" not in result.output


# --- messages, not tracebacks -----------------------------------------------------------------


class _Unreadable(torch.utils.data.Dataset):
    def __len__(self) -> int:
        return 4

    def __getitem__(self, index: int) -> torch.Tensor:
        raise UserError(f"cannot read image img{index}.png: truncated file")


def test_a_dataloader_worker_error_is_one_line_naming_the_worker(capsys) -> None:
    import typer

    from bptrain.cli import _guarded

    loader = torch.utils.data.DataLoader(_Unreadable(), num_workers=1)
    with pytest.raises(typer.Exit) as stop:
        _guarded(lambda: next(iter(loader)))
    assert stop.value.exit_code == 2
    err = flat(capsys.readouterr().err)
    assert "cannot read image img0.png: truncated file (DataLoader worker process 0)" in err
    assert "Traceback" not in err and "File " not in err


def test_eval_json_is_strict_even_when_the_loss_is_nan(tmp_path: Path) -> None:
    import json

    from safetensors.torch import save_file

    config = _config(tmp_path, {"source": "moons", "n_samples": 64}, model={"hidden": [4]})
    weights = {
        "net.0.weight": torch.full((4, 2), float("nan")),
        "net.0.bias": torch.zeros(4),
        "net.2.weight": torch.zeros(2, 4),
        "net.2.bias": torch.zeros(2),
    }
    save_file(weights, str(tmp_path / "nan.safetensors"))
    args = ["eval", str(config), "--checkpoint", str(tmp_path / "nan.safetensors"), "--json"]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output

    def refuse(token: str) -> None:
        raise ValueError(f"bare {token} in JSON")

    # the first line is the JSON object (a note about preprocessing may follow on stderr)
    metrics = json.loads(result.output.splitlines()[0], parse_constant=refuse)
    assert metrics["val/loss"] is None  # NaN is null in strict JSON


def test_nan_report_is_strict_json(tmp_path: Path) -> None:
    import json

    config = _config(
        tmp_path,
        {"source": "moons", "n_samples": 64, "batch_size": 8},
        optimizer={"name": "adam", "lr": 1e30},
    )
    result = runner.invoke(app, ["fit", str(config)])
    assert result.exit_code == 1, result.output
    (report,) = (tmp_path / "runs").glob("*/*/nan_report.json")
    data = json.loads(report.read_text(), parse_constant=lambda token: 1 / 0)
    assert data["loss"] is None


# --- diagnostics give the right advice, and fail fast -----------------------------------------


def test_grad_inspect_does_not_blame_the_lr_for_vanishing_gradients(tmp_path: Path) -> None:
    import json

    config = _config(
        tmp_path,
        {"source": "moons", "n_samples": 128},
        model={"hidden": [32] * 8, "activation": "sigmoid"},
        optimizer={"name": "sgd", "lr": 0.001},
    )
    out = tmp_path / "report.json"
    result = runner.invoke(app, ["grad-inspect", str(config), "--json", str(out)])
    assert result.exit_code == 0, result.output
    report = json.loads(out.read_text())
    assert {"vanishing", "lr_too_low"} <= {f["name"] for f in report["flags"]}
    assert "raise optimizer.lr (e.g. by 10x)" not in report["verdict"]
    assert "fix that first rather than raising optimizer.lr" in report["verdict"]


@pytest.mark.parametrize(
    ("command", "plot"),
    [
        (["grad-inspect"], ["--plot", "p.png"]),
        (["lr-find"], ["--plot", "p.png"]),
        (["eval"], ["--checkpoint", "last.pt", "--attack", "pgd", "--epsilon", "0.1", "--plot"]),
    ],
)
def test_plot_without_matplotlib_fails_before_the_work(
    command: list[str], plot: list[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import sys

    import bptrain.diagnostics.command
    import bptrain.lr_find
    import bptrain.robustness

    def analysis_ran(*args: object, **kwargs: object) -> None:
        raise AssertionError("the analysis ran before the matplotlib check")

    monkeypatch.setattr(bptrain.diagnostics.command, "inspect_config", analysis_ran)
    monkeypatch.setattr(bptrain.lr_find, "range_test", analysis_ran)
    monkeypatch.setattr(bptrain.robustness, "evaluate_checkpoint_robustness", analysis_ran)
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib -> ImportError
    monkeypatch.chdir(tmp_path)
    config = _config(tmp_path, {"source": "moons", "n_samples": 64})
    result = runner.invoke(app, [*command, str(config), *plot])
    assert result.exit_code == 2, result.output
    assert "--plot needs matplotlib" in flat(result.output)


def test_lr_find_does_not_blame_the_lr_for_a_model_that_outputs_nan(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "nanmodel.py").write_text(
        "import torch\n"
        "class NaNOut(torch.nn.Module):\n"
        "    def __init__(self):\n"
        "        super().__init__()\n"
        "        self.fc = torch.nn.Linear(2, 2)\n"
        "    def forward(self, x):\n"
        "        return self.fc(x) * float('nan')\n"
    )
    monkeypatch.chdir(tmp_path)
    config = _config(
        tmp_path, {"source": "moons", "n_samples": 64}, model={"class_path": "nanmodel.NaNOut"}
    )
    result = runner.invoke(app, ["lr-find", str(config), "--steps", "20"])
    assert result.exit_code == 0, result.output
    text = flat(result.output)
    assert "before the learning rate could act" in text
    assert "does not come from the learning rate" in text and "lower --start-lr" not in text
