"""Reports: metrics checked against hand-computed values, PNGs that really are PNGs,
and writes that leave the previous file intact when plotting fails half-way."""

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import matplotlib
import matplotlib.image
import numpy as np
import pytest
from matplotlib.figure import Figure
from sklearn.metrics import confusion_matrix as sklearn_confusion_matrix

from job.data import CLASS_NAMES
from job.errors import JobError, SpecError
from job.history import write_history_csv
from job.report import (
    Predictions,
    classification_metrics,
    load_predictions,
    read_history,
    regenerate,
    save_predictions,
    write_confusion_matrix,
    write_reports,
    write_training_plot,
)
from job.rundir import RunDir

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
ROOT = Path(__file__).resolve().parents[1]

# Three examples, three classes; the third is a miss (true 2, predicted 0).
Y_SMALL = np.array([0, 1, 2])
P_SMALL = np.array([[0.7, 0.2, 0.1], [0.1, 0.8, 0.1], [0.5, 0.2, 0.3]])
NAMES_SMALL = ("a", "b", "c")


def history(epochs, with_nll=True):
    rows = []
    for e in range(epochs):
        row = {
            "loss": 2.0 - 0.1 * e,
            "accuracy": 0.3 + 0.05 * e,
            "val_loss": 2.1 - 0.1 * e,
            "val_accuracy": 0.28 + 0.05 * e,
        }
        if with_nll:
            row["val_nll"] = 1.8 - 0.1 * e
        rows.append(row)
    return rows


def cifar_predictions(n=200, seed=0):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 10, n)
    logits = rng.normal(size=(n, 10))
    logits[np.arange(n), y] += 2.0
    probs = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    return y.astype(np.uint8), probs.astype(np.float32)


def assert_png(path):
    data = path.read_bytes()
    assert data.startswith(PNG_MAGIC) and len(data) > 1000
    image = matplotlib.image.imread(path)
    assert image.ndim == 3 and image.shape[0] > 100 and image.shape[1] > 100


def test_accuracy_and_nll_match_hand_computation():
    metrics, _ = classification_metrics(Y_SMALL, P_SMALL, NAMES_SMALL)
    assert metrics["test_accuracy"] == pytest.approx(2 / 3)
    assert metrics["test_nll"] == pytest.approx(-(math.log(0.7) + math.log(0.8) + math.log(0.3)) / 3)
    assert metrics["num_examples"] == 3
    assert metrics["confusion_matrix"] == [[1, 0, 0], [0, 1, 0], [1, 0, 0]]


