"""Evaluation reports for a finished run: metrics, the tutorial's printout, two plots.

Only numpy, scikit-learn and matplotlib are used, so reports can be regenerated
from saved predictions on a machine without the training stack. Every file goes
through job.atomic: a crash mid-write leaves the previous report, never half a PNG.
"""

from __future__ import annotations

from pathlib import Path
from typing import Mapping, Sequence

import matplotlib.style
import numpy as np
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator
from sklearn.metrics import (
    ConfusionMatrixDisplay,
    accuracy_score,
    classification_report,
    confusion_matrix,
    log_loss,
)

from job.atomic import atomic_path, write_json, write_text

# Keras clips probabilities to this epsilon in its cross-entropy; clipping the same
# way keeps test_nll comparable with the val_nll logged during training.
PROB_EPSILON = 1e-7

# history key, legend label, line style; the first four are the tutorial's lines.
# val_nll is the unsmoothed loss, the one number comparable across smoothing methods.
_SERIES = (
    ("loss", "train_loss", "-"),
    ("val_loss", "val_loss", "-"),
    ("accuracy", "train_acc", "-"),
    ("val_accuracy", "val_acc", "-"),
    ("val_nll", "val_nll", "--"),
)


def classification_metrics(
    y_true: np.ndarray, probs: np.ndarray, class_names: Sequence[str]
) -> tuple[dict, str]:
    """metrics dict for metrics.json and sklearn's classification_report text."""
    y_true, probs = _check_predictions(y_true, probs, class_names)
    labels = list(range(len(class_names)))
    y_pred = probs.argmax(axis=1)

    # Explicit labels keep every class in the report and the matrix even when a
    # small test split lacks some; zero_division=0 lets an untrained model through.
    report = classification_report(
        y_true, y_pred, labels=labels, target_names=list(class_names),
        output_dict=True, zero_division=0,
    )
    metrics = {
        "test_accuracy": float(accuracy_score(y_true, y_pred)),
        "test_nll": float(log_loss(y_true, _clip_probs(probs), labels=labels)),
        "num_examples": int(len(y_true)),
        "per_class": {name: _scores(report[name]) for name in class_names},
        "macro_avg": _scores(report["macro avg"]),
        "weighted_avg": _scores(report["weighted avg"]),
        "confusion_matrix": confusion_matrix(y_true, y_pred, labels=labels).tolist(),
    }
    # Two digits, as the tutorial prints it; metrics.json keeps full precision.
    text = classification_report(
        y_true, y_pred, labels=labels, target_names=list(class_names), zero_division=0
    )
    return metrics, text


def write_training_plot(
    history: Sequence[Mapping[str, float]],
    path: Path,
    title: str = "Training Loss and Accuracy",
) -> None:
    """The tutorial's plot: losses and accuracies per epoch on one axes."""
    epochs = np.arange(1, len(history) + 1)
    with matplotlib.style.context("ggplot"):
        fig = Figure(figsize=(9, 5.5), layout="constrained")
        ax = fig.add_subplot()
        for key, label, linestyle in _SERIES:
            values = np.array([row.get(key, np.nan) for row in history], dtype=float)
            if np.isfinite(values).any():
                # Markers keep a one-epoch run (a single point) visible.
                ax.plot(epochs, values, linestyle=linestyle, marker="o", markersize=4, label=label)
        ax.set_title(title)
        ax.set_xlabel("Epoch #")
        ax.set_ylabel("Loss/Accuracy")
        # Whole epochs only, even for a 1-epoch run where one tick is all there is.
        ax.xaxis.set_major_locator(MaxNLocator(integer=True, min_n_ticks=1))
        if ax.get_lines():
            # Outside the axes: loss and accuracy curves between them fill the plot.
            fig.legend(loc="outside right upper")
        _save_png(fig, path)


def write_confusion_matrix(
    y_true: np.ndarray,
    y_pred: np.ndarray,
    class_names: Sequence[str],
    path: Path,
    normalize: bool = True,
) -> None:
    """sklearn's confusion-matrix plot; normalised rows read as per-class recall."""
    labels = list(range(len(class_names)))
    counts = confusion_matrix(y_true, y_pred, labels=labels)
    support = counts.sum(axis=1)
    if normalize:
        # A class absent from y_true has an all-zero row, not a row of NaNs.
        matrix = counts / np.maximum(support, 1)[:, None]
        plot_kw = dict(values_format=".2f", im_kw=dict(vmin=0.0, vmax=1.0))
        title = "Confusion matrix (rows normalised to the true class)"
    else:
        matrix = counts
        plot_kw = dict(values_format="d")
        title = "Confusion matrix (counts)"

    fig = Figure(figsize=(9, 8), layout="constrained")
    ax = fig.add_subplot()
    display = ConfusionMatrixDisplay(matrix, display_labels=list(class_names))
    display.plot(ax=ax, cmap="Blues", xticks_rotation=45, text_kw=dict(fontsize=9), **plot_kw)
    # Fractions hide how many examples a row stands on; the labels carry the count.
    ax.set_yticks(labels, [f"{name} ({n})" for name, n in zip(class_names, support)])
    for tick in ax.get_xticklabels():
        tick.set(horizontalalignment="right", rotation_mode="anchor")
    ax.set_ylabel("True label (support)")
    ax.set_title(title)
    _save_png(fig, path)


def write_reports(
    run_dir: Path,
    history: Sequence[Mapping[str, float]],
    y_true: np.ndarray,
    probs: np.ndarray,
    class_names: Sequence[str],
) -> dict:
    """Write the run's four report files and return the metrics."""
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    metrics, text = classification_metrics(y_true, probs, class_names)
    y_pred = np.asarray(probs).argmax(axis=1)

    write_text(run_dir / "classification_report.txt", text)
    write_training_plot(history, run_dir / "training.png")
    write_confusion_matrix(y_true, y_pred, class_names, run_dir / "confusion_matrix.png")
    # Last, so a metrics.json on disk means the whole report set was written.
    write_json(run_dir / "metrics.json", metrics)
    return metrics


def _check_predictions(
    y_true: np.ndarray, probs: np.ndarray, class_names: Sequence[str]
) -> tuple[np.ndarray, np.ndarray]:
    y_true = np.asarray(y_true)
    probs = np.asarray(probs, dtype=np.float64)
    if probs.ndim != 2 or probs.shape[1] != len(class_names):
        raise ValueError(f"probs must be (N, {len(class_names)}), got {probs.shape}")
    if y_true.shape != (len(probs),):
        raise ValueError(f"y_true must be ({len(probs)},), got {y_true.shape}")
    # sklearn would silently drop an out-of-range label from the matrix and report.
    if len(y_true) and not (0 <= y_true.min() and y_true.max() < len(class_names)):
        raise ValueError(f"y_true labels must lie in [0, {len(class_names)}), got {y_true.min()}..{y_true.max()}")
    return y_true.astype(np.int64), probs


def _clip_probs(probs: np.ndarray) -> np.ndarray:
    """Keep log finite for a confident miss; renormalise so sklearn sees true distributions."""
    clipped = np.clip(probs, PROB_EPSILON, 1.0)
    return clipped / clipped.sum(axis=1, keepdims=True)


def _scores(row: Mapping[str, float]) -> dict:
    return {
        "precision": float(row["precision"]),
        "recall": float(row["recall"]),
        "f1": float(row["f1-score"]),
        "support": int(row["support"]),
    }


def _save_png(fig: Figure, path: Path) -> None:
    with atomic_path(path, suffix=".png") as tmp:
        fig.savefig(tmp, format="png", dpi=100)
