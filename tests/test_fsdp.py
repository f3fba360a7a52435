"""FSDP2 on CPU with gloo (``trainer.strategy: fsdp``): real two-process runs through ``fit --nproc``.

FSDP with batch 32 on each of two ranks must train exactly like one process with batch 64 and
like DDP (losses and per-layer gradient norms), hold less per rank, resume bit-exactly, and
resume on another number of processes. Its checkpoints are sharded (every rank writes its
shard with DCP, ``bptrain/shards.py``) and every reader (eval, load_run, init_from,
``bptrain checkpoint consolidate``) reads them in one process.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from rich.console import Console
from safetensors.torch import load_file
from typer.testing import CliRunner

from bptrain.checkpoint import load_checkpoint
from bptrain.cli import app
from bptrain.config import load_config
from bptrain.errors import UserError
from bptrain.train import fit

ROOT = Path(__file__).resolve().parents[1]
QUICKSTART = ROOT / "configs" / "quickstart.yaml"
COMMON = [
    "model.dropout=0.0",
    "model.hidden=[64,32]",
    "trainer.max_epochs=3",
    "trainer.max_steps=50",
    "trainer.grad_clip={max_norm: 1.0}",  # the clipped norm must be the global one
    "trainer.accumulate_grad_batches=2",  # set_requires_gradient_sync on the first micro-batch
    "logging.tensorboard=false",
    'logging.progress="off"',
    "logging.log_every_n_steps=1",
]


def _launch(
    cwd: Path, *args: str, nproc: int = 2, env_extra: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    env["OMP_NUM_THREADS"] = "1"
    env.update(env_extra or {})
    return subprocess.run(
        [sys.executable, "-m", "bptrain", "fit", str(QUICKSTART), *args, "--nproc", str(nproc)],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


def _run_dir(runs: Path) -> Path:
    (run,) = [p for p in runs.glob("*/*") if p.is_dir()]
    return run


def _step_losses(run: Path) -> list[float]:
    lines = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return [r["train/loss"] for r in lines if r["type"] == "step"]


@pytest.fixture(scope="module")
def fsdp_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    cwd = tmp_path_factory.mktemp("fsdp")
    # a sharded checkpoint (format auto) every 7 steps: the shard directories replace each other
    every = ["trainer.checkpoint.every_n_steps=7", "trainer.checkpoint.save_top_k=2"]
    result = _launch(cwd, *COMMON, *every, "data.batch_size=16", "trainer.strategy=fsdp")
    assert result.returncode == 0, result.stdout + result.stderr
    return _run_dir(cwd / "runs")


def _layer_rows(run: Path) -> list[list[float]]:
    lines = [json.loads(line) for line in (run / "grad_norms.jsonl").read_text().splitlines()]
    assert lines[0] == {"layers": ["net.0", "net.2", "net.4"]}
    return [r["grad_norm"] + r["update_ratio"] for r in lines[1:]]


def test_fsdp_trains_like_one_process_and_like_ddp(fsdp_run, tmp_path, monkeypatch):
    cwd = tmp_path / "ddp"
    cwd.mkdir()
    ddp = _launch(cwd, *COMMON, "data.batch_size=16", "trainer.strategy=ddp")
    assert ddp.returncode == 0, ddp.stdout + ddp.stderr
    monkeypatch.chdir(tmp_path)
    single = fit(load_config(QUICKSTART, [*COMMON, "data.batch_size=32"]), Console(quiet=True))
    ours, theirs = _step_losses(fsdp_run), _step_losses(_run_dir(cwd / "runs"))
    reference = _step_losses(Path(single["run_dir"]))
    assert len(ours) == len(theirs) == len(reference) == 50
    assert ours == pytest.approx(reference, rel=1e-5)
    assert ours == pytest.approx(theirs, rel=1e-5)
    # per-layer norms and update ratios of the whole layers, not of one rank's slices
    # (grad_norms.jsonl keeps 4 significant digits)
    layers, ddp_layers = _layer_rows(fsdp_run), _layer_rows(_run_dir(cwd / "runs"))
    assert len(layers) == len(ddp_layers) == 50
    for mine, ddp, one in zip(
        layers, ddp_layers, _layer_rows(Path(single["run_dir"])), strict=True
    ):
        assert mine == pytest.approx(ddp, rel=2e-3) and mine == pytest.approx(one, rel=2e-3)


def test_fsdp_holds_at_most_0_6_of_ddp_per_rank(fsdp_run, tmp_path):
    ddp = _launch(tmp_path, *COMMON, "trainer.max_steps=2", "data.batch_size=16")
    assert ddp.returncode == 0, ddp.stderr
    sharded = json.loads((fsdp_run / "summary.json").read_text())["memory_per_rank"]
    replicated = json.loads((_run_dir(tmp_path / "runs") / "summary.json").read_text())
    assert sharded["total"] <= 0.6 * replicated["memory_per_rank"]["total"]


def test_every_rank_writes_its_shard_and_the_run_keeps_only_named_shards(fsdp_run):
    ckpts = fsdp_run / "checkpoints"
    pointer = load_checkpoint(ckpts / "last.pt", shards=())  # the file alone, weights_only
    assert pointer["format_version"] == 3
    assert pointer["model"] is None and pointer["optimizer"] is None
    assert pointer["shards"]["world_size"] == 2 and pointer["progress"]["step"] == 50
    shard_dir = ckpts / pointer["shards"]["dir"]
    assert sorted(p.name for p in shard_dir.iterdir()) == [
        ".metadata",
        "__0_0.distcp",
        "__1_0.distcp",
    ]
    # every 7 steps wrote a directory; only those a checkpoint file names are left, none half-written
    named = {load_checkpoint(p, shards=())["shards"]["dir"] for p in ckpts.glob("*.pt")}
    assert {p.name for p in ckpts.glob("*.dcp")} == named
    assert not list(ckpts.glob(".*"))


def test_eval_load_run_and_init_from_read_a_sharded_checkpoint(fsdp_run, tmp_path, monkeypatch):
    last = fsdp_run / "checkpoints" / "last.pt"
    final = load_file(fsdp_run / "checkpoints" / "last.safetensors")  # the run's final weights
    full = load_checkpoint(last)  # the shards read in this one process
    assert full["model"].keys() == final.keys()
    assert all(torch.equal(full["model"][k], v) for k, v in final.items())
    summary = json.loads((fsdp_run / "summary.json").read_text())
    config = str(fsdp_run / "config.yaml")
    args = ["eval", config, "trainer.strategy=auto", "--checkpoint", str(last), "--json"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert (
        json.loads(result.output.strip().splitlines()[-1])["val/acc"] == summary["final"]["val/acc"]
    )
    from bptrain.api import load_run

    loaded = load_run(fsdp_run, quiet=True)  # its best.pt: a sharded checkpoint too
    assert loaded.model(torch.zeros(3, 64)).shape == (3, 10)
    monkeypatch.chdir(tmp_path)
    cfg = load_config(QUICKSTART, [*COMMON, "trainer.max_steps=1", f"model.init_from={last}"])
    assert fit(cfg, Console(quiet=True))["steps"] == 1


def test_consolidate_writes_one_file_that_resume_and_eval_read(fsdp_run, tmp_path):
    out, weights = tmp_path / "full.pt", tmp_path / "weights.safetensors"
    runner = CliRunner()
    result = runner.invoke(app, ["checkpoint", "consolidate", str(fsdp_run), "--output", str(out)])
    assert result.exit_code == 0, result.output
    last = str(fsdp_run / "checkpoints" / "last.pt")
    args = ["checkpoint", "consolidate", last, "--format", "safetensors", "--output", str(weights)]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    full, final = load_checkpoint(out), load_file(fsdp_run / "checkpoints" / "last.safetensors")
    assert "shards" not in full and full["format_version"] == 2
    assert all(torch.equal(full["model"][k], v) for k, v in final.items())
    assert all(torch.equal(load_file(weights)[k], v) for k, v in final.items())
    assert set(full["optimizer"]["state"]) == set(final)  # every parameter's AdamW moments
    assert full["progress"]["step"] == 50 and full["rng"] is not None
    # a consolidated file resumes under fsdp as a full checkpoint does (here: nothing left to train)
    resumed = _launch(
        tmp_path, *COMMON, "data.batch_size=16", "trainer.strategy=fsdp", "--resume", str(out)
    )
    assert resumed.returncode == 0, resumed.stderr
    assert json.loads((_run_dir(tmp_path / "runs") / "summary.json").read_text())["steps"] == 50


def _copy_checkpoint(fsdp_run: Path, tmp_path: Path) -> tuple[Path, Path]:
    import shutil

    ckpts = tmp_path / "checkpoints"
    shutil.copytree(fsdp_run / "checkpoints", ckpts)
    last = ckpts / "last.pt"
    return last, ckpts / load_checkpoint(last, shards=())["shards"]["dir"]


def _eval(fsdp_run: Path, checkpoint: Path):
    return CliRunner().invoke(
        app,
        [
            "eval",
            str(fsdp_run / "config.yaml"),
            "trainer.strategy=auto",
            "--checkpoint",
            str(checkpoint),
        ],
    )


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        ("missing", "shard directory .* is missing"),
        ("unfinished", "incomplete \\(no .metadata: its write never finished\\)"),
        ("truncated", "damaged or incomplete"),
        ("garbage_index", "damaged or incomplete"),
    ],
)
def test_a_damaged_sharded_checkpoint_is_a_clear_error(fsdp_run, tmp_path, damage, message):
    import shutil

    last, shard_dir = _copy_checkpoint(fsdp_run, tmp_path)
    if damage == "missing":
        shutil.rmtree(shard_dir)
    elif damage == "unfinished":  # what a kill before the index was written leaves
        (shard_dir / ".metadata").unlink()
    elif damage == "truncated":
        shard = shard_dir / "__1_0.distcp"
        shard.write_bytes(shard.read_bytes()[:100])
    else:
        (shard_dir / ".metadata").write_bytes(b"not a pickle at all")
    result = _eval(fsdp_run, last)
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    import re

    assert re.search(message, " ".join(result.output.split())), result.output


def test_a_crafted_shard_index_is_refused_and_never_runs(fsdp_run, tmp_path):
    import os
    import pickle

    class Payload:
        def __reduce__(self):
            return (os.system, (f"touch {tmp_path / 'PWNED'}",))

    last, shard_dir = _copy_checkpoint(fsdp_run, tmp_path)
    (shard_dir / ".metadata").write_bytes(pickle.dumps(Payload()))
    result = _eval(fsdp_run, last)
    assert result.exit_code == 2, result.output
    assert "not a DCP metadata record" in " ".join(result.output.split())
    assert not (tmp_path / "PWNED").exists()


def test_fsdp_resume_is_bit_exact_and_continues_on_another_world_size(tmp_path):
    fsdp = [*COMMON, "data.batch_size=16", "trainer.strategy=fsdp", "scheduler={name: none}"]
    (tmp_path / "a").mkdir(), (tmp_path / "b").mkdir()
    straight = _launch(tmp_path / "a", *fsdp)
    assert straight.returncode == 0, straight.stderr
    first = _launch(tmp_path / "b", *fsdp, "trainer.max_epochs=1")  # stops at an epoch end
    assert first.returncode == 0, first.stderr
    run = _run_dir(tmp_path / "b" / "runs")
    resumed = _launch(tmp_path / "b", *fsdp, "--resume", str(run))
    assert resumed.returncode == 0, resumed.stderr
    # bit for bit on the same world size
    assert _step_losses(run) == _step_losses(_run_dir(tmp_path / "a" / "runs"))
    # 2 -> 1 -> 2 processes: DCP reshards the checkpoint onto the ranks there are; the run
    # finishes its configured steps. The middle leg writes format full: each format reads the other.
    more = ["trainer.max_epochs=5", "trainer.max_steps=60", "--resume", str(run)]
    one = _launch(tmp_path / "b", *fsdp, *more, "trainer.checkpoint.format=full", nproc=1)
    assert one.returncode == 0, one.stderr
    assert json.loads((run / "summary.json").read_text())["steps"] == 60
    full = load_checkpoint(run / "checkpoints" / "last.pt", shards=())
    assert full["shards"] is None and full["model"]["net.0.weight"].shape == (64, 64)
    more = ["trainer.max_epochs=5", "trainer.max_steps=70", "--resume", str(run)]
    two = _launch(tmp_path / "b", *fsdp, *more, nproc=2)
    assert two.returncode == 0, two.stderr
    assert json.loads((run / "summary.json").read_text())["steps"] == 70
    # the 1-process leg stopped mid-epoch: the 2 processes continue after the same samples
    assert "written by 1 process(es) mid-epoch" in " ".join(two.stdout.split()), two.stdout


def test_without_last_pt_shard_directories_do_not_pile_up(tmp_path):
    """save_last false: best.pt alone names a shard directory; the epoch ends' others are pruned
    (before, one full copy per epoch stayed forever), and the final export writes none."""
    args = [*COMMON, "data.batch_size=32", "trainer.strategy=fsdp", "trainer.max_epochs=4"]
    args += ["trainer.max_steps=1000", "trainer.checkpoint.save_last=false"]
    result = _launch(tmp_path, *args)
    assert result.returncode == 0, result.stdout + result.stderr
    ckpts = _run_dir(tmp_path / "runs") / "checkpoints"
    assert not (ckpts / "last.pt").exists()
    named = {load_checkpoint(p, shards=())["shards"]["dir"] for p in ckpts.glob("*.pt")}
    left = {p.name for p in ckpts.glob("step-*.dcp")}
    assert named and named <= left
    assert len(left - named) <= 1  # at most the newest, kept while a file may still name it


FULL_DISK_ON_RANK_1 = """
import errno, os
if os.environ.get("RANK") == "1":
    from torch.distributed.checkpoint import filesystem
    writes = []
    def write_data(self, plan, planner, _original=filesystem.FileSystemWriter.write_data):
        writes.append(1)
        if len(writes) >= 2:  # the second checkpoint: the first one must survive
            raise OSError(errno.ENOSPC, "No space left on device")
        return _original(self, plan, planner)
    filesystem.FileSystemWriter.write_data = write_data