def test_per_class_scores_match_hand_computation():
    metrics, _ = classification_metrics(Y_SMALL, P_SMALL, NAMES_SMALL)
    # a: predicted twice, right once; b: perfect; c: never predicted.
    assert metrics["per_class"]["a"] == pytest.approx({"precision": 0.5, "recall": 1.0, "f1": 2 / 3, "support": 1})
    assert metrics["per_class"]["b"] == pytest.approx({"precision": 1.0, "recall": 1.0, "f1": 1.0, "support": 1})
    assert metrics["per_class"]["c"] == pytest.approx({"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 1})
    assert metrics["macro_avg"] == pytest.approx({"precision": 0.5, "recall": 2 / 3, "f1": 5 / 9, "support": 3})
    # Every class has support 1, so the weighted average is the macro average.
    assert metrics["weighted_avg"] == pytest.approx(metrics["macro_avg"])


def test_perfect_predictions():
    y = np.arange(10).repeat(3)
    metrics, _ = classification_metrics(y, np.eye(10)[y], CLASS_NAMES)
    assert metrics["test_accuracy"] == 1.0
    assert metrics["macro_avg"]["f1"] == 1.0
    assert all(row["f1"] == 1.0 for row in metrics["per_class"].values())
    # One-hot probabilities: the true class gets (almost) all the mass.
    assert metrics["test_nll"] == pytest.approx(0.0, abs=1e-5)


def test_confident_miss_gives_finite_nll():
    metrics, _ = classification_metrics(np.array([0]), np.array([[0.0, 1.0]]), ("a", "b"))
    assert math.isfinite(metrics["test_nll"])
    assert metrics["test_nll"] == pytest.approx(-math.log(1e-7), rel=1e-3)


@pytest.mark.filterwarnings("error")  # no zero-division or log_loss warnings either
def test_classes_absent_from_y_true():
    y = np.array([0, 1, 1, 0])
    probs = np.full((4, 10), 0.01)
    probs[:, 3] = 0.91  # an untrained model predicting a class that never occurs
    metrics, text = classification_metrics(y, probs, CLASS_NAMES)
    assert metrics["test_accuracy"] == 0.0
    assert list(metrics["per_class"]) == list(CLASS_NAMES)
    assert metrics["per_class"]["truck"]["support"] == 0
    assert np.array(metrics["confusion_matrix"]).shape == (10, 10)
    assert "truck" in text


def test_averages_leave_out_classes_neither_in_the_test_split_nor_predicted():
    # A small test split of real CIFAR-10 (its first N images) lacks some classes.
    y = np.array([0, 1, 2, 3, 4] * 4)
    metrics, text = classification_metrics(y, np.eye(10)[y] * 0.9 + 0.01, CLASS_NAMES)
    assert metrics["macro_avg"] == {"precision": 1.0, "recall": 1.0, "f1": 1.0, "support": 20}
    assert metrics["weighted_avg"] == metrics["macro_avg"]
    assert metrics["per_class"]["truck"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 0}
    assert "dog, frog, horse, ship, truck: no test images and never predicted" in text
    assert "over the 5 other classes" in text


def test_a_class_predicted_but_absent_counts_its_wrong_predictions():
    # Half the images sent to truck, which the split lacks: its precision 0 is a measurement.
    y = np.array([0, 1, 2, 3, 4] * 4)
    predicted = y.copy()
    predicted[::2] = 9
    metrics, text = classification_metrics(y, np.eye(10)[predicted] * 0.9 + 0.01, CLASS_NAMES)
    assert metrics["test_accuracy"] == 0.5
    assert metrics["macro_avg"]["precision"] == pytest.approx(5 / 6)  # five classes right every time, truck never
    assert "dog, frog, horse, ship: no test images" in text and "over the 6 other classes" in text


def test_report_text_is_the_tutorials_printout():
    y, probs = cifar_predictions()
    _, text = classification_metrics(y, probs, CLASS_NAMES)
    assert all(name in text for name in CLASS_NAMES)
    assert "accuracy" in text and "macro avg" in text and "weighted avg" in text


def test_shape_mismatch_is_rejected():
    # Each by the check's own message: sklearn refuses some of these too, naming neither array.
    with pytest.raises(ValueError, match=r"test_probs must be probabilities of shape \(N, 3\)"):
        classification_metrics(Y_SMALL, P_SMALL[:, :2], NAMES_SMALL)
    with pytest.raises(ValueError, match="test_labels must be 3 integer class indices"):
        classification_metrics(Y_SMALL[:2], P_SMALL, NAMES_SMALL)
    with pytest.raises(ValueError, match=r"test_labels must lie in \[0, 3\), got 0..3"):
        classification_metrics(np.array([0, 1, 3]), P_SMALL, NAMES_SMALL)


def saved_run(run_dir, epochs=3, holdout=False):
    """A run directory as run.py leaves it before its reports: history.csv and predictions.npz."""
    run_dir.mkdir(exist_ok=True)
    (run_dir / "manifest.json").write_text('{"status": "completed"}')
    rows = [{"epoch": e + 1, **row, "lr": 0.005, "seconds": 1.5} for e, row in enumerate(history(epochs))]
    header = list(rows[0])
    lines = [",".join(header)] + [",".join(repr(float(r[k])) if k != "epoch" else str(r[k]) for k in header)
                                  for r in rows]  # fmt: skip
    (run_dir / "history.csv").write_text("\n".join(lines) + "\n")
    y, probs = cifar_predictions()
    hold_y, hold_probs = cifar_predictions(seed=1) if holdout else (None, None)
    save_predictions(run_dir, Predictions(probs, y, CLASS_NAMES, hold_probs, hold_y))
    return y, probs


REPORT_FILES = [
    "calibration.json", "classification_report.txt", "confusion_matrix.png", "history.csv", "manifest.json",
    "metrics.json", "predictions.npz", "reliability.png", "training.png",
]  # fmt: skip


@pytest.mark.parametrize("epochs", [1, 5])
def test_write_reports_writes_every_report_from_the_saved_files(tmp_path, epochs):
    y, probs = saved_run(tmp_path, epochs)
    metrics = write_reports(tmp_path)

    assert sorted(p.name for p in tmp_path.iterdir()) == REPORT_FILES
    assert json.loads((tmp_path / "metrics.json").read_text()) == metrics
    assert "accuracy" in (tmp_path / "classification_report.txt").read_text()
    for png in ("training.png", "confusion_matrix.png", "reliability.png"):
        assert_png(tmp_path / png)
    assert metrics["num_examples"] == len(y)
    calibration_json = json.loads((tmp_path / "calibration.json").read_text())
    assert calibration_json["bins"] == 15 and len(calibration_json["test"]["bins"]) == 15
    assert metrics["test_ece"] == calibration_json["test"]["ece"]
    assert metrics["test_nll"] == pytest.approx(calibration_json["test"]["nll"], rel=1e-6)
    assert calibration_json["temperature_scaling"] is None and "temperature" not in metrics


def test_predictions_round_trip_and_history_reads_back(tmp_path):
    y, probs = saved_run(tmp_path, 2, holdout=True)
    loaded = load_predictions(tmp_path)
    np.testing.assert_array_equal(loaded.test_labels, y)
    np.testing.assert_array_equal(loaded.test_probs, probs)
    assert loaded.class_names == CLASS_NAMES and loaded.holdout_probs.shape == (200, 10)
    assert read_history(tmp_path / "history.csv")[1]["val_nll"] == history(2)[1]["val_nll"]
    # A copy whose lines end in \r\n or a bare \r (an editor's, a tool's) reads back the same.
    text = (tmp_path / "history.csv").read_text()
    for ending in ("\r\n", "\r"):
        (tmp_path / "copy.csv").write_bytes(text.replace("\n", ending).encode())
        assert read_history(tmp_path / "copy.csv") == read_history(tmp_path / "history.csv")


def test_temperature_scaling_is_reported_before_and_after(tmp_path):
    saved_run(tmp_path, holdout=True)
    metrics = write_reports(tmp_path)
    scaling = json.loads((tmp_path / "calibration.json").read_text())["temperature_scaling"]
    assert scaling["holdout_examples"] == 200 and scaling["temperature"] == metrics["temperature"] > 0
    assert scaling["holdout_nll_after"] <= scaling["holdout_nll_before"]
    assert metrics["test_ece_scaled"] == scaling["test"]["ece"]
    assert scaling["test"]["accuracy"] == metrics["test_accuracy"]  # one temperature: same argmax
    assert_png(tmp_path / "reliability.png")


def test_the_scaled_numbers_are_those_of_the_scaled_predictions(tmp_path):
    # The fixture's held-out slice is overconfident (T near 0.46): a report that forgot to apply
    # T would show the unscaled numbers under "after", and scaling would look like it did nothing.
    from job import calibration

    y, probs = saved_run(tmp_path, holdout=True)
    write_reports(tmp_path)
    scaling = json.loads((tmp_path / "calibration.json").read_text())["temperature_scaling"]
    temperature = scaling["temperature"]
    assert abs(temperature - 1) > 0.2
    held = load_predictions(tmp_path)
    after = calibration.nll(calibration.apply_temperature(held.holdout_probs, temperature), held.holdout_labels)
    assert scaling["holdout_nll_after"] == pytest.approx(after)
    assert scaling["holdout_nll_after"] < scaling["holdout_nll_before"] - 0.1
    scaled = calibration.summary(calibration.apply_temperature(probs, temperature), y)
    for key in ("nll", "ece", "mce", "brier", "mean_confidence"):
        assert scaling["test"][key] == pytest.approx(scaled[key]), key
    assert scaling["test"]["nll"] < calibration.nll(probs, y) - 0.1


def test_metrics_json_repeats_the_calibration_reports_numbers(tmp_path):
    # aggregate tabulates metrics.json alone: each calibration number there must be the one
    # calibration.json and the reliability diagram show, not a neighbour (MCE is not ECE here).
    saved_run(tmp_path, holdout=True)
    metrics = write_reports(tmp_path)
    report = json.loads((tmp_path / "calibration.json").read_text())
    test, scaled = report["test"], report["temperature_scaling"]["test"]
    assert test["mce"] != pytest.approx(test["ece"]) and scaled["nll"] != pytest.approx(test["nll"])
    for key in ("ece", "mce", "brier"):
        assert metrics[f"test_{key}"] == test[key], key
    assert (metrics["test_ece_scaled"], metrics["test_nll_scaled"]) == (scaled["ece"], scaled["nll"])


def test_regenerate_reproduces_every_file_byte_for_byte(tmp_path):
    saved_run(tmp_path, holdout=True)
    metrics = write_reports(tmp_path)
    manifest = {"status": "completed", **{k: metrics[k] for k in ("test_accuracy", "test_nll", "test_ece")}}
    (tmp_path / "manifest.json").write_text(json.dumps(manifest))
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    for name in ("metrics.json", "reliability.png", "training.png"):
        (tmp_path / name).unlink()
    regenerate(tmp_path)
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir() if p.name != ".lock"} == before


@pytest.mark.skipif(os.geteuid() != 0, reason="making another user's link, as a teammate's, needs root")
def test_regenerate_reads_predictions_only_through_a_link_of_their_owner(tmp_path):
    run = tmp_path / "run"
    saved_run(run)
    kept = tmp_path / "scratch.npz"
    (run / "predictions.npz").rename(kept)
    (run / "predictions.npz").symlink_to(kept)
    regenerate(run)  # one's own link: followed
    os.lchown(run / "predictions.npz", 54321, 54321)  # a teammate's link to one's own file: not
    with pytest.raises(SpecError, match=r"a symbolic link to another user.s file \(not followed\): .*predictions.npz"):
        regenerate(run)


def test_regenerate_is_not_refused_for_a_link_to_nothing_it_never_writes(tmp_path):
    # A link to nothing as checkpoints/ (or run.log) stops a run, which would create its target;
    # the reports are rewritten without touching either.
    run = tmp_path / "run"
    saved_run(run)
    (run / "checkpoints").symlink_to(tmp_path / "gone")
    with pytest.raises(SpecError, match="symbolic link to nothing"):
        RunDir(run).claim()  # what a run does with it
    regenerate(run)
    assert not (tmp_path / "gone").exists() and (run / "metrics.json").is_file()


@pytest.mark.skipif(os.geteuid() != 0, reason="making another user's link, as a teammate's, needs root")
def test_regenerate_is_not_refused_for_a_teammates_link_it_never_writes(tmp_path):
    (tmp_path / "notes").write_text("my notes\n")
    run = tmp_path / "run"
    saved_run(run)
    (run / "run.log").symlink_to(tmp_path / "notes")
    os.lchown(run / "run.log", 54321, 54321)  # a teammate's link to one's own file
    with pytest.raises(SpecError, match="symbolic link to another user's file"):
        RunDir(run).claim()
    regenerate(run)
    assert (tmp_path / "notes").read_text() == "my notes\n" and (run / "metrics.json").is_file()


def test_regenerate_brings_the_manifest_metrics_along(tmp_path):
    # A run finished under older metric code: its manifest repeats values metrics.json no
    # longer holds once the reports are redone; aggregate would then call the run torn.
    saved_run(tmp_path)
    stale = {"status": "completed", "test_accuracy": 0.5, "test_nll": 9.0, "test_ece": 0.9, "epochs_done": 3}
    (tmp_path / "manifest.json").write_text(json.dumps(stale))
    metrics = regenerate(tmp_path)
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    assert {k: manifest[k] for k in ("test_accuracy", "test_nll", "test_ece")} == {
        k: metrics[k] for k in ("test_accuracy", "test_nll", "test_ece")
    }
    assert manifest["epochs_done"] == 3 and manifest["status"] == "completed"


def test_the_reliability_diagram_draws_the_bins_it_reports():
    from job import calibration
    from job.report import _reliability_panel

    y, probs = cifar_predictions(n=2000)
    summary = calibration.summary(probs, y)
    fig = Figure()
    top, bottom = fig.subplots(2)
    _reliability_panel(top, bottom, "test", summary)
    filled = [b for b in summary["bins"] if b["count"]]
    accuracy_bars = [p for p in top.containers[0].patches]
    assert [round(bar.get_height(), 9) for bar in accuracy_bars] == [round(b["accuracy"], 9) for b in filled]
    assert [round(bar.get_x() + bar.get_width() / 2, 9) for bar in accuracy_bars] == [
        round((b["lower"] + b["upper"]) / 2, 9) for b in filled
    ]
    # The gap bars run from each bin's accuracy up (or down) to its mean confidence.
    gaps = top.containers[1].patches
    assert [round(g.get_y() + g.get_height(), 9) for g in gaps] == [round(b["confidence"], 9) for b in filled]
    (marks,) = top.collections  # and each bin's mean confidence is marked across the bin
    assert [round(segment[0][1], 9) for segment in marks.get_segments()] == [round(b["confidence"], 9) for b in filled]
    # The diagonal, the bin counts written over the bars, the histogram below.
    diagonal = top.lines[0]
    assert list(diagonal.get_xdata()) == [0, 1] and list(diagonal.get_ydata()) == [0, 1]
    assert [t.get_text() for t in top.texts if t.get_text().isdigit()] == [str(b["count"]) for b in filled]
    assert [bar.get_height() for bar in bottom.containers[0].patches] == [b["count"] for b in summary["bins"]]
    assert sum(b["count"] for b in summary["bins"]) == 2000


def overconfident_and_wrong(n=2000):
    """A 1-epoch or collapsed model: one class at near-certainty, right one time in ten."""
    y, _ = cifar_predictions(n)
    probs = np.full((n, 10), 0.004, dtype=np.float32)
    probs[:, 3] = 0.964
    return y, probs


def heavily_smoothed(n=2000):
    """smoothing.factor 0.9 on a good model: right 85% of the time at a top-1 probability near 0.19."""
    y, _ = cifar_predictions(n)
    guess = np.where(np.arange(n) % 20 < 17, y, (y + 1) % 10)
    probs = np.full((n, 10), 0.09, dtype=np.float32)
    probs[np.arange(n), guess] = 0.19
    return y, probs


@pytest.mark.parametrize("model", [overconfident_and_wrong, heavily_smoothed])
def test_each_bins_count_sits_above_both_its_accuracy_and_its_confidence(model):
    # Over an overconfident model's bars a count placed at the accuracy sat under the confidence mark.
    from job import calibration
    from job.report import _reliability_panel

    y, probs = model()
    summary = calibration.summary(probs, y)
    top, bottom = Figure().subplots(2)
    _reliability_panel(top, bottom, "test", summary)
    filled = [b for b in summary["bins"] if b["count"]]
    assert [t.get_text() for t in top.texts] == [str(b["count"]) for b in filled]
    for text, b in zip(top.texts, filled):
        assert text.xy[1] == pytest.approx(max(b["accuracy"], b["confidence"])), b


def reliability_panel(summary):
    """One reliability panel over its histogram, as write_reliability_diagram draws each: (fig, top)."""
    from job.report import _reliability_panel

    fig = Figure(figsize=(6, 8), dpi=100)
    top, bottom = fig.subplots(2)
    _reliability_panel(top, bottom, "test", summary)
    return fig, top


def rendered(fig):
    """The figure's RGB pixels as Agg draws them, rows from the top."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    canvas = FigureCanvasAgg(fig)
    canvas.draw()
    return np.asarray(canvas.buffer_rgba())[..., :3].astype(int)


def near(pixels, colour):
    """Which of (n, 3) pixels are within 30 levels of `colour` in every channel."""
    return np.abs(pixels - np.array(matplotlib.colors.to_rgb(colour)) * 255).max(axis=1) < 30


@pytest.mark.parametrize("model", [overconfident_and_wrong, heavily_smoothed])
def test_each_bins_accuracy_reads_off_its_bar_and_its_gap_stays_marked(model):
    # A smoothed model's gap lies inside its accuracy bar: a filled gap layer tinted the bar's top,
    # so the plain blue ended at the confidence and read as the accuracy.
    from job import calibration

    y, probs = model()
    summary = calibration.summary(probs, y)
    (b,) = [b for b in summary["bins"] if b["count"]]
    fig, top = reliability_panel(summary)
    pixels = rendered(fig)

    def region(low, high):
        """The pixels of the bin's middle 60% between two heights, away from the edges."""
        margin = (b["upper"] - b["lower"]) * 0.2
        (x0, y0), (x1, y1) = top.transData.transform([(b["lower"] + margin, low), (b["upper"] - margin, high)])
        rows = slice(round(fig.bbox.height - y1) + 3, round(fig.bbox.height - y0) - 3)
        return pixels[rows, round(x0) : round(x1)].reshape(-1, 3)

    def share(colour, pixels):
        return np.mean(near(pixels, colour))

    accuracy, confidence = b["accuracy"], b["confidence"]
    gap = region(min(accuracy, confidence) + 0.03, max(accuracy, confidence) - 0.03)
    assert 1 - share(top.get_facecolor(), gap) - share("#4C72B0", gap) > 0.05  # something marks the gap
    if accuracy > confidence:
        assert share("#4C72B0", gap) > 0.7  # the accuracy bar, untinted, up to the accuracy
    else:
        assert share("#4C72B0", gap) == 0  # the accuracy bar ends at the accuracy
    assert share("#4C72B0", region(0.01, min(accuracy, confidence) - 0.01)) > 0.95


def well_calibrated(n=3000):
    """A temperature-scaled model: right about as often as its top-1 probability says."""
    rng = np.random.default_rng(1)
    y = rng.integers(0, 10, n)
    top = rng.uniform(0.2, 1.0, n)
    guess = np.where(rng.uniform(size=n) < top, y, (y + 1) % 10)
    probs = np.repeat(((1 - top) / 9)[:, None], 10, axis=1)
    probs[np.arange(n), guess] = top
    return y, probs.astype(np.float32)


def test_no_line_runs_through_a_bins_count():
    # A calibrated model's bars end on the diagonal, so each count written above its bar sat on the
    # dashed line (the temperature-scaled panel): every digit struck through.
    from job import calibration

    y, probs = well_calibrated()
    fig, top = reliability_panel(calibration.summary(probs, y))
    counts = [t for t in top.texts if t.get_text().isdigit()]
    background = top.get_facecolor()
    for text in counts:
        text.set_color(background)  # the digits vanish: whatever else shows in their place was drawn over them
    pixels = rendered(fig)
    diagonal = top.transData.transform([(0, 0), (1, 1)])
    crossed = 0
    for text in counts:
        box = text.get_window_extent()
        # Where the diagonal runs at the box's height: the test means something only where it crosses the box.
        x_at = np.interp([box.y0, box.y1], diagonal[:, 1], diagonal[:, 0])
        if x_at.max() < box.x0 or x_at.min() > box.x1:
            continue
        crossed += 1
        rows = slice(round(fig.bbox.height - box.y1) + 1, round(fig.bbox.height - box.y0) - 1)
        patch = pixels[rows, round(box.x0) + 1 : round(box.x1) - 1].reshape(-1, 3)
        off = ~near(patch, background)
        assert off.mean() < 0.01, f"count {text.get_text()}: {off.mean():.0%} of it drawn over"
    assert crossed >= 5  # most counts of a calibrated model lie on the diagonal's path


@pytest.mark.parametrize("model", [overconfident_and_wrong, heavily_smoothed])
@pytest.mark.parametrize("holdout", [False, True])
def test_the_reliability_diagram_keeps_its_legends_and_scores_off_every_models_bins(monkeypatch, model, holdout):
    # Any corner of the plot holds some model's bins: these two fill the lower right and the upper left.
    import job.report
    from job import calibration

    figures = []
    monkeypatch.setattr(job.report, "save_png", lambda fig, path: figures.append(fig))
    y, probs = model()
    hold_y, hold_probs = model(500) if holdout else (None, None)
    report = job.report.calibration_report(Predictions(probs, y, CLASS_NAMES, hold_probs, hold_y))
    job.report.write_reliability_diagram(report, Path("unused.png"))
    (fig,) = figures
    fig.draw_without_rendering()  # laid out as save_png would
    panels = len(fig.axes) // 2  # a reliability diagram over a histogram, per panel
    assert panels == (2 if holdout else 1)
    legends = [*fig.legends, *(ax.get_legend() for ax in fig.axes if ax.get_legend())]
    assert len(legends) == 1 + panels
    for legend in legends:
        box = legend.get_window_extent()
        assert not any(box.overlaps(ax.bbox) for ax in fig.axes), legend.get_texts()[0].get_text()
    for ax in fig.axes[:panels]:
        assert all(text.get_text().isdigit() for text in ax.texts)  # only the bins' counts inside
    assert f"ECE {calibration.summary(probs, y)['ece']:.4f}" in fig.axes[0].get_title()


def test_regenerate_refuses_what_it_cannot_redo(tmp_path):
    from job.errors import SpecError

    with pytest.raises(SpecError, match="is not a directory"):
        regenerate(tmp_path / "nope")
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "manifest.json").write_text('{"status": "running"}')
    with pytest.raises(SpecError, match=r"has no predictions.npz \(run status: running\)") as err:
        regenerate(tmp_path / "run")
    assert "finish the run first" in str(err.value)
    # A completed run wrote it: one without it lost it since, and finishing the run again is no fix.
    (tmp_path / "run" / "manifest.json").write_text('{"status": "completed"}')
    with pytest.raises(SpecError, match=r"has no predictions.npz \(run status: completed\)") as err:
        regenerate(tmp_path / "run")
    assert "restore it from a copy" in str(err.value) and "finish the run" not in str(err.value)


