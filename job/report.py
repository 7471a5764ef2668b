"""Evaluation reports for a finished run: metrics, calibration, the tutorial's printout, plots.

Every report is computed from two files the run saves, `predictions.npz` and
`history.csv`, by `write_reports(run_dir)`: the run itself calls it, and so does
`lsjob report RUN_DIR` later, on a machine without the training stack (only numpy,
scipy, scikit-learn and matplotlib here), giving the same files. The files are written as one set
(job.atomic.file_set): a crash or a full disk mid-write leaves the previous reports,
never half a PNG nor a mix of old and new files.
"""

from __future__ import annotations

import logging
import os
import zipfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import matplotlib.style
import numpy as np
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator
from sklearn.metrics import (
    ConfusionMatrixDisplay,
    accuracy_score,
    classification_report,
    confusion_matrix,
)

from job import calibration
from job.atomic import atomic_path, file_set, save_png, write_json, write_text
from job.errors import NO_SPACE_ERRNOS, NoSpaceError, SpecError, storage_fault
from job.history import read_history
from job.rundir import (
    CALIBRATION_FILE,
    CLASSIFICATION_REPORT,
    COMPLETED,
    CONFUSION_PLOT,
    HISTORY_FILE,
    MANIFEST,
    METRICS_FILE,
    PREDICTIONS_FILE,
    RELIABILITY_PLOT,
    TRAINING_PLOT,
    RunDir,
    open_own,
    run_directories,
)

log = logging.getLogger("lsjob")

# The training plot's panels: y label, then (history key, legend label, line style) per series.
# All but val_nll are the tutorial's lines; val_nll is the unsmoothed loss, the one number
# comparable across smoothing methods.
_PANELS = (
    ("Loss", (("loss", "train_loss", "-"), ("val_loss", "val_loss", "-"), ("val_nll", "val_nll", "--"))),
    ("Accuracy", (("accuracy", "train_acc", "-"), ("val_accuracy", "val_acc", "-"))),
)
# Losses spanning more than this factor (a run that blew up) are drawn on a log scale,
# where the healthy epochs are not flattened into a line at zero.
LOG_SCALE_SPAN = 100.0


def classification_metrics(y_true: np.ndarray, probs: np.ndarray, class_names: Sequence[str]) -> tuple[dict, str]:
    """metrics dict for metrics.json and sklearn's classification_report text."""
    y_true, probs = _check_predictions(y_true, probs, class_names)
    labels = list(range(len(class_names)))
    y_pred = probs.argmax(axis=1)

    # Explicit labels keep every class in the report and the matrix even when a small
    # test split lacks some; zero_division=0 lets an untrained model through.
    report = classification_report(
        y_true, y_pred, labels=labels, target_names=list(class_names), output_dict=True, zero_division=0
    )
    per_class = {name: _scores(report[name]) for name in class_names}
    # Averages over the classes in play, sklearn's default set: those the test split has or
    # the model predicted. A class with neither has no precision or recall at all, and the 0
    # the explicit labels give it would pull a small split's macro average down.
    in_play = sorted(set(y_true.tolist()) | set(y_pred.tolist()))
    averages = classification_report(y_true, y_pred, labels=in_play, output_dict=True, zero_division=0)
    metrics = {
        "test_accuracy": float(accuracy_score(y_true, y_pred)),
        "test_nll": calibration.nll(probs, y_true),
        "num_examples": int(len(y_true)),
        "per_class": per_class,
        "macro_avg": _scores(averages["macro avg"]),
        "weighted_avg": _scores(averages["weighted avg"]),
        "confusion_matrix": confusion_matrix(y_true, y_pred, labels=labels).tolist(),
    }
    # Two digits, as the tutorial prints it; metrics.json keeps full precision.
    text = classification_report(y_true, y_pred, labels=labels, target_names=list(class_names), zero_division=0)
    idle = [name for i, name in enumerate(class_names) if i not in in_play]
    if idle:
        text += (
            f"\n{', '.join(idle)}: no test images and never predicted. The averages above count them "
            f"as 0; metrics.json averages over the {len(in_play)} other classes.\n"
        )
    return metrics, text


