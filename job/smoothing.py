"""Label smoothing, the two ways the tutorial compares.

`labels` smooths the one-hot training targets up front and trains with plain
cross-entropy; `loss` keeps hard targets and lets CategoricalCrossentropy smooth
inside the loss. They optimise the same objective. The one visible difference is
`val_loss`: under `loss` the validation loss is smoothed too, so every run also
records an unsmoothed validation NLL (`val_nll`) that compares across methods.
"""

from __future__ import annotations

import keras
import numpy as np

from job.spec import SmoothingSpec


def one_hot(labels: np.ndarray, num_classes: int) -> np.ndarray:
    return np.eye(num_classes, dtype=np.float32)[labels]


def smooth_labels(targets: np.ndarray, factor: float) -> np.ndarray:
    """y * (1 - f) + f / K, for one-hot (or already soft) targets of shape (N, K)."""
    num_classes = targets.shape[-1]
    return (targets * (1.0 - factor) + factor / num_classes).astype(np.float32)


def training_targets(labels: np.ndarray, num_classes: int, spec: SmoothingSpec) -> np.ndarray:
    targets = one_hot(labels, num_classes)
    if spec.method == "labels":
        targets = smooth_labels(targets, spec.factor)
    return targets


def training_loss(spec: SmoothingSpec) -> keras.losses.Loss:
    if spec.method == "loss":
        return keras.losses.CategoricalCrossentropy(label_smoothing=spec.factor)
    return keras.losses.CategoricalCrossentropy()


def describe(labels: np.ndarray, num_classes: int, spec: SmoothingSpec) -> str:
    """The tutorial's before/after print of one training label."""
    before = one_hot(labels[:1], num_classes)[0]
    after = training_targets(labels[:1], num_classes, spec)[0]
    with np.printoptions(precision=2, suppress=True):
        if spec.method == "labels":
            return f"smoothing labels (f={spec.factor:g}): {before} -> {after}"
        if spec.method == "loss":
            return f"smoothing in the loss (f={spec.factor:g}); labels stay hard: {before}"
        return f"no label smoothing; labels: {before}"
