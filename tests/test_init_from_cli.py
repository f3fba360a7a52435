"""`model.init_from` through `bptrain fit`, for every built-in model kind and a class_path model.

Each case trains a tiny run, then fits a second run (another seed, so its own initialisation differs)
with ``model.init_from=<the first run's last.pt or last.safetensors>`` and a learning rate too small
to move the weights: the second run's weights must be the first run's.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file

SEQUENCES = {"source": "sine_series", "n_samples": 48, "length": 8, "batch_size": 16}
CASES: dict[str, tuple[dict[str, Any], dict[str, Any]]] = {
    "mlp": ({}, {"name": "mlp", "hidden": [8]}),
    "cnn": (
        {"source": "shapes", "n_samples": 48, "image_size": 8, "batch_size": 16},
        {"name": "cnn", "channels": [4, 8]},
    ),
    "cnn1d": (SEQUENCES, {"name": "cnn1d", "channels": [4]}),
    "rnn": (SEQUENCES, {"name": "rnn", "hidden_size": 8}),
    "transformer": (
        {"source": "majority", "n_samples": 48, "length": 6, "vocab": 4, "batch_size": 16},
        {"name": "transformer", "d_model": 8, "num_heads": 2, "num_layers": 1, "vocab_size": 4},
    ),
    "class_path": ({}, {"class_path": "initfromnet.Net", "init_args": {"width": 8}}),
}
CUSTOM_MODULE = """
from torch import nn

class Net(nn.Module):
    def __init__(self, width: int):
        super().__init__()
        self.body = nn.Sequential(nn.Linear(2, width), nn.Tanh(), nn.Linear(width, 3))

    def forward(self, x):
        return self.body(x)
"""


def _run(tmp_path: Path, name: str) -> Path:
    (run,) = (tmp_path / "runs" / name).iterdir()
    return run


def _params(run: Path) -> dict[str, torch.Tensor]:
    return load_file(run / "checkpoints" / "last.safetensors")


@pytest.mark.parametrize("kind", list(CASES))
def test_fit_starts_from_init_from_weights(kind, write_config, cli, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    (tmp_path / "initfromnet.py").write_text(CUSTOM_MODULE)
    data, model = CASES[kind]
    base = {"data": data, "=model": model, "trainer": {"max_epochs": 1}}
    first = cli("fit", write_config(base, name="source"))
    assert first.exit_code == 0, first.output
    source = _run(tmp_path, "source")
    # A .pt checkpoint for the built-ins with an even index, the .safetensors export for the others.
    file = "last.pt" if list(CASES).index(kind) % 2 == 0 else "last.safetensors"
    weights = source / "checkpoints" / file

    tuned = {"seed": 1, "optimizer": {"name": "sgd", "lr": 1e-12}}
    second = cli("fit", write_config({**base, **tuned}, name="tuned"), f"model.init_from={weights}")
    assert second.exit_code == 0, second.output
    # Rich may wrap the line (and a long path) anywhere: compare without whitespace.
    assert f"initialisedweightsfrom{weights}" in "".join(second.output.split())
    start, after = _params(source), _params(_run(tmp_path, "tuned"))
    assert start.keys() == after.keys()
    for key in start:
        if not key.endswith(("running_mean", "running_var", "num_batches_tracked")):
            torch.testing.assert_close(after[key], start[key], rtol=0, atol=1e-6, msg=key)


def test_init_strict_on_an_rnn_refuses_or_reports_missing_keys(write_config, cli, tmp_path):
    """A deeper rnn from a one-layer run: strict (the default) refuses with exit 2, init_strict=false loads and reports."""
    base = {"data": SEQUENCES, "=model": CASES["rnn"][1], "trainer": {"max_epochs": 1}}
    assert cli("fit", write_config(base, name="source")).exit_code == 0
    weights = _run(tmp_path, "source") / "checkpoints" / "last.pt"
    deeper = write_config({**base, "=model": {**CASES["rnn"][1], "num_layers": 2}}, name="deeper")

    strict = cli("fit", deeper, f"model.init_from={weights}")
    assert strict.exit_code == 2, strict.output
    assert "do not match the model" in strict.output and "Traceback" not in strict.output

    loose = cli("fit", deeper, f"model.init_from={weights}", "model.init_strict=false")
    assert loose.exit_code == 0, loose.output
    assert "not strict: 4 missing keys kept their initialisation" in " ".join(loose.output.split())


def test_a_checkpoint_from_before_init_strict_existed_on_a_cnn_still_resumes(
    write_config, cli, tmp_path
):
    """bptrain 0.1 saved cnn/rnn/transformer configs without model.init_strict; that key's default must not
    make the model section 'differ' when such a run is resumed."""
    data, model = CASES["cnn"]
    config = write_config({"data": data, "=model": model, "trainer": {"max_epochs": 1}})
    assert cli("fit", config).exit_code == 0
    last = _run(tmp_path, "tiny") / "checkpoints" / "last.pt"
    saved = torch.load(last, weights_only=True)
    del saved["config"]["model"]["init_strict"]
    torch.save(saved, last)

    resumed = cli("fit", config, "--resume", str(last), "trainer.max_epochs=2")
    assert resumed.exit_code == 0, resumed.output
    summary = json.loads((_run(tmp_path, "tiny") / "summary.json").read_text())
    assert summary["epochs"] == 2