def write_training_plot(history: Sequence[Mapping[str, float]], path: Path) -> None:
    """The tutorial's curves, losses and accuracies per epoch, plus val_nll; on two panels
    rather than the tutorial's one, so that a loss far above 1 cannot flatten the accuracies."""
    epochs = np.arange(1, len(history) + 1)
    with matplotlib.style.context("ggplot"):
        fig = Figure(figsize=(9, 7), layout="constrained")
        axes = fig.subplots(2, 1, sharex=True)
        for ax, (ylabel, series) in zip(axes, _PANELS):
            curves = {key: np.array([row.get(key, np.nan) for row in history], dtype=float) for key, _, _ in series}
            drawn = []
            for key, label, linestyle in series:
                values = curves[key]
                if key == "val_nll":
                    same = np.allclose(values, curves["val_loss"], rtol=1e-5, atol=1e-6, equal_nan=True)
                    # labels, none: one line hid the other, as if one were missing. loss: val_loss is
                    # the smoothed loss, and nothing else on the plot said which line was which.
                    label += " (= val_loss here)" if same else " (unsmoothed)"
                if np.isfinite(values).any():
                    # Markers keep a one-epoch run (a single point) visible.
                    ax.plot(epochs, values, linestyle=linestyle, marker="o", markersize=4, label=label)
                    drawn.append(values[np.isfinite(values)])
            if drawn:
                ax.legend(loc="best", fontsize="small")
                finite = np.concatenate(drawn)
                if finite.min() > 0 and finite.max() / finite.min() > LOG_SCALE_SPAN:
                    ax.set_yscale("log")
                    ylabel += " (log scale)"
            ax.set_ylabel(ylabel)
        axes[0].set_title("Training Loss and Accuracy")
        axes[-1].set_xlabel("Epoch #")
        # Whole epochs only, even for a 1-epoch run where one tick is all there is.
        axes[-1].xaxis.set_major_locator(MaxNLocator(integer=True, min_n_ticks=1))
        save_png(fig, path)


def write_confusion_matrix(y_true: np.ndarray, y_pred: np.ndarray, class_names: Sequence[str], path: Path) -> None:
    """sklearn's confusion-matrix plot, rows normalised: each reads as that class's recall."""
    labels = list(range(len(class_names)))
    counts = confusion_matrix(y_true, y_pred, labels=labels)
    support = counts.sum(axis=1)
    # A class absent from y_true has an all-zero row, not a row of NaNs.
    matrix = counts / np.maximum(support, 1)[:, None]

    fig = Figure(figsize=(9, 8), layout="constrained")
    ax = fig.add_subplot()
    display = ConfusionMatrixDisplay(matrix, display_labels=list(class_names))
    display.plot(
        ax=ax, cmap="Blues", xticks_rotation=45, values_format=".2f", im_kw=dict(vmin=0.0, vmax=1.0),
        text_kw=dict(fontsize=9),
    )  # fmt: skip
    # Fractions hide how many examples a row stands on; the labels carry the count.
    ax.set_yticks(labels, [f"{name} ({n})" for name, n in zip(class_names, support)])
    for tick in ax.get_xticklabels():
        tick.set(horizontalalignment="right", rotation_mode="anchor")
    ax.set_ylabel("True label (support)")
    ax.set_title("Confusion matrix (rows normalised to the true class)")
    save_png(fig, path)


@dataclass(frozen=True)
class Predictions:
    """What predictions.npz holds: the test set's probabilities, and the held-out slice's
    when temperature scaling is on, so every metric can be recomputed without a GPU."""

    test_probs: np.ndarray
    test_labels: np.ndarray
    class_names: tuple[str, ...]
    holdout_probs: np.ndarray | None = None
    holdout_labels: np.ndarray | None = None


def save_predictions(run_dir: Path, predictions: Predictions) -> None:
    arrays = {
        "test_probs": np.asarray(predictions.test_probs, dtype=np.float32),
        "test_labels": np.asarray(predictions.test_labels, dtype=np.int64),
        "class_names": np.array(predictions.class_names, dtype=str),
    }
    if predictions.holdout_probs is not None:
        arrays["holdout_probs"] = np.asarray(predictions.holdout_probs, dtype=np.float32)
        arrays["holdout_labels"] = np.asarray(predictions.holdout_labels, dtype=np.int64)
    with atomic_path(Path(run_dir) / PREDICTIONS_FILE, suffix=".npz") as tmp:
        np.savez(tmp, **arrays)