def contents(run_dir):
    """Each file's bytes, each folder's entries: a staging folder left behind shows as one more."""
    return {
        p.name: sorted(os.listdir(p)) if p.is_dir() else p.read_bytes() for p in run_dir.iterdir() if p.name != ".lock"
    }


def test_a_damaged_manifest_is_refused_before_any_report_is_rewritten(tmp_path):
    from job.errors import SpecError

    saved_run(tmp_path)
    regenerate(tmp_path)
    (tmp_path / "manifest.json").write_text('{"status": "comp')  # a copy cut short
    (tmp_path / "metrics.json").unlink()
    before = contents(tmp_path)
    with pytest.raises(SpecError) as err:
        regenerate(tmp_path)
    assert "manifest.json is unreadable" in str(err.value) and "restore manifest.json" in str(err.value)
    assert "--force" not in str(err.value)  # run's advice: it would wipe the finished run
    assert contents(tmp_path) == before


def test_reports_are_rewritten_for_a_run_that_lost_its_manifest(tmp_path):
    saved_run(tmp_path)
    (tmp_path / "manifest.json").unlink()
    regenerate(tmp_path)
    assert (tmp_path / "metrics.json").is_file() and not (tmp_path / "manifest.json").exists()


@pytest.mark.parametrize("row", ["1,2.3,0.5", "1,2.3,0.5,1.9,0.4,1.8,0.005,1.5,extra", "1,2.3,x,1.9,0.4,1.8,0.005,1.5"])
def test_a_damaged_history_is_a_clear_error_and_changes_nothing(tmp_path, row):
    from job.errors import SpecError

    saved_run(tmp_path)
    regenerate(tmp_path)
    before = contents(tmp_path)
    with open(tmp_path / "history.csv", "a") as f:
        f.write(row + "\n")
    with pytest.raises(SpecError, match=r"cannot regenerate the reports of .*history.csv line 5"):
        regenerate(tmp_path)
    assert {k: v for k, v in contents(tmp_path).items() if k != "history.csv"} == {
        k: v for k, v in before.items() if k != "history.csv"
    }


