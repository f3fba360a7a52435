"""`imagefolder`: a root/<class>/<image> tree read with Pillow, resized, standardised on the
training split, augmented reproducibly, loaded by DataLoader workers, trainable end to end."""

from __future__ import annotations

import builtins
import json

import numpy as np
import pytest
import torch
from PIL import Image  # the optional extra bptrain[images]; part of bptrain[test]

from bptrain.config import validate_config
from bptrain.data import build_data
from bptrain.errors import UserError

CPU = torch.device("cpu")


@pytest.fixture
def image_tree(tmp_path):
    """Two classes of 12x10 RGB PNGs: dark left halves ('left') or dark right halves ('right')."""
    root = tmp_path / "images"
    rng = np.random.default_rng(0)
    for label, dark in (("left", slice(0, 6)), ("right", slice(6, 12))):
        (root / label).mkdir(parents=True)
        for i in range(12):
            pixels = rng.integers(150, 255, (10, 12, 3), dtype=np.uint8)
            pixels[:, dark] //= 4
            Image.fromarray(pixels).save(root / label / f"{i}.png")
    (root / "left" / "notes.txt").write_text("not an image")
    return root


def cfg_for(root, **extra):
    data = {
        "source": "imagefolder",
        "root": str(root),
        "image_size": 8,
        "num_workers": 0,
        "batch_size": 8,
        **extra,
    }
    return validate_config({"data": data}).data


def test_reads_the_tree_as_classes_in_sorted_order(image_tree):
    bundle = build_data(cfg_for(image_tree, val_fraction=0.25, shuffle=False), 0, CPU)
    spec = bundle.spec
    assert (spec.task, spec.num_classes, spec.input_shape) == ("classification", 2, (3, 8, 8))
    assert bundle.train.num_samples + bundle.val.num_samples == 24  # notes.txt ignored
    x, y = next(iter(bundle.train))
    assert x.shape == (8, 3, 8, 8) and x.dtype == torch.float32 and x.min() >= 0 and x.max() <= 1
    left = x[y == 0]  # class 0 = "left": its left half is darker
    assert (left[..., :4].mean() < left[..., 4:].mean()).item()


def test_grayscale_and_normalisation_from_training_images(image_tree):
    bundle = build_data(
        cfg_for(image_tree, grayscale=True, normalize=True, val_fraction=0.0), 0, CPU
    )
    x = torch.cat([b for b, _ in bundle.train])
    assert x.shape[1] == 1
    assert abs(x.mean().item()) < 1e-3 and abs(x.std().item() - 1) < 0.02


def test_given_mean_and_std_are_used(image_tree):
    bundle = build_data(
        cfg_for(image_tree, mean=[0.5] * 3, std=[0.25] * 3, val_fraction=0.0), 0, CPU
    )
    x = torch.cat([b for b, _ in bundle.train])
    assert x.min() >= -2.0 and x.max() <= 2.0 and x.min() < -0.5


def test_augmentation_is_seeded_by_epoch_and_only_for_training(image_tree):
    cfg = cfg_for(
        image_tree, random_crop_padding=2, horizontal_flip=True, shuffle=False, val_fraction=0.25
    )
    bundle = build_data(cfg, 0, CPU)

    def epoch(batches, n):
        batches.set_epoch(n)
        return torch.cat([x for x, _ in batches])

    assert torch.equal(epoch(bundle.train, 0), epoch(build_data(cfg, 0, CPU).train, 0))
    assert not torch.equal(epoch(bundle.train, 0), epoch(bundle.train, 1))
    assert torch.equal(epoch(bundle.val, 0), epoch(bundle.val, 1))


def test_workers_give_the_same_batches_as_the_main_process(image_tree):
    cfg = cfg_for(image_tree, random_crop_padding=1, horizontal_flip=True, val_fraction=0.0)
    with_workers = build_data(cfg.model_copy(update={"num_workers": 2}), 0, CPU).train
    in_process = build_data(cfg, 0, CPU).train
    assert torch.equal(
        torch.cat([x for x, _ in with_workers]), torch.cat([x for x, _ in in_process])
    )


def test_clear_errors_for_bad_trees(tmp_path, image_tree):
    with pytest.raises(UserError, match="no directory"):
        build_data(cfg_for(tmp_path / "missing"), 0, CPU)
    (tmp_path / "one" / "only").mkdir(parents=True)
    with pytest.raises(UserError, match="at least 2"):
        build_data(cfg_for(tmp_path / "one"), 0, CPU)
    (image_tree / "empty").mkdir()
    with pytest.raises(UserError, match="'empty' holds no images"):
        build_data(cfg_for(image_tree), 0, CPU)


def test_missing_pillow_says_how_to_install_it(image_tree, monkeypatch):
    real_import = builtins.__import__

    def no_pil(name, *args, **kwargs):
        if name == "PIL" or name.startswith("PIL."):
            raise ImportError("No module named 'PIL'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_pil)
    with pytest.raises(UserError, match=r"bptrain\[images\]"):
        build_data(cfg_for(image_tree), 0, CPU)


def test_mean_and_std_need_one_value_per_channel(image_tree):
    with pytest.raises(UserError, match="3 values"):
        cfg_for(image_tree, mean=[0.5], std=[0.5])


def test_fit_a_cnn_on_an_image_folder(image_tree, tmp_path):
    from typer.testing import CliRunner

    from bptrain.cli import app

    config = tmp_path / "images.yaml"
    config.write_text(
        json.dumps(
            {
                "data": {
                    "source": "imagefolder",
                    "root": str(image_tree),
                    "image_size": 8,
                    "num_workers": 1,
                    "batch_size": 8,
                    "horizontal_flip": True,
                    "val_fraction": 0.25,
                },
                "model": {"name": "cnn", "channels": [8, 16]},
                "trainer": {"max_epochs": 2},
                "logging": {
                    "run_dir": str(tmp_path / "runs"),
                    "tensorboard": False,
                    "progress": "off",
                },
            }
        )
    )
    result = CliRunner().invoke(app, ["fit", str(config)])
    assert result.exit_code == 0, result.output
    summary = json.loads(next((tmp_path / "runs").glob("*/*/summary.json")).read_text())
    assert summary["epochs"] == 2 and 0 <= summary["final"]["val/acc"] <= 1
