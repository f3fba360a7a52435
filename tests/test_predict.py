"""bptrain predict, eval and load_run apply the training preprocessing: labels, statistics, columns."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from bptrain import load_run
from bptrain.preprocess import Preprocessing
from tests.conftest import only_run_dir


def _write_csv(path: Path, header: list[str], rows: list[list]) -> Path:
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        writer.writerows(rows)
    return path


def _species(n: int, seed: int = 0) -> tuple[np.ndarray, list[str]]:
    """Three features on very different scales; the label is a function of them."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 3)) * [1.0, 10.0, 100.0] + [0.0, 50.0, -20.0]
    labels = np.where(x[:, 0] + (x[:, 1] - 50) / 10 > 0, "cat", "dog").astype(object)
    labels[x[:, 2] > 60] = "emu"
    return x, list(labels)


@pytest.fixture
def csv_run(write_config, cli, tmp_path):
    """A run trained on a csv with string labels and normalize: true."""
    x, labels = _species(240)
    train = _write_csv(tmp_path / "train.csv", ["a", "b", "c", "species"],
                       [[*row, label] for row, label in zip(x, labels, strict=True)])  # fmt: skip
    config = write_config(
        {
            "=data": {
                "source": "csv",
                "path": str(train),
                "target": "species",
                "normalize": True,
                "batch_size": 32,
                "val_fraction": 0.25,
            },
            "model": {"hidden": [16]},
            "trainer": {"max_epochs": 8},
        },
        name="species",
    )
    result = cli("fit", config)
    assert result.exit_code == 0, result.output
    return only_run_dir(tmp_path / "runs"), config, x, labels


def test_predict_on_csv_writes_the_original_label_strings(csv_run, cli, tmp_path):
    run_dir, _, x, labels = csv_run
    # the columns in another order, no target column: matched by name
    new = _write_csv(tmp_path / "new.csv", ["c", "a", "b"], [[r[2], r[0], r[1]] for r in x[:20]])
    out = tmp_path / "pred.csv"
    result = cli("predict", run_dir, "--input", new, "--output", out)
    assert result.exit_code == 0, result.output
    rows = list(csv.DictReader(out.open()))
    assert len(rows) == 20
    assert {r["prediction"] for r in rows} <= {"cat", "dog", "emu"}
    assert set(rows[0]) == {"prediction", "p_cat", "p_dog", "p_emu"}
    assert all(abs(sum(float(r[f"p_{k}"]) for k in ("cat", "dog", "emu")) - 1) < 1e-5 for r in rows)

    # with the target column: target and correctness, in the user's labels
    labelled = _write_csv(tmp_path / "labelled.csv", ["a", "b", "c", "species"],
                          [[*r, label] for r, label in zip(x[:20], labels[:20], strict=True)])  # fmt: skip
    out = tmp_path / "pred.jsonl"
    result = cli("predict", run_dir, "--input", labelled, "--output", out, "--json")
    assert result.exit_code == 0, result.output
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["target"] for r in records] == labels[:20]
    assert all(r["correct"] == (r["prediction"] == r["target"]) for r in records)
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["accuracy"] == pytest.approx(np.mean([r["correct"] for r in records]))


def test_load_run_predict_equals_the_predict_command(csv_run, cli, tmp_path):
    run_dir, _, x, _ = csv_run
    np.savez(tmp_path / "x.npz", x=x[:30].astype(np.float32))
    out = tmp_path / "pred.npz"
    result = cli("predict", run_dir, "--input", tmp_path / "x.npz", "--output", out)
    assert result.exit_code == 0, result.output
    run = load_run(run_dir)
    assert not run.model.training and run.device == torch.device("cpu")
    assert run.config.data.target == "species" and run.preprocessing.class_names == [
        "cat",
        "dog",
        "emu",
    ]
    assert [r["type"] for r in run.metrics].count("epoch") == 8 and run.summary[
        "status"
    ] == "completed"
    mine = run.predict(x[:30])
    with np.load(out) as saved:
        np.testing.assert_array_equal(saved["prediction"], mine["prediction"])
        np.testing.assert_allclose(saved["probabilities"], mine["probabilities"], rtol=0, atol=1e-7)


def test_eval_on_shifted_data_differs_from_the_original(csv_run, cli, tmp_path):
    run_dir, config, x, labels = csv_run
    shifted = _write_csv(tmp_path / "shifted.csv", ["a", "b", "c", "species"],
                         [[*(row * 10 + 5), label] for row, label in zip(x, labels, strict=True)])  # fmt: skip
    ckpt = run_dir / "checkpoints" / "last.pt"

    def evaluate(*overrides: str) -> dict:
        result = cli("eval", config, *overrides, "--checkpoint", ckpt, "--json")
        assert result.exit_code == 0, result.output
        return json.loads(result.stdout.strip().splitlines()[-1])

    original, moved = evaluate(), evaluate(f"data.path={shifted}")
    assert original["samples"] == moved["samples"]
    # re-fitting the statistics on the shifted file would hide the shift: the numbers would be equal
    assert moved["val/loss"] != pytest.approx(original["val/loss"], rel=1e-3)