def cut_history(keep):
    """A history.csv cut short at a line's end, or a byte: what a copy of a run can hold."""

    def cut(run_dir):
        text = (run_dir / "history.csv").read_text()
        lines = text.splitlines(keepends=True)
        (run_dir / "history.csv").write_text(keep(text, lines))

    return cut


@pytest.mark.parametrize(
    "epochs_done, cut, message",
    [
        # Each read as a run of no epochs, and training.png was redrawn as empty axes over the good one.
        (3, cut_history(lambda text, lines: ""), "history.csv is empty"),
        (None, cut_history(lambda text, lines: ""), "history.csv is empty"),
        (3, cut_history(lambda text, lines: lines[0]), "history.csv holds 0 epochs, the manifest says 3"),
        (None, cut_history(lambda text, lines: lines[0]), "history.csv holds 0 epochs (a copy cut short?)"),
        (3, cut_history(lambda text, lines: "epoch,loss\n"), "header has no accuracy, val_loss, val_accuracy, val_nll"),
        (3, cut_history(lambda text, lines: "".join(lines[:3])), "history.csv holds 2 epochs, the manifest says 3"),
        (3, cut_history(lambda text, lines: lines[0] + lines[2] + lines[1] + lines[3]), "row 1 is epoch 2"),
    ],
)
def test_a_history_cut_short_at_a_lines_end_is_refused_and_changes_nothing(tmp_path, epochs_done, cut, message):
    from job.errors import SpecError

    saved_run(tmp_path, 3)
    manifest = {"status": "completed", **({"epochs_done": epochs_done} if epochs_done else {})}
    (tmp_path / "manifest.json").write_text(json.dumps(manifest))
    regenerate(tmp_path)
    cut(tmp_path)
    before = contents(tmp_path)
    with pytest.raises(SpecError, match="cannot regenerate the reports of") as err:
        regenerate(tmp_path)
    assert message in str(err.value)
    assert contents(tmp_path) == before


