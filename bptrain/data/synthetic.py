"""Seeded toy datasets generated in memory: the classic 2-D problems, sequence tasks and small images.

Each generator returns ``(x, y)`` NumPy arrays: float32 inputs (int64 token ids for the token
tasks), int64 class labels (classification) or float32 targets (regression). They need no download and are
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


# --------------------------------------------------------------------------- sequences and images


def adding(n_samples: int, length: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """The adding problem: (N, T, 2) of (value, marker); the target is the sum of the two marked values.

    One marker falls in each half of the sequence, so the first marked value is on average
    T/2 or more steps before the end: the error signal must survive that far back in time.
    """
    values = rng.uniform(0.0, 1.0, (n_samples, length))
    markers = np.zeros((n_samples, length))
    half = max(length // 2, 1)
    first = rng.integers(0, half, n_samples)
    second = rng.integers(half, length, n_samples) if length > 1 else first
    rows = np.arange(n_samples)
    markers[rows, first] = 1.0
    markers[rows, second] = 1.0
    x = np.stack([values, markers], axis=-1)
    y = (values[rows, first] + values[rows, second])[:, None]
    return x.astype(np.float32), y.astype(np.float32)


def copy_task(
    n_samples: int, length: int, delay: int, symbols: int, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Token ids (N, 2 * length + delay) and per-step targets: repeat the symbols after the go-marker.

    Tokens: 0 blank, 1 go-marker, 2.. symbols. Input: symbols, `delay` blanks, go-marker, then
    length - 1 blanks. Target: blank everywhere except the last `length` steps (the symbols).
    """
    steps = 2 * length + delay
    seq = rng.integers(2, symbols + 2, (n_samples, length))
    x = np.zeros((n_samples, steps), dtype=np.int64)
    y = np.zeros((n_samples, steps), dtype=np.int64)
    x[:, :length] = seq
    x[:, length + delay] = 1
    y[:, steps - length :] = seq
    return x, y


def majority(
    n_samples: int, length: int, vocab: int, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Token ids (N, T); the label is the most frequent token, made unique by planting it."""
    x = rng.integers(0, vocab, (n_samples, length))
    y = rng.integers(0, vocab, n_samples)
    for i in range(n_samples):  # raise the planted token's count above every other's
        counts = np.bincount(x[i], minlength=vocab)
        while counts[y[i]] <= np.delete(counts, y[i]).max():
            j = rng.choice(np.flatnonzero(x[i] != y[i]))
            counts[x[i, j]] -= 1
            x[i, j] = y[i]
            counts[y[i]] += 1
    return x.astype(np.int64), y.astype(np.int64)


def sine_series(
    n_samples: int, length: int, horizon: int, noise: float, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Forecasting windows: x (N, T, 1) noisy sin(w t + phase), y (N, horizon) the next clean values."""
    frequency = rng.uniform(0.1, 0.5, (n_samples, 1))
    phase = rng.uniform(0.0, 2 * np.pi, (n_samples, 1))
    t = np.arange(length + horizon)[None, :]
    clean = np.sin(frequency * t + phase)
    x = clean[:, :length] + rng.normal(0.0, noise, (n_samples, length))
    return x[..., None].astype(np.float32), clean[:, length:].astype(np.float32)


SHAPES = ("square", "disc", "triangle", "cross")


def shapes(
    n_samples: int, size: int, noise: float, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Images (N, 1, size, size) of a square, disc, triangle or cross (labels 0-3) with pixel noise."""
    y = np.arange(n_samples) % len(SHAPES)
    rr, cc = np.mgrid[0:size, 0:size].astype(np.float64)
    images = np.empty((n_samples, 1, size, size), dtype=np.float32)
    for i, label in enumerate(y):
        half = rng.uniform(0.2, 0.35) * size  # half-width of the shape
        r0, c0 = rng.uniform(half, size - 1 - half, 2)
        dr, dc = rr - r0, cc - c0
        if label == 0:
            mask = (np.abs(dr) <= half) & (np.abs(dc) <= half)
        elif label == 1:
            mask = dr**2 + dc**2 <= half**2
        elif label == 2:  # apex up: rows below the apex, widening linearly
            mask = (dr >= -half) & (dr <= half) & (np.abs(dc) <= (dr + half) / 2)
        else:
            bar = max(half / 3, 0.6)
            mask = ((np.abs(dr) <= bar) & (np.abs(dc) <= half)) | (
                (np.abs(dc) <= bar) & (np.abs(dr) <= half)
            )
        images[i, 0] = mask + rng.normal(0.0, noise, (size, size))
    return images, y.astype(np.int64)
