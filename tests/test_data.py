"""Data: sources, seeded splits, task inference, and batch order as a pure function of (seed, epoch)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from bptrain.config import load_config
from bptrain.data import build_data
from bptrain.data.loaders import TensorBatches
from bptrain.errors import UserError

CPU = torch.device("cpu")


def _data(write_config, text: str, seed: int = 0):
    cfg = load_config(write_config(text=text))
    return build_data(cfg.data, seed=seed, device=CPU)


@pytest.mark.parametrize(
    ("source", "classes", "features"),
    [("spirals", 3, 2), ("moons", 2, 2), ("blobs", 3, 2), ("xor", 2, 2), ("digits", 10, 64)],
)
def test_classification_sources_infer_their_spec(write_config, source, classes, features):
    data = _data(write_config, f"data: {{source: {source}}}\n")
    assert data.spec.task == "classification" and data.spec.num_classes == classes
    assert data.spec.input_shape == (features,)
    x, y = next(iter(data.train))
    assert x.dtype == torch.float32 and y.dtype == torch.int64 and x.shape == (64, features)


def test_sine_is_regression(write_config):
    data = _data(write_config, "data: {source: sine, n_samples: 100}\n")
    assert data.spec.task == "regression" and data.spec.target_shape == (1,)
    _, y = next(iter(data.train))
    assert y.dtype == torch.float32 and y.shape[1] == 1


def test_splits_are_seeded_disjoint_and_complete(write_config, tmp_path):
    x = np.arange(100, dtype=np.float32).reshape(100, 1)
    np.savez(tmp_path / "d.npz", x=x, y=np.arange(100) % 2)
    text = f"data: {{source: npz, path: {tmp_path / 'd.npz'}, val_fraction: 0.2, test_fraction: 0.1, shuffle: false}}\n"

    def ids(data):
        return [
            set(torch.cat([b[0] for b in split]).flatten().long().tolist())
            for split in (data.train, data.val, data.test)
        ]

    train, val, test = ids(_data(write_config, text))
    assert (len(train), len(val), len(test)) == (70, 20, 10)
    assert train | val | test == set(range(100)) and not (train & val or train & test or val & test)
    assert ids(_data(write_config, text)) == [train, val, test]  # same seed, same split
    assert ids(_data(write_config, text, seed=5))[1] != val


def test_npz_explicit_validation_arrays_are_used(write_config, tmp_path):
    path = tmp_path / "d.npz"
    np.savez(
        path,
        x=np.zeros((10, 3)),
        y=np.zeros(10, dtype=np.int64),
        x_val=np.ones((4, 3)),
        y_val=np.ones(4, dtype=np.int64),
    )
    data = _data(write_config, f"data: {{source: npz, path: {path}}}\n")
    assert data.train.num_samples == 10 and data.val.num_samples == 4 and data.spec.num_classes == 2


def test_npz_errors_are_actionable(write_config, tmp_path):
    path = tmp_path / "d.npz"
    np.savez(path, x=np.zeros((10, 3)), y=np.zeros(9))
    with pytest.raises(UserError, match="x has 10 samples but y has 9"):
        _data(write_config, f"data: {{source: npz, path: {path}}}\n")
    np.savez(path, x=np.zeros((10, 3)), y=np.zeros(10), x_val=np.zeros((2, 3)))
    with pytest.raises(UserError, match="x_val without y_val"):
        _data(write_config, f"data: {{source: npz, path: {path}}}\n")
    np.savez(path, x=np.array([{"a": 1}] * 4, dtype=object), y=np.zeros(4))
    with pytest.raises(UserError, match="Object arrays are refused"):
        _data(write_config, f"data: {{source: npz, path: {path}}}\n")


def test_csv_with_named_target_and_string_labels(write_config, tmp_path):
    path = tmp_path / "iris.csv"
    rows = ["a,b,species"] + [f"{i},{i * 2},{'cat' if i % 2 else 'dog'}" for i in range(20)]
    path.write_text("\n".join(rows) + "\n")
    data = _data(write_config, f"data: {{source: csv, path: {path}, target: species}}\n")
    assert data.spec.num_classes == 2 and data.spec.input_shape == (2,)
    with pytest.raises(UserError, match="Did you mean 'species'"):
        _data(write_config, f"data: {{source: csv, path: {path}, target: specie}}\n")
    path.write_text("a,y\n1,0.5\nx,0.7\n")
    with pytest.raises(UserError, match=r"line 3, column 'a': 'x' is not a number"):
        _data(write_config, f"data: {{source: csv, path: {path}, target: y}}\n")


def test_normalize_uses_training_statistics_only(write_config, tmp_path):
    path = tmp_path / "d.npz"
    rng = np.random.default_rng(0)
    np.savez(path, x=rng.normal(5, 3, (200, 2)).astype(np.float32), y=np.zeros(200, dtype=np.int64),
             x_val=np.full((10, 2), 5.0, dtype=np.float32), y_val=np.zeros(10, dtype=np.int64))  # fmt: skip
    data = _data(
        write_config, f"data: {{source: npz, path: {path}, normalize: true, shuffle: false}}\n"
    )
    train_x = torch.cat([b[0] for b in data.train])
    assert train_x.mean(0).abs().max() < 1e-5 and (train_x.std(0) - 1).abs().max() < 0.01
    val_x = torch.cat([b[0] for b in data.val])
    assert val_x.abs().max() < 0.2  # shifted by the training mean (~5), not its own


def test_epoch_order_is_a_function_of_seed_and_epoch():
    x = torch.arange(50).float().unsqueeze(1)
    batches = TensorBatches(
        x,
        torch.zeros(50, dtype=torch.int64),
        batch_size=8,
        shuffle=True,
        drop_last=False,
        seed=3,
        rank=0,
        world_size=1,
        even_shards=True,
    )

    def order(epoch):
        batches.set_epoch(epoch)
        return torch.cat([b[0] for b in batches]).flatten().tolist()

    assert sorted(order(0)) == list(range(50)) and len(batches) == 7
    assert order(0) == order(0) and order(0) != order(1)


def test_shards_split_evaluation_exactly_and_training_evenly():
    x = torch.arange(11).float().unsqueeze(1)
    y = torch.zeros(11, dtype=torch.int64)
    common = dict(batch_size=4, shuffle=True, drop_last=False, seed=0, world_size=2)
    evals = [TensorBatches(x, y, rank=r, even_shards=False, **common) for r in range(2)]
    seen = [torch.cat([b[0] for b in e]).flatten().tolist() for e in evals]
    assert sorted(seen[0] + seen[1]) == list(range(11))  # every sample exactly once
    trains = [TensorBatches(x, y, rank=r, even_shards=True, **common) for r in range(2)]
    assert len(trains[0]) == len(trains[1]) and trains[0].num_samples == trains[1].num_samples == 5


@pytest.mark.parametrize("rank", [0, 1])
def test_tensor_and_dataloader_loaders_batch_and_shard_a_split_alike(write_config, tmp_path, rank):
    """Both loaders take their batching and sharding from one place (``split_arguments``)."""
    np.savez(tmp_path / "d.npz", x=np.arange(45, dtype=np.float32)[:, None], y=np.arange(45) % 3)
    text = (
        f"data: {{source: npz, path: {tmp_path / 'd.npz'}, val_fraction: 0.2, batch_size: 4, "
        "drop_last: true, loader: LOADER}\n"
    )

    def splits(loader: str) -> list[list[list[float]]]:
        cfg = load_config(write_config(text=text.replace("LOADER", loader)))
        data = build_data(cfg.data, seed=7, device=CPU, rank=rank, world_size=2)
        first_val = [b[0].flatten().tolist() for b in data.val]
        data.train.set_epoch(1)
        data.val.set_epoch(1)
        batches = [[b[0].flatten().tolist() for b in split] for split in (data.train, data.val)]
        assert batches[1] == first_val  # evaluation is never shuffled
        return batches

    train, val = splits("tensor")
    assert splits("dataloader") == [train, val]
    assert len(train) == 4 and all(len(b) == 4 for b in train)  # 36 // 2 ranks = 18: 2 dropped
    assert sum(len(b) for b in val) == (5 if rank == 0 else 4)  # the 9 val samples, none dropped