def load_predictions(run_dir: Path) -> Predictions:
    # allow_pickle=False: a results volume is shared; a tampered file must not run code. Nor is a
    # teammate's link to a file of this user's read as one (rundir.open_own).
    path = Path(run_dir) / PREDICTIONS_FILE
    with open(open_own(path, os.O_RDONLY), "rb") as raw, np.load(_zip(raw), allow_pickle=False) as f:
        names = f["class_names"]
        if names.ndim != 1 or names.dtype.kind != "U" or not len(names):
            raise ValueError(f"class_names is an array of {names.dtype} of shape {names.shape}, not a list of names")
        class_names = tuple(str(n) for n in names)
        # Checked here, each array by name: a wrong shape reached numpy and sklearn as an error
        # naming neither, or broadcast into a temperature fitted on nonsense.
        test_labels, test_probs = _check_predictions(f["test_labels"], f["test_probs"], class_names, "test")
        holdout_labels = holdout_probs = None
        if "holdout_probs" in f.files:
            holdout_labels, holdout_probs = _check_predictions(
                f["holdout_labels"], f["holdout_probs"], class_names, "holdout"
            )
        return Predictions(test_probs, test_labels, class_names, holdout_probs, holdout_labels)


def _zip(raw):
    """`raw`, rewound, where it starts as a zip file does: np.load takes anything else for a
    pickle, and refuses it with advice to load it unsafely."""
    if raw.read(4) != b"PK\x03\x04":
        raise ValueError("it is not an npz archive (a zip file)")
    raw.seek(0)
    return raw


def calibration_report(predictions: Predictions) -> dict:
    """calibration.json: the test set's calibration, and before/after temperature scaling
    fitted on the held-out slice when there is one."""
    test = calibration.summary(predictions.test_probs, predictions.test_labels)
    report = {"bins": calibration.BINS, "test": test, "temperature_scaling": None}
    if predictions.holdout_probs is not None:
        temperature = calibration.fit_temperature(predictions.holdout_probs, predictions.holdout_labels)
        scaled = calibration.apply_temperature(predictions.test_probs, temperature)
        at_bound = calibration.at_search_bound(temperature)
        low, high = np.exp(calibration.LOG_T_BOUNDS)
        bound = f"at the end of the range searched ({low:.2f} to {high:.0f})"
        # Every held-out prediction right: sharpening lowers their NLL all the way to T -> 0, so no
        # T is the optimum; the search stops where the clipped NLL stops falling, or at its low end.
        all_right = bool((predictions.holdout_probs.argmax(axis=1) == predictions.holdout_labels).all())
        if all_right or (at_bound and temperature < 1):
            log.warning(
                "temperature scaling: T = %.3f (%s) is no true optimum: the model gets %s held-out image right, "
                "so sharpening keeps lowering their NLL; hold out more images (eval.holdout_size) for a T that "
                "means something",
                temperature, bound if at_bound else "where their NLL stopped falling",
                "every" if all_right else "nearly every",
            )  # fmt: skip
        elif at_bound:
            log.warning(
                "temperature scaling: T = %.3f is %s, so it is no true optimum: the held-out predictions carry "
                "next to nothing about their labels", temperature, bound,
            )  # fmt: skip
        report["temperature_scaling"] = {
            "temperature": temperature,
            "at_search_bound": at_bound,
            "holdout_examples": int(len(predictions.holdout_labels)),
            "holdout_nll_before": calibration.nll(predictions.holdout_probs, predictions.holdout_labels),
            "holdout_nll_after": calibration.nll(
                calibration.apply_temperature(predictions.holdout_probs, temperature), predictions.holdout_labels
            ),
            "test": calibration.summary(scaled, predictions.test_labels),
        }
    return report


