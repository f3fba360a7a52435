"""Sharded checkpoint writing and reading (``bptrain/shards.py``) without a whole training run.

``write_shards`` is driven in a two-process gloo group (``tests/shard_worker.py``: one launch,
a few seconds) with a failure injected on one rank; the index reader, pruning,
``referenced_shards`` and ``consolidate`` need no process group at all.
"""

from __future__ import annotations

import json
import os
import pickle
import socket
import subprocess
import sys
from pathlib import Path, PurePosixPath

import pytest
import torch

from bptrain.errors import UserError

ROOT = Path(__file__).resolve().parents[1]
WORKER = Path(__file__).with_name("shard_worker.py")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[dict]]:
    directory = tmp_path_factory.mktemp("shards")
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    env.update(
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(_free_port()),
        WORLD_SIZE="2",
        OMP_NUM_THREADS="1",
        PYTHONPATH=os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")]),
    )
    procs = [
        subprocess.Popen(
            [sys.executable, str(WORKER), str(directory)],
            env={**env, "RANK": str(rank), "LOCAL_RANK": str(rank)},
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for rank in range(2)
    ]
    outputs = []
    for proc in procs:
        try:
            outputs.append(proc.communicate(timeout=120)[0])
        except subprocess.TimeoutExpired:
            for other in procs:
                other.kill()
            pytest.fail("the two ranks deadlocked in write_shards")
    for proc, output in zip(procs, outputs, strict=True):
        assert proc.returncode == 0, output[-3000:]
    results = [json.loads((directory / f"result-{r}.json").read_text()) for r in range(2)]
    return directory, results


def test_a_write_at_an_already_written_step_gets_its_own_directory(two_ranks):
    """A resumed run reaching a step an earlier run wrote must write its own state, not reuse
    the earlier run's directory (its last.pt would silently name the old weights)."""
    from bptrain.shards import read_shards

    directory, results = two_ranks
    first, again = results[0]["first"]["ok"], results[0]["again"]["ok"]
    assert results[1]["first"]["ok"] == first and results[1]["again"]["ok"] == again
    assert first != again
    assert first.startswith("step-000000005-") and again.startswith("step-000000005-")
    old, new = read_shards(directory / first)["model"], read_shards(directory / again)["model"]
    assert any(not torch.equal(old[k], new[k]) for k in old)


@pytest.mark.parametrize("failure", ["write_fails", "rename_fails"])
def test_a_failed_shard_write_is_one_training_error_on_every_rank(two_ranks, failure):
    directory, results = two_ranks
    for result in results:
        seen = result[failure]
        assert seen.get("error") == "TrainingError", seen
        assert "could not write the shards of step" in seen["message"]
        assert "previous checkpoint is intact" in seen["message"]
        assert "\n" not in seen["message"]
    assert "on rank 1: [Errno 28] No space left on device" in results[0]["write_fails"]["message"]
    assert "on rank 0: [Errno 13] Permission denied" in results[1]["rename_fails"]["message"]
    # no half-written directory, and the group still works for the next checkpoint
    assert not list(directory.glob(".*.tmp")) and not list(directory.glob("step-00000000[67]*"))
    assert results[0]["after"]["ok"].startswith("step-000000008-")


def _make_dirs(directory: Path, *names: str) -> None:
    for name in names:
        (directory / name).mkdir()


def test_prune_orders_directories_by_step_and_keeps_named_and_later_ones(tmp_path):
    from bptrain.shards import prune

    old = "step-000000007.dcp"  # written before directories had a token
    same_step = "step-000000012-ffffff.dcp"  # an earlier run's, at the step being written now
    _make_dirs(tmp_path, old, "step-000000010-000001.dcp", same_step)
    _make_dirs(tmp_path, "step-000000012-000000.dcp", "step-000000020-aaaaaa.dcp")
    removed = prune(tmp_path, {"step-000000010-000001.dcp"}, keep_from="step-000000012-000000.dcp")
    assert sorted(p.name for p in removed) == [old, same_step]
    left = sorted(p.name for p in tmp_path.iterdir())
    assert left == [
        "step-000000010-000001.dcp",
        "step-000000012-000000.dcp",
        "step-000000020-aaaaaa.dcp",
    ]


def _build_on_class() -> bytes:
    """A pickle that BUILDs ``PurePosixPath`` itself: ``as_posix`` set to ``frozenset``."""
    name = b"as_posix"
    return (
        b"\x80\x02cpathlib\nPurePosixPath\nN}X"
        + len(name).to_bytes(4, "little")
        + name
        + b"cbuiltins\nfrozenset\ns\x86b."
    )


def test_a_shard_index_cannot_set_attributes_on_an_allowed_class(tmp_path):
    from bptrain.shards import SafeReader

    assert "as_posix" not in vars(PurePosixPath)  # inherited from PurePath
    (tmp_path / ".metadata").write_bytes(_build_on_class())
    try:
        with pytest.raises(UserError, match="refusing to read .* sets attributes of PurePosixPath"):
            SafeReader(tmp_path).read_metadata()
        assert "as_posix" not in vars(PurePosixPath)
        assert PurePosixPath("a/b").as_posix() == "a/b"
    finally:  # repair the process if the file got through
        if "as_posix" in vars(PurePosixPath):
            delattr(PurePosixPath, "as_posix")


def test_a_real_shard_index_still_reads(two_ranks):
    from torch.distributed.checkpoint import metadata

    from bptrain.shards import SafeReader

    directory, results = two_ranks
    found = SafeReader(directory / results[0]["after"]["ok"]).read_metadata()
    assert isinstance(found, metadata.Metadata) and found.state_dict_metadata


def test_referenced_shards_maps_files_and_never_loads_them_whole(tmp_path, monkeypatch):
    from bptrain import sharding

    torch.save({"shards": {"dir": "step-000000003-abcdef.dcp"}, "model": None}, tmp_path / "a.pt")
    torch.save({"model": {"w": torch.zeros(1000)}, "format_version": 2}, tmp_path / "full.pt")
    (tmp_path / "garbage.pt").write_bytes(b"not a checkpoint")
    calls = []
    load = torch.load

    def spy(*args, **kwargs):
        calls.append(kwargs)
        return load(*args, **kwargs)

    monkeypatch.setattr(torch, "load", spy)
    assert sharding.referenced_shards(tmp_path) == {"step-000000003-abcdef.dcp"}
    assert calls and all(c.get("weights_only") is True and c.get("mmap") is True for c in calls)


def test_a_pickle_that_runs_code_is_still_not_a_shard_pointer(tmp_path):
    from bptrain import sharding

    class Payload:
        def __reduce__(self):
            return (os.system, (f"touch {tmp_path / 'PWNED'}",))

    (tmp_path / "evil.pt").write_bytes(pickle.dumps({"shards": Payload()}))
    assert sharding.referenced_shards(tmp_path) == set()
    assert not (tmp_path / "PWNED").exists()


@pytest.fixture()
def full_run(tmp_path: Path) -> Path:
    """A full (unsharded) last.pt beside the run's own last.safetensors export."""
    from safetensors.torch import save_file

    ckpts = tmp_path / "checkpoints"
    ckpts.mkdir()
    state = {"model": {"w": torch.ones(3)}, "progress": {"epoch": 1, "step": 4}, "shards": None}
    torch.save({**state, "format_version": 2}, ckpts / "last.pt")
    save_file({"w": torch.full((3,), 7.0)}, ckpts / "last.safetensors")
    return ckpts


@pytest.mark.parametrize("fmt", ["pt", "safetensors"])
def test_consolidating_a_full_checkpoint_writes_beside_it_and_overwrites_nothing(full_run, fmt):
    from safetensors.torch import load_file
    from typer.testing import CliRunner

    from bptrain.cli import app

    export = (full_run / "last.safetensors").read_bytes()
    args = ["checkpoint", "consolidate", str(full_run / "last.pt"), "--format", fmt]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    written = full_run / f"last.consolidated.{fmt}"
    assert written.is_file()
    assert (full_run / "last.safetensors").read_bytes() == export  # the run's export untouched
    if fmt == "safetensors":
        assert torch.equal(load_file(written)["w"], torch.ones(3))
    again = CliRunner().invoke(app, args)  # the default output exists now: refused, kept
    assert again.exit_code == 2, again.output
    assert "already exists" in " ".join(again.output.split())
    assert "Traceback" not in again.output
