"""Arrays of any rank from npz, token ids, per-step and multi-dimensional targets, channel-wise
standardisation on the training split, and the seeded synthetic sequence and image tasks."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from bptrain.config import LossConfig, validate_config
from bptrain.data import DataSpec, build_data, synthetic
from bptrain.data.loaders import TensorBatches
from bptrain.errors import UserError
from bptrain.evaluate import evaluate
from bptrain.losses import build_objective
from bptrain.runtime import Precision

CPU = torch.device("cpu")


def data_cfg(**data):
    return validate_config({"data": data}).data


def npz(tmp_path, **arrays):
    path = tmp_path / "d.npz"
    np.savez(path, **arrays)
    return str(path)


def all_x(bundle):
    return torch.cat([x for x, _ in bundle.train])


def test_npz_images_keep_their_shape(tmp_path):
    rng = np.random.default_rng(0)
    path = npz(tmp_path, x=rng.normal(size=(40, 3, 8, 8)).astype(np.float32), y=np.arange(40) % 4)
    bundle = build_data(data_cfg(source="npz", path=path, val_fraction=0.25), 0, CPU)
    assert bundle.spec.input_shape == (3, 8, 8) and bundle.spec.num_classes == 4
    x, y = next(iter(bundle.train))
    assert x.shape[1:] == (3, 8, 8) and x.dtype == torch.float32 and y.dtype == torch.int64


def test_token_ids_stay_integer_only_for_embedding_models(tmp_path):
    x = np.random.default_rng(0).integers(0, 50, (30, 12))
    path = npz(tmp_path, x=x, y=np.arange(30) % 2)
    cfg = data_cfg(source="npz", path=path, shuffle=False, val_fraction=0.0)
    tokens = build_data(cfg, 0, CPU, integer_inputs=True)
    floats = build_data(cfg, 0, CPU)
    assert all_x(tokens).dtype == torch.int64 and torch.equal(all_x(tokens), torch.as_tensor(x))
    assert all_x(floats).dtype == torch.float32
    assert tokens.spec.token_range == 50
    with pytest.raises(UserError, match="normalize"):
        build_data(data_cfg(source="npz", path=path, normalize=True), 0, CPU, integer_inputs=True)


def test_regression_targets_of_any_shape(tmp_path):
    rng = np.random.default_rng(0)
    path = npz(
        tmp_path,
        x=rng.normal(size=(20, 5, 2)).astype(np.float32),
        y=rng.normal(size=(20, 2, 3)).astype(np.float32),
    )
    bundle = build_data(data_cfg(source="npz", path=path, val_fraction=0.0), 0, CPU)
    assert bundle.spec.task == "regression" and bundle.spec.target_shape == (2, 3)


def test_per_step_labels_make_a_many_to_many_classification(tmp_path):
    x = np.random.default_rng(0).normal(size=(20, 6, 3)).astype(np.float32)
    y = np.random.default_rng(1).integers(0, 4, (20, 6))
    bundle = build_data(
        data_cfg(source="npz", path=npz(tmp_path, x=x, y=y), val_fraction=0.0), 0, CPU
    )
    assert bundle.spec.target_shape == (6,) and bundle.spec.num_classes == 4
    assert next(iter(bundle.train))[1].shape[1:] == (6,)


@pytest.mark.parametrize(
    ("shape", "channel_axis"), [((60, 7, 3), 2), ((60, 3, 5, 5), 1), ((60, 4), 1)]
)
def test_normalize_is_per_channel_and_uses_the_training_split_only(tmp_path, shape, channel_axis):
    rng = np.random.default_rng(0)
    scale = np.array([1.0, 10.0, 100.0, 1000.0])[: shape[channel_axis]]
    view = [1] * len(shape)
    view[channel_axis] = len(scale)
    x = (rng.normal(size=shape) * scale.reshape(view) + 5).astype(np.float32)
    x_val = np.full((10, *shape[1:]), 1e6, dtype=np.float32)  # would wreck the stats if used
    path = npz(tmp_path, x=x, y=np.arange(60) % 2, x_val=x_val, y_val=np.arange(10) % 2)
    bundle = build_data(data_cfg(source="npz", path=path, normalize=True, shuffle=False), 0, CPU)
    train = all_x(bundle).numpy().astype(np.float64)
    axes = tuple(i for i in range(train.ndim) if i != channel_axis)
    assert np.allclose(train.mean(axis=axes), 0, atol=1e-4)
    assert np.allclose(train.std(axis=axes), 1, atol=1e-3)


def test_adding_problem_targets_are_the_sum_of_the_marked_values():
    x, y = synthetic.adding(200, 20, np.random.default_rng(0))
    assert x.shape == (200, 20, 2) and y.shape == (200, 1)
    markers = x[..., 1]
    assert np.all(markers.sum(1) == 2)
    assert np.all(markers[:, :10].sum(1) == 1)  # one marker in each half
    assert np.allclose((x[..., 0] * markers).sum(1), y[:, 0], atol=1e-6)


def test_copy_task_targets_repeat_the_symbols_after_the_go_marker():
    x, y = synthetic.copy_task(50, length=4, delay=3, symbols=5, rng=np.random.default_rng(0))
    assert x.shape == y.shape == (50, 11) and x.dtype == np.int64
    assert np.all(x[:, 7] == 1) and np.all(x[:, :4] >= 2)
    assert np.array_equal(y[:, -4:], x[:, :4]) and np.all(y[:, :-4] == 0)


def test_majority_label_is_the_unique_most_frequent_token():
    x, y = synthetic.majority(100, 12, 5, np.random.default_rng(0))
    for row, label in zip(x, y, strict=True):
        counts = np.bincount(row, minlength=5)
        assert counts[label] > np.delete(counts, label).max()


def test_shapes_are_balanced_and_distinct():
    x, y = synthetic.shapes(40, 16, 0.0, np.random.default_rng(0))
    assert x.shape == (40, 1, 16, 16) and np.bincount(y).tolist() == [10, 10, 10, 10]
    areas = [x[y == k].sum(axis=(1, 2, 3)).mean() for k in range(4)]
    assert len({round(a) for a in areas}) == 4  # filled square > disc > triangle, cross is thin


@pytest.mark.parametrize(
    "data",
    [
        {"source": "adding", "n_samples": 50, "length": 8},
        {"source": "copy", "n_samples": 50},
        {"source": "majority", "n_samples": 50},
        {"source": "sine_series", "n_samples": 50, "horizon": 3},
        {"source": "shapes", "n_samples": 50},
    ],
)
def test_synthetic_sources_are_seeded(data):
    first = build_data(data_cfg(**data), 3, CPU, integer_inputs=True)
    again = build_data(data_cfg(**data), 3, CPU, integer_inputs=True)
    other = build_data(data_cfg(**data), 4, CPU, integer_inputs=True)
    assert torch.equal(all_x(first), all_x(again))
    assert not torch.equal(all_x(first), all_x(other))


def test_sine_series_forecasts_the_next_values():
    x, y = synthetic.sine_series(10, 30, 4, 0.0, np.random.default_rng(0))
    assert x.shape == (10, 30, 1) and y.shape == (10, 4)
    assert np.all(np.abs(y) <= 1)


def test_per_step_accuracy_counts_every_step_once():
    """With labels (N, T), accuracy is over the N x T labels, not the N sequences."""
    y = torch.tensor([[0, 1, 2, 0], [1, 1, 0, 0], [2, 0, 0, 1]])
    objective = build_objective(LossConfig(), DataSpec("classification", (4, 1), 3, (4,)))

    class AlwaysZero(torch.nn.Module):
        def forward(self, x):
            return torch.nn.functional.one_hot(torch.zeros(len(x), 4, dtype=torch.long), 3).float()

    batches = TensorBatches(
        torch.zeros(3, 4, 1), y, batch_size=2, shuffle=False, drop_last=False,
        seed=0, rank=0, world_size=1, even_shards=False,
    )  # fmt: skip
    metrics = evaluate(AlwaysZero(), batches, objective, Precision.create("32", CPU), "val")
    assert metrics["val/acc"] == pytest.approx(6 / 12)  # six of the twelve labels are 0
