"""The dataset: CIFAR-10 (a local copy, the cache, or a download) or a synthetic stand-in.

Images stay uint8 on the host, (N, 32, 32, 3) in HWC order; labels are uint8 0-9.
Everything float (mean subtraction, augmentation) happens inside the model, on the
device, so the host never holds a float copy of the whole set.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

CLASS_NAMES = (
    "airplane",
    "automobile",
    "bird",
    "cat",
    "deer",
    "dog",
    "frog",
    "horse",
    "ship",
    "truck",
)


@dataclass(frozen=True)
class Dataset:
    x_train: np.ndarray  # uint8 (N, 32, 32, 3)
    y_train: np.ndarray  # uint8 (N,)
    x_test: np.ndarray  # uint8 (M, 32, 32, 3)
    y_test: np.ndarray  # uint8 (M,)
    description: str  # where it came from, for the manifest
    class_names: tuple[str, ...] = CLASS_NAMES

    def __post_init__(self):
        for name in ("x_train", "x_test"):
            x = getattr(self, name)
            if x.dtype != np.uint8 or x.ndim != 4 or x.shape[1:] != (32, 32, 3):
                raise ValueError(f"{name} must be uint8 (N, 32, 32, 3), got {x.dtype} {x.shape}")
        for x, y in ((self.x_train, self.y_train), (self.x_test, self.y_test)):
            if y.shape != (len(x),):
                raise ValueError(f"labels {y.shape} do not match images {x.shape}")

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def head(self, train_size: int | None, test_size: int | None) -> Dataset:
        """The first `train_size`/`test_size` examples in their stored order (None: all). A
        prefix need not hold every class equally: the description gives each class's range."""
        y_train, y_test = self.y_train[:train_size], self.y_test[:test_size]
        return Dataset(
            self.x_train[:train_size],
            y_train,
            self.x_test[:test_size],
            y_test,
            self.description
            + (f", first {train_size} train ({self._spread(y_train)})" if train_size else "")
            + (f", first {test_size} test ({self._spread(y_test)})" if test_size else ""),
            self.class_names,
        )

    def _spread(self, labels: np.ndarray) -> str:
        counts = np.bincount(labels, minlength=self.num_classes)
        return f"{counts.min()} to {counts.max()} images a class"

    def split_holdout(self, size: int) -> tuple[Dataset, np.ndarray, np.ndarray]:
        """Set the last `size` training images aside (for temperature scaling): the
        dataset without them, and their images and labels. Never trained on."""
        from job.errors import SpecError

        if not 0 < size < len(self.x_train):
            raise SpecError(
                f"eval.holdout_size is {size} but there are only {len(self.x_train)} training images; "
                "it must leave some to train on"
            )
        keep = len(self.x_train) - size
        rest = Dataset(
            self.x_train[:keep], self.y_train[:keep], self.x_test, self.y_test,
            self.description + f", last {size} train held out", self.class_names,
        )  # fmt: skip
        return rest, self.x_train[keep:], self.y_train[keep:]


def per_pixel_mean(x: np.ndarray) -> np.ndarray:
    """The recipe's per-pixel mean image (32, 32, 3), float32. numpy casts the uint8 images to
    float64 in small buffers as it sums: no float copy of the whole set is made."""
    return x.mean(axis=0, dtype=np.float64).astype(np.float32)


SYNTHETIC_SEED = 0  # one synthetic dataset for every run, so runs with different train.seed compare


def load_dataset(spec) -> Dataset:
    """The dataset a `DataSpec` describes; DataError when it cannot be had."""
    if spec.source == "synthetic":
        from job.data.synthetic import make_synthetic
        from job.spec import TEST_IMAGES, TRAIN_IMAGES

        train, test = spec.train_size or TRAIN_IMAGES, spec.test_size or TEST_IMAGES
        arrays = make_synthetic(train, test, seed=SYNTHETIC_SEED)
        return Dataset(*arrays, description=f"synthetic CIFAR-shaped, {train} train + {test} test")

    from job.data.cifar10 import load_cifar10

    # The spec caps the sizes at CIFAR-10's, and the loader refuses a dataset of other sizes.
    data = Dataset(*load_cifar10(spec.path, spec.cache_dir), description=f"CIFAR-10 ({spec.path or 'cache'})")
    return data.head(spec.train_size, spec.test_size)