def write_reliability_diagram(report: dict, path: Path) -> None:
    """Accuracy per confidence bin against the diagonal, over the confidence histogram;
    after temperature scaling too when it was fitted."""
    panels = [("uncalibrated" if report["temperature_scaling"] else "test set", report["test"])]
    if report["temperature_scaling"]:
        scaling = report["temperature_scaling"]
        bound = " (the search's bound)" if scaling.get("at_search_bound") else ""
        panels.append((f"temperature scaled, T = {scaling['temperature']:.3f}{bound}", scaling["test"]))
    with matplotlib.style.context("ggplot"):
        fig = Figure(figsize=(6 * len(panels), 8), layout="constrained")
        axes = fig.subplots(2, len(panels), squeeze=False, height_ratios=[3, 1.3], sharex=True)
        for column, (title, summary) in enumerate(panels):
            _reliability_panel(axes[0, column], axes[1, column], title, summary)
        fig.suptitle(f"Reliability diagram ({report['bins']} equal-width bins, top-1 confidence)")
        # Below the panels: wherever it sat inside one, some model's bars and counts were under it.
        fig.legend(*axes[0, 0].get_legend_handles_labels(), loc="outside lower center", ncols=4, fontsize=8)
        save_png(fig, path)


def _reliability_panel(top, bottom, title: str, summary: dict) -> None:
    bins = summary["bins"]
    width = bins[0]["upper"] - bins[0]["lower"]
    centers = np.array([(b["lower"] + b["upper"]) / 2 for b in bins])
    counts = np.array([b["count"] for b in bins])
    filled = counts > 0
    accuracy = np.array([b["accuracy"] if b["count"] else 0.0 for b in bins])
    confidence = np.array([b["confidence"] if b["count"] else 0.0 for b in bins])

    top.plot([0, 1], [0, 1], linestyle="--", color="0.4", label="perfect calibration")
    top.bar(centers[filled], accuracy[filled], width=width, edgecolor="black", linewidth=0.5,
            color="#4C72B0", label="accuracy")  # fmt: skip
    # The gap to each bin's mean confidence is the error ECE averages. Hatched, not filled: a smoothed
    # model's gap lies inside its accuracy bar, where a fill tinted the bar's top and left plain blue
    # only up to the confidence, which then read as the accuracy.
    top.bar(centers[filled], confidence[filled] - accuracy[filled], bottom=accuracy[filled], width=width,
            facecolor="none", edgecolor="#DD8452", linewidth=0, hatch="//", label="gap to confidence")  # fmt: skip
    top.hlines(confidence[filled], centers[filled] - width / 2, centers[filled] + width / 2, color="#DD8452",
               linewidth=2, label="bin's mean confidence")  # fmt: skip
    # Above whichever is higher, so the count is on neither the bar's top nor the confidence mark; on
    # a patch of background, since a calibrated model's bars end on the diagonal, which then ran through it.
    for x, y, n in zip(centers[filled], np.maximum(accuracy, confidence)[filled], counts[filled]):
        top.annotate(f"{n}", (x, y), textcoords="offset points", xytext=(0, 2), ha="center", fontsize=7,
                     bbox={"boxstyle": "square,pad=0.1", "facecolor": top.get_facecolor(), "linewidth": 0})  # fmt: skip
    top.set(xlim=(0, 1), ylim=(0, 1.05), ylabel="accuracy")
    # The scores in the title, not in a box over the bins: any corner of the plot holds some model's bars.
    top.set_title(f"{title}\nECE {summary['ece']:.4f} · MCE {summary['mce']:.4f} · NLL {summary['nll']:.4f} · "
                  f"Brier {summary['brier']:.4f}", fontsize="medium")  # fmt: skip

    bottom.bar(centers, counts, width=width, color="#4C72B0", edgecolor="black", linewidth=0.5)
    bottom.axvline(summary["accuracy"], color="black", linestyle="-", label=f"accuracy {summary['accuracy']:.3f}")
    bottom.axvline(summary["mean_confidence"], color="#DD8452", linestyle="--",
                   label=f"mean confidence {summary['mean_confidence']:.3f}")  # fmt: skip
    bottom.set(xlabel="confidence (top-1 probability)", ylabel="examples")
    bottom.legend(loc="lower left", bbox_to_anchor=(0, 1), ncols=2, fontsize=8, borderaxespad=0.2)  # above the bars


# The metrics a completed run's manifest repeats, so a results table needs only manifests.
MANIFEST_METRICS = ("test_accuracy", "test_nll", "test_ece")


