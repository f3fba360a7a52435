"""``scripts/bench.py --gpu`` on a machine without CUDA: ``--dry-run`` lists the plan, a plain
``--gpu`` says clearly that it runs nothing, and both exit 0 (the GPU figures are taken on a GPU
machine; timings never live in tests)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

SCRIPTS = Path(__file__).resolve().parents[1] / "scripts"


def _bench(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(SCRIPTS / "bench.py"), *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_plan_covers_precision_optimizer_compile_and_strategies() -> None:
    sys.path.insert(0, str(SCRIPTS))
    try:
        from benchmarks.gpu import plan
    finally:
        sys.path.remove(str(SCRIPTS))
    one, two = plan(1), plan(4)
    assert {v.group for v in one} == {"precision", "optimizer", "compile", "strategy"}
    assert [v.nproc for v in one if v.group == "strategy"] == [1, 1]
    assert [v.nproc for v in two if v.group == "strategy"] == [2, 2]
    names = {v.name for v in one}
    assert all(v.baseline is None or v.baseline in names for v in one)
    fsdp = next(v for v in two if "FSDP" in v.name)
    assert "trainer.strategy=fsdp" in fsdp.overrides and fsdp.baseline.startswith("DDP")
    assert not [v for v in plan(1, "cpu") if v.group == "compile"]  # the CPU check: no compile


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the behaviour without CUDA")
def test_gpu_dry_run_lists_the_plan_and_runs_nothing(tmp_path: Path) -> None:
    out = _bench("--gpu", "--dry-run", cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-2000:]
    for expected in ("bf16", "fused AdamW", "torch.compile", "DDP", "FSDP", "torchrun"):
        assert expected in out.stdout
    assert "no CUDA device" in out.stdout
    assert list(tmp_path.iterdir()) == []  # nothing written


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the behaviour without CUDA")
def test_gpu_without_cuda_says_so_and_exits_0(tmp_path: Path) -> None:
    out = _bench("--gpu", cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "no CUDA device here" in out.stdout and "runs nothing" in out.stdout
    assert not (tmp_path / "bench-gpu.json").exists()
