"""Image folders on disk: root/<class>/<image>, decoded with Pillow in DataLoader workers.

Images are read lazily (only the file list lives in memory), resized, scaled to [0, 1],
optionally standardised per channel with statistics of the training split, and augmented
(random crop with padding, horizontal flip) for training only. The augmentation of a sample
is a pure function of (seed, epoch, sample index), so runs are reproducible with any number
of workers. Pillow is an optional extra: ``pip install 'bptrain[images]'``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from bptrain.config import ImageFolderData
from bptrain.data.bundle import DataBundle, DataSpec, InputSpace, hold_out
from bptrain.data.loaders import DataLoaderBatches, dataloader_batches
from bptrain.errors import UserError

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm"}
STATS_SAMPLES = 2000  # training images read to estimate mean/std; enough for 3 decimals


def _pillow():
    try:
        from PIL import Image
    except ImportError:
        raise UserError(
            "data.source imagefolder reads images with Pillow, which is not installed. "
            "Install it with: pip install 'bptrain[images]' (or pip install pillow)."
        ) from None
    return Image


def list_images(root: Path) -> tuple[list[Path], np.ndarray, list[str]]:
    """Files under root/<class>/ (recursively), their class indices, and the sorted class names."""
    if not root.is_dir():
        raise UserError(
            f"data.root: no directory {root} (relative paths are resolved from {Path.cwd()}). "
            "Expected root/<class>/<image> with one sub-directory per class."
        )
    classes = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if len(classes) < 2:
        raise UserError(
            f"data.root {root}: found {len(classes)} class directories ({', '.join(classes) or 'none'}); "
            "classification needs at least 2, laid out as root/<class>/<image>."
        )
    files, labels = [], []
    for index, name in enumerate(classes):
        found = sorted(
            p
            for p in (root / name).rglob("*")
            if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file()
        )
        if not found:
            raise UserError(
                f"data.root {root}: class directory '{name}' holds no images ({', '.join(sorted(IMAGE_SUFFIXES))})."
            )
        files += found
        labels += [index] * len(found)
    return files, np.asarray(labels, dtype=np.int64), classes


def load_image(path: Path, size: int, grayscale: bool) -> torch.Tensor:
    """One image as a float tensor (C, size, size) in [0, 1]."""
    image_module = _pillow()
    try:
        with image_module.open(path) as image:
            image = image.convert("L" if grayscale else "RGB").resize(
                (size, size), image_module.Resampling.BILINEAR
            )
            array = np.asarray(image, dtype=np.float32) / 255.0
    except OSError as err:
        raise UserError(f"cannot read image {path}: {err}") from None
    array = array[None] if array.ndim == 2 else array.transpose(2, 0, 1)
    return torch.from_numpy(np.ascontiguousarray(array))


class ImageFiles(Dataset):
    """Decode, resize, normalise and (for training) augment one image per index."""

    def __init__(
        self,
        files: list[Path],
        labels: np.ndarray,
        cfg: ImageFolderData,
        mean: torch.Tensor | None,
        std: torch.Tensor | None,
        augment: bool,
        seed: int,
    ) -> None:
        self.files, self.labels = files, torch.as_tensor(labels)
        self.size, self.grayscale = cfg.image_size, cfg.grayscale
        self.mean, self.std = mean, std
        self.padding = cfg.random_crop_padding if augment else 0
        self.flip = cfg.horizontal_flip and augment
        self.seed, self.epoch = seed, 0  # the epoch is set before each epoch's DataLoader is made

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        image = load_image(self.files[index], self.size, self.grayscale)
        if self.mean is not None and self.std is not None:
            image = (image - self.mean) / self.std
        if self.padding or self.flip:
            image = self._augment(image, index)
        return image, self.labels[index]

    def _augment(self, image: torch.Tensor, index: int) -> torch.Tensor:
        rng = np.random.default_rng((self.seed, self.epoch, index))
        if self.padding:
            p = self.padding
            padded = torch.nn.functional.pad(image, (p, p, p, p))
            top, left = rng.integers(0, 2 * p + 1, 2)
            image = padded[:, top : top + self.size, left : left + self.size]
        if self.flip and rng.random() < 0.5:
            image = image.flip(-1)
        return image


class ImageBatches(DataLoaderBatches):
    """DataLoader batches over ImageFiles; tells the dataset the epoch so augmentation is seeded by it."""

    def set_epoch(self, epoch: int) -> None:
        super().set_epoch(epoch)
        self.dataset.epoch = epoch  # type: ignore[attr-defined]


def _channel_stats(
    files: list[Path], cfg: ImageFolderData, seed: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel mean/std of (up to STATS_SAMPLES) training images, before augmentation."""
    rng = np.random.default_rng(seed + 2)
    chosen = rng.permutation(len(files))[:STATS_SAMPLES]
    total = total_sq = None
    count = 0
    for i in chosen:
        image = load_image(files[i], cfg.image_size, cfg.grayscale).double().flatten(1)
        s, sq = image.sum(1), (image**2).sum(1)
        total = s if total is None else total + s
        total_sq = sq if total_sq is None else total_sq + sq
        count += image.shape[1]
    mean = total / count  # type: ignore[operator]
    std = (total_sq / count - mean**2).clamp_min(0).sqrt()  # type: ignore[operator]
    std = torch.where(std > 1e-8, std, torch.ones_like(std))
    return mean.float()[:, None, None], std.float()[:, None, None]


