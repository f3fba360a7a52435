"""The ``data`` section: every data source and the options all of them share."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, model_validator

from bptrain.config.base import Section, UsablePath


class DataCommon(Section):
    batch_size: int = Field(64, ge=1)
    """Samples per batch. Under DDP this is per process (the global batch is batch_size x world size)."""
    shuffle: bool = True
    """Reshuffle the training set every epoch (the order is a pure function of seed and epoch)."""
    drop_last: bool = False
    """Drop the last, shorter training batch of each epoch."""
    val_fraction: float = Field(0.2, ge=0.0, lt=1.0)
    """Fraction of the training set held out for validation when the source has no validation split (seeded)."""
    test_fraction: float = Field(0.0, ge=0.0, lt=1.0)
    """Fraction held out as a test split when the source has none (seeded). 0 means no test split."""
    normalize: bool = False
    """Standardise inputs with the mean/std of the training split only: per feature for (N, F), per feature over samples and steps for sequences (N, T, F), per channel over samples and pixels for images (N, C, H, W). Token ids are never normalised."""
    loader: Literal["auto", "tensor", "dataloader"] = "auto"
    """How batches are made. `tensor`: whole batches indexed from in-memory tensors (on the training device when they fit); `dataloader`: a torch DataLoader with workers and pinned memory; `auto`: `tensor` for in-memory data."""
    num_workers: int = Field(2, ge=0)
    """DataLoader worker processes (only with loader: dataloader)."""

    @model_validator(mode="after")
    def _splits_leave_training_data(self) -> DataCommon:
        if self.val_fraction + self.test_fraction >= 1.0:
            raise ValueError(
                "val_fraction + test_fraction must be below 1 so some training data remains"
            )
        return self


SampleCount = Annotated[
    int, Field(ge=10, description="Total samples generated (before the validation/test split).")
]
"""`n_samples` of a generated source: the same bounds and meaning for every source, the default per source."""
NoiseStd = Annotated[float, Field(ge=0.0)]
"""A standard deviation of Gaussian noise; each source says where it adds it."""


class SyntheticData(DataCommon):
    """Base of the sources that generate their samples (no files to read), drawn with the run's seed."""

    n_samples: SampleCount = 1000


class SpiralsData(SyntheticData):
    source: Literal["spirals"]
    n_samples: SampleCount = 1500
    n_classes: int = Field(3, ge=2)
    """Number of interleaved spiral arms (= classes)."""
    noise: NoiseStd = 0.2
    """Standard deviation of the Gaussian noise added to each point."""


class MoonsData(SyntheticData):
    source: Literal["moons"]
    noise: NoiseStd = 0.1
    """Standard deviation of the Gaussian noise added to each point."""


class BlobsData(SyntheticData):
    source: Literal["blobs"]
    n_classes: int = Field(3, ge=2)
    """Number of Gaussian clusters (= classes)."""
    n_features: int = Field(2, ge=1)
    """Input dimension."""
    cluster_std: float = Field(1.0, gt=0.0)
    """Standard deviation of each cluster; centres are drawn uniformly in [-10, 10]."""


class XorData(SyntheticData):
    source: Literal["xor"]
    noise: NoiseStd = 0.1
    """Standard deviation of the Gaussian noise added to the inputs."""


class SineData(SyntheticData):
    source: Literal["sine"]
    noise: NoiseStd = 0.05
    """Standard deviation of the Gaussian noise added to the targets."""
    periods: float = Field(2.0, gt=0.0)
    """How many periods of sin(x) the inputs span."""


class DigitsData(DataCommon):
    source: Literal["digits"]
    """The UCI optical-recognition handwritten digits (1,797 8x8 images, 10 classes), shipped inside bptrain; no download."""
    test_fraction: float = Field(0.2, ge=0.0, lt=1.0)
    """Fraction held out as a test split when the source has none (seeded). 0 means no test split."""
    flatten: bool = True
    """Give each image as 64 features (for MLPs); false gives (1, 8, 8) images."""


class NpzData(DataCommon):
    source: Literal["npz"]
    path: UsablePath
    """An .npz file with arrays `x`, `y` and optionally `x_val`/`y_val` and `x_test`/`y_test`. Relative paths are resolved from the current directory."""
    allow_non_finite: bool = False
    """Accept NaN and infinite values in the file. By default loading refuses them, naming the first one: they make the loss NaN."""


class CsvData(DataCommon):
    source: Literal["csv"]
    path: UsablePath
    """A CSV file with a header row; every column but the target is a numeric feature. Relative paths are resolved from the current directory."""
    target: str
    """Name of the target column. Integer-valued targets make a classification task, others regression."""
    task: Literal["auto", "classification", "regression"] = "auto"
    """Override the task inferred from the target column."""
    allow_non_finite: bool = False
    """Accept NaN and infinite values in the file. By default loading refuses them, naming the first one: they make the loss NaN."""


