"""Start-up stays light: the help and config commands never import torch (behaviour, not timing).

Each case runs the CLI in a fresh interpreter and reports which heavy modules ended up in
``sys.modules``; the timings themselves live in scripts/bench.py and docs/benchmarks.md.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

HEAVY = ("torch", "pydantic", "rich", "tensorboard", "numpy", "yaml")

RUN_CLI = """
from bptrain.cli import app
try:
    app()
except SystemExit as stop:
    code = stop.code
else:
    code = 0
"""

PROBE = (
    """
import json, sys
heavy = json.loads(sys.argv[2])
sys.argv = ["bptrain", *json.loads(sys.argv[1])]
"""
    + RUN_CLI
    + """
loaded = sorted({name.split(".")[0] for name in sys.modules} & set(heavy))
sys.stderr.write("PROBE " + json.dumps({"code": code, "loaded": loaded}) + "\\n")
"""
)


def imported_by(*args: str) -> tuple[int, set[str]]:
    """Run `bptrain ARGS` in a new interpreter; return (exit code, heavy top-level modules imported)."""
    report = probe(PROBE, json.dumps(list(args)), json.dumps(HEAVY))
    return report["code"] or 0, set(report["loaded"])


def probe(script: str, *args: str, timeout: int = 120) -> dict:
    """Run `script` in a new interpreter; the JSON it wrote on stderr after "PROBE "."""
    result = subprocess.run(
        [sys.executable, "-c", script, *args], capture_output=True, text=True, timeout=timeout
    )
    lines = [line for line in result.stderr.splitlines() if line.startswith("PROBE ")]
    assert lines, f"the probe did not finish:\n{result.stderr[-2000:]}"
    return json.loads(lines[-1][len("PROBE ") :])


@pytest.fixture
def config_file(tmp_path: Path) -> Path:
    path = tmp_path / "tiny.yaml"
    path.write_text("data: {source: moons}\nmodel: {hidden: [8]}\n", encoding="utf-8")
    return path


def test_top_level_help_imports_neither_torch_nor_pydantic_nor_rich():
    code, loaded = imported_by("--help")
    assert code == 0
    assert loaded.isdisjoint({"torch", "pydantic", "rich", "tensorboard", "numpy"}), loaded


@pytest.mark.parametrize("command", [["fit"], ["eval"], ["grad-inspect"], ["config"]])
def test_command_help_never_imports_torch(command: list[str]):
    code, loaded = imported_by(*command, "--help")
    assert code == 0
    assert "torch" not in loaded and "tensorboard" not in loaded, loaded


def test_config_validate_and_show_never_import_torch(config_file: Path):
    for command in (["config", "validate"], ["config", "show"]):
        code, loaded = imported_by(*command, str(config_file))
        assert code == 0, command
        assert "pydantic" in loaded  # the probe sees real work being done
        assert "torch" not in loaded and "numpy" not in loaded, (command, loaded)


def test_config_schema_never_imports_torch():
    code, loaded = imported_by("config", "schema")
    assert code == 0
    assert "torch" not in loaded, loaded


def test_a_bad_config_is_reported_without_importing_torch(tmp_path: Path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("data: {source: moons}\ntrainer: {max_epochs: 0}\n", encoding="utf-8")
    code, loaded = imported_by("config", "validate", str(bad))
    assert code == 2
    assert "torch" not in loaded, loaded


GC_PROBE = (
    """
import gc, json, sys
full = []
gc.callbacks.append(lambda phase, info: phase == "stop" and info["generation"] == 2 and full.append(1))
sys.argv = ["bptrain", "fit", sys.argv[1], "logging.tensorboard=false", "logging.progress=off"]
"""
    + RUN_CLI
    + """
sys.stderr.write("PROBE " + json.dumps({"code": code, "full": len(full), "enabled": gc.isenabled()}) + "\\n")
"""
)


def test_fit_start_up_makes_no_full_collection_and_leaves_the_collector_on(tmp_path: Path):
    """Set-up allocates ~300,000 long-lived objects (torch, pydantic, the run): each full
    collection walked them all, five times in a start-up (~0.4 s of 2 cores). `fit` holds
    collection off until training begins and freezes what set-up built (bptrain/collector.py)."""
    config = tmp_path / "tiny.yaml"
    config.write_text(
        f"data: {{source: moons, n_samples: 64}}\nmodel: {{hidden: [8]}}\n"
        f"trainer: {{max_epochs: 1}}\nlogging: {{run_dir: {tmp_path / 'runs'}}}\n"
    )
    report = probe(GC_PROBE, str(config), timeout=300)
    assert report == {"code": 0, "full": 0, "enabled": True}, report


def test_fit_from_python_hands_the_frozen_objects_back(tmp_path: Path):
    """The Python API (and a search running trials in one process) goes on after fit: nothing
    stays frozen, so each run's leftovers can be collected."""
    import gc

    from rich.console import Console

    from bptrain.config import load_config
    from bptrain.train import fit

    config = tmp_path / "tiny.yaml"
    config.write_text("data: {source: moons, n_samples: 64}\nmodel: {hidden: [8]}\n")
    cfg = load_config(
        config,
        [f"logging.run_dir={tmp_path / 'runs'}", "trainer.max_epochs=1", "logging.progress=off"],
    )
    fit(cfg, Console(quiet=True))
    assert gc.get_freeze_count() == 0 and gc.isenabled()


TEARDOWN_PROBE = """
import gc, json, os, sys, weakref
import torch.distributed as dist
from bptrain import collector
from bptrain.distributed import teardown
collector.hold()  # what `bptrain fit` does: set-up's objects are frozen when training begins
class Reducer:  # stands for the DDP wrapper: a reference cycle made during set-up
    pass
reducer = Reducer()
reducer.cycle = reducer
alive = weakref.ref(reducer)
del reducer
os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=sys.argv[1])
dist.init_process_group("gloo", rank=0, world_size=1)
collector.training_begins()
collector.training_ends()  # a command: the frozen objects stay frozen until the process ends
teardown(wait_for_all_ranks=True)
sys.stderr.write("PROBE " + json.dumps({"freed": alive() is None}) + "\\n")
"""


def test_ddp_teardown_frees_what_set_up_left_frozen():
    """`bptrain fit` freezes set-up's objects (collector.py), the DDP wrapper among them; left to
    interpreter shutdown, gloo's threads can abort the process (SIGABRT: exit 134 after a
    finished run, seen in tests/test_distributed.py). teardown frees them before the group goes."""
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    assert probe(TEARDOWN_PROBE, str(port)) == {"freed": True}