def write_reports(run_dir: Path, epochs: int | None = None, holdout: int | None = None) -> dict:
    """Write every report of a run from its predictions.npz and history.csv; returns the metrics.
    `epochs`: how many history.csv must hold (the manifest's epochs_done), where known: a copy
    cut short at a line's end reads as a whole file of fewer epochs. `holdout`: how many held-out
    predictions predictions.npz must hold (the manifest's holdout), where known: without them the
    reports quietly lost temperature scaling."""
    run_dir = Path(run_dir)
    try:
        predictions = load_predictions(run_dir)
    # BadZipFile, EOFError: a predictions.npz cut short (a results volume copied in part).
    except (ValueError, KeyError, EOFError, zipfile.BadZipFile) as e:
        raise ValueError(
            f"{PREDICTIONS_FILE} is damaged ({type(e).__name__}: {e}): restore it from a copy of the run"
        ) from e
    held = 0 if predictions.holdout_labels is None else len(predictions.holdout_labels)
    if holdout is not None and held != holdout:
        raise ValueError(
            f"{PREDICTIONS_FILE} holds {held} held-out predictions, the manifest says the run held out {holdout} "
            "for temperature scaling: restore it from a copy of the run"
        )
    history = read_history(run_dir / HISTORY_FILE)
    if not history or (epochs is not None and len(history) != epochs):
        of = f", the manifest says {epochs}" if epochs is not None else ""
        raise ValueError(
            f"{HISTORY_FILE} holds {len(history)} epochs{of} (a copy cut short?): restore it from a copy of the run"
        )
    y_true, probs = predictions.test_labels, predictions.test_probs
    metrics, text = classification_metrics(y_true, probs, predictions.class_names)
    calibration_json = calibration_report(predictions)
    test = calibration_json["test"]
    metrics.update(test_ece=test["ece"], test_mce=test["mce"], test_brier=test["brier"])
    if calibration_json["temperature_scaling"]:
        scaled = calibration_json["temperature_scaling"]
        metrics.update(
            temperature=scaled["temperature"], test_ece_scaled=scaled["test"]["ece"],
            test_nll_scaled=scaled["test"]["nll"],
        )  # fmt: skip

    with file_set(run_dir) as files:
        write_text(files.path(CLASSIFICATION_REPORT), text)
        write_training_plot(history, files.path(TRAINING_PLOT))
        predicted = probs.argmax(axis=1)
        write_confusion_matrix(y_true, predicted, predictions.class_names, files.path(CONFUSION_PLOT))
        write_reliability_diagram(calibration_json, files.path(RELIABILITY_PLOT))
        write_json(files.path(CALIBRATION_FILE), calibration_json)
        # Put in place last, so a metrics.json on disk means the whole report set is there.
        write_json(files.path(METRICS_FILE), metrics)
    return metrics


