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
    return {"mlp": mlp, "cnn": cnn}


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
    # No built-in cnn model yet: the network comes from scripts/bench_models.py by class_path.
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


def newest_run(work: Path, name: str) -> Path:
    return sorted((work / "runs" / name).iterdir())[-1]