def test_bad_predict_inputs_exit_2_naming_the_problem(csv_run, cli, tmp_path):
    run_dir = csv_run[0]
    out = tmp_path / "out.csv"

    def fails(path: Path, *needles: str) -> None:
        result = cli("predict", run_dir, "--input", path, "--output", out)
        assert result.exit_code == 2, result.output
        text = " ".join(result.output.split())
        for needle in needles:
            assert needle in text, text

    fails(_write_csv(tmp_path / "missing.csv", ["a", "b"], [[1, 2]]), "missing column(s) 'c'")
    fails(_write_csv(tmp_path / "extra.csv", ["a", "b", "c", "d"], [[1, 2, 3, 4]]),
          "unexpected column(s) 'd'")  # fmt: skip
    fails(_write_csv(tmp_path / "unknown.csv", ["a", "b", "c", "species"], [[1, 2, 3, "yak"]]),
          "column 'species'", "unknown label(s) 'yak'", "'cat', 'dog', 'emu'")  # fmt: skip
    np.savez(tmp_path / "wide.npz", x=np.zeros((4, 5), dtype=np.float32))
    fails(tmp_path / "wide.npz", "shape (4, 5)", "(5,) per sample", "trained on (N, 3)")
    (tmp_path / "empty.csv").write_text("")
    fails(tmp_path / "empty.csv", "empty")
    _write_csv(tmp_path / "header_only.csv", ["a", "b", "c"], [])
    fails(tmp_path / "header_only.csv", "at least one data row")
    np.savez(tmp_path / "none.npz", x=np.zeros((0, 3), dtype=np.float32))
    fails(tmp_path / "none.npz", "no samples")


def test_preprocessing_round_trips_through_weights_only_load_and_json(tmp_path):
    from bptrain.data import DataSpec

    prep = Preprocessing(
        DataSpec("classification", (3,), 3, ()),
        mean=torch.tensor([1.0, 2.0, 3.0]),
        std=torch.tensor([0.5, 1.0, 2.0]),
        class_names=["cat", "dog", "emu"],
        feature_names=["a", "b", "c"],
        target_name="species",
        source="csv",
    )
    torch.save({"preprocessing": prep.state_dict()}, tmp_path / "p.pt")
    back = Preprocessing.from_state_dict(
        torch.load(tmp_path / "p.pt", weights_only=True)["preprocessing"]
    )
    prep.write_json(tmp_path / "p.json")
    from_json = Preprocessing.read_json(tmp_path / "p.json")
    x = torch.tensor([[1.0, 2.0, 3.0], [2.0, 4.0, 7.0]])
    for other in (back, from_json):
        assert other.spec == prep.spec and other.class_names == prep.class_names
        torch.testing.assert_close(other.transform(x), torch.tensor([[0.0, 0, 0], [2, 2, 2]]))


def test_a_v0_1_checkpoint_without_preprocessing_loads_with_a_note(tmp_path, capfd):
    import shutil

    run_dir = tmp_path / "run"
    shutil.copytree(Path(__file__).parent / "fixtures" / "v0_1_run" / "run", run_dir)
    saved = torch.load(run_dir / "checkpoints" / "last.pt", weights_only=True)
    assert "preprocessing" not in saved  # written by 0.1
    run = load_run(run_dir, checkpoint=run_dir / "checkpoints" / "last.pt")
    assert "stores no preprocessing" in capfd.readouterr().err
    assert run.preprocessing.spec.input_shape == (2,) and run.preprocessing.mean is None
    out = run.predict(np.zeros((3, 2), dtype=np.float32))
    assert out["probabilities"].shape == (3, 2) and set(out["prediction"]) <= {0, 1}


def test_predict_on_an_image_folder_uses_the_class_names_and_training_statistics(
    write_config, cli, tmp_path
):
    from PIL import Image  # the optional extra bptrain[images]; part of bptrain[test]

    rng = np.random.default_rng(0)

    def tree(root: Path, per_class: int) -> Path:
        for label, dark in (("left", slice(0, 6)), ("right", slice(6, 12))):
            (root / label).mkdir(parents=True)
            for i in range(per_class):
                pixels = rng.integers(150, 255, (10, 12, 3), dtype=np.uint8)
                pixels[:, dark] //= 4
                Image.fromarray(pixels).save(root / label / f"{i}.png")
        return root

    data = {"source": "imagefolder", "root": str(tree(tmp_path / "train", 12)), "image_size": 8,
            "num_workers": 0, "batch_size": 8, "normalize": True, "val_fraction": 0.25}  # fmt: skip
    config = write_config(
        {"=data": data, "=model": {"name": "cnn", "channels": [4]}, "trainer": {"max_epochs": 1}},
        name="images",
    )
    assert cli("fit", config).exit_code == 0
    run_dir = only_run_dir(tmp_path / "runs")
    out = tmp_path / "pred.jsonl"
    result = cli("predict", run_dir, "--input", tree(tmp_path / "new", 3), "--output", out)
    assert result.exit_code == 0, result.output
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["target"] for r in records] == ["left"] * 3 + ["right"] * 3
    assert records[0]["id"] == "left/0.png" and set(records[0]["probabilities"]) == {
        "left",
        "right",
    }
    prep = load_run(run_dir).preprocessing
    assert prep.class_names == ["left", "right"] and prep.mean is not None
    assert prep.image == {"size": 8, "grayscale": False}