def test_a_history_longer_than_the_manifest_says_is_refused(tmp_path):
    # Epochs the metrics did not come from (a history.csv from another attempt) would be plotted.
    from job.errors import SpecError

    saved_run(tmp_path, 3)
    (tmp_path / "manifest.json").write_text(json.dumps({"status": "completed", "epochs_done": 2}))
    with pytest.raises(SpecError, match="history.csv holds 3 epochs, the manifest says 2"):
        regenerate(tmp_path)


def test_the_confusion_matrix_plot_is_drawn_from_the_reported_predictions(tmp_path, monkeypatch):
    import job.report

    y, probs = saved_run(tmp_path, 2)
    drawn, real = [], job.report.write_confusion_matrix

    def write_confusion_matrix(y_true, y_pred, names, path):
        drawn.append((y_true, y_pred))
        return real(y_true, y_pred, names, path)

    monkeypatch.setattr(job.report, "write_confusion_matrix", write_confusion_matrix)
    metrics = write_reports(tmp_path)
    ((y_true, y_pred),) = drawn
    np.testing.assert_array_equal(y_true, y)
    np.testing.assert_array_equal(y_pred, probs.argmax(axis=1))
    assert sklearn_confusion_matrix(y_true, y_pred, labels=range(10)).tolist() == metrics["confusion_matrix"]


@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda a: a.update(class_names=np.array("airplane")), "class_names is an array of <U8 of shape ()"),
        # Broadcast against the probabilities, this one fitted a temperature and exited 0.
        (lambda a: a.update(holdout_labels=a["holdout_labels"][:, None]), "holdout_labels must be 200 integer class"),
        (lambda a: a.update(holdout_probs=a["holdout_probs"][:, 0]), "holdout_probs must be probabilities of shape"),
        (lambda a: a.update(holdout_probs=a["holdout_probs"] * np.nan), "the holdout probabilities of 200 of 200"),
        (lambda a: a.update(holdout_labels=a["holdout_labels"] + 50), "holdout_labels must lie in [0, 10), got 50"),
        (lambda a: a.update(test_labels=a["test_labels"] + 0.5), "test_labels must be 200 integer class indices"),
        (lambda a: a.update(test_probs=np.array(["x"] * 10)), "test_probs must be probabilities of shape (N, 10)"),
        (lambda a: a.update(test_labels=a["test_labels"][:0], test_probs=a["test_probs"][:0]), "N > 0, got an"),
    ],
)
def test_a_malformed_predictions_array_is_named_and_changes_nothing(tmp_path, edit, message):
    from job.errors import SpecError

    saved_run(tmp_path, holdout=True)
    regenerate(tmp_path)
    with np.load(tmp_path / "predictions.npz") as f:
        arrays = {k: f[k] for k in f.files}
    edit(arrays)
    np.savez(tmp_path / "predictions.npz", **arrays)
    before = contents(tmp_path)
    with pytest.raises(SpecError, match="cannot regenerate the reports of") as err:
        regenerate(tmp_path)
    assert message in str(err.value)
    assert contents(tmp_path) == before


