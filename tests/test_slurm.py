"""`bptrain submit`: the rendered batch script (the real-SLURM test is scripts/slurm/test_requeue.sh)."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
from typer.testing import CliRunner

from bptrain.cli import app
from bptrain.errors import UserError
from bptrain.slurm import EXAMPLES, JobSpec, render

ROOT = Path(__file__).resolve().parents[1]
QUICKSTART = ROOT / "configs" / "quickstart.yaml"
runner = CliRunner()


def _srun_words(script: str, tmp_path: Path) -> list[str]:
    """The words the batch shell passes to srun, after its own quoting and expansion."""
    fake_bin = tmp_path / "bin"
    fake_bin.mkdir()
    (fake_bin / "srun").write_text('#!/bin/sh\nprintf "%s\\n" "$@" > "$WORDS"\nexit 138\n')
    (fake_bin / "scontrol").write_text('#!/bin/sh\necho "scontrol $*" >> "$CALLS"\n')
    for tool in ("srun", "scontrol"):
        (fake_bin / tool).chmod(0o755)
    env = {
        **os.environ,
        "PATH": f"{fake_bin}:{os.environ['PATH']}",
        "WORDS": str(tmp_path / "words"),
        "CALLS": str(tmp_path / "calls"),
        "SLURM_JOB_ID": "4242",
        "SLURM_JOB_NODELIST": "node1",
    }
    result = subprocess.run(["bash", "-c", script], env=env, capture_output=True, text=True)
    assert result.returncode == 138, result.stderr  # the script exits with bptrain's code
    return (tmp_path / "words").read_text().splitlines()


def test_the_script_runs_one_rank_per_task_and_requeues_after_the_warning(tmp_path: Path) -> None:
    script = render(
        JobSpec(
            config=Path("/cfg/my run.yaml"),
            overrides=["optimizer.lr=3e-4", "model.hidden=[128, 64]", 'logging.progress="plain"'],
            job_name="exp",
            ntasks_per_node=2,
            time="30",
            python="/env/bin/python",
        )
    )
    assert "#SBATCH --signal=USR1@120" in script
    assert "#SBATCH --requeue" in script and "#SBATCH --time=30" in script
    assert "#SBATCH --partition" not in script  # options not given are left to the cluster
    words = _srun_words(script, tmp_path)
    rank_shell = words.index("bptrain-rank")
    assert words[:rank_shell] == [
        "--ntasks-per-node=2",
        "--kill-on-bad-exit=0",
        "bash",
        "-c",
        'export RANK=$SLURM_PROCID LOCAL_RANK=$SLURM_LOCALID WORLD_SIZE=$SLURM_NTASKS; exec "$@"',
    ]
    assert words[rank_shell + 1 :] == [
        "/env/bin/python",
        "-m",
        "bptrain",
        "fit",
        "/cfg/my run.yaml",
        "optimizer.lr=3e-4",
        "model.hidden=[128, 64]",
        'logging.progress="plain"',
        "logging.name=exp-job4242",  # one run per job, the same across requeues
        "--resume",
        "auto",
    ]
    assert (tmp_path / "calls").read_text().splitlines()[-1] == "scontrol requeue 4242"


def test_sigterm_requeues_only_when_asked(tmp_path: Path) -> None:
    spec = JobSpec(config=Path("c.yaml"))
    assert "    138)" in render(spec)
    spec.requeue_on_sigterm = True
    assert "    138|143)" in render(spec)


def test_one_process_per_gpu() -> None:
    script = render(JobSpec(config=Path("c.yaml"), nodes=2, gpus_per_node=4, cpus_per_task=8))
    assert "#SBATCH --ntasks-per-node=4" in script and "#SBATCH --gpus-per-node=4" in script
    assert "srun --ntasks-per-node=4 --cpus-per-task=8" in script
    assert "8 DDP process(es)" in script
    with pytest.raises(UserError, match="one process per GPU"):
        render(JobSpec(config=Path("c.yaml"), gpus_per_node=4, ntasks_per_node=2))


def test_a_bad_time_limit_is_refused() -> None:
    with pytest.raises(UserError, match="--time"):
        render(JobSpec(config=Path("c.yaml"), time="4h"))


@pytest.mark.parametrize("name", sorted(EXAMPLES))
def test_shipped_templates_are_rendered_by_submit(name: str) -> None:
    shipped = (ROOT / "scripts" / "slurm" / name).read_text()
    assert shipped == render(EXAMPLES[name]), (
        "regenerate with: python -m bptrain.slurm scripts/slurm"
    )
    subprocess.run(["bash", "-n", str(ROOT / "scripts" / "slurm" / name)], check=True)


def test_submit_dry_run_prints_the_script_for_the_config(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    result = runner.invoke(
        app,
        ["submit", str(QUICKSTART), "trainer.max_epochs=50", "--gpus-per-node=2", "--dry-run"],
    )
    assert result.exit_code == 0, result.output
    assert result.output.startswith("#!/bin/bash")
    assert "#SBATCH --job-name=quickstart" in result.output
    assert f"#SBATCH --chdir={tmp_path}" in result.output
    assert "trainer.max_epochs=50" in result.output


def test_submit_checks_the_config_first(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    result = runner.invoke(app, ["submit", str(QUICKSTART), "trainer.max_epoch=5", "--dry-run"])
    assert result.exit_code == 2
    assert "max_epoch" in result.output


def test_submit_without_slurm_says_what_to_do(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("PATH", str(tmp_path))  # no sbatch here
    result = runner.invoke(app, ["submit", str(QUICKSTART)])
    assert result.exit_code == 2
    assert "sbatch not found" in result.output and "--dry-run" in result.output
