"""The benchmark workloads: two seeded ``.npz`` data sets (tabular for the MLP, 1x28x28 images
for the CNN) and the bptrain configs that train on them."""

from __future__ import annotations

from pathlib import Path

from benchmarks.common import write_yaml


def make_data(work: Path) -> dict[str, Path]:
    """Two seeded npz files: 40-feature tabular data, and 1x28x28 images of 10 noisy class templates."""
    import numpy as np

    rng = np.random.default_rng(0)
    centres = rng.normal(0.0, 1.0, (10, 40))
    y = rng.integers(0, 10, 18_000)
    x = (centres[y] + rng.normal(0.0, 2.0, (18_000, 40))).astype(np.float32)
    mlp = work / "mlp.npz"
    np.savez(mlp, x=x[:16_000], y=y[:16_000], x_val=x[16_000:], y_val=y[16_000:])

    templates = rng.normal(0.0, 1.0, (10, 1, 28, 28)).astype(np.float32)
    y = rng.integers(0, 10, 2_560)
    x = (templates[y] + rng.normal(0.0, 1.5, (2_560, 1, 28, 28))).astype(np.float32)
    cnn = work / "cnn.npz"
    np.savez(cnn, x=x[:2_048], y=y[:2_048], x_val=x[2_048:], y_val=y[2_048:])
    return {"mlp": mlp, "cnn": cnn, "cnn1d": _mnist1d_like(work / "cnn1d.npz", rng)}


def _mnist1d_like(path: Path, rng) -> Path:
    """MNIST-1D-style signals (Greydanus 2020, made here, no download): 10 smooth class templates
    of 12 points, padded to 40, each sample scaled, sheared, circularly shifted and noised;
    4,096 training and 1,024 validation samples of shape (1, 40)."""
    import numpy as np

    n = 4_096 + 1_024
    templates = np.cumsum(rng.normal(0.0, 1.0, (10, 12)), axis=1)
    templates -= templates.mean(axis=1, keepdims=True)
    y = rng.integers(0, 10, n)
    base = np.zeros((n, 40))
    base[:, 14:26] = templates[y] * rng.uniform(0.7, 1.3, (n, 1))
    base += np.linspace(-1, 1, 40) * rng.normal(0.0, 0.5, (n, 1))  # shear
    shifts = rng.integers(-10, 11, n)
    rows = (np.arange(40)[None, :] - shifts[:, None]) % 40
    x = np.take_along_axis(base, rows, axis=1)
    x += rng.normal(0.0, 0.25, (n, 40)) + np.cumsum(rng.normal(0.0, 0.05, (n, 40)), axis=1)
    x = x.astype(np.float32)[:, None, :]
    np.savez(path, x=x[:4_096], y=y[:4_096], x_val=x[4_096:], y_val=y[4_096:])
    return path


def mlp_config(work: Path, data: Path, epochs: int, name: str = "mlp") -> Path:
    return write_yaml(
        work / f"{name}.yaml",
        f"""
seed: 0
data: {{source: npz, path: {data}, batch_size: 64}}
model: {{name: mlp, hidden: [256, 256]}}
optimizer: {{name: adamw, lr: 1.0e-3, weight_decay: 0.01}}
trainer: {{max_epochs: {epochs}}}
logging: {{run_dir: {work / "runs"}, name: {name}}}
""",
    )


def cnn_config(work: Path, data: Path, epochs: int) -> Path:
    # The network comes from scripts/bench_models.py by class_path: the same module on every side.
    return write_yaml(
        work / "cnn.yaml",
        f"""
seed: 0
data: {{source: npz, path: {data}, batch_size: 64}}
model: {{class_path: bench_models.SmallCNN, init_args: {{in_channels: 1, image_size: 28, num_classes: 10}}}}
optimizer: {{name: adamw, lr: 1.0e-3, weight_decay: 0.01}}
trainer: {{max_epochs: {epochs}}}
logging: {{run_dir: {work / "runs"}, name: cnn}}
""",
    )


def cnn1d_config(work: Path, data: Path, epochs: int) -> Path:
    """The MNIST-1D-style workload: bench_models.SmallCNN1d on (1, 40) signals, batch 64."""
    return write_yaml(
        work / "cnn1d.yaml",
        f"""
seed: 0
data: {{source: npz, path: {data}, batch_size: 64}}
model: {{class_path: bench_models.SmallCNN1d}}
optimizer: {{name: adamw, lr: 1.0e-3, weight_decay: 0.01}}
trainer: {{max_epochs: {epochs}}}
logging: {{run_dir: {work / "runs"}, name: cnn1d}}
""",
    )


def newest_run(work: Path, name: str) -> Path:
    return sorted((work / "runs" / name).iterdir())[-1]