@pytest.mark.parametrize("bad", [lambda p: p.astype(str), lambda p: p > 0.5], ids=["text", "booleans"])
def test_probabilities_that_are_not_floats_are_named(tmp_path, bad):
    # The right shape, but text or booleans: named as test_probs, not numpy's "could not convert
    # string to float", nor scored as though 0 and 1 were probabilities.
    saved_run(tmp_path)
    regenerate(tmp_path)
    with np.load(tmp_path / "predictions.npz") as f:
        arrays = {k: f[k] for k in f.files}
    arrays["test_probs"] = bad(arrays["test_probs"])
    np.savez(tmp_path / "predictions.npz", **arrays)
    before = contents(tmp_path)
    with pytest.raises(SpecError, match="test_probs must be probabilities of shape"):
        regenerate(tmp_path)
    assert contents(tmp_path) == before


@pytest.mark.parametrize("name", ["history.csv", "predictions.npz"])
def test_a_folder_in_place_of_a_runs_file_is_not_called_missing(tmp_path, name):
    from job.errors import SpecError

    saved_run(tmp_path)
    (tmp_path / name).unlink()
    (tmp_path / name).mkdir()
    with pytest.raises(SpecError, match=f"{name} is not a regular file"):
        regenerate(tmp_path)


def test_a_folder_where_a_report_goes_is_refused_before_any_report_is_replaced(tmp_path):
    from job.errors import SpecError

    saved_run(tmp_path)
    regenerate(tmp_path)
    (tmp_path / "training.png").unlink()
    (tmp_path / "training.png").mkdir()
    y, probs = cifar_predictions(seed=5)  # new predictions: every report would change
    save_predictions(tmp_path, Predictions(probs, y, CLASS_NAMES))
    before = contents(tmp_path)
    with pytest.raises(SpecError, match="a folder stands where this file goes; move it away: .*training.png"):
        regenerate(tmp_path)
    assert contents(tmp_path) == before  # classification_report.txt was replaced before


