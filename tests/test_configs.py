"""Every shipped config loads, documents what it shows and how to run it, and trains."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from rich.console import Console

from bptrain.config import load_config

CONFIGS_DIR = Path(__file__).resolve().parent.parent / "configs"
CONFIGS = sorted(CONFIGS_DIR.glob("**/*.yaml"))


def test_configs_are_shipped():
    assert len(CONFIGS) >= 10


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.stem)
def test_every_shipped_config_validates(path):
    load_config(path)


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.stem)
def test_every_shipped_config_says_what_to_expect_and_how_to_run_it(path):
    header = []
    for line in path.read_text().splitlines():
        if not line.startswith("#"):
            break
        header.append(line)
    text = "\n".join(header)
    assert "Expect" in text or path.stem == "imagefolder_example", path
    shown = path.relative_to(CONFIGS_DIR.parent).as_posix()
    assert shown in text, f"{path} does not show the command that runs it"


@pytest.fixture
def image_root(tmp_path):
    from PIL import Image

    for label in ("a", "b"):
        (tmp_path / "images" / label).mkdir(parents=True)
        for i in range(5):
            Image.fromarray(np.full((6, 6, 3), 40 * i, dtype=np.uint8)).save(
                tmp_path / "images" / label / f"{i}.png"
            )
    return tmp_path / "images"


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.stem)
def test_every_shipped_config_trains(path, tmp_path, image_root, monkeypatch):
    """Two optimizer steps and a validation pass of each config as shipped (data at full size)."""
    from bptrain.train import fit

    overrides = [
        f"logging.run_dir={tmp_path / 'runs'}",
        "logging.tensorboard=false",
        "trainer.max_steps=2",
    ]
    monkeypatch.chdir(
        CONFIGS_DIR.parent
    )  # configs/custom/ import their code from the repository root
    if path.stem == "imagefolder_example":
        overrides += [f"data.root={image_root}", "data.num_workers=0", "data.batch_size=4"]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        summary = fit(load_config(path, overrides), Console(quiet=True))
    finally:
        torch.set_num_threads(threads)
    assert summary["steps"] == 2
    assert np.isfinite(summary["final"]["val/loss"])
