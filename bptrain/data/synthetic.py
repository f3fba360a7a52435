"""Seeded toy datasets generated in memory: the classic 2-D classification problems and a regression.

Each generator returns ``(x, y)`` NumPy arrays: float32 inputs, int64 class labels
(classification) or float32 targets (regression). They need no download and are
fully determined by the seed.
"""

from __future__ import annotations

import numpy as np


def spirals(
    n_samples: int, n_classes: int, noise: float, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Interleaved spiral arms: not linearly separable, needs a nonlinear network."""
    y = np.arange(n_samples) % n_classes
    radius = rng.uniform(0.05, 1.0, n_samples)
    angle = y * (2 * np.pi / n_classes) + radius * 4.0 + rng.normal(0.0, noise, n_samples)
    x = np.stack([radius * np.sin(angle), radius * np.cos(angle)], axis=1)
    return x.astype(np.float32), y.astype(np.int64)


def moons(n_samples: int, noise: float, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Two interleaving half circles."""
    y = np.arange(n_samples) % 2
    t = rng.uniform(0.0, np.pi, n_samples)
    x = np.where(
        (y == 0)[:, None],
        np.stack([np.cos(t), np.sin(t)], axis=1),
        np.stack([1.0 - np.cos(t), 0.5 - np.sin(t)], axis=1),
    )
    x = x + rng.normal(0.0, noise, x.shape)
    return x.astype(np.float32), y.astype(np.int64)


def blobs(
    n_samples: int, n_classes: int, n_features: int, cluster_std: float, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Isotropic Gaussian clusters, one per class."""
    centres = rng.uniform(-10.0, 10.0, (n_classes, n_features))
    y = np.arange(n_samples) % n_classes
    x = centres[y] + rng.normal(0.0, cluster_std, (n_samples, n_features))
    return x.astype(np.float32), y.astype(np.int64)


def xor(n_samples: int, noise: float, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """The XOR problem: the label is whether the two coordinates have the same sign."""
    x = rng.uniform(-1.0, 1.0, (n_samples, 2))
    y = (x[:, 0] * x[:, 1] > 0).astype(np.int64)
    x = x + rng.normal(0.0, noise, x.shape)
    return x.astype(np.float32), y


def sine(
    n_samples: int, noise: float, periods: float, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Regression of y = sin(x) + noise over `periods` periods."""
    x = rng.uniform(-np.pi * periods, np.pi * periods, (n_samples, 1))
    y = np.sin(x) + rng.normal(0.0, noise, x.shape)
    return x.astype(np.float32), y.astype(np.float32)