def build_imagefolder(
    cfg: ImageFolderData,
    seed: int,
    device: torch.device,
    rank: int,
    world_size: int,
    preprocessing: Any = None,
):
    """Split the file list (seeded), compute normalisation on the training files, and make loaders.

    With a trained model's ``preprocessing``, its class names and mean/std are used instead.
    """
    from bptrain.preprocess import Preprocessing

    _pillow()  # fail early and clearly when Pillow is missing
    files, labels, classes = list_images(cfg.root)
    if preprocessing is not None and preprocessing.class_names is not None:
        labels = _relabel(labels, classes, preprocessing.class_names, cfg.root)
        classes = preprocessing.class_names
    paths = np.asarray([str(f) for f in files])
    train, val, test = (paths, labels), None, None
    rng = np.random.default_rng(seed + 1)  # the same split stream as in-memory sources
    if cfg.test_fraction > 0:
        train, test = hold_out(train, cfg.test_fraction, rng, "test")
    if cfg.val_fraction > 0:
        train, val = hold_out(train, cfg.val_fraction / (1 - cfg.test_fraction), rng, "validation")
    train_files = [Path(p) for p in train[0]]
    mean = std = None
    if preprocessing is not None:
        mean, std = preprocessing.mean, preprocessing.std
    elif cfg.mean is not None and cfg.std is not None:
        mean = torch.tensor(cfg.mean, dtype=torch.float32)[:, None, None]
        std = torch.tensor(cfg.std, dtype=torch.float32)[:, None, None]
    elif cfg.normalize:
        mean, std = _channel_stats(train_files, cfg, seed)
    channels = 1 if cfg.grayscale else 3
    spec = DataSpec("classification", (channels, cfg.image_size, cfg.image_size), len(classes), ())
    if preprocessing is not None:
        spec = preprocessing.spec

    def batches(split, training: bool):
        if split is None:
            return None
        dataset = ImageFiles(
            [Path(p) for p in split[0]], split[1], cfg, mean, std, augment=training, seed=seed
        )
        return dataloader_batches(
            dataset, cfg, training, seed, device, rank, world_size, kind=ImageBatches
        )

    fitted = preprocessing or Preprocessing(
        spec,
        mean,
        std,
        class_names=list(classes),
        image={"size": cfg.image_size, "grayscale": cfg.grayscale},
        source=cfg.source,
    )
    space = InputSpace(0.0, 1.0, mean, std)  # load_image gives pixels in [0, 1]
    return DataBundle(
        batches(train, True), batches(val, False), batches(test, False), spec, fitted, space
    )


def _relabel(labels: np.ndarray, found: list[str], trained: list[str], root: Path) -> np.ndarray:
    """Indices into `found` -> indices into the trained model's classes; an unknown class is an error."""
    unknown = [name for name in found if name not in trained]
    if unknown:
        from bptrain.errors import UserError

        raise UserError(
            f"data.root {root}: class director(ies) {', '.join(map(repr, unknown))} unknown to the model, "
            f"which was trained on {', '.join(map(repr, trained))}."
        )
    mapping = np.array([trained.index(name) for name in found], dtype=np.int64)
    return mapping[labels]