def _count(value) -> int | None:
    """A manifest's count, where it is one (a hand-edited manifest may hold anything there)."""
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def regenerate(run_dir: Path) -> dict:
    """`lsjob report`: rewrite a finished run's reports from its saved files. The run's
    lock is taken, so a run still writing its own reports is never raced."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise SpecError(f"{run_dir} is not a directory; give a run directory, e.g. results/labels-f0.1-s42")
    if not (run_dir / MANIFEST).exists() and (runs := _runs_below(run_dir)):
        shown = ", ".join(runs[:3]) + (", ..." if len(runs) > 3 else "")
        raise SpecError(
            f"{run_dir} is not a run directory but holds {len(runs)} run(s) ({shown}); give one of them, "
            f"or tabulate them all with `lsjob aggregate {run_dir}`"
        )
    claimed = RunDir(run_dir)
    damaged = "restore manifest.json from a copy of the run, or delete it to rewrite the reports without it"
    for name in (PREDICTIONS_FILE, HISTORY_FILE):
        if (run_dir / name).exists() and not (run_dir / name).is_file():
            raise SpecError(
                f"{run_dir / name} is not a regular file; the reports are made from the file the run wrote "
                "there: restore it from a copy of the run"
            )
        if not (run_dir / name).is_file():
            status = (claimed.read_manifest(damaged) or {}).get("status", "no manifest")
            if status == COMPLETED:
                fix = "a completed run holds it, so it was lost since (a copy in part?): restore it from a copy"
            else:
                fix = "reports are made from it when a run finishes, so finish the run first"
            if name == PREDICTIONS_FILE:
                fix += " (a run from before lsjob wrote predictions.npz cannot be redone)"
            raise SpecError(f"{run_dir} has no {name} (run status: {status}); {fix}")
    if not os.access(run_dir, os.W_OK | os.X_OK):
        raise SpecError(
            f"{run_dir} is not writable, so its reports cannot be rewritten there; "
            "copy the run directory somewhere writable and run `lsjob report` on the copy"
        )
    claimed.lock()
    try:
        manifest = claimed.read_manifest(damaged) or {}  # before any report is rewritten
        holdout = manifest["holdout"].get("examples") if isinstance(manifest.get("holdout"), dict) else None
        metrics = write_reports(run_dir, _count(manifest.get("epochs_done")), _count(holdout))
        # The manifest carries copies of the headline metrics, and aggregate checks them
        # against metrics.json: after a metric change both must move together.
        fresh = {key: metrics[key] for key in MANIFEST_METRICS}
        stale = any(manifest.get(k) != v for k, v in fresh.items())
        if stale and manifest.get("status") == COMPLETED:
            claimed.write_manifest({**manifest, **fresh})
        return metrics
    except OSError as e:
        if e.errno in NO_SPACE_ERRNOS:
            raise NoSpaceError(
                f"cannot regenerate the reports of {run_dir}: {e.strerror}; the previous reports are whole: free "
                "space and run it again"
            ) from None
        raise storage_fault(run_dir, e) or SpecError(
            f"cannot regenerate the reports of {run_dir}: {type(e).__name__}: {e}"
        ) from None
    except ValueError as e:  # a damaged predictions.npz or history.csv, named by write_reports
        raise SpecError(f"cannot regenerate the reports of {run_dir}: {e}") from None
    finally:
        claimed.release()


def _runs_below(folder: Path) -> list[str]:
    """The run directories at any depth below `folder`, found as `lsjob aggregate` finds them."""
    return sorted(path.relative_to(folder).as_posix() for path, _ in run_directories(folder, []) if path != folder)


def _check_predictions(
    y_true: np.ndarray, probs: np.ndarray, class_names: Sequence[str], name: str = "test"
) -> tuple[np.ndarray, np.ndarray]:
    """Labels and probabilities fit to score, or a ValueError naming what is wrong (`name`: which
    set, as predictions.npz names its arrays {name}_labels and {name}_probs)."""
    y_true, probs = np.asarray(y_true), np.asarray(probs)
    classes = len(class_names)
    if probs.dtype.kind != "f" or probs.ndim != 2 or probs.shape[1] != classes or not len(probs):
        raise ValueError(
            f"{name}_probs must be probabilities of shape (N, {classes}), N > 0, got an array of {probs.dtype} of "
            f"shape {probs.shape}"
        )
    if y_true.dtype.kind not in "iu" or y_true.shape != (len(probs),):
        raise ValueError(
            f"{name}_labels must be {len(probs)} integer class indices, one per row of {name}_probs, got an "
            f"array of {y_true.dtype} of shape {y_true.shape}"
        )
    probs = probs.astype(np.float64)
    if not np.isfinite(probs).all():
        rows = int((~np.isfinite(probs)).any(axis=1).sum())
        raise ValueError(
            f"the {name} probabilities of {rows} of {len(probs)} images are not finite (NaN or inf): the model's "
            "outputs overflowed, so no metric of them means anything; train again with a lower train.lr"
        )
    # A softmax's rows, saved as float32: none negative, each summing to 1 within rounding. Other
    # numbers would be scored as they are, and their metrics written over the run's.
    wrong = (probs < 0).any(axis=1) | (np.abs(probs.sum(axis=1) - 1) > 1e-3)
    if wrong.any():
        raise ValueError(
            f"the {name} probabilities of {int(wrong.sum())} of {len(probs)} images are no probabilities (a value "
            "below 0, or a row not summing to 1)"
        )
    # sklearn would silently drop an out-of-range label from the matrix and report.
    if not (0 <= y_true.min() and y_true.max() < classes):
        raise ValueError(f"{name}_labels must lie in [0, {classes}), got {y_true.min()}..{y_true.max()}")
    return y_true.astype(np.int64), probs


def _scores(row: Mapping[str, float]) -> dict:
    return {
        "precision": float(row["precision"]),
        "recall": float(row["recall"]),
        "f1": float(row["f1-score"]),
        "support": int(row["support"]),
    }