"""


def test_a_full_disk_on_one_rank_ends_fit_with_one_line_on_every_rank(tmp_path):
    """DCP wraps a rank's OSError in a CheckpointException (a BaseException): before, a
    traceback escaped fit. Now exit 1 with the cause, and the previous last.pt still loads."""
    hook = tmp_path / "hook"
    hook.mkdir()
    (hook / "sitecustomize.py").write_text(FULL_DISK_ON_RANK_1)
    path = os.pathsep.join([str(hook), str(ROOT), os.environ.get("PYTHONPATH", "")])
    args = [*COMMON, "data.batch_size=16", "trainer.strategy=fsdp"]
    args += ["trainer.checkpoint.every_n_steps=5", "logging.report=false"]
    result = _launch(tmp_path, *args, env_extra={"PYTHONPATH": path})
    output = result.stdout + result.stderr
    assert result.returncode == 1, output
    assert "Traceback" not in output and "CheckpointException" not in output, output
    assert "could not write the shards of step 10" in " ".join(output.split()), output
    assert "on rank 1: [Errno 28] No space left on device" in " ".join(output.split()), output
    last = load_checkpoint(_run_dir(tmp_path / "runs") / "checkpoints" / "last.pt")
    assert last["progress"]["step"] == 5 and last["model"]["net.0.weight"].shape == (64, 64)


def test_evaluation_of_a_wrapped_fsdp_model_keeps_autograd_tensors(tmp_path):
    """A wrapper around the FSDP root (a model's own training_step runs through StepModule)
    must get no_grad, as the root does: inference tensors would break the next training step."""
    import torch.distributed as dist
    from torch.distributed.fsdp import fully_shard

    from bptrain.evaluate import _without_autograd

    dist.init_process_group(
        "gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1
    )
    try:
        inner = fully_shard(torch.nn.Sequential(torch.nn.Linear(2, 2)))
        wrapper = torch.nn.ModuleDict({"model": inner})
        assert isinstance(_without_autograd(inner), torch.no_grad)
        assert isinstance(_without_autograd(wrapper), torch.no_grad)
        assert isinstance(_without_autograd(torch.nn.Linear(2, 2)), torch.inference_mode)
    finally:
        dist.destroy_process_group()


def test_fsdp_refuses_fp16_and_an_unlaunched_process(tmp_path):
    with pytest.raises(UserError, match="fsdp with precision fp16"):
        load_config(QUICKSTART, ["trainer.strategy=fsdp", "trainer.precision=fp16"])
    with pytest.raises(UserError, match="format sharded needs strategy fsdp"):
        load_config(QUICKSTART, ["trainer.checkpoint.format=sharded"])
    cfg = load_config(QUICKSTART, ["trainer.strategy=fsdp", f"logging.run_dir={tmp_path}"])
    with pytest.raises(UserError, match="not started by a distributed launcher"):
        fit(cfg, Console(quiet=True))


@pytest.mark.slow
@pytest.mark.skipif(os.environ.get("BPTRAIN_SLOW") != "1", reason="slow: run with BPTRAIN_SLOW=1")
def test_sigkill_during_sharded_writes_leaves_a_loadable_checkpoint(tmp_path):
    """SIGKILL the launcher and both ranks while they write shards every step, twice; each time
    last.pt and the directory it names load, and the resumed run finishes (minutes: slow)."""
    import random
    import signal
    import time

    args = [*COMMON, "data.batch_size=16", "trainer.strategy=fsdp", "trainer.max_epochs=20"]
    args += ["trainer.max_steps=120", "trainer.checkpoint.every_n_steps=1", "logging.report=false"]
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    env["OMP_NUM_THREADS"] = "1"
    command = [sys.executable, "-m", "bptrain", "fit", str(QUICKSTART), *args, "--nproc", "2"]
    rng, killed_at = random.Random(0), -1
    for kill in range(2):
        proc = subprocess.Popen(
            [*command, "--resume", "auto"] if kill else command, cwd=tmp_path, env=env,
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        deadline = time.monotonic() + 600
        while _newest_step(tmp_path) <= killed_at + 2:  # training (and writing) again
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                pytest.fail(f"the run ended or stalled: {proc.communicate()[1][-2000:]}")
            time.sleep(0.2)
        time.sleep(rng.uniform(0.0, 1.0))
        for pid in [proc.pid, *_descendants(proc.pid)]:  # the launcher and both ranks
            os.kill(pid, signal.SIGKILL)
        proc.communicate()
        last = load_checkpoint(_run_dir(tmp_path / "runs") / "checkpoints" / "last.pt")
        assert last["model"]["net.0.weight"].shape == (64, 64)  # complete, shards and all
        killed_at = last["progress"]["step"]
    done = _launch(tmp_path, *args, "--resume", "auto")
    assert done.returncode == 0, done.stderr
    assert json.loads((_run_dir(tmp_path / "runs") / "summary.json").read_text())["steps"] == 120


def _newest_step(cwd: Path) -> int:
    runs = [p for p in cwd.glob("runs/*/*/checkpoints/last.pt")]
    try:
        return load_checkpoint(runs[0], shards=())["progress"]["step"] if runs else -1
    except UserError:
        return -1


def _descendants(pid: int) -> list[int]:
    """Every process below `pid` (torch's launcher may start its workers in their own sessions)."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found