def test_a_failure_midway_keeps_the_previous_report_set_whole(tmp_path, monkeypatch):
    import job.report

    saved_run(tmp_path)
    regenerate(tmp_path)
    before = contents(tmp_path)
    y, probs = cifar_predictions(seed=5)  # new predictions: every report would change
    save_predictions(tmp_path, Predictions(probs, y, CLASS_NAMES))
    before["predictions.npz"] = (tmp_path / "predictions.npz").read_bytes()

    def full_disk(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(job.report, "write_reliability_diagram", full_disk)  # after two files are written
    with pytest.raises(OSError, match="No space left"):
        write_reports(tmp_path)
    assert contents(tmp_path) == before  # old set whole, no staging folder left


@pytest.mark.parametrize("errno_, error, exit_code", [(28, "NoSpaceError", 6), (122, "NoSpaceError", 6),
                                                      (5, "StorageError", 1)])  # fmt: skip
def test_a_full_disk_or_failing_storage_under_report_exits_as_it_would_for_a_run(tmp_path, monkeypatch, errno_, error,
                                                                                exit_code):  # fmt: skip
    # Not 2 ("bad input"), which schedulers and users take for "never retry".
    import job.report

    saved_run(tmp_path)
    regenerate(tmp_path)
    before = contents(tmp_path)

    def failing(*args, **kwargs):
        raise OSError(errno_, os.strerror(errno_))

    monkeypatch.setattr(job.report, "write_reliability_diagram", failing)
    with pytest.raises(JobError) as caught:
        regenerate(tmp_path)
    assert type(caught.value).__name__ == error and caught.value.exit_code == exit_code
    assert contents(tmp_path) == before


def test_report_on_a_folder_of_runs_says_so(tmp_path):
    from job.errors import SpecError

    for name in ("a", "b", "sweep/c"):
        (tmp_path / name).parent.mkdir(exist_ok=True)
        saved_run(tmp_path / name)
    with pytest.raises(SpecError, match=r"is not a run directory but holds 3 run\(s\) \(a, b, sweep/c\).*lsjob aggr"):
        regenerate(tmp_path)


def test_non_finite_probabilities_are_named_as_such():
    probs = P_SMALL.copy()
    probs[1, 0] = np.nan
    with pytest.raises(ValueError, match="probabilities of 1 of 3 images are not finite"):
        classification_metrics(Y_SMALL, probs, NAMES_SMALL)


@pytest.mark.parametrize("damage", [np.negative, lambda p: p * 2, lambda p: p[:, ::-1] * 0.9])
def test_numbers_that_are_no_probabilities_are_refused_and_the_reports_kept(tmp_path, damage):
    # Negated, doubled, or rows short of 1: scored as they were, they replaced the run's metrics.
    from job.errors import SpecError

    saved_run(tmp_path)
    regenerate(tmp_path)
    y, probs = cifar_predictions()
    save_predictions(tmp_path, Predictions(damage(probs).astype(np.float32), y, CLASS_NAMES))
    before = contents(tmp_path)
    with pytest.raises(SpecError, match=r"the test probabilities of \d+ of \d+ images are no probabilities \(a value"):
        regenerate(tmp_path)
    assert contents(tmp_path) == before


def test_a_temperature_at_the_end_of_the_search_is_flagged(tmp_path, caplog):
    saved_run(tmp_path, holdout=True)
    write_reports(tmp_path)
    assert json.loads((tmp_path / "calibration.json").read_text())["temperature_scaling"]["at_search_bound"] is False
    # Confident predictions that say nothing of the labels: the NLL keeps falling as T grows.
    rng = np.random.default_rng(0)
    hold_probs = np.full((200, 10), 0.001)
    hold_probs[np.arange(200), rng.integers(0, 10, 200)] = 0.991
    y, probs = cifar_predictions()
    save_predictions(tmp_path, Predictions(probs, y, CLASS_NAMES, hold_probs, rng.integers(0, 10, 200)))
    with caplog.at_level("WARNING", logger="lsjob"):
        write_reports(tmp_path)
    scaling = json.loads((tmp_path / "calibration.json").read_text())["temperature_scaling"]
    assert scaling["at_search_bound"] is True and scaling["temperature"] == pytest.approx(20, rel=1e-3)
    assert "end of the range searched" in caplog.text and "carry next to nothing about their labels" in caplog.text
    # Every held-out image right (a small or easy holdout): the NLL keeps falling as T shrinks. The
    # warning said the predictions carry nothing, the opposite, and sent one looking for a broken holdout.
    caplog.clear()
    labels = rng.integers(0, 10, 200)
    right = np.full((200, 10), 0.02)
    right[np.arange(200), labels] = 0.82
    save_predictions(tmp_path, Predictions(probs, y, CLASS_NAMES, right, labels))
    with caplog.at_level("WARNING", logger="lsjob"):
        write_reports(tmp_path)
    scaling = json.loads((tmp_path / "calibration.json").read_text())["temperature_scaling"]
    assert scaling["at_search_bound"] is False and scaling["temperature"] < 0.2  # the clipped NLL's floor
    assert "the model gets every held-out image right" in caplog.text and "next to nothing" not in caplog.text
    assert "hold out more images (eval.holdout_size)" in caplog.text
    # One image nearly wrong (right by a hair): the NLL falls all the way to the search's low end.
    caplog.clear()
    right[0] = 0.1
    right[0, labels[0]] = 0.1 + 1e-3
    save_predictions(tmp_path, Predictions(probs, y, CLASS_NAMES, right / right.sum(1, keepdims=True), labels))
    with caplog.at_level("WARNING", logger="lsjob"):
        write_reports(tmp_path)
    scaling = json.loads((tmp_path / "calibration.json").read_text())["temperature_scaling"]
    assert scaling["at_search_bound"] is True and scaling["temperature"] == pytest.approx(0.05, rel=1e-3)
    assert "T = 0.050 (at the end of the range searched (0.05 to 20)) is no true optimum" in caplog.text


def test_report_refuses_predictions_without_the_holdout_the_manifest_records(tmp_path):
    # Without them the reports were rewritten with no temperature scaling, and T, the ECE after it
    # and the scaled NLL were gone from metrics.json while the spec and manifest still said it was on.
    from job.errors import SpecError

    saved_run(tmp_path, holdout=True)
    held = len(np.load(tmp_path / "predictions.npz")["holdout_labels"])
    (tmp_path / "manifest.json").write_text(json.dumps({"status": "completed", "holdout": {"examples": held}}))
    regenerate(tmp_path)
    assert "temperature" in json.loads((tmp_path / "metrics.json").read_text())
    y, probs = cifar_predictions()
    save_predictions(tmp_path, Predictions(probs, y, CLASS_NAMES))
    before = contents(tmp_path)
    with pytest.raises(SpecError, match=rf"holds 0 held-out predictions, the manifest says the run held out {held} "):
        regenerate(tmp_path)
    assert contents(tmp_path) == before


def test_a_killed_report_writer_leaves_nothing_the_next_one_keeps(tmp_path):
    saved_run(tmp_path)
    leftover = tmp_path / ".staging.abc123_x.tmp"
    leftover.mkdir()
    (leftover / "metrics.json").write_text("{}")
    regenerate(tmp_path)
    assert not leftover.exists()


def test_a_tampered_predictions_file_cannot_run_code(tmp_path):
    from job.errors import SpecError

    saved_run(tmp_path)
    np.savez(tmp_path / "predictions.npz", test_probs=np.array([object()], dtype=object))
    with pytest.raises(SpecError, match="cannot regenerate"):
        regenerate(tmp_path)


@pytest.mark.parametrize("damage", ["truncated", "bit rot", "not an archive"])
def test_a_damaged_predictions_file_is_a_clear_error_and_changes_nothing(tmp_path, damage):
    from job.errors import SpecError

    saved_run(tmp_path)
    regenerate(tmp_path)
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    data = bytearray((tmp_path / "predictions.npz").read_bytes())
    if damage == "truncated":  # a results volume copied in part
        data = data[: len(data) // 2]
    elif damage == "bit rot":
        data[len(data) // 2 : len(data) // 2 + 50] = b"x" * 50
    else:  # np.load read it as a pickle, and said to load it unsafely "if you trust the file"
        data = b"test_probs,test_labels\n"
    (tmp_path / "predictions.npz").write_bytes(bytes(data))
    says = "it is not an npz archive" if damage == "not an archive" else "BadZipFile"
    with pytest.raises(SpecError, match=rf"reports of .*predictions.npz is damaged.*{says}") as err:
        regenerate(tmp_path)
    assert "allow_pickle" not in str(err.value)
    assert str(err.value).endswith("restore it from a copy of the run")
    after = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    kept = lambda files: {k: v for k, v in files.items() if k not in ("predictions.npz", ".lock")}  # noqa: E731
    assert kept(after) == kept(before)


def test_a_history_that_is_not_utf8_is_named_with_what_is_wrong(tmp_path):
    from job.errors import SpecError

    saved_run(tmp_path)
    with open(tmp_path / "history.csv", "ab") as f:
        f.write(b"\xff\xfe")  # bit rot: UnicodeDecodeError, which named neither the file nor its kind
    with pytest.raises(SpecError, match=r"history.csv is not UTF-8 text, as lsjob writes it \(bit rot\?\)"):
        regenerate(tmp_path)


def test_training_plot_without_val_nll(tmp_path):
    write_training_plot(history(3, with_nll=False), tmp_path / "t.png")
    assert_png(tmp_path / "t.png")


def drawn_training_plot(monkeypatch, rows):
    import job.report

    figures = []
    monkeypatch.setattr(job.report, "save_png", lambda fig, path: figures.append(fig))
    write_training_plot(rows, Path("unused.png"))
    (fig,) = figures
    return fig.axes


def test_training_plot_keeps_accuracy_readable_when_a_loss_blows_up(monkeypatch):
    loss, accuracy = drawn_training_plot(monkeypatch, history(3))
    assert [line.get_label() for line in loss.get_lines()] == ["train_loss", "val_loss", "val_nll (unsmoothed)"]
    assert [line.get_label() for line in accuracy.get_lines()] == ["train_acc", "val_acc"]
    assert loss.get_yscale() == accuracy.get_yscale() == "linear"
    rows = history(3)
    rows[1]["val_loss"] = 1.4e21  # a measured val_loss of a run at lr 10: it finished, and plotted flat
    loss, accuracy = drawn_training_plot(monkeypatch, rows)
    assert loss.get_yscale() == "log" and "log scale" in loss.get_ylabel()
    assert accuracy.get_yscale() == "linear" and accuracy.get_ylim()[1] < 1


def test_each_training_curve_plots_its_own_history_column_by_epoch_number(monkeypatch):
    rows = history(3)
    loss, accuracy = drawn_training_plot(monkeypatch, rows)
    for ax, keys in ((loss, ("loss", "val_loss", "val_nll")), (accuracy, ("accuracy", "val_accuracy"))):
        assert len(ax.get_lines()) == len(keys)
        for line, key in zip(ax.get_lines(), keys):
            assert list(line.get_xdata()) == [1, 2, 3]  # epochs counted from 1, as history.csv does
            np.testing.assert_allclose(line.get_ydata(), [row[key] for row in rows])


def test_the_training_plot_says_when_val_nll_is_the_val_loss_it_hides_and_when_it_is_the_unsmoothed_one(monkeypatch):
    # labels and none validate on hard labels with an unsmoothed loss: the two curves are one.
    rows = history(3)
    for row in rows:
        row["val_nll"] = row["val_loss"]
    loss, _ = drawn_training_plot(monkeypatch, rows)
    assert [line.get_label() for line in loss.get_lines()] == ["train_loss", "val_loss", "val_nll (= val_loss here)"]
    rows[2]["val_nll"] -= 0.01  # loss: its val_loss is smoothed, its val_nll not
    loss, _ = drawn_training_plot(monkeypatch, rows)
    assert loss.get_lines()[2].get_label() == "val_nll (unsmoothed)"


def test_the_normalised_confusion_matrix_shows_per_class_recall(monkeypatch):
    # The title promises rows normalised to the true class: each row must read as that class's
    # recall (summing to 1), and a class with no test images as a row of zeros, not NaNs.
    import job.report

    figures = []
    monkeypatch.setattr(job.report, "save_png", lambda fig, path: figures.append(fig))
    y_true = np.array([0, 0, 0, 1])
    y_pred = np.array([0, 0, 1, 1])  # class 0: 2 of 3 right; class 1 (1 image) right; class 2 absent
    write_confusion_matrix(y_true, y_pred, NAMES_SMALL, Path("unused.png"))
    (fig,) = figures
    (image,) = fig.axes[0].images
    shown = np.asarray(image.get_array())
    np.testing.assert_allclose(shown, [[2 / 3, 1 / 3, 0], [0, 1, 0], [0, 0, 0]])
    assert "rows normalised to the true class" in fig.axes[0].get_title()
    assert [t.get_text() for t in fig.axes[0].get_yticklabels()] == ["a (3)", "b (1)", "c (0)"]
    # One colour scale, 0 to 1, for every run: a best recall of 0.5 is not drawn as dark as a perfect one.
    write_confusion_matrix(np.array([0, 0, 1, 1]), np.array([0, 1, 0, 1]), NAMES_SMALL, Path("unused.png"))
    assert figures[-1].axes[0].images[0].get_clim() == (0.0, 1.0)


def test_plot_style_does_not_leak(tmp_path):
    before = dict(matplotlib.rcParams)
    write_training_plot(history(2), tmp_path / "t.png")
    assert dict(matplotlib.rcParams) == before


def test_failed_savefig_keeps_previous_png(tmp_path, monkeypatch):
    target = tmp_path / "training.png"
    write_training_plot(history(2), target)
    previous = target.read_bytes()

    def crash_mid_write(self, fname, *args, **kwargs):
        Path(fname).write_bytes(PNG_MAGIC + b"half a picture")
        raise OSError("disk went away")

    monkeypatch.setattr(Figure, "savefig", crash_mid_write)
    with pytest.raises(OSError, match="disk went away"):
        write_training_plot(history(3), target)

    assert target.read_bytes() == previous
    assert [p.name for p in tmp_path.iterdir()] == ["training.png"]


def test_module_does_not_import_the_training_stack():
    code = "import job.report, sys; assert 'keras' not in sys.modules and 'tensorflow' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True)


HISTORY_ROWS = [
    {"epoch": e, "loss": 2.0 - 0.1 * e, "accuracy": 0.3 + 0.05 * e, "val_loss": 2.1 - 0.1 * e,
     "val_accuracy": 0.28 + 0.05 * e, "val_nll": 1.8 - 0.1 * e, "lr": 0.005 / e, "seconds": 12.5 + e}
    for e in (1, 2, 3)
]  # fmt: skip


# The file as the README documents it, `epoch, loss, accuracy, val_loss, val_accuracy, val_nll, lr, seconds`,
# one line per epoch, and every value read back exactly.
def test_history_csv_is_written_as_documented_and_reads_back_exactly(tmp_path):
    write_history_csv(tmp_path / "history.csv", HISTORY_ROWS)
    data = (tmp_path / "history.csv").read_bytes()
    lines = data.decode().split("\n")
    assert lines[0] == "epoch,loss,accuracy,val_loss,val_accuracy,val_nll,lr,seconds"
    assert b"\r" not in data and len(lines) == 1 + len(HISTORY_ROWS) + 1 and lines[-1] == ""
    assert lines[2].split(",")[-2:] == [repr(0.0025), repr(14.5)]
    assert read_history(tmp_path / "history.csv") == [{k: float(v) for k, v in row.items()} for row in HISTORY_ROWS]


# The message names the row's line in the file (its number plus one for the header), as an editor shows it.
def test_a_damaged_row_is_named_by_its_line_in_the_file(tmp_path):
    write_history_csv(tmp_path / "history.csv", HISTORY_ROWS)
    text = (tmp_path / "history.csv").read_text().replace(",14.5\n", ",x\n")
    (tmp_path / "history.csv").write_text(text)
    with pytest.raises(ValueError, match=r"^history\.csv line 3: row 2 has seconds 'x', not a number$"):
        read_history(tmp_path / "history.csv")


# A row with a field too many says so, not the opposite.
@pytest.mark.parametrize(
    "row, says", [("4,2.3,0.5", "row 4 has fewer fields"), (",".join(["4"] * 9), "row 4 has more fields")]
)
def test_a_row_of_the_wrong_length_says_which_way_it_is_wrong(tmp_path, row, says):
    write_history_csv(tmp_path / "history.csv", HISTORY_ROWS)
    with open(tmp_path / "history.csv", "a") as f:
        f.write(row + "\n")
    with pytest.raises(ValueError, match=f"^history\\.csv line 5: {says} than the header \\(a copy cut short\\?\\)$"):
        read_history(tmp_path / "history.csv")