class AddingData(SyntheticData):
    source: Literal["adding"]
    """The adding problem (Hochreiter & Schmidhuber, 1997): x is (N, length, 2) of (value in [0, 1], marker); exactly two steps are marked, one in each half, and the target is the sum of their values. Predicting the mean (1.0) gives MSE ~0.167; a plain RNN stays there as length grows, an LSTM or GRU drives it near 0."""
    n_samples: SampleCount = 4000
    length: int = Field(50, ge=2)
    """Sequence length T: the distance the error signal must travel back through time."""


class CopyData(SyntheticData):
    source: Literal["copy"]
    """The copy (memory) task: x is (N, length + delay + length) token ids: `length` random symbols, `delay` blanks, a go-marker, blanks; the per-step target is blank (0) everywhere except the last `length` steps, which must repeat the symbols. Many-to-many classification; tokens: 0 blank, 1 go-marker, 2.. symbols."""
    n_samples: SampleCount = 3000
    length: int = Field(5, ge=1)
    """How many symbols to remember and repeat."""
    delay: int = Field(10, ge=0)
    """Blank steps between the symbols and the go-marker."""
    symbols: int = Field(8, ge=2)
    """Size of the symbol alphabet (the vocabulary is symbols + 2)."""


class MajorityData(SyntheticData):
    source: Literal["majority"]
    """Sequence classification on token ids: x is (N, length) tokens from `vocab` symbols and the label is the most frequent token (planted so it is unique). Needs the whole sequence: a model reading only a prefix cannot solve it."""
    n_samples: SampleCount = 3000
    length: int = Field(24, ge=3)
    """Tokens per sequence."""
    vocab: int = Field(6, ge=2)
    """Number of distinct tokens (= classes)."""


class SineSeriesData(SyntheticData):
    source: Literal["sine_series"]
    """Time-series forecasting: x is (N, length, 1) windows of sin(w t + phase) + noise with a random frequency and phase per sample; y is the next `horizon` values (N, horizon)."""
    n_samples: SampleCount = 3000
    length: int = Field(40, ge=2)
    """Steps in each input window."""
    horizon: int = Field(1, ge=1)
    """Steps to forecast."""
    noise: NoiseStd = 0.05
    """Standard deviation of the Gaussian noise on the observed values (targets are noise-free)."""


class ShapesData(SyntheticData):
    source: Literal["shapes"]
    """Small synthetic images of four shapes (0 square, 1 disc, 2 triangle, 3 cross) at random positions and sizes, with pixel noise: (N, 1, image_size, image_size)."""
    n_samples: SampleCount = 2000
    image_size: int = Field(16, ge=8, le=128)
    """Height and width in pixels."""
    noise: NoiseStd = 0.15
    """Standard deviation of the Gaussian pixel noise (pixels are in [0, 1] before noise)."""


class ImageFolderData(DataCommon):
    source: Literal["imagefolder"]
    """Images on disk as root/<class>/<image> (any format Pillow reads), one sub-directory per class in sorted order. Needs Pillow: pip install 'bptrain[images]'. Batches always come from a DataLoader with num_workers workers."""
    root: UsablePath
    """The directory holding one sub-directory per class. Relative paths are resolved from the current directory."""
    image_size: int = Field(32, ge=4)
    """Every image is resized to image_size x image_size."""
    grayscale: bool = False
    """Read images as 1 channel instead of RGB (3)."""
    mean: list[float] | None = None
    """Per-channel mean to subtract (pixels are in [0, 1]); null with normalize: true computes it on the training split."""
    std: list[float] | None = None
    """Per-channel standard deviation to divide by; null with normalize: true computes it on the training split."""
    random_crop_padding: int = Field(0, ge=0)
    """Training augmentation: pad by this many pixels (zeros) and crop back to image_size at a random offset. 0 disables it."""
    horizontal_flip: bool = False
    """Training augmentation: flip each image left-right with probability 1/2."""

    @model_validator(mode="after")
    def _mean_std_together(self) -> ImageFolderData:
        channels = 1 if self.grayscale else 3
        for key in ("mean", "std"):
            value = getattr(self, key)
            if value is not None and len(value) != channels:
                raise ValueError(
                    f"{key} needs {channels} values (one per channel), got {len(value)}"
                )
        if (self.mean is None) != (self.std is None):
            raise ValueError("give both mean and std, or neither")
        return self


DataConfig = Annotated[
    SpiralsData
    | MoonsData
    | BlobsData
    | XorData
    | SineData
    | DigitsData
    | NpzData
    | CsvData
    | AddingData
    | CopyData
    | MajorityData
    | SineSeriesData
    | ShapesData
    | ImageFolderData,
    Field(discriminator="source"),
]
