"""`lsjob aggregate`: fake results trees written the way run.py and report.py write them,
then every run's status, the statistics, the labels-vs-loss comparison, the CSV, the
Markdown, the plots and the HTML page's content checked (tests/test_aggregate_page.py
opens the page in a browser)."""

import base64
import copy
import csv
import datetime as dt
import errno
import fcntl
import functools
import html.parser
import io
import itertools
import json
import math
import os
import re
import shutil
import socket
import subprocess
import sys
import threading
from pathlib import Path
from urllib.parse import unquote

import matplotlib.image
import matplotlib.path
import numpy as np
import pytest
import scipy.stats
import yaml
from matplotlib.collections import LineCollection, PathCollection
from matplotlib.figure import Figure

import job.aggregate
import job.aggregate.plots
import job.rundir
from job import calibration
from job.aggregate import (
    CSV_COLUMNS,
    METRICS,
    AggregateError,
    NoRunsError,
    aggregate,
    collect,
    comparison_warnings,
)
from job.aggregate.runs import value_order
from job.aggregate.tables import p_text
from job.atomic import write_bytes, write_json, write_text
from job.data import CLASS_NAMES
from job.errors import EXIT_BAD_INPUT, EXIT_INTERNAL, EXIT_NO_SPACE, NoSpaceError, StorageError
from job.history import HISTORY_COLUMNS
from job.report import classification_metrics
from job.rundir import RunDir, now
from job.spec import load_spec

ROOT = Path(__file__).resolve().parents[1]
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
OUTPUTS = {"aggregate.csv", "aggregate.json", "aggregate.md", "accuracy_vs_factor.png", "ece_vs_factor.png",
           "labels_vs_loss.png", "aggregate.html"}  # fmt: skip
# A run's own plots, as report.py writes them on completion; reliability.png since calibration.
RUN_PLOTS = ("training.png", "reliability.png", "confusion_matrix.png")
OLD_RUN_PLOTS = ("training.png", "confusion_matrix.png")
# history.csv's header as job/train.py writes it (checked against the source below,
# without importing the training stack).
EPOCHS = 3
N_TEST = 100  # test examples per fake run: accuracy is correct / 100

# Test accuracy in percent of each completed run of the sweep, per (method, factor), seeds 0, 1, 2.
SWEEP = {
    ("labels", 0.1): (80, 82, 87),
    ("labels", 0.2): (84, 85, 86),
    ("loss", 0.1): (78, 80, 82),
    ("loss", 0.2): (81, 81, 84),
    ("none", 0.0): (75, 77, 79),
}


def predictions(correct):
    """N_TEST predictions, `correct` of them right, each with probability 0.9 on its argmax."""
    y = np.arange(N_TEST) % 10
    predicted = np.where(np.arange(N_TEST) < correct, y, (y + 1) % 10)
    probs = np.full((N_TEST, 10), 0.1 / 9)
    probs[np.arange(N_TEST), predicted] = 0.9
    return y, probs


@functools.cache
def fake_metrics(correct, calibrated=True, temperature=None):
    """metrics.json as report.py computes it (cached: sklearn takes a tenth of a second).

    calibrated=False: a run made before calibration existed, without the calibration keys.
    temperature: a run with temperature scaling, as if T had been fitted to that value.
    """
    y, probs = predictions(correct)
    metrics = classification_metrics(y, probs, CLASS_NAMES)[0]
    if calibrated:
        test = calibration.summary(probs, y)
        metrics.update(test_ece=test["ece"], test_mce=test["mce"], test_brier=test["brier"])
    if temperature is not None:
        scaled = calibration.summary(calibration.apply_temperature(probs, temperature), y)
        metrics.update(temperature=temperature, test_ece_scaled=scaled["ece"], test_nll_scaled=scaled["nll"])
    return metrics


def expected_nll(correct):
    return -(correct * math.log(0.9) + (N_TEST - correct) * math.log(0.1 / 9)) / N_TEST


def expected_ece(correct):
    """Every prediction has confidence 0.9, so all fall in one bin: ECE = |accuracy - 0.9|."""
    return abs(correct / N_TEST - 0.9)


def expected_brier(correct):
    other = 0.1 / 9
    hit = (0.9 - 1) ** 2 + 9 * other**2
    miss = 0.9**2 + (other - 1) ** 2 + 8 * other**2  # predicted class, true class, the other eight
    return (correct * hit + (N_TEST - correct) * miss) / N_TEST


@functools.cache
def tiny_png(seed):
    """A small real PNG standing in for a run's plot."""
    out = io.BytesIO()
    matplotlib.image.imsave(out, np.random.default_rng(seed).random((12, 16)), format="png")
    return out.getvalue()


def history_csv(epochs):
    rows = [",".join(HISTORY_COLUMNS)]
    for e in range(1, epochs + 1):
        rows.append(f"{e},{2.0 - 0.1 * e},{0.3 + 0.05 * e},{2.1 - 0.1 * e},{0.28 + 0.05 * e},{1.8 - 0.1 * e},"
                    f"{0.005 * (1 - (e - 1) / EPOCHS)},{12.5}")  # fmt: skip
    return "\n".join(rows) + "\n"


def dead_pid():
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()  # reaped: the pid names no process
    return proc.pid


def write_run(root, rel, method, factor, seed, status="completed", correct=80, done=None, overrides=(),
              calibrated=True, temperature=None):  # fmt: skip
    """A run directory as job.run writes it: lock, spec.yaml, history, metrics, manifest, and
    on completion the run's plots (no reliability.png for a run from before calibration)."""
    run_dir = root / rel
    spec = load_spec(None, [
        "data.source=synthetic", f"smoothing.method={method}", f"smoothing.factor={factor}",
        f"train.seed={seed}", f"train.epochs={EPOCHS}", f"output.root={run_dir.parent}",
        f"output.run={run_dir.name}", *overrides,
    ])  # fmt: skip
    claim = RunDir(run_dir)
    claim.claim()  # the real lock text: "pid <this process> on <host> since <time>"
    claim.release()
    write_text(run_dir / "spec.yaml", spec.to_yaml())
    done = spec.train.epochs if done is None else done
    if done:
        write_text(run_dir / "history.csv", history_csv(done))
    manifest = {
        "run": spec.run_name, "status": status, "reason": None, "spec_hash": spec.content_hash(),
        "method": spec.smoothing.method, "factor": spec.smoothing.effective_factor, "seed": spec.train.seed,
        "epochs": spec.train.epochs, "started": now(), "finished": now(), "duration_s": 123.456 + seed,
        "attempts": [{"host": socket.gethostname(), "started": now(), "ended": now(), "status": status}],
        "backend": "tensorflow", "versions": {}, "git_commit": None,
    }  # fmt: skip
    if status == "completed":
        for name in RUN_PLOTS if calibrated else OLD_RUN_PLOTS:
            write_bytes(run_dir / name, tiny_png(RUN_PLOTS.index(name)))
        metrics = copy.deepcopy(fake_metrics(correct, calibrated, temperature))
        write_json(run_dir / "metrics.json", metrics)
        manifest.update(epochs_done=done, test_accuracy=metrics["test_accuracy"], test_nll=metrics["test_nll"])
    elif status == "running":
        manifest.update(finished=None)
        manifest["attempts"][-1] = {"host": socket.gethostname(), "started": now()}
    write_json(run_dir / "manifest.json", manifest)
    return run_dir


def set_lock_pid(run_dir, pid, host=None):
    lock = run_dir / ".lock"
    text = lock.read_text()
    _, rest = text.split(" on ", 1)
    if host is not None:
        rest = host + " since " + rest.split(" since ", 1)[1]
    lock.write_text(f"pid {pid} on {rest}")


# Every run of the tree and the status aggregate must give it.
EXPECTED = {
    **{f"sweep/{m}-f{f:g}-s{s}" if m != "none" else f"sweep/none-s{s}": "completed"
       for (m, f) in SWEEP for s in range(3)},
    "sweep/labels-f0.3-s0": "failed",
    "sweep/loss-f0.3-s0": "interrupted",
    "sweep/labels-f0.1-s7": "killed",
    "sweep/labels-f0.2-s8": "incomplete",  # only spec.yaml: stopped while starting
    "sweep/loss-f0.1-s5": "incomplete",  # says completed, but no metrics.json
    "sweep/loss-f0.2-s9": "damaged",  # manifest cut off mid-write
    "pilot/round-1/labels-f0.3-s1": "completed",  # a nested sub-sweep, made before calibration existed
}  # fmt: skip


def _starting(root, rel, seed, *overrides):
    """A run that stopped while starting: its spec.yaml alone."""
    starting = root / rel
    spec = load_spec(None, ["data.source=synthetic", "smoothing.factor=0.1", f"train.seed={seed}",
                            f"train.epochs={EPOCHS}", f"output.root={starting.parent}", *overrides])  # fmt: skip
    starting.mkdir(parents=True)
    write_text(starting / "spec.yaml", spec.to_yaml())
    return starting


@pytest.fixture(scope="module")
def built_tree(tmp_path_factory):
    root = tmp_path_factory.mktemp("built") / "results"
    for (method, factor), accuracies in SWEEP.items():
        for seed, correct in enumerate(accuracies):
            name = f"{method}-f{factor:g}-s{seed}" if method != "none" else f"none-s{seed}"
            write_run(root, f"sweep/{name}", method, factor, seed, correct=correct)

    failed = write_run(root, "sweep/labels-f0.3-s0", "labels", 0.3, 0, status="failed", done=1)
    edit_manifest(failed, reason="loss became nan at epoch 2, batch 5")
    stopped = write_run(root, "sweep/loss-f0.3-s0", "loss", 0.3, 0, status="interrupted", done=2)
    edit_manifest(stopped, reason="stopped by SIGTERM; re-run the same command to resume")
    killed = write_run(root, "sweep/labels-f0.1-s7", "labels", 0.1, 7, status="running", done=2)
    set_lock_pid(killed, dead_pid())

    _starting(root, "sweep/labels-f0.2-s8", 8, "smoothing.factor=0.2")

    no_metrics = write_run(root, "sweep/loss-f0.1-s5", "loss", 0.1, 5, correct=90)
    (no_metrics / "metrics.json").unlink()
    damaged = write_run(root, "sweep/loss-f0.2-s9", "loss", 0.2, 9, correct=90)
    text = (damaged / "manifest.json").read_text()
    (damaged / "manifest.json").write_text(text[: len(text) // 2])

    # From before calibration existed: completed, with empty calibration cells.
    write_run(root, "pilot/round-1/labels-f0.3-s1", "labels", 0.3, 1, correct=83, calibrated=False)
    return root


@pytest.fixture
def tree(built_tree, tmp_path):
    """A fresh copy of the tree for each test (building it fsyncs a hundred files)."""
    return Path(shutil.copytree(built_tree, tmp_path / "results", symlinks=True))


@pytest.fixture(scope="module")
def aggregated(built_tree, tmp_path_factory):
    """The tree aggregated once, for the tests that only read the outputs."""
    root = Path(shutil.copytree(built_tree, tmp_path_factory.mktemp("aggregated") / "results", symlinks=True))
    return root, aggregate(root)


def edit_manifest(run_dir, **changes):
    manifest = json.loads((run_dir / "manifest.json").read_text())
    manifest.update(changes)
    write_json(run_dir / "manifest.json", manifest)


def snapshot(root):
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def by_run(runs):
    return {r.run: r for r in runs}


# ---------------------------------------------------------------------------- statuses


def test_every_run_appears_with_its_status(aggregated):
    _, summary = aggregated
    assert {r.run: r.status for r in summary.runs} == EXPECTED
    runs = by_run(summary.runs)
    assert runs["sweep/labels-f0.3-s0"].reason == "loss became nan at epoch 2, batch 5"
    assert "SIGTERM" in runs["sweep/loss-f0.3-s0"].reason
    assert "is gone" in runs["sweep/labels-f0.1-s7"].reason
    assert "metrics.json" in runs["sweep/loss-f0.1-s5"].reason
    assert "not valid JSON" in runs["sweep/loss-f0.2-s9"].reason
    assert "stopped while starting" in runs["sweep/labels-f0.2-s8"].reason
    assert summary.counts == {"completed": 16, "killed": 1, "interrupted": 1, "failed": 1,
                              "incomplete": 2, "damaged": 1}  # fmt: skip


@pytest.mark.parametrize(
    "p, text",
    [(0.0496, "0.0496"), (0.04996, "0.04996"), (0.0504, "0.05"), (0.05, "0.05"), (0.00996, "0.00996"),
     (0.0104, "0.01"), (0.5, "0.5"), (0.123, "0.12"), (3.2e-6, "3.2e-06")],
)  # fmt: skip
def test_p_reads_to_two_digits_but_never_across_0_05_or_0_01(p, text):
    # At 2 significant digits 0.0496 read "0.05": significant at 5%, printed as if it were not.
    assert p_text(p) == text


def test_a_duration_missing_an_attempts_time_reads_as_at_least(tmp_path):
    # A killed run's duration holds only the attempts whose end was recorded: 0:00:00 for one killed
    # in its first attempt read as a run that never ran.
    killed = write_run(tmp_path, "labels-s1", "labels", 0.1, 1, status="running")
    resumed = write_run(tmp_path, "labels-s2", "labels", 0.1, 2)
    manifest = json.loads((resumed / "manifest.json").read_text())
    earlier = {"host": "node7", "started": now(), "status": "unrecorded"}  # SIGKILLed, then resumed
    write_json(resumed / "manifest.json", {**manifest, "attempts": [earlier, *manifest["attempts"]]})
    write_run(tmp_path, "labels-s3", "labels", 0.1, 3)
    set_lock_pid(killed, dead_pid())
    summary = aggregate(tmp_path)
    cells = {line.split(" | ")[0][2:]: line.split(" | ") for line in summary.markdown.splitlines()
             if line.startswith("| labels-s")}  # fmt: skip
    assert [cells[f"labels-s{seed}"][10] for seed in (1, 2, 3)] == ["≥ 0:02:04", "≥ 0:02:05", "0:02:06"]
    with open(tmp_path / "aggregate.csv", newline="") as f:  # the number itself, as the manifest has it
        assert [row["duration_s"] for row in csv.DictReader(f)] == ["124.456", "125.456", "126.456"]


def test_rows_carry_the_run_identity_and_progress(tree):
    runs = by_run(collect(tree)[0])
    done = runs["sweep/labels-f0.1-s1"]
    assert (done.method, done.factor, done.seed, done.epochs_done, done.epochs_total) == ("labels", 0.1, 1, 3, 3)
    assert done.duration_s == pytest.approx(124.456) and done.attempts == 1 and len(done.spec_hash) == 16
    assert done.metrics == pytest.approx({"test_accuracy": 0.82, "val_nll": expected_nll(82),
                                          "test_ece": expected_ece(82), "test_brier": expected_brier(82)})  # fmt: skip
    old = runs["pilot/round-1/labels-f0.3-s1"]
    assert old.status == "completed"
    assert old.metrics == pytest.approx({"test_accuracy": 0.83, "val_nll": expected_nll(83)})
    # Unfinished runs: epochs done from history.csv, no metrics at all.
    assert (runs["sweep/labels-f0.3-s0"].epochs_done, runs["sweep/loss-f0.3-s0"].epochs_done) == (1, 2)
    assert runs["sweep/labels-f0.1-s7"].epochs_done == 2
    for name, status in EXPECTED.items():
        if status != "completed":
            assert runs[name].metrics == {}, name
    # A manifest-less or damaged run still sorts by what its spec.yaml says.
    starting, damaged = runs["sweep/labels-f0.2-s8"], runs["sweep/loss-f0.2-s9"]
    assert (starting.method, starting.factor, starting.seed, starting.epochs_done) == ("labels", 0.2, 8, 0)
    assert (damaged.method, damaged.factor, damaged.seed) == ("loss", 0.2, 9)
    assert runs["sweep/none-s2"].factor == 0.0


def test_rows_are_sorted_by_method_factor_seed_run(tree):
    runs = collect(tree)[0]
    keys = [(r.method, r.factor, r.seed, r.run) for r in runs]
    assert keys == sorted(keys)
    assert [r.run for r in runs][:5] == [
        "sweep/labels-f0.1-s0", "sweep/labels-f0.1-s1", "sweep/labels-f0.1-s2", "sweep/labels-f0.1-s7",
        "sweep/labels-f0.2-s0",
    ]  # fmt: skip


def test_a_running_run_is_only_called_killed_when_its_process_is_provably_gone(tmp_path):
    write_run(tmp_path, "alive", "labels", 0.1, 0, status="running", done=1)  # lock names this process
    elsewhere = write_run(tmp_path, "elsewhere", "labels", 0.1, 1, status="running", done=1)
    set_lock_pid(elsewhere, dead_pid(), host="some-other-node")
    no_lock = write_run(tmp_path, "no-lock", "labels", 0.1, 2, status="running", done=1)
    (no_lock / ".lock").unlink()
    garbled = write_run(tmp_path, "garbled", "labels", 0.1, 3, status="running", done=1)
    (garbled / ".lock").write_text("pid 0 on nowhere")
    runs = by_run(collect(tmp_path)[0])
    assert {name: r.status for name, r in runs.items()} == dict.fromkeys(runs, "running")
    assert f"pid {os.getpid()}" in runs["alive"].reason
    assert "another host" in runs["elsewhere"].reason
    assert "no .lock" in runs["no-lock"].reason


@pytest.mark.skipif(not Path("/proc/locks").exists(), reason="needs Linux /proc/locks")
def test_a_held_lock_means_alive_even_when_its_pid_is_not_ours(tmp_path):
    """A pid from another pid namespace (a container sharing the host name) looks dead here."""
    run_dir = write_run(tmp_path, "in-container", "labels", 0.1, 0, status="running", done=1)
    set_lock_pid(run_dir, dead_pid())
    fd = os.open(run_dir / ".lock", os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        assert collect(tmp_path)[0][0].status == "running"
    finally:
        os.close(fd)
    assert collect(tmp_path)[0][0].status == "killed"


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs Linux /proc")
def test_a_process_that_only_reuses_the_pid_of_a_killed_run_is_not_it(tmp_path):
    run_dir = write_run(tmp_path, "k", "labels", 0.1, 0, status="running", done=1)
    later = subprocess.Popen(["sleep", "60"])  # alive, and started after the lock below was written
    try:
        for since, status in ((dt.datetime.now(dt.timezone.utc) - dt.timedelta(hours=1), "killed"),
                              (dt.datetime.now(dt.timezone.utc), "running")):  # fmt: skip
            when = since.isoformat(timespec="seconds")
            (run_dir / ".lock").write_text(f"pid {later.pid} on {socket.gethostname()} since {when}\n")
            (run,) = collect(tmp_path)[0]
            assert run.status == status and f"pid {later.pid}" in run.reason
    finally:
        later.kill()
        later.wait()


def test_aggregate_never_takes_a_run_lock(tree, monkeypatch):
    # Only its output folder's, which no run locks (one aggregate writing there at a time).
    real_flock, taken = fcntl.flock, []

    def output_folder_only(fd, operation):
        if not os.path.samestat(os.fstat(fd), os.stat(tree)):
            raise AssertionError("aggregate must not take a run's flock")
        taken.append(fd)
        return real_flock(fd, operation)

    def refuse(*args):
        raise AssertionError("aggregate must not take a run's lock")

    monkeypatch.setattr(fcntl, "flock", output_folder_only)
    monkeypatch.setattr(fcntl, "lockf", refuse)
    aggregate(tree)
    assert len(taken) == 1


def test_a_starting_run_with_a_live_lock_is_running(tmp_path):
    starting = tmp_path / "labels-f0.1-s0"
    claim = RunDir(starting)
    claim.claim()  # this process holds the lock; no spec.yaml or manifest yet
    try:
        run = collect(tmp_path)[0][0]
    finally:
        claim.release()
    assert run.status == "running" and "starting" in run.reason
    set_lock_pid(starting, 12345, host="some-other-node")
    run = collect(tmp_path)[0][0]
    assert run.status == "incomplete" and "some-other-node" in run.reason


@pytest.mark.parametrize(
    "break_it, why",
    [
        (lambda d: (d / "metrics.json").unlink(), "no metrics.json"),
        (lambda d: (d / "metrics.json").write_text("{}"), "no finite test_accuracy"),
        (lambda d: (d / "metrics.json").write_text('{"test_accuracy": 0.8'), "metrics.json is unreadable"),
        (lambda d: (d / "history.csv").unlink(), "no history.csv"),
        (lambda d: (d / "history.csv").write_text(history_csv(2)), "history.csv has 2 epochs"),
        # A copy cut short mid-row: three rows numbered 1..3, the last without its end.
        (lambda d: (d / "history.csv").write_text(history_csv(3)[:-20]), "row 3 has fewer fields"),
        (lambda d: (d / "history.csv").write_text(history_csv(3).replace(",12.5\n", ",x\n")), "seconds 'x'"),
        (lambda d: edit_manifest(d, epochs_done=2), "only 2 of 3 epochs"),
        (lambda d: edit_manifest(d, test_accuracy=0.99), "the manifest 0.99"),
        (lambda d: edit_manifest(d, test_accuracy=None), "the manifest has no test_accuracy"),
    ],
)
def test_a_partial_run_never_looks_complete(tmp_path, break_it, why):
    break_it(write_run(tmp_path, "run", "labels", 0.1, 0, correct=80))
    run = collect(tmp_path)[0][0]
    assert run.status == "incomplete" and why in run.reason
    assert run.metrics == {}


@pytest.mark.parametrize(
    "text, why",
    [
        ("", "is empty"),
        ('{"status": "completed", "method": "lab', "not valid JSON"),
        ("[1, 2]", "JSON list"),
        ('{"status": "completed"}', "no 'method'"),
        (None, "unknown status 'paused'"),
        (None, "'seed' is '1'"),
        (b"\xff\xfe{}", "cannot read"),
    ],
)
def test_a_damaged_manifest_is_a_row_not_a_crash(tmp_path, text, why):
    run_dir = write_run(tmp_path, "run", "labels", 0.1, 1)
    manifest = run_dir / "manifest.json"
    if isinstance(text, bytes):
        manifest.write_bytes(text)
    elif text is not None:
        manifest.write_text(text)
    elif "paused" in why:
        edit_manifest(run_dir, status="paused")
    else:
        edit_manifest(run_dir, seed="1")
    run = collect(tmp_path)[0][0]
    assert run.status == "damaged" and why in run.reason
    assert (run.method, run.seed) == ("labels", 1)  # from spec.yaml


# ---------------------------------------------------------------------------- statistics


def test_group_statistics_over_completed_runs(aggregated):
    groups = {(g.method, g.factor): g for g in aggregated[1].groups}
    assert set(groups) == {*SWEEP, ("labels", 0.3), ("loss", 0.3)}
    for key, accuracies in SWEEP.items():
        g = groups[key]
        acc, nll = g.stats["test_accuracy"], g.stats["val_nll"]
        expected = np.array(accuracies) / 100
        assert acc.mean == pytest.approx(expected.mean())
        assert acc.std == pytest.approx(expected.std(ddof=1))
        assert (acc.min, acc.max) == pytest.approx((expected.min(), expected.max()))
        nlls = [expected_nll(c) for c in accuracies]
        assert nll.mean == pytest.approx(np.mean(nlls))
        assert (nll.min, nll.max) == pytest.approx((min(nlls), max(nlls)))
    # Hand-computed: 80, 82, 87 -> mean 83, sample std sqrt((9 + 1 + 16) / 2) = sqrt(13).
    labels = groups[("labels", 0.1)]
    assert labels.stats["test_accuracy"].mean == pytest.approx(0.83)
    assert labels.stats["test_accuracy"].std == pytest.approx(math.sqrt(13) / 100)
    assert (labels.completed, labels.not_completed) == (3, 1)  # the killed seed 7 does not count
    one = groups[("labels", 0.3)]  # the nested run, beside the failed one
    assert (one.completed, one.not_completed, one.stats["test_accuracy"].std) == (1, 1, None)
    nothing = groups[("loss", 0.3)]
    assert (nothing.completed, nothing.not_completed, nothing.stats) == (1 - 1, 1, {})


def test_calibration_statistics_leave_out_runs_from_before_calibration(aggregated):
    groups = {(g.method, g.factor): g for g in aggregated[1].groups}
    for key, accuracies in SWEEP.items():
        ece, brier = groups[key].stats["test_ece"], groups[key].stats["test_brier"]
        assert ece.mean == pytest.approx(np.mean([expected_ece(c) for c in accuracies]))
        assert ece.std == pytest.approx(np.std([expected_ece(c) for c in accuracies], ddof=1))
        assert (ece.min, ece.max, ece.n) == pytest.approx((0.9 - max(accuracies) / 100, 0.9 - min(accuracies) / 100, 3))
        assert brier.mean == pytest.approx(np.mean([expected_brier(c) for c in accuracies]))
    # labels 0.1: accuracies 80, 82, 87 -> ECE 0.10, 0.08, 0.03: mean 0.07, std sqrt(13) / 100.
    assert groups[("labels", 0.1)].stats["test_ece"].mean == pytest.approx(0.07)
    assert groups[("labels", 0.1)].stats["test_ece"].std == pytest.approx(math.sqrt(13) / 100)
    # The only completed labels 0.3 run is from before calibration: accuracy, but no ECE.
    old = groups[("labels", 0.3)].stats
    assert set(old) == {"test_accuracy", "val_nll"} and old["test_accuracy"].n == 1
    assert not any("temperature" in g.stats for g in groups.values())


def test_labels_vs_loss_differences_beside_the_seed_spread(aggregated):
    summary = aggregated[1]
    found = {(d.factor, d.metric): d for d in summary.comparisons}
    # 0.3: loss has no completed run there, so there is nothing to compare.
    assert list(found) == [(f, m) for f in (0.1, 0.2) for m in ("test_accuracy", "val_nll", "test_ece")]
    # Factor 0.1, seeds 0, 1, 2: labels 80, 82, 87 (mean 83, std sqrt(13)); loss 78, 80, 82 (mean 80, std 2).
    acc = found[(0.1, "test_accuracy")]
    assert acc.value == pytest.approx(0.03)
    assert (acc.a.std, acc.b.std) == pytest.approx((math.sqrt(13) / 100, 0.02))
    # Both completed the same seeds, so the test pairs them: differences 2, 2, 5 (std sqrt(3)), SE
    # sqrt(3) / sqrt(3) = 1. Unpaired (Welch), the seeds' shared ups and downs would count as noise:
    # SE sqrt(13/3 + 4/3) = 2.4.
    assert acc.test == "paired" and np.allclose(acc.pairs, [(0.80, 0.78), (0.82, 0.80), (0.87, 0.82)])
    assert acc.se == pytest.approx(0.01)
    assert acc.ratio == pytest.approx(3.0)
    # The paired t-test, as scipy computes it from the runs themselves.
    assert acc.p_value == pytest.approx(scipy.stats.ttest_rel([80, 82, 87], [78, 80, 82]).pvalue)  # 0.095
    # ECE is 0.9 - accuracy here: labels 0.07, loss 0.10.
    ece = found[(0.1, "test_ece")]
    assert (ece.a.mean, ece.b.mean, ece.value) == pytest.approx((0.07, 0.10, -0.03))
    assert (ece.se, ece.p_value) == pytest.approx((acc.se, acc.p_value))
    # Factor 0.2: labels 84, 85, 86 (mean 85, std 1); loss 81, 81, 84 (mean 82, std sqrt(3)).
    acc2 = found[(0.2, "test_accuracy")]
    assert (acc2.value, acc2.a.std, acc2.b.std) == pytest.approx((0.03, 0.01, math.sqrt(3) / 100))
    assert acc2.se == pytest.approx(1 / math.sqrt(3) / 100)  # differences 3, 4, 2: std 1
    assert acc2.ratio == pytest.approx(3 * math.sqrt(3))  # 5.2
    assert acc2.p_value == pytest.approx(scipy.stats.ttest_rel([84, 85, 86], [81, 81, 84]).pvalue)  # 0.035
    # The 95% intervals: difference ± t(0.975, 2 df) SE, leaving out 0 exactly where p < 0.05.
    t = scipy.stats.t.ppf(0.975, 2)
    assert acc.interval == pytest.approx((0.03 - t * 0.01, 0.03 + t * 0.01))  # across 0: p 0.095
    assert acc2.interval == pytest.approx((0.03 - t * acc2.se, 0.03 + t * acc2.se))  # 0.005 to 0.055: p 0.035
    for d in summary.comparisons + summary.baseline_comparisons:
        if d.p_value is not None:
            assert (d.interval[0] > 0 or d.interval[1] < 0) == (d.p_value < 0.05), d

    lines = summary.markdown.splitlines()
    section = lines.index("## labels vs loss at the same factor")
    assert "same objective" in lines[section + 2] and "No spread" not in lines[section + 2]  # every pair has spread
    table = [line for line in lines[section:] if line.startswith("| 0.") and "val NLL" not in line][:4]
    assert table == [
        "| 0.1 | test acc (%) | 83.00 ± 3.61 (3) | 80.00 ± 2.00 (3) | +3.00 | 1.00 | +3.0 | 0.095 | paired |",
        "| 0.1 | ECE | 0.0700 ± 0.0361 (3) | 0.1000 ± 0.0200 (3) | -0.0300 | 0.0100 | -3.0 | 0.095 | paired |",
        "| 0.2 | test acc (%) | 85.00 ± 1.00 (3) | 82.00 ± 1.73 (3) | +3.00 | 0.58 | +5.2 | 0.035 | paired |",
        "| 0.2 | ECE | 0.0500 ± 0.0100 (3) | 0.0800 ± 0.0173 (3) | -0.0300 | 0.0058 | -5.2 | 0.035 | paired |",
    ]


def test_each_smoothed_group_is_compared_with_the_baseline_of_the_same_settings(aggregated):
    summary = aggregated[1]
    found = {(d.method, d.factor, d.metric): d for d in summary.baseline_comparisons}
    # Every completed smoothed group (the pilot's labels 0.3 too), each metric, against none.
    assert list(found) == [(m, f, metric) for m, f in [("labels", 0.1), ("labels", 0.2), ("labels", 0.3),
                                                       ("loss", 0.1), ("loss", 0.2)]
                           for metric in ("test_accuracy", "val_nll", "test_ece")  # no ECE before calibration
                           if (f, metric) != (0.3, "test_ece")]  # fmt: skip
    # labels 0.1: 80, 82, 87 (mean 83, std sqrt(13)); none: 75, 77, 79 (mean 77, std 2).
    acc = found[("labels", 0.1, "test_accuracy")]
    assert (acc.other, acc.value, acc.b.mean) == ("none", pytest.approx(0.06), pytest.approx(0.77))
    assert acc.se == pytest.approx(0.01)  # paired: differences 5, 5, 8
    assert acc.p_value == pytest.approx(scipy.stats.ttest_rel([80, 82, 87], [75, 77, 79]).pvalue)
    assert acc.seeds == ((0, 1, 2), (0, 1, 2)) and acc.test == "paired"
    lines = summary.markdown.splitlines()
    section = lines.index("## Smoothing vs none")
    assert "what smoothing changed" in lines[section + 2]
    assert lines[section + 4].startswith("| method | factor | metric | method mean ± std (n) | none mean ± std (n) |")
    assert (
        "| labels | 0.1 | test acc (%) | 83.00 ± 3.61 (3) | 77.00 ± 2.00 (3) | +6.00 | 1.00 | +6.0 | 0.027 | paired |"
        in summary.markdown
    )
    assert "| loss | 0.2 | ECE | 0.0800 ± 0.0173 (3) | 0.1300 ± 0.0200 (3) | -0.0500 |" in summary.markdown
    # loss 0.1 (78, 80, 82) is 3 points above none (75, 77, 79) at every seed: no noise to weigh it against.
    row = "| loss | 0.1 | test acc (%) | 80.00 ± 2.00 (3) | 77.00 ± 2.00 (3) | +3.00 | 0.00 | no spread | – | paired |"
    assert row in summary.markdown
    assert "No spread: there is no noise" in lines[section + 2]
    page = (aggregated[0] / "aggregate.html").read_text()
    assert '<h2 id="vs-baseline">Smoothing vs none</h2>' in page and "+6.00" in page


def test_the_json_holds_the_groups_and_comparisons_at_full_precision(aggregated):
    tree, summary = aggregated
    data = json.loads((tree / "aggregate.json").read_text())
    assert set(data) == {"groups", "labels_vs_loss", "vs_baseline", "warnings"}
    assert data["warnings"] == summary.warnings
    assert [(g["method"], g["factor"], g["completed"]) for g in data["groups"]] == [
        (g.method, g.factor, g.completed) for g in summary.groups
    ]
    labels = next(g for g in data["groups"] if (g["method"], g["factor"]) == ("labels", 0.1))
    expected = {"mean": 0.83, "std": math.sqrt(13) / 100, "min": 0.8, "max": 0.87, "n": 3}
    assert labels["stats"]["test_accuracy"] == pytest.approx(expected)
    assert labels["seeds"]["test_accuracy"] == [0, 1, 2] and labels["settings"] == {}
    key = ("labels", 0.1, "test_accuracy")
    vs_none = next(d for d in data["vs_baseline"] if (d["method"], d["factor"], d["metric"]) == key)
    assert vs_none["other"] == "none" and vs_none["difference"] == pytest.approx(0.06)
    assert vs_none["p"] == pytest.approx(scipy.stats.ttest_rel([80, 82, 87], [75, 77, 79]).pvalue)
    assert vs_none["test"] == "paired" and vs_none["se"] == pytest.approx(0.01)
    t = scipy.stats.t.ppf(0.975, 2)
    assert vs_none["ci95"] == pytest.approx([0.06 - t * 0.01, 0.06 + t * 0.01])
    assert len(data["labels_vs_loss"]) == len(summary.comparisons)


def test_a_comparison_over_different_seeds_says_so_in_the_warnings_its_rows_and_its_bars(tmp_path, plots):
    # Each side's mean is over its own seeds: a seed that only one side has moves its mean alone,
    # as much as a method would. The warning alone, at the foot of the page, left the rows and
    # bars reading like any other.
    for method, seed in [("labels", 1), ("labels", 2), ("loss", 2), ("loss", 3), ("none", 1), ("none", 2)]:
        write_run(tmp_path, f"{method}-s{seed}", method, 0.1 if method != "none" else 0.0, seed)
    summary = aggregate(tmp_path)
    same = ": their comparisons are over different seeds; run the missing seeds for a like-for-like comparison"
    assert summary.warnings == [
        "labels at factor 0.1 lacks seed 3, which loss at factor 0.1 has" + same,
        "loss at factor 0.1 lacks seed 1, which labels at factor 0.1 and none have" + same,
        "none lacks seed 3, which loss at factor 0.1 has" + same,
    ]
    # labels vs loss and loss vs none: 3 metrics each over different seeds; labels vs none over the same.
    rows = [line for line in summary.markdown.splitlines() if line.endswith(("| Welch; seeds differ |", "| paired |"))]
    assert [row.split(" | ")[0:2] for row in rows if row.endswith("seeds differ |")] == [["| 0.1", "test acc (%)"],
        ["| 0.1", "val NLL"], ["| 0.1", "ECE"], *[["| loss", "0.1"]] * 3]  # fmt: skip
    assert [row.split(" | ")[0:2] for row in rows if row.endswith("| paired |")] == [["| labels", "0.1"]] * 3
    assert '"seeds differ": the two sides completed different seeds' in summary.markdown
    assert all(text.endswith("\nseeds differ") for ax in plots["labels_vs_loss.png"] for text in ax["texts"])
    write_run(tmp_path, "labels-s3", "labels", 0.1, 3)
    write_run(tmp_path, "loss-s1", "loss", 0.1, 1)
    write_run(tmp_path, "none-s3", "none", 0.0, 3)
    summary = aggregate(tmp_path)
    assert summary.warnings == [] and "seeds differ |" not in summary.markdown
    assert not any("seeds differ" in text for ax in plots["labels_vs_loss.png"] for text in ax["texts"])
    # A run from before calibration has accuracy and NLL but no ECE: only the ECE comparison lacks its seed.
    write_run(tmp_path, "labels-s4", "labels", 0.1, 4, calibrated=False)
    write_run(tmp_path, "loss-s4", "loss", 0.1, 4)
    assert aggregate(tmp_path).warnings == [
        "labels at factor 0.1 lacks seed 4 in ECE, which loss at factor 0.1 has" + same,
        "none lacks seed 4, which labels at factor 0.1 and loss at factor 0.1 have" + same,
    ]


def test_a_factor_plot_marks_a_mean_over_fewer_runs_than_the_others(tmp_path, plots):
    # loss at 0.2 lost a seed: its mean jumps as far as a method could move it, and without a mark
    # the point looked like every other mean on the line.
    for method, factor, seeds in [("labels", 0.1, (1, 2)), ("loss", 0.1, (1, 2)), ("labels", 0.2, (1, 2)),
                                  ("loss", 0.2, (1,)), ("none", 0.0, (1, 2))]:  # fmt: skip
        for seed in seeds:
            write_run(tmp_path, f"{method}-f{factor:g}-s{seed}", method, factor, seed, correct=80 + seed)
    aggregate(tmp_path)
    for name in ("accuracy_vs_factor.png", "ece_vs_factor.png"):
        (plot,) = plots[name]
        assert plot["texts"] == ["n=1"], name
        assert "n=k: a mean over fewer runs than the others" in plot["title"]
        # none's band, min to max of its runs (81% and 82%), has edges a reader can see on ggplot's grey.
        if name == "accuracy_vs_factor.png":
            edges = sorted(float(y[0]) for label, y in plot["lines"].items() if label.startswith("_child"))
            assert edges == [81.0, 82.0]
    write_run(tmp_path, "loss-f0.2-s2", "loss", 0.2, 2)
    aggregate(tmp_path)
    (plot,) = plots["accuracy_vs_factor.png"]
    assert plot["texts"] == [] and "n=k" not in plot["title"]


def test_runs_made_by_different_versions_are_named_in_a_warning(tmp_path):
    # A sweep topped up after an upgrade: its runs are averaged together, and a change between the
    # versions can move them as much as smoothing does.
    made = {"lsjob": "0.1.0", "python": "3.11.2", "keras": "3.15.1", "tensorflow": "2.21.0"}
    runs = {}
    for method in ("labels", "loss", "none"):
        for seed in (1, 2):
            runs[f"{method}-s{seed}"] = write_run(tmp_path, f"{method}-s{seed}", method, 0.1, seed)

    def record(name, commit="c0ffee" * 6 + "beef", **versions):
        manifest = json.loads((runs[name] / "manifest.json").read_text())
        write_json(runs[name] / "manifest.json", {**manifest, "versions": {**made, **versions}, "git_commit": commit})

    for name in runs:
        record(name)
    record("none-s2", python="3.12.1")  # Python's version does not change the numbers
    assert aggregate(tmp_path).warnings == []
    record("loss-s2", tensorflow="2.20.0")
    record("none-s1", commit=None)  # an installed copy records no commit
    assert aggregate(tmp_path).warnings == [
        "completed runs were made by different versions: lsjob 0.1.0 (commit c0ffeec0ffee), keras 3.15.1, "
        "tensorflow 2.21.0 (4 runs); lsjob 0.1.0 (commit c0ffeec0ffee), keras 3.15.1, tensorflow 2.20.0 (1 run: "
        "loss-s2); lsjob 0.1.0, keras 3.15.1, tensorflow 2.21.0 (1 run: none-s1); they are grouped and compared "
        "together: where a change between these versions can move the results, compare runs of one version "
        "(each manifest records its versions and git_commit)"
    ]


def test_a_baseline_short_of_a_seed_is_one_warning_however_many_groups_it_is_compared_with(tmp_path):
    for factor in (0.05, 0.1, 0.2):
        for method in ("labels", "loss"):
            for seed in (1, 2):
                write_run(tmp_path, f"{method}-f{factor:g}-s{seed}", method, factor, seed)
    write_run(tmp_path, "none-s1", "none", 0.0, 1)
    assert aggregate(tmp_path).warnings == [
        "none lacks seed 2, which labels at factor 0.05, loss at factor 0.05, labels at factor 0.1, loss at "
        "factor 0.1, labels at factor 0.2 and loss at factor 0.2 have: their comparisons are over different "
        "seeds; run the missing seeds for a like-for-like comparison"
    ]


def test_a_group_left_out_of_a_comparison_for_its_settings_is_named(tmp_path):
    # labels and loss at lr 0.005 beside none at lr 0.005; labels alone at lr 0.01: its rows are
    # in neither table, and the warnings say which group and why.
    for method, lr in [("labels", 0.005), ("loss", 0.005), ("none", 0.005), ("labels", 0.01)]:
        for seed in (1, 2):
            factor = 0.0 if method == "none" else 0.1
            write_run(tmp_path, f"{method}-s{seed}-lr{lr}", method, factor, seed, overrides=[f"train.lr={lr}"])
    summary = aggregate(tmp_path)
    assert {(d.method, d.varied) for d in summary.baseline_comparisons} == {
        ("labels", (("train.lr", "0.005"),)), ("loss", (("train.lr", "0.005"),))
    }  # fmt: skip
    left_out = [w for w in summary.warnings if "leaves out" in w]
    assert left_out == [
        "Smoothing vs none leaves out labels at factor 0.1, train.lr=0.01: no completed none run has the same "
        "other settings; run none with those settings to compare them",
        "labels vs loss leaves out labels at factor 0.1, train.lr=0.01: the other method has completed runs at "
        "that factor only with other settings; run it with those settings to compare them",
    ]
    assert all(w in summary.markdown for w in left_out)
    for method in ("loss", "none"):
        for seed in (1, 2):
            factor = 0.0 if method == "none" else 0.1
            write_run(tmp_path, f"{method}-s{seed}-lr0.01", method, factor, seed, overrides=["train.lr=0.01"])
    summary = aggregate(tmp_path)
    assert not any("leaves out" in w for w in summary.warnings)
    assert len(summary.baseline_comparisons) == 2 * len(summary.comparisons) == 4 * 3


def test_no_group_is_said_left_out_where_its_partner_never_completed(tmp_path):
    # No completed none or loss at all: each section's own sentence says there is nothing to compare.
    write_run(tmp_path, "labels-s1", "labels", 0.1, 1)
    write_run(tmp_path, "none-s1", "none", 0.0, 1, status="running", done=1)
    write_run(tmp_path, "loss-s1", "loss", 0.2, 1)
    assert not any("leaves out" in w for w in aggregate(tmp_path).warnings)


def test_a_partner_that_only_failed_at_a_groups_settings_does_not_hide_that_it_is_left_out(tmp_path):
    # labels completed at lr 0.005 and 0.01; loss and none completed at 0.005 only, and failed at
    # 0.01: labels at 0.01 is in neither table, and a partner that failed there must not silence it.
    for method, lr, status in [
        ("labels", 0.005, "completed"), ("loss", 0.005, "completed"), ("none", 0.005, "completed"),
        ("labels", 0.01, "completed"), ("loss", 0.01, "failed"), ("none", 0.01, "failed"),
    ]:  # fmt: skip
        factor = 0.0 if method == "none" else 0.1
        write_run(tmp_path, f"{method}-lr{lr}", method, factor, 1, status=status,
                  done=None if status == "completed" else 1, overrides=[f"train.lr={lr}"])  # fmt: skip
    left_out = [w.split(":")[0] for w in aggregate(tmp_path).warnings if "leaves out" in w]
    assert left_out == [
        "Smoothing vs none leaves out labels at factor 0.1, train.lr=0.01",
        "labels vs loss leaves out labels at factor 0.1, train.lr=0.01",
    ]


def test_the_baseline_table_explains_itself_without_the_labels_vs_loss_one(tmp_path):
    for method, seed in [("labels", 1), ("labels", 2), ("none", 1), ("none", 2)]:
        write_run(tmp_path, f"{method}-s{seed}", method, 0.1 if method != "none" else 0.0, seed)
    markdown = aggregate(tmp_path).markdown
    assert "No factor has completed runs of both `labels` and `loss` with the same other settings." in markdown
    assert "p is from a t-test" in markdown.split("## Smoothing vs none")[1] and "as above" not in markdown
    assert markdown.startswith("# lsjob runs under") and "\n4 runs: 4 completed.\n" in markdown


def test_the_same_root_given_two_ways_gives_the_same_files(tmp_path, monkeypatch):
    for method, seed in [("labels", 1), ("labels", 2), ("none", 1), ("none", 2)]:
        write_run(tmp_path, f"{method}-s{seed}", method, 0.1 if method != "none" else 0.0, seed)
    monkeypatch.chdir(tmp_path)
    relative = aggregate(".")
    files = {name: (tmp_path / name).read_bytes() for name in ("aggregate.md", "aggregate.html")}
    absolute = aggregate(tmp_path)
    assert relative.markdown == absolute.markdown and relative.markdown.startswith(f"# lsjob runs under `{tmp_path}`")
    assert files == {name: (tmp_path / name).read_bytes() for name in files}


@pytest.mark.skipif(os.geteuid() != 0, reason="making another user's file, as a teammate's, needs root")
def test_links_planted_in_runs_are_not_followed_into_the_outputs(tmp_path):
    # A teammate who can write to a shared results root linked a run's files to files of yours: the
    # aggregate you run, written where they can read it, quoted them (a .lock's first 60 characters,
    # a spec.yaml's keys and values as settings).
    secrets = tmp_path / "home"
    secrets.mkdir()
    (secrets / "netrc").write_text("machine registry login alice password S3cr3t\n")
    (secrets / "kubeconfig").write_text("token: SECRET-TOKEN\n")
    (secrets / "history").write_text("epoch\nSECRET-ROW\n")
    root = tmp_path / "results"
    write_run(root, "ok", "labels", 0.1, 1)
    running = write_run(root, "lock", "labels", 0.1, 2, status="running", done=1)
    planted = {"lock": (".lock", "netrc"), "spec": ("spec.yaml", "kubeconfig"), "manifest": ("manifest.json", "netrc"),
               "history": ("history.csv", "history")}  # fmt: skip
    for run, (name, secret) in planted.items():
        path = running if run == "lock" else write_run(root, run, "labels", 0.1, 3)
        (path / name).unlink()
        (path / name).symlink_to(secrets / secret)
        os.lchown(path / name, 54321, 54321)  # the teammate's link to your file
    summary = aggregate(root)
    outputs = "".join(
        (root / n).read_text() for n in ("aggregate.md", "aggregate.csv", "aggregate.json", "aggregate.html")
    )
    assert "S3cr3t" not in outputs and "SECRET" not in outputs
    reasons = {r.run: r.reason for r in summary.runs}
    foreign = "a symbolic link to another user's file (not followed)"
    assert f".lock is unreadable ({foreign})" in reasons["lock"]
    assert reasons["manifest"] == f"cannot read manifest.json: {foreign}"
    assert f"history.csv is unreadable: {foreign}" in reasons["history"]
    assert reasons["ok"] is None


def test_runs_whose_files_are_links_of_their_owner_are_read(tmp_path):
    # git-annex, DVC or `cp -rs` leave a run's files as links to files of the same owner.
    run = write_run(tmp_path / "store", "r", "labels", 0.1, 1)
    linked = tmp_path / "results" / "r"
    linked.mkdir(parents=True)
    for path in run.iterdir():
        (linked / path.name).symlink_to(path)
    (run_row,) = aggregate(tmp_path / "results").runs
    assert run_row.status == "completed" and run_row.metrics["test_accuracy"] == pytest.approx(0.8)


def test_csv_cells_a_spreadsheet_would_run_as_formulas_stay_text(tmp_path):
    # Folders a run name cannot have, but anyone who can write to the results may make.
    write_run(tmp_path, "=HYPERLINK(1)/a", "labels", 0.1, 1)
    failed = write_run(tmp_path, "@SUM(1)/b", "labels", 0.2, 1, status="failed", done=1)
    edit_manifest(failed, reason="=cmd|' /C calc'!A0")
    for seed, note in ((2, "'-2+3'"), (3, "-0.5")):  # a setting's text, and a negative number
        run = write_run(tmp_path, f"r{seed}", "labels", 0.1, seed)
        with open(run / "spec.yaml", "a") as f:
            f.write(f"note: {note}\n")
    aggregate(tmp_path)
    rows = {r["run"]: r for r in csv.DictReader(io.StringIO((tmp_path / "aggregate.csv").read_text()))}
    assert {"'=HYPERLINK(1)/a", "'@SUM(1)/b"} <= set(rows)
    assert rows["'@SUM(1)/b"]["reason"] == "'=cmd|' /C calc'!A0"
    assert (rows["r2"]["note"], rows["r3"]["note"]) == ("'-2+3", "-0.5")


def test_one_run_is_one_run(tmp_path):
    write_run(tmp_path, "a", "labels", 0.1, 0)
    assert "\n1 run: 1 completed.\n" in aggregate(tmp_path).markdown


def test_a_single_seed_has_no_spread_to_compare_with(tmp_path):
    write_run(tmp_path, "labels-f0.1-s0", "labels", 0.1, 0, correct=85)
    write_run(tmp_path, "loss-f0.1-s0", "loss", 0.1, 0, correct=80)
    write_run(tmp_path, "loss-f0.1-s1", "loss", 0.1, 1, correct=82)
    summary = aggregate(tmp_path)
    acc = next(d for d in summary.comparisons if d.metric == "test_accuracy")
    assert acc.value == pytest.approx(0.04) and acc.a.std is None and acc.se is None and acc.ratio is None
    assert acc.p_value is None and acc.test is None
    assert "| 0.1 | test acc (%) | 85.00 ± – (1) | 81.00 ± 1.41 (2) | +4.00 | – | – | – | seeds differ |" in (
        summary.markdown
    )


def test_unequal_seed_counts_weigh_each_side_by_its_own(tmp_path):
    # A sweep often has more seeds of one method than the other (a rerun, a seed that failed):
    # each side's variance shrinks with its own seed count, or the SE, ratio and verdict are off.
    labels, loss = (80, 84), (78, 79, 80, 81, 82)  # means 82 and 80, variances 8 and 2.5 (in % points²)
    for seed, correct in enumerate(labels):
        write_run(tmp_path, f"labels-f0.1-s{seed}", "labels", 0.1, seed, correct=correct)
    for seed, correct in enumerate(loss):
        write_run(tmp_path, f"loss-f0.1-s{seed}", "loss", 0.1, seed, correct=correct)
    summary = aggregate(tmp_path)
    acc = next(d for d in summary.comparisons if d.metric == "test_accuracy")
    assert (acc.a.n, acc.b.n) == (2, 5) and (acc.test, acc.pairs) == ("Welch", None)  # seeds 2-4 have no pair
    assert acc.se == pytest.approx(math.sqrt(8 / 2 + 2.5 / 5) / 100)
    assert acc.ratio == pytest.approx(2 / math.sqrt(4.5))
    assert acc.p_value == pytest.approx(scipy.stats.ttest_ind(labels, loss, equal_var=False).pvalue)
    # Welch-Satterthwaite: (8/2 + 2.5/5)² / ((8/2)²/1 + (2.5/5)²/4) = 20.25 / 16.0625 degrees of freedom.
    half = scipy.stats.t.ppf(0.975, 20.25 / 16.0625) * acc.se
    assert acc.interval == pytest.approx((0.02 - half, 0.02 + half))


def test_only_the_same_seeds_once_each_are_paired(tmp_path):
    # Seed 1 twice on the labels side: no one pairing, so Welch's over all four runs.
    for name, method, seed, correct in [("a", "labels", 0, 80), ("b", "labels", 1, 84), ("c", "labels", 1, 86),
                                        ("d", "loss", 0, 79), ("e", "loss", 1, 82)]:  # fmt: skip
        write_run(tmp_path, name, method, 0.1, seed, correct=correct)
    summary = aggregate(tmp_path)
    acc = next(d for d in summary.comparisons if d.metric == "test_accuracy")
    assert (acc.test, acc.pairs) == ("Welch", None)
    assert acc.p_value == pytest.approx(scipy.stats.ttest_ind([80, 84, 86], [79, 82], equal_var=False).pvalue)
    assert any("seed 1 completed 2 times" in w for w in summary.warnings)
    # Once each: paired, seed by seed.
    shutil.rmtree(tmp_path / "c")
    write_run(tmp_path, "f", "loss", 0.1, 2, correct=81)
    write_run(tmp_path, "g", "labels", 0.1, 2, correct=83)
    acc = next(d for d in aggregate(tmp_path).comparisons if d.metric == "test_accuracy")
    assert acc.test == "paired" and np.allclose(acc.pairs, [(0.80, 0.79), (0.84, 0.82), (0.83, 0.81)])
    assert acc.p_value == pytest.approx(scipy.stats.ttest_rel([80, 84, 83], [79, 82, 81]).pvalue)


def test_seeds_that_agree_exactly_have_no_spread_and_still_plot(tmp_path, plots):
    # Three equal values: their float mean was a rounding step off them (mean([0.05] * 3) > 0.05), which
    # made a negative error bar (matplotlib refused it: aggregate failed) and a std of 1e-17.
    for seed in range(3):
        run = write_run(tmp_path, f"labels-f0.1-s{seed}", "labels", 0.1, seed, correct=80)
        metrics = json.loads((run / "metrics.json").read_text())
        write_json(run / "metrics.json", {**metrics, "test_ece": 0.05})
        write_run(tmp_path, f"loss-f0.1-s{seed}", "loss", 0.1, seed, correct=78)
    summary = aggregate(tmp_path)
    ece = next(d for d in summary.comparisons if d.metric == "test_ece")
    assert (ece.a.mean, ece.a.std, ece.a.min, ece.a.max) == (0.05, 0.0, 0.05, 0.05)
    assert ece.se == 0.0 and ece.ratio is None and ece.p_value is None
    row = "| 0.0500 ± 0.0000 (3) | 0.1200 ± 0.0000 (3) | -0.0700 | 0.0000 | no spread | – | paired |"
    assert row in summary.markdown
    assert "No spread: there is no noise to weigh the difference against" in summary.markdown  # says what it means
    assert ece.interval is None and all(ax["segments"] == [] for ax in plots["labels_vs_loss.png"])  # no 0-wide bar
    assert all(path.stat().st_size for path in summary.files)


def test_differences_that_agree_but_for_rounding_have_no_spread(tmp_path):
    # A metric computed as 0.9 - accuracy carries the rounding of 0.9: these ECEs are 328 images apart
    # at every seed, yet their differences differ in the last bits (a margin scaled to the ECEs missed it,
    # and difference / SE read 1e15).
    for seed, k in enumerate((8369, 8584, 8327)):
        for method, images in (("labels", k), ("loss", k + 328)):
            run = write_run(tmp_path, f"{method}-s{seed}", method, 0.1, seed, correct=80 + seed)
            metrics = json.loads((run / "metrics.json").read_text())
            write_json(run / "metrics.json", {**metrics, "test_ece": 0.9 - images / 10000})
    ece = next(d for d in aggregate(tmp_path).comparisons if d.metric == "test_ece")
    assert ece.test == "paired" and ece.value == pytest.approx(0.0328)
    assert (ece.se, ece.ratio, ece.p_value, ece.interval) == (0.0, None, None, None)


def test_the_plot_draws_an_interval_only_where_the_test_gives_one(tmp_path, plots):
    # Factor 0.1: paired over 3 seeds. 0.2: a single labels seed. 0.3: loss 2 points below at each seed.
    for seed, (labels, loss) in enumerate([(80, 78), (82, 81), (87, 82)]):
        write_run(tmp_path, f"labels-f0.1-s{seed}", "labels", 0.1, seed, correct=labels)
        write_run(tmp_path, f"loss-f0.1-s{seed}", "loss", 0.1, seed, correct=loss)
        write_run(tmp_path, f"labels-f0.3-s{seed}", "labels", 0.3, seed, correct=labels)
        write_run(tmp_path, f"loss-f0.3-s{seed}", "loss", 0.3, seed, correct=labels - 2)
        write_run(tmp_path, f"loss-f0.2-s{seed}", "loss", 0.2, seed, correct=loss)
    write_run(tmp_path, "labels-f0.2-s0", "labels", 0.2, 0, correct=83)
    found = {d.factor: d for d in aggregate(tmp_path).comparisons if d.metric == "test_accuracy"}
    assert [found[f].interval is not None for f in (0.1, 0.2, 0.3)] == [True, False, False]
    accuracy = plots["labels_vs_loss.png"][0]
    (interval,) = accuracy["segments"]  # one bar, at 0.1's difference: none drawn 0 wide at 0.2 or 0.3
    low, high = (100 * end for end in found[0.1].interval)
    np.testing.assert_allclose(interval, [[[-0.25, low], [-0.25, high]]])


def test_optional_columns_appear_once_some_run_has_them(tmp_path):
    for seed in range(2):
        write_run(tmp_path, f"labels-f0.1-s{seed}", "labels", 0.1, seed, correct=80 + seed, calibrated=False)
    markdown = aggregate(tmp_path).markdown
    header = next(line for line in markdown.splitlines() if line.startswith("| run |"))
    assert "ECE" not in header and "| T |" not in header and "ECE mean" not in markdown  # no empty columns
    row = next(csv.DictReader(io.StringIO((tmp_path / "aggregate.csv").read_text())))
    assert row["status"] == "completed" and row["test_ece"] == row["temperature"] == ""  # the CSV keeps them all

    write_run(tmp_path, "labels-f0.1-s2", "labels", 0.1, 2, correct=84, temperature=1.5)
    summary = aggregate(tmp_path)
    assert [r.status for r in summary.runs] == ["completed"] * 3
    new = summary.runs[2]
    assert new.metrics["temperature"] == 1.5
    assert new.metrics["test_ece_scaled"] == pytest.approx(fake_metrics(84, True, 1.5)["test_ece_scaled"])
    lines = summary.markdown.splitlines()
    header = next(line for line in lines if line.startswith("| run |"))
    assert "| ECE | Brier | T | ECE after T |" in header
    assert next(line for line in lines if line.startswith("| labels-f0.1-s2 ")).count("| 1.500 |") == 1
    # One of three completed runs has ECE: the summary says its statistics stand on one run.
    group = next(line for line in lines if line.startswith("| labels | 0.1 |"))
    assert f"| {expected_ece(84):.4f} ± – (n=1) |" in group and "| 1.500 ± – (n=1) |" in group


def test_settings_that_change_results_are_flagged(tmp_path):
    for seed in range(2):
        write_run(tmp_path, f"a/labels-f0.1-s{seed}", "labels", 0.1, seed)
    write_run(tmp_path, "b/labels-f0.1-s0", "labels", 0.1, 0, overrides=["train.lr=0.01", "train.eval_batch_size=32"])
    warnings = comparison_warnings(collect(tmp_path)[0])
    assert any("train.lr" in w and "0.005 (2 runs)" in w and "0.01 (1 run)" in w for w in warnings)
    assert not any("eval_batch_size" in w for w in warnings)  # does not change results
    assert not any("completed 2 times" in w for w in warnings)  # another lr: another experiment, not a repeat
    write_run(tmp_path, "c/labels-f0.1-s0", "labels", 0.1, 0)
    warnings = comparison_warnings(collect(tmp_path)[0])
    assert any("seed 0 completed 2 times (a/labels-f0.1-s0, c/labels-f0.1-s0)" in w for w in warnings)


def lr_sweep(root):
    """labels and loss at factor 0.1, two learning rates, two seeds each; lr 0.05 far worse."""
    for lr, correct in ((0.005, 80), (0.05, 40)):
        for method in ("labels", "loss"):
            for seed in range(2):
                write_run(root, f"{method}-f0.1-s{seed}-lr_{lr}", method, 0.1, seed, correct=correct + seed,
                          overrides=[f"train.lr={lr}"])  # fmt: skip


def test_a_sweep_over_another_field_groups_by_it_instead_of_averaging_it_as_seed_noise(tmp_path):
    lr_sweep(tmp_path)
    summary = aggregate(tmp_path)
    groups = [(g.method, g.varied, g.completed, round(g.stats["test_accuracy"].mean, 4)) for g in summary.groups]
    assert groups == [
        ("labels", (("train.lr", "0.005"),), 2, 0.805),
        ("loss", (("train.lr", "0.005"),), 2, 0.805),
        ("labels", (("train.lr", "0.05"),), 2, 0.405),
        ("loss", (("train.lr", "0.05"),), 2, 0.405),
    ]
    # labels vs loss within each lr: equal accuracies, a difference of zero, not one spread over both lrs
    accuracy = [d for d in summary.comparisons if d.metric == "test_accuracy"]
    assert [(d.varied, d.value, d.a.std) for d in accuracy] == [
        ((("train.lr", "0.005"),), 0.0, pytest.approx(0.00707, abs=1e-5)),
        ((("train.lr", "0.05"),), 0.0, pytest.approx(0.00707, abs=1e-5)),
    ]
    rows = list(csv.DictReader(io.StringIO((tmp_path / "aggregate.csv").read_text())))
    assert list(rows[0])[:6] == ["run", "method", "factor", "seed", "train.lr", "status"]
    assert {(row["run"], row["train.lr"]) for row in rows} >= {("labels-f0.1-s0-lr_0.005", "0.005"),
                                                               ("loss-f0.1-s1-lr_0.05", "0.05")}  # fmt: skip
    lines = summary.markdown.splitlines()
    header = next(line for line in lines if "| completed |" in line)
    assert header.startswith("| method | factor | train.lr | completed | not completed |")
    assert any(line.startswith("| labels | 0.1 | 0.05 | 2 | 0 | 40.50 ± 0.71 |") for line in lines)
    assert any(line.startswith("| 0.1 | 0.05 | test acc (%) |") for line in lines)
    assert not any("completed 2 times" in w for w in summary.warnings)
    assert any(
        w.startswith("completed runs differ in train.lr: 0.005 (4 runs), 0.05 (4 runs)") for w in summary.warnings
    )


def test_a_run_that_did_not_finish_at_another_setting_is_not_counted_in_this_ones_group(tmp_path):
    write_run(tmp_path, "a", "labels", 0.1, 0)
    write_run(tmp_path, "b", "labels", 0.1, 1)
    write_run(tmp_path, "c", "labels", 0.1, 2, status="failed", done=1, overrides=["train.lr=0.01"])
    summary = aggregate(tmp_path, out=tmp_path / "out")
    assert [(g.varied, g.completed, g.not_completed) for g in summary.groups] == [
        ((("train.lr", "0.005"),), 2, 0),
        ((("train.lr", "0.01"),), 0, 1),
    ]
    assert summary.warnings == []  # the completed runs agree


def test_a_completed_run_without_its_spec_still_shows_the_backend_its_manifest_records(tmp_path):
    write_run(tmp_path, "a", "labels", 0.1, 0)
    b = write_run(tmp_path, "b", "labels", 0.1, 1)
    set_manifest(b, backend="jax")
    (b / "spec.yaml").unlink()
    runs = collect(tmp_path)[0]
    assert {r.run: r.varied for r in runs} == {"a": (("backend", '"tensorflow"'),), "b": (("backend", '"jax"'),)}
    warnings = comparison_warnings(runs)
    assert any("1 completed run(s) have no readable spec.yaml" in w for w in warnings)
    # Its manifest tells its backend: the split is warned of as where both kept their specs.
    assert any(w.startswith("completed runs differ in backend: jax (1 run), tensorflow (1 run);") for w in warnings)


def test_the_plots_draw_a_line_per_method_and_varied_setting(tmp_path, monkeypatch):
    lr_sweep(tmp_path)
    write_run(tmp_path, "none-s0-lr_0.005", "none", 0.0, 0, overrides=["train.lr=0.005"])
    write_run(tmp_path, "none-s0-lr_0.05", "none", 0.0, 0, overrides=["train.lr=0.05"], correct=30)
    drawn = []
    monkeypatch.setattr(job.aggregate.plots, "save_png", lambda fig, path: drawn.append(fig))
    job.aggregate.write_factor_plot(collect(tmp_path)[0], job.aggregate.METRIC["test_accuracy"], "t", "y",
                                    tmp_path / "x.png")  # fmt: skip
    labels = drawn[0].axes[0].get_legend_handles_labels()[1]
    assert labels == [
        "labels, train.lr=0.005 (2 runs)", "loss, train.lr=0.005 (2 runs)",
        "labels, train.lr=0.05 (2 runs)", "loss, train.lr=0.05 (2 runs)",
        "none, train.lr=0.005 (1 run, no smoothing)", "none, train.lr=0.05 (1 run, no smoothing)",
    ]  # fmt: skip


def set_manifest(run_dir, **fields):
    manifest = json.loads((run_dir / "manifest.json").read_text())
    write_json(run_dir / "manifest.json", {**manifest, **fields})


def test_backend_and_resolved_precision_group_runs_and_auto_matches_what_it_became(tmp_path):
    a = write_run(tmp_path, "a", "labels", 0.1, 0, overrides=["runtime.mixed_precision=auto"])
    b = write_run(tmp_path, "b", "labels", 0.1, 1, overrides=["runtime.mixed_precision=bf16"])
    c = write_run(tmp_path, "c", "labels", 0.1, 2, overrides=["runtime.mixed_precision=bf16"])
    for run_dir in (a, b, c):  # on a GPU with bf16, auto became bf16: the same computation
        set_manifest(run_dir, runtime={"precision": "bf16", "replicas": 1})
    summary = aggregate(tmp_path, out=tmp_path / "out")
    assert [(g.varied, g.completed) for g in summary.groups] == [((), 3)] and summary.warnings == []
    set_manifest(c, backend="jax")
    summary = aggregate(tmp_path, out=tmp_path / "out")
    assert [(g.varied, g.completed) for g in summary.groups] == [
        ((("backend", '"jax"'),), 1),
        ((("backend", '"tensorflow"'),), 2),
    ]
    rows = list(csv.DictReader(io.StringIO((tmp_path / "out" / "aggregate.csv").read_text())))
    assert [(row["run"], row["backend"]) for row in rows] == [("c", "jax"), ("a", "tensorflow"), ("b", "tensorflow")]
    assert any(w.startswith("completed runs differ in backend: jax (1 run), tensorflow (2 runs)")
               for w in summary.warnings)  # fmt: skip


def test_a_settings_warning_names_only_the_columns_and_groups_the_tables_have(tmp_path):
    for seed in (0, 1):
        write_run(tmp_path, f"plain-s{seed}", "labels", 0.1, seed)
    for seed in (2, 3):  # holdout_size 5000 recorded here only: without temperature scaling it is unused
        write_run(tmp_path, f"scaled-s{seed}", "labels", 0.1, seed, overrides=["eval.temperature_scaling=true"])
    old = write_run(tmp_path, "old-s4", "labels", 0.1, 4)  # from before manifests recorded the backend
    manifest = json.loads((old / "manifest.json").read_text())
    del manifest["backend"]
    write_json(old / "manifest.json", manifest)
    summary = aggregate(tmp_path, out=tmp_path / "out")
    assert [g.varied for g in summary.groups] == [
        (("eval.temperature_scaling", "false"),),
        (("eval.temperature_scaling", "true"),),
    ]
    header = next(csv.reader(io.StringIO((tmp_path / "out" / "aggregate.csv").read_text())))
    assert "eval.temperature_scaling" in header and "eval.holdout_size" not in header and "backend" not in header
    # Each warned-of setting is a column that splits the groups, and no other: holdout_size and
    # backend were listed with an "(absent)" value, "with a column for it", that no table had.
    assert summary.warnings == [
        "completed runs differ in eval.temperature_scaling: false (3 runs), true (2 runs); each value is a group "
        "of its own in the tables and the plots, with a column for it"
    ]


def test_fields_a_run_of_an_older_version_did_not_write_count_as_their_defaults(tmp_path):
    old = write_run(tmp_path, "old", "labels", 0.1, 0)
    write_run(tmp_path, "new", "labels", 0.1, 1)
    spec = yaml.safe_load((old / "spec.yaml").read_text())
    del spec["train"]["lr_scaling"], spec["train"]["lr_reference_batch"], spec["runtime"], spec["eval"]
    (old / "spec.yaml").write_text(yaml.safe_dump(spec))
    summary = aggregate(tmp_path, out=tmp_path / "out")
    assert summary.warnings == [] and [(g.varied, g.completed) for g in summary.groups] == [((), 2)]
    spec["train"]["lr_scaling"] = "linear"  # a real difference still shows
    (old / "spec.yaml").write_text(yaml.safe_dump(spec))
    assert any("train.lr_scaling" in w for w in aggregate(tmp_path, out=tmp_path / "out").warnings)


def test_the_holdout_size_is_compared_only_where_temperature_scaling_uses_it(tmp_path):
    write_run(tmp_path, "a/labels-f0.1-s0", "labels", 0.1, 0, overrides=["eval.holdout_size=1000"])
    write_run(tmp_path, "a/labels-f0.1-s1", "labels", 0.1, 1)  # 5000, unused
    assert not any("holdout_size" in w for w in comparison_warnings(collect(tmp_path)[0]))
    write_run(tmp_path, "b/labels-f0.1-s2", "labels", 0.1, 2,
              overrides=["eval.temperature_scaling=true", "eval.holdout_size=1000"])  # fmt: skip
    write_run(tmp_path, "b/labels-f0.1-s3", "labels", 0.1, 3, overrides=["eval.temperature_scaling=true"])
    warnings = comparison_warnings(collect(tmp_path / "b")[0])
    assert any("eval.holdout_size" in w and "1000 (1 run)" in w and "5000 (1 run)" in w for w in warnings)


def test_runs_that_are_one_experiment_to_lsjob_run_are_one_group(tmp_path):
    # Without lr_scaling the reference batch changes nothing: `lsjob run` resumes such a run as
    # the same one (Spec.identity), so its seeds are one group here, not two.
    write_run(tmp_path, "none-s1", "none", 0.0, 1)
    write_run(tmp_path, "none-s2", "none", 0.0, 2, overrides=["train.lr_reference_batch=128"])
    summary = aggregate(tmp_path)
    assert [(g.method, g.completed, g.varied) for g in summary.groups] == [("none", 2, ())]
    assert summary.warnings == []
    write_run(tmp_path, "scaled/none-s3", "none", 0.0, 3, overrides=["train.lr_scaling=linear"])
    warnings = aggregate(tmp_path).warnings
    assert any(w.startswith("completed runs differ in train.lr_scaling") for w in warnings)


def test_a_spec_that_no_longer_validates_still_ignores_the_reference_batch_without_lr_scaling(tmp_path):
    # A field since renamed makes spec.yaml invalid, so its settings are read as written; an
    # unused reference batch must not split its seeds there either.
    for seed, batch in ((1, 64), (2, 128)):
        run = write_run(tmp_path, f"none-s{seed}", "none", 0.0, seed, overrides=[f"train.lr_reference_batch={batch}"])
        spec = yaml.safe_load((run / "spec.yaml").read_text())
        spec["train"]["renamed_since"] = 1
        (run / "spec.yaml").write_text(yaml.safe_dump(spec))
    summary = aggregate(tmp_path)
    assert [(g.method, g.completed, g.varied) for g in summary.groups] == [("none", 2, ())]
    assert summary.warnings == []


def test_a_clean_sweep_warns_only_of_a_comparison_over_other_seeds(aggregated):
    # The pilot's lone labels run at 0.3 (seed 1) against the sweep's baseline (seeds 0-2).
    assert aggregated[1].warnings == [
        "labels at factor 0.3 lacks seeds 0 and 2, which none has: their comparisons are over different seeds; "
        "run the missing seeds for a like-for-like comparison"
    ]
    assert aggregated[1].markdown.count("## Warnings") == 1


# ---------------------------------------------------------------------------- files


def test_csv_round_trips(aggregated):
    tree, summary = aggregated
    with open(tree / "aggregate.csv", newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == [c.name for c in CSV_COLUMNS]
    assert {"run", "method", "factor", "seed", "status", "reason", "test_accuracy", "val_nll", "test_ece",
            "test_brier", "temperature", "test_ece_scaled", "epochs_done", "epochs_total", "duration_s",
            "attempts", "spec_hash"} <= set(rows[0])  # fmt: skip
    assert [row["run"] for row in rows] == [r.run for r in summary.runs]
    for row, run in zip(rows, summary.runs):
        assert row["status"] == run.status and row["method"] == (run.method or "")
        assert (row["reason"] or None) == run.reason
        for name in ("factor", "duration_s"):
            assert (float(row[name]) if row[name] else None) == getattr(run, name)  # exact: full precision
        for name in ("seed", "epochs_done", "epochs_total", "attempts"):
            assert (int(row[name]) if row[name] else None) == getattr(run, name)
        for metric in METRICS:
            assert (float(row[metric.name]) if row[metric.name] else None) == run.metrics.get(metric.name)
    # The CSV's numbers are metrics.json's, bit for bit.
    row = next(r for r in rows if r["run"] == "sweep/loss-f0.2-s2")
    metrics = json.loads((tree / "sweep/loss-f0.2-s2/metrics.json").read_text())
    assert float(row["test_accuracy"]) == metrics["test_accuracy"]
    assert float(row["val_nll"]) == metrics["test_nll"]
    assert (float(row["test_ece"]), float(row["test_brier"])) == (metrics["test_ece"], metrics["test_brier"])
    old = next(r for r in rows if r["run"] == "pilot/round-1/labels-f0.3-s1")
    assert old["status"] == "completed" and old["test_ece"] == old["test_brier"] == ""


def test_markdown(aggregated):
    tree, summary = aggregated
    text = (tree / "aggregate.md").read_text(encoding="utf-8")
    assert text == summary.markdown
    lines = text.splitlines()
    run_rows = [line for line in lines if line.startswith("| sweep/") or line.startswith("| pilot/")]
    assert len(run_rows) == len(EXPECTED)
    assert all(line.count(" | ") == run_rows[0].count(" | ") for line in run_rows)  # no stray pipes
    row = next(line for line in run_rows if line.startswith("| sweep/labels-f0.1-s1 "))
    assert "| 82.00 |" in row and f"| {expected_nll(82):.4f} |" in row and "| 3/3 |" in row
    summary_row = next(line for line in lines if line.startswith("| labels | 0.1 |"))
    assert f"83.00 ± {math.sqrt(13):.2f}" in summary_row and "80.00 – 87.00" in summary_row
    assert "| 3 | 1 |" in summary_row
    assert "16 completed" in text and "1 killed" in text and "1 damaged" in text


@pytest.mark.parametrize("name", ["accuracy_vs_factor.png", "ece_vs_factor.png", "labels_vs_loss.png"])
def test_png_is_a_valid_png(aggregated, name):
    tree, _ = aggregated
    data = (tree / name).read_bytes()
    assert data.startswith(PNG_MAGIC) and len(data) > 1000
    image = matplotlib.image.imread(tree / name)
    assert image.ndim == 3 and image.shape[0] > 100 and image.shape[1] > 100


def axes_content(ax):
    return {
        "title": ax.get_title(),
        "legend": ax.get_legend_handles_labels()[1],
        "lines": {line.get_label(): line.get_ydata() for line in ax.get_lines()},
        "xticks": [t.get_text() for t in ax.get_xticklabels()],
        "bars": [(p.get_x() + p.get_width() / 2, p.get_y(), p.get_height()) for p in ax.patches],
        "texts": [t.get_text() for t in ax.texts],
        # Error bars are LineCollections of vertical segments; single-run dots are PathCollections.
        "segments": [np.asarray(c.get_segments()) for c in ax.collections if isinstance(c, LineCollection)],
        "dots": [np.asarray(c.get_offsets()) for c in ax.collections if isinstance(c, PathCollection)],
    }  # fmt: skip


@pytest.fixture
def plots(monkeypatch):
    """What each saved figure shows, by file name: per axes its title, legend labels, lines
    (horizontal reference lines included), x tick labels, bars and texts."""
    seen = {}
    savefig = Figure.savefig

    def record(fig, fname, *args, **kwargs):
        # atomic_path saves to a temporary name: '.<final name>.<random>.png'.
        name = next((n for n in OUTPUTS if Path(fname).name.startswith(f".{n}.")), str(fname))
        seen[name] = [axes_content(ax) for ax in fig.axes]
        seen[name][0]["suptitle"] = fig.get_suptitle()
        return savefig(fig, fname, *args, **kwargs)

    monkeypatch.setattr(Figure, "savefig", record)
    return seen


def test_plot_shows_completed_runs_and_says_how_many_were_left_out(tree, plots):
    aggregate(tree)
    assert set(plots) == {"accuracy_vs_factor.png", "ece_vs_factor.png", "labels_vs_loss.png"}
    (plot,) = plots["accuracy_vs_factor.png"]
    assert "16 completed run(s) plotted; 6 left out as not completed" in plot["title"]
    assert [label.split(" (")[0] for label in plot["legend"]] == ["labels", "loss", "none"]
    assert "(7 runs)" in plot["legend"][0] and "(3 runs, no smoothing)" in plot["legend"][2]
    lines = plot["lines"]
    labels = next(v for k, v in lines.items() if k.startswith("labels"))
    # labels: factor 0.1 mean of 80, 82, 87; 0.2 of 84, 85, 86; 0.3 the nested run alone.
    assert list(labels) == pytest.approx([83.0, 85.0, 83.0])
    none = next(v for k, v in lines.items() if k.startswith("none"))
    assert list(none) == pytest.approx([77.0, 77.0])  # a horizontal line at the mean
    assert plot["xticks"] == ["0.1", "0.2", "0.3"]


def test_plot_shows_the_spread_across_seeds_not_only_the_mean(tree, plots):
    aggregate(tree)
    (plot,) = plots["accuracy_vs_factor.png"]
    # labels: factor 0.1 holds 80, 82, 87; 0.2 holds 84, 85, 86; 0.3 one run of 83.
    labels_bars, loss_bars = plot["segments"][:2]
    np.testing.assert_allclose(labels_bars[:, :, 1], [[80, 87], [84, 86], [83, 83]])
    assert len(loss_bars) == 2
    labels_dots = plot["dots"][0]
    assert sorted(labels_dots[:, 1]) == pytest.approx(sorted([80, 82, 87, 84, 85, 86, 83]))
    # Each dot sits at its bar's x, a little left of loss's dots at the same factor.
    assert set(np.round(labels_dots[:, 0], 9)) == set(np.round([seg[0][0] for seg in labels_bars], 9))
    assert max(labels_dots[:2, 0]) < min(plot["dots"][1][:, 0])
    # none (75, 77, 79): the band from the lowest to the highest run.
    (band,) = [(y, h) for _, y, h in plot["bars"]]
    assert band == pytest.approx((75, 4))


def test_ece_plot_leaves_out_runs_without_ece_and_says_so(tree, plots):
    aggregate(tree)
    (plot,) = plots["ece_vs_factor.png"]
    assert plot["title"].startswith("Expected calibration error vs label-smoothing factor\n")
    assert "15 completed run(s) plotted; 6 left out as not completed" in plot["title"]
    assert "1 completed run(s) without ECE left out (older runs)" in plot["title"]
    assert "(6 runs)" in plot["legend"][0]  # labels: the pre-calibration 0.3 run is not among them
    lines = plot["lines"]
    labels = next(v for k, v in lines.items() if k.startswith("labels"))
    assert list(labels) == pytest.approx([0.07, 0.05])
    loss = next(v for k, v in lines.items() if k.startswith("loss"))
    assert list(loss) == pytest.approx([0.10, 0.08])
    none = next(v for k, v in lines.items() if k.startswith("none"))
    assert list(none) == pytest.approx([0.13, 0.13])  # 75, 77, 79 % accurate at confidence 0.9


def test_labels_vs_loss_plot_puts_each_difference_beside_the_seed_spread(tree, plots):
    aggregate(tree)
    accuracy, nll, ece = plots["labels_vs_loss.png"]
    assert "seed spread" in accuracy["suptitle"] and "NLL" in nll["title"]
    assert accuracy["xticks"] == nll["xticks"] == ece["xticks"] == ["0.1", "0.2"]
    # Per factor: the difference of means, then ±1 std bands of labels and of loss around 0.
    for ax, scale in ((accuracy, 100), (ece, 1)):
        bars = ax["bars"]
        differences, labels, loss = bars[:2], bars[2:4], bars[4:]
        sign = 1 if scale == 100 else -1  # labels is more accurate here, hence better calibrated
        assert [height for _, _, height in differences] == pytest.approx([sign * 3 / 100 * scale] * 2)
        for band, stds in ((labels, [math.sqrt(13), 1.0]), (loss, [2.0, math.sqrt(3)])):
            expected = [s / 100 * scale for s in stds]
            assert [height for _, _, height in band] == pytest.approx([2 * s for s in expected])
            assert [bottom for _, bottom, _ in band] == pytest.approx([-s for s in expected])
        assert [x for x, _, _ in bars] == pytest.approx([-0.25, 0.75, 0, 1, 0.25, 1.25])
    assert accuracy["texts"] == ["3.00", "3.00"] and ece["texts"] == ["-0.0300", "-0.0300"]
    # Each difference's 95% interval, the tables' paired t-test: 3 ± t SE, SE 1 at 0.1 and 1/sqrt(3) at 0.2.
    t = scipy.stats.t.ppf(0.975, 2)
    (interval,) = accuracy["segments"]
    np.testing.assert_allclose(interval, [[[-0.25, 3 - t], [-0.25, 3 + t]],
                                          [[0.75, 3 - t / math.sqrt(3)], [0.75, 3 + t / math.sqrt(3)]]])  # fmt: skip
    assert "across 0: not told apart from seed noise" in accuracy["suptitle"]


@pytest.fixture
def figures(monkeypatch):
    """Each saved figure itself, by file name, to measure where its texts were drawn."""
    seen = {}
    savefig = Figure.savefig

    def keep(fig, fname, *args, **kwargs):
        seen[next(n for n in OUTPUTS if Path(fname).name.startswith(f".{n}."))] = fig
        return savefig(fig, fname, *args, **kwargs)

    monkeypatch.setattr(Figure, "savefig", keep)
    return seen


def unreadable_texts(fig):
    """Texts of one panel drawn over each other (the values over the bars, the factors under
    them, the axis labels, the title), values outside their panel or crossed by an interval's
    bar, a legend over the points it describes, and texts, legends and titles cut off by the
    figure's edge."""
    fig.draw_without_rendering()
    found = []
    for ax in fig.axes:
        labels = (*ax.texts, *ax.get_xticklabels(), ax.title, ax.xaxis.label, ax.yaxis.label)
        pairs = itertools.combinations([(t.get_text(), t.get_window_extent()) for t in labels if t.get_text()], 2)
        found += [f"{a!r} over {b!r}" for (a, box), (b, other) in pairs if box.overlaps(other)]
        found += [f"{t.get_text()!r} outside its panel" for t in ax.texts if not inside(t, ax.bbox)]
        intervals = [lines for lines in ax.collections if isinstance(lines, LineCollection)]
        segments = [matplotlib.path.Path(lines.get_transform().transform(segment))
                    for lines in intervals for segment in lines.get_segments()]  # fmt: skip
        found += [f"{t.get_text()!r} crossed by an interval" for t in ax.texts
                  if any(line.intersects_bbox(t.get_window_extent(), filled=False) for line in segments)]  # fmt: skip
        if ax.get_legend():
            legend = ax.get_legend().get_window_extent()
            points = [line.get_transform().transform(line.get_xydata()) for line in ax.lines]
            points += [
                c.get_offset_transform().transform(c.get_offsets()) for c in ax.collections if len(c.get_offsets())
            ]
            found += [f"legend over the point {xy}" for xy in np.concatenate(points) if legend.contains(*xy)]
    found += [f"figure legend over {ax.get_title()!r}" for ax in fig.axes for legend in fig.legends
              if legend.get_window_extent().overlaps(ax.bbox)]  # fmt: skip
    texts = [*fig.texts, *fig.legends, *(ax.get_legend() for ax in fig.axes if ax.get_legend())]
    texts += [t for ax in fig.axes for t in (*ax.texts, *ax.get_xticklabels(), ax.xaxis.label, ax.yaxis.label)]
    return found + [f"{t} cut off" for t in texts if t.get_window_extent().width and not inside(t, fig.bbox)]


def inside(artist, bbox):
    return all(bbox.padded(1).contains(x, y) for x, y in artist.get_window_extent().corners())


def test_a_legend_of_few_long_entries_is_not_cut_off_at_the_figures_edges(tmp_path, figures):
    # Three entries go in a row under the plot: with a setting's long name the row outgrew the
    # 8 in figure, and the first entry's colour and method were cut off the left edge.
    for seed in (0, 1):
        write_run(tmp_path, f"labels-s{seed}", "labels", 0.1, seed, correct=80 + seed)
        write_run(tmp_path, f"labels-T-s{seed}", "labels", 0.1, seed, correct=82 + seed,
                  overrides=["eval.temperature_scaling=true"])  # fmt: skip
        write_run(tmp_path, f"none-s{seed}", "none", 0.0, seed, correct=78 + seed)
    aggregate(tmp_path)
    for name in ("accuracy_vs_factor.png", "ece_vs_factor.png"):
        fig = figures[name]
        (legend,) = fig.legends
        assert len(legend.get_texts()) == 3 and "eval.temperature_scaling=false" in legend.get_texts()[0].get_text()
        assert unreadable_texts(fig) == [], name


THREE_SETTINGS = {"train.lr": [0.005, 0.01], "train.batch_size": [64, 128], "augment.fill_mode": ["nearest", "reflect"]}


@pytest.mark.parametrize(
    "factors, seeds, grid",
    [
        (2, 2, {}),
        (10, 2, {}),
        (20, 2, {}),
        (10, 1, {}),  # one seed: nothing but the differences' own bars sets a panel's height
        (20, 1, {}),
        (10, 2, {"train.lr": [0.005, 0.01]}),
        (4, 1, {"eval.temperature_scaling": [True, False]}),
        (1, 2, {"train.lr": [0.005, 0.01], "train.batch_size": [64, 128]}),
        (2, 1, THREE_SETTINGS),
        (1, 1, {**THREE_SETTINGS, "train.momentum": [0.9, 0.95]}),  # 32 lines of labels or loss: past 20 colours
    ],
)
def test_a_sweep_of_many_factors_or_settings_draws_every_value_factor_and_line_legibly(tmp_path, figures, factors,
                                                                                      seeds, grid):  # fmt: skip
    # Values of 4 decimals side by side at 10 factors ran into one another ("0.00000.0000..."),
    # upright factors with their settings squeezed the panels, a long legend hid lines.
    for seed, setting, i in itertools.product(range(seeds), itertools.product(*grid.values()), range(factors + 1)):
        overrides = [f"{key}={value}" for key, value in zip(grid, setting)]
        for method in ("labels", "loss") if i else ("none",):
            correct = 60 + (7 * i + 3 * seed + 5 * (method == "loss") + 11 * len(str(setting))) % 37
            write_run(tmp_path, f"{method}-f{i}-s{seed}-{'-'.join(map(str, setting))}", method,
                      round(0.5 * i / factors, 3), seed, overrides=overrides, correct=correct)  # fmt: skip
    aggregate(tmp_path)
    assert set(figures) == {"accuracy_vs_factor.png", "ece_vs_factor.png", "labels_vs_loss.png"}
    for name, fig in figures.items():
        assert unreadable_texts(fig) == [], name
    settings = math.prod(len(values) for values in grid.values())
    assert len(figures["labels_vs_loss.png"].axes[1].texts) == factors * settings  # each difference's value
    for ax in figures["labels_vs_loss.png"].axes:  # no seed spread flush with the panel's edge, as if cut off
        low, high = ax.get_ylim()
        spreads = [bar for bars in ax.containers if bars.get_label().startswith("±1 std") for bar in bars]
        assert len(spreads) == 2 * factors * settings
        assert all(low < bar.get_y() and bar.get_y() + bar.get_height() < high for bar in spreads if bar.get_height())
    for name in ("accuracy_vs_factor.png", "ece_vs_factor.png"):  # however long the legend beside it
        fig = figures[name]
        assert fig.axes[0].get_position().width * fig.get_figwidth() > 6.5
    ax = figures["accuracy_vs_factor.png"].axes[0]
    lines = [line for line in ax.lines if not line.get_label().startswith("_")]
    assert len(lines) == 3 * settings  # labels, loss and none per setting
    colours = [matplotlib.colors.to_hex(line.get_color()) for line in lines]
    assert len(set(colours)) == min(len(colours), 20)  # a colour each while 20 go round
    looks = {(colour, line.get_linestyle(), line.get_marker()) for colour, line in zip(colours, lines)}
    assert len(looks) == len(lines)  # and past them, a look each still


def test_labels_and_loss_of_other_settings_are_not_compared_nor_called_missing(tmp_path):
    for seed in (0, 1):
        write_run(tmp_path, f"labels-s{seed}", "labels", 0.1, seed)
        write_run(tmp_path, f"loss-s{seed}", "loss", 0.1, seed, overrides=["train.epochs=5"])
    summary = aggregate(tmp_path)
    assert summary.comparisons == []
    # Both have completed runs at 0.1: "no factor has runs of both" read as if the loss runs were missing.
    assert "No factor has completed runs of both `labels` and `loss` with the same other settings." in summary.markdown
    assert any(w.startswith("completed runs differ in train.epochs: 3 (2 runs), 5 (2 runs)") for w in summary.warnings)


def test_plot_copes_with_no_completed_runs(tmp_path, plots):
    write_run(tmp_path, "run", "labels", 0.1, 0, status="failed", done=1)
    summary = aggregate(tmp_path)
    assert summary.counts == {"failed": 1} and summary.groups[0].stats == {} and summary.comparisons == []
    for name in ("accuracy_vs_factor.png", "ece_vs_factor.png"):
        (plot,) = plots[name]
        assert "0 completed run(s) plotted; 1 left out" in plot["title"] and plot["legend"] == []
        assert plot["texts"] == ["no completed runs"]
    assert all(ax["bars"] == [] and "no factor has completed" in ax["texts"][0] for ax in plots["labels_vs_loss.png"])
    for name in OUTPUTS - {"aggregate.csv", "aggregate.json", "aggregate.md", "aggregate.html"}:
        assert (tmp_path / name).read_bytes().startswith(PNG_MAGIC)
    assert "No factor has completed runs of both `labels` and `loss` with the same other settings." in summary.markdown
    # No table, so no advice on reading one (nor on its "no spread" cells, read as a verdict).
    page = (tmp_path / "aggregate.html").read_text()
    assert all("No spread" not in text and "Welch" not in text for text in (summary.markdown, page))
    assert "beside completed `none` runs" in summary.markdown and "beside completed <code>none</code> runs" in page


def test_only_the_outputs_are_written_to_root(tree):
    before = snapshot(tree)
    summary = aggregate(tree)
    after = snapshot(tree)
    assert set(after) - set(before) == OUTPUTS
    assert {k: v for k, v in after.items() if k in before} == before
    assert set(summary.files) == {tree / name for name in OUTPUTS}
    aggregate(tree)  # again: the outputs are replaced, and are not taken for runs
    assert set(snapshot(tree)) == set(after)


def test_out_directory(tree, tmp_path):
    before = snapshot(tree)
    out = tmp_path / "report" / "nested"
    summary = aggregate(tree, out=out)
    assert snapshot(tree) == before  # the results tree is untouched
    assert {p.name for p in out.iterdir()} == OUTPUTS
    assert summary.out == out and (out / "aggregate.md").read_text(encoding="utf-8") == summary.markdown


def test_root_that_is_itself_a_run(tmp_path):
    run_dir = write_run(tmp_path, "labels-f0.1-s0", "labels", 0.1, 0)
    runs = aggregate(run_dir, out=tmp_path / "out").runs
    assert [(r.run, r.status) for r in runs] == [(".", "completed")]


def test_aggregate_never_writes_into_a_run_directory(tmp_path):
    # A run that stopped while starting must still resume: its directory may hold only what
    # the run writes, or the next attempt refuses it as "not an lsjob run directory".
    starting = tmp_path / "results" / "starting"
    starting.mkdir(parents=True)
    (starting / "spec.yaml").write_text("{}\n")
    (starting / ".lock").write_text("")
    done = write_run(tmp_path, "results/done", "labels", 0.1, 0)
    before = snapshot(tmp_path / "results")
    elsewhere = write_run(tmp_path, "other/run", "labels", 0.1, 0)  # not under the root aggregated
    claimed = RunDir(tmp_path / "other" / "claimed")
    claimed.claim()  # killed right after taking its lock: nothing but .lock yet
    claimed.release()
    for root, out in ((starting, None), (done, None), (tmp_path / "results", done / "tables"),
                      (tmp_path / "results", elsewhere), (tmp_path / "results", claimed.path)):  # fmt: skip
        with pytest.raises(AggregateError, match="inside the run directory .*pass --out DIR") as caught:
            aggregate(root, out=out)
        assert caught.value.exit_code == EXIT_BAD_INPUT
    assert snapshot(tmp_path / "results") == before
    assert sorted(p.name for p in claimed.path.iterdir()) == [".lock"]


# ---------------------------------------------------------------------------- the HTML page


class Page(html.parser.HTMLParser):
    """What aggregate.html holds: the runs table's rows, every link and image, any script."""

    def __init__(self, text):
        super().__init__()
        self.rows, self.links, self.images, self.scripts, self.cells = [], [], [], 0, None
        self._table, self._cell = None, None
        self.feed(text)

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "table":
            self._table = attrs.get("class")
        elif tag == "tr" and self._table == "runs" and "data-status" in attrs:
            self.rows.append({"status": attrs["data-status"], "tone": attrs["class"], "cells": [], "links": []})
        elif tag == "td" and self._table == "runs" and self.rows:
            self._cell = []
        elif tag == "a":
            self.links.append(attrs["href"])
            if self._cell is not None:
                self.rows[-1]["links"].append(attrs["href"])
        elif tag == "img":
            self.images.append(attrs["src"])
        elif tag == "script":
            self.scripts += 1

    def handle_endtag(self, tag):
        if tag == "td" and self._cell is not None:
            self.rows[-1]["cells"].append("".join(self._cell))
            self._cell = None
        elif tag == "table":
            self._table = None

    def handle_data(self, data):
        if self._cell is not None:
            self._cell.append(data)


def read_page(out):
    return Page((out / "aggregate.html").read_text(encoding="utf-8"))


def test_html_page_lists_every_run_with_its_status_and_reason(aggregated):
    tree, summary = aggregated
    page = read_page(tree)
    assert {row["cells"][0]: row["status"] for row in page.rows} == EXPECTED  # completed, failed, half-written
    assert [row["cells"][0] for row in page.rows] == [r.run for r in summary.runs]
    rows = {row["cells"][0]: row for row in page.rows}
    assert {rows[name]["tone"] for name, status in EXPECTED.items() if status != "completed"} <= {"warn", "bad"}
    assert rows["sweep/labels-f0.3-s0"]["tone"] == "bad" and rows["sweep/labels-f0.1-s0"]["tone"] == "ok"
    for run in summary.runs:
        assert rows[run.run]["cells"][-1] == (run.reason or "")  # the whole reason, not shortened
    assert "not valid JSON (truncated or half-written?)" in rows["sweep/loss-f0.2-s9"]["cells"][-1]
    text = (tree / "aggregate.html").read_text(encoding="utf-8")
    assert "labels vs loss at the same factor" in text
    assert '<td class="num">+3.0</td><td class="num">0.095</td><td>paired</td>' in text
    assert "16 completed, 1 killed, 1 interrupted, 1 failed, 2 incomplete, 1 damaged" in text


def test_html_page_embeds_its_plots_and_fetches_nothing(aggregated):
    tree, _ = aggregated
    page = read_page(tree)
    assert page.scripts == 0
    embedded = [base64.b64decode(src.removeprefix("data:image/png;base64,")) for src in page.images]
    names = ["labels_vs_loss.png", "accuracy_vs_factor.png", "ece_vs_factor.png"]
    assert embedded == [(tree / name).read_bytes() for name in names]
    text = (tree / "aggregate.html").read_text(encoding="utf-8")
    for src in page.images:
        text = text.replace(src, "")  # base64 has slashes of its own
    assert "//" not in text and "@import" not in text and "url(" not in text  # no URL that leaves the volume


def test_html_links_each_run_plot_it_has_relative_to_the_page(aggregated):
    tree, summary = aggregated
    rows = {row["cells"][0]: row for row in read_page(tree).rows}
    for run in summary.runs:
        has = [name for name in RUN_PLOTS if (run.path / name).is_file()]
        assert rows[run.run]["links"] == [f"{run.run}/{name}" for name in has]
    assert len(rows["sweep/labels-f0.1-s0"]["links"]) == 3
    assert [link.rsplit("/", 1)[1] for link in rows["pilot/round-1/labels-f0.3-s1"]["links"]] == list(OLD_RUN_PLOTS)
    assert rows["sweep/labels-f0.3-s0"]["links"] == []  # failed: no plots to link


def test_html_links_from_an_out_directory_elsewhere(tree, tmp_path):
    (tree / "sweep/labels-f0.1-s1/training.png").unlink()
    out = tmp_path / "report" / "html"
    aggregate(tree, out=out)
    rows = {row["cells"][0]: row for row in read_page(out).rows}
    assert rows["sweep/labels-f0.1-s0"]["links"][0] == "../../results/sweep/labels-f0.1-s0/training.png"
    assert [link.rsplit("/", 1)[1] for link in rows["sweep/labels-f0.1-s1"]["links"]] == list(RUN_PLOTS[1:])
    links = [link for row in rows.values() for link in row["links"]]
    # 15 completed runs and 2 that broke after their reports were written have 3 plots each, the
    # pre-calibration run 2; one was deleted above.
    assert len(links) == 17 * 3 + 2 - 1 == len([p for p in tree.rglob("*.png") if p.name in RUN_PLOTS])
    assert all((out / unquote(link)).is_file() for link in links)


def test_html_escapes_run_names_and_reasons(tmp_path):
    done = write_run(tmp_path, "tmp", "labels", 0.1, 0)
    odd = done.rename(tmp_path / "odd #1 <script>x()")
    failed = write_run(tmp_path, "failed", "labels", 0.1, 1, status="failed", done=1)
    reason = '<script>alert("x")</script> & <b>bold</b>\nsecond line'
    edit_manifest(failed, reason=reason)
    aggregate(tmp_path)
    text = (tmp_path / "aggregate.html").read_text(encoding="utf-8")
    assert "<script" not in text.lower() and "<b>" not in text
    assert "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt; &amp; &lt;b&gt;bold&lt;/b&gt;\nsecond line" in text
    page = Page(text)
    rows = {row["cells"][0]: row for row in page.rows}
    assert page.scripts == 0 and rows["failed"]["cells"][-1] == reason
    links = rows["odd #1 <script>x()"]["links"]
    assert links[0] == "odd%20%231%20%3Cscript%3Ex%28%29/training.png"  # '#' must not start a fragment
    assert all((tmp_path / unquote(link)).is_file() for link in links) and len(links) == 3
    assert odd.is_dir()


def test_html_escapes_the_root_and_puts_each_runs_plots_under_its_header(tmp_path):
    root = tmp_path / "<i>r&d</i>"  # a results folder's name is user text too
    write_run(root, "labels-s0", "labels", 0.1, 0)
    aggregate(root)
    text = (root / "aggregate.html").read_text(encoding="utf-8")
    assert "<i>" not in text and "&lt;i&gt;r&amp;d&lt;/i&gt;" in text
    head = re.search(r'<table class="runs"><thead><tr>(.*?)</tr>', text)[1]
    headers = re.findall(r"<th>(.*?)</th>", head)
    (row,) = re.findall(r'<tr class="ok"[^>]*>(.*?)</tr>', text)
    cells = re.findall(r"<td[^>]*>(.*?)</td>", row)
    assert len(cells) == len(headers) and "training.png" in cells[headers.index("plots")]


# ---------------------------------------------------------------------------- errors


def test_empty_root_is_a_clear_bad_input_error(tmp_path):
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "readme.txt").write_text("not a run")
    with pytest.raises(NoRunsError, match="no lsjob runs under") as caught:
        aggregate(tmp_path)
    assert caught.value.exit_code == EXIT_BAD_INPUT == 2
    assert {p.name for p in tmp_path.rglob("*")} == {"notes", "readme.txt"}  # nothing written


def test_missing_root_and_unwritable_out(tmp_path):
    with pytest.raises(AggregateError, match="does not exist"):
        aggregate(tmp_path / "nope")
    write_run(tmp_path, "results/run", "labels", 0.1, 0)
    (tmp_path / "file").write_text("")
    for out in (tmp_path / "file", tmp_path / "file" / "out"):  # mkdir said only "File exists"
        with pytest.raises(AggregateError, match=f"into {out}: {tmp_path / 'file'} is a file, and the aggregate is"):
            aggregate(tmp_path / "results", out=out)
    assert (tmp_path / "file").read_text() == ""
    (tmp_path / "nothing").symlink_to(tmp_path / "gone")
    (tmp_path / "loop").symlink_to(tmp_path / "loop")  # resolve() raised RuntimeError: a traceback
    for name in ("nothing", "loop"):
        with pytest.raises(AggregateError, match=f"{tmp_path / name} is a link to nothing, and the aggregate is"):
            aggregate(tmp_path / "results", out=tmp_path / name)


def test_a_failed_aggregate_leaves_the_previous_one_whole(tmp_path, monkeypatch):
    write_run(tmp_path, "results/a", "labels", 0.1, 0)
    aggregate(tmp_path / "results", out=tmp_path / "out")
    before = {p.name: p.read_bytes() for p in (tmp_path / "out").iterdir()}
    write_run(tmp_path, "results/b", "loss", 0.1, 0)  # every file of the next aggregate differs

    def full_disk(*args, **kwargs):  # the page is written after the CSV and the plots
        raise OSError(28, "No space left on device", "aggregate.html")

    monkeypatch.setattr(job.aggregate, "write_page", full_disk)
    with pytest.raises(NoSpaceError, match=r"No space left on device; the files there are unchanged: free") as caught:
        aggregate(tmp_path / "results", out=tmp_path / "out")
    assert caught.value.exit_code == EXIT_NO_SPACE  # as for a run: not bad input, which is never retried
    assert {p.name: p.read_bytes() for p in (tmp_path / "out").iterdir()} == before  # no staging folder either

    def failing_storage(*args, **kwargs):
        raise OSError(5, "Input/output error", "aggregate.html")

    monkeypatch.setattr(job.aggregate, "write_page", failing_storage)
    with pytest.raises(StorageError, match="the storage failed") as caught:
        aggregate(tmp_path / "results", out=tmp_path / "out")
    assert caught.value.exit_code == EXIT_INTERNAL
    assert {p.name: p.read_bytes() for p in (tmp_path / "out").iterdir()} == before


def test_a_second_aggregate_into_one_folder_waits_for_the_first(tmp_path, caplog):
    # Two aggregates writing at once would interleave their renames: a CSV of one and a page of the
    # other. A folder's flock (the one the first holds while writing) makes the second wait, saying so.
    caplog.set_level("WARNING", logger="lsjob")
    write_run(tmp_path, "a", "labels", 0.1, 0)
    folder = os.open(tmp_path, os.O_RDONLY | os.O_DIRECTORY)
    fcntl.flock(folder, fcntl.LOCK_EX)
    second = threading.Thread(target=aggregate, args=(tmp_path,))
    try:
        second.start()
        second.join(10)  # an unlocked aggregate of one run is written in a second or two
        assert second.is_alive() and not (tmp_path / "aggregate.csv").exists()
        assert f"another lsjob aggregate is writing into {tmp_path}; waiting" in caplog.text
    finally:
        os.close(folder)
    second.join()
    assert (tmp_path / "aggregate.html").is_file() and not list(tmp_path.glob(".staging.*"))


def test_the_set_goes_in_place_while_the_folder_is_locked(tmp_path, monkeypatch):
    # A lock let go before the renames would leave two aggregates' renames free to interleave.
    write_run(tmp_path, "a", "labels", 0.1, 0)
    real_replace, renamed = os.replace, []

    def replace_while_locked(src, dst):
        probe = os.open(tmp_path, os.O_RDONLY | os.O_DIRECTORY)
        try:
            with pytest.raises(BlockingIOError):
                fcntl.flock(probe, fcntl.LOCK_EX | fcntl.LOCK_NB)
        finally:
            os.close(probe)
        renamed.append(Path(dst).name)
        return real_replace(src, dst)

    monkeypatch.setattr("job.atomic.os.replace", replace_while_locked)
    aggregate(tmp_path)
    assert {"aggregate.csv", "aggregate.html"} <= set(renamed)


def test_a_folder_that_cannot_be_locked_is_written_unlocked(tmp_path, monkeypatch):
    # NFS mounted nolock, say: flock fails with ENOLCK, and the aggregate is written all the same.
    write_run(tmp_path, "a", "labels", 0.1, 0)

    def no_locks(fd, operation):
        raise OSError(errno.ENOLCK, "No locks available")

    monkeypatch.setattr(fcntl, "flock", no_locks)
    aggregate(tmp_path)
    assert (tmp_path / "aggregate.html").is_file()


KILLED_WRITING_THE_PAGE = """
import os, signal, sys
import job.aggregate
job.aggregate.write_page = lambda *args, **kwargs: os.kill(os.getpid(), signal.SIGKILL)
job.aggregate.aggregate(sys.argv[1])
"""


def test_what_a_killed_aggregate_left_is_cleared_by_a_later_one_once_old(tmp_path):
    write_run(tmp_path, "a", "labels", 0.1, 0)
    for _ in range(2):
        proc = subprocess.run([sys.executable, "-c", KILLED_WRITING_THE_PAGE, str(tmp_path)], cwd=ROOT)
        assert proc.returncode == -9
    old, new = sorted(tmp_path.glob(".staging.*.tmp"), key=lambda p: p.stat().st_mtime)
    assert (old / "aggregate.csv").is_file()  # the set it had written so far
    hour_ago = old.stat().st_mtime - 3601
    os.utime(old, (hour_ago, hour_ago))
    others = tmp_path / ".settings.json.download.tmp"  # another tool's, named as mkstemp names them
    others.write_text("")
    os.utime(others, (hour_ago, hour_ago))
    aggregate(tmp_path)
    # One that may be writing now is left be, and so are other tools' files.
    assert sorted(p.name for p in tmp_path.glob(".*")) == sorted([new.name, others.name])
    assert (tmp_path / "aggregate.html").is_file()


def test_another_aggregates_staging_folder_is_not_searched(tmp_path, monkeypatch):
    # A second `lsjob aggregate` of the same root writes its set in a staging folder there,
    # and deletes it while this one may be listing it.
    write_run(tmp_path, "a", "labels", 0.1, 0)
    staging = tmp_path / ".staging.x1y2z3q4.tmp"
    staging.mkdir()
    listed = []
    real_find = job.rundir.find_runs
    monkeypatch.setattr(job.rundir, "find_runs", lambda d, *a: listed.append(d.name) or real_find(d, *a))
    runs, warnings = collect(tmp_path)
    assert [r.run for r in runs] == ["a"] and warnings == [] and staging.name not in listed


def test_a_folder_of_links_to_chosen_runs_compares_them_and_counts_each_once(tmp_path):
    a = write_run(tmp_path, "results/labels-f0.1-s0", "labels", 0.1, 0)
    b = write_run(tmp_path, "results/loss-f0.1-s0", "loss", 0.1, 0)
    chosen = tmp_path / "chosen"
    chosen.mkdir()
    (chosen / "a").symlink_to(a)
    (chosen / "b").symlink_to(b)
    (chosen / "again").symlink_to(chosen)  # a loop
    summary = aggregate(chosen)
    assert [(r.run, r.status) for r in summary.runs] == [("a", "completed"), ("b", "completed")]
    assert summary.warnings == [] and (chosen / "aggregate.csv").is_file()
    (tmp_path / "results" / "also-a").symlink_to(a)  # a link to a run in the tree: not a second run
    assert [r.run for r in collect(tmp_path / "results")[0]] == ["labels-f0.1-s0", "loss-f0.1-s0"]
    (tmp_path / "aa-links").mkdir()  # listed before the real folder, and still not the name shown
    (tmp_path / "aa-links" / "a").symlink_to(a)
    assert "results/labels-f0.1-s0" in [r.run for r in collect(tmp_path)[0]]
    assert "aa-links/a" not in [r.run for r in collect(tmp_path)[0]]


def test_a_folder_that_keeps_a_spec_beside_its_runs_is_not_a_run(tmp_path):
    write_run(tmp_path, "sweep/labels-f0.1-s0", "labels", 0.1, 0)
    write_text(tmp_path / "sweep" / "spec.yaml", "train:\n  epochs: 3\n")
    assert [r.run for r in collect(tmp_path)[0]] == ["sweep/labels-f0.1-s0"]


def test_a_folder_with_another_tools_lock_is_not_a_run(tmp_path):
    write_run(tmp_path, "runs/a", "labels", 0.1, 0)
    (tmp_path / "pytest-of-me" / "pytest-3").mkdir(parents=True)
    (tmp_path / "pytest-of-me" / "pytest-3" / ".lock").write_text("")  # pytest keeps one, empty
    assert [r.run for r in collect(tmp_path)[0]] == ["runs/a"]


@pytest.mark.parametrize("row", [",,,,,,,", "2,2.3,0.5"])
def test_a_history_report_cannot_read_is_not_counted_as_whole_epochs(tmp_path, row):
    # aggregate and `lsjob report` read history.csv with one reader: a row report refuses
    # is not an epoch here either (a row of empty fields used to be skipped and the run called done).
    run_dir = write_run(tmp_path, "a", "labels", 0.1, 0)
    with open(run_dir / "history.csv", "a") as f:
        f.write(row + "\n")
    (run,) = collect(tmp_path)[0]
    assert run.status != "completed" and "history.csv is unreadable" in run.reason


# ---------------------------------------------------------------------------- staying in step


def test_module_does_not_import_the_training_stack():
    code = "import job.aggregate, sys; assert 'keras' not in sys.modules and 'tensorflow' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True)


def test_csv_lines_parse_with_embedded_newlines_and_commas(tmp_path):
    run_dir = write_run(tmp_path, "run", "labels", 0.1, 0, status="failed", done=1)
    edit_manifest(run_dir, reason='ValueError: bad, "quoted"\nsecond line | pipe')
    aggregate(tmp_path)
    row = next(csv.DictReader(io.StringIO((tmp_path / "aggregate.csv").read_text(encoding="utf-8"))))
    assert row["reason"] == 'ValueError: bad, "quoted"\nsecond line | pipe'
    lines = (tmp_path / "aggregate.md").read_text(encoding="utf-8").splitlines()
    md_row = next(line for line in lines if line.startswith("| run | labels"))
    assert "second line \\| pipe" in md_row


def test_one_shared_seed_a_side_is_not_a_paired_test(tmp_path):
    # One seed each, the same one: no spread to weigh the difference against; not "paired" with
    # an SE of 0 and "no spread", as if the two runs had agreed seed for seed.
    write_run(tmp_path, "labels-s0", "labels", 0.1, 0, correct=85)
    write_run(tmp_path, "loss-s0", "loss", 0.1, 0, correct=80)
    summary = aggregate(tmp_path)
    acc = next(d for d in summary.comparisons if d.metric == "test_accuracy")
    assert (acc.pairs, acc.test, acc.se, acc.ratio, acc.p_value, acc.interval) == (None, None, None, None, None, None)
    assert "| 0.1 | test acc (%) | 85.00 ± – (1) | 80.00 ± – (1) | +5.00 | – | – | – | – |" in summary.markdown
    assert "No spread" not in summary.markdown


def test_two_shared_seeds_are_paired(tmp_path):
    # The notes promise "12.7 SE with 2 paired seeds": two seeds a side, the same two, pair.
    for seed, (labels, loss) in enumerate([(80, 78), (84, 81)]):
        write_run(tmp_path, f"labels-s{seed}", "labels", 0.1, seed, correct=labels)
        write_run(tmp_path, f"loss-s{seed}", "loss", 0.1, seed, correct=loss)
    acc = next(d for d in aggregate(tmp_path).comparisons if d.metric == "test_accuracy")
    assert acc.test == "paired" and np.allclose(acc.pairs, [(0.80, 0.78), (0.84, 0.81)])
    assert acc.p_value == pytest.approx(scipy.stats.ttest_rel([80, 84], [78, 81]).pvalue)


def test_a_seed_run_twice_on_the_other_side_is_not_paired_either(tmp_path):
    # loss has seed 1 twice: pairing would take one of its two runs and drop the other, while
    # loss's mean counts both. Welch's, over all five runs.
    for name, method, seed, correct in [("a", "labels", 0, 80), ("b", "labels", 1, 84), ("c", "loss", 0, 79),
                                        ("d", "loss", 1, 82), ("e", "loss", 1, 86)]:  # fmt: skip
        write_run(tmp_path, name, method, 0.1, seed, correct=correct)
    acc = next(d for d in aggregate(tmp_path).comparisons if d.metric == "test_accuracy")
    assert (acc.test, acc.pairs) == ("Welch", None)
    assert acc.p_value == pytest.approx(scipy.stats.ttest_ind([80, 84], [79, 82, 86], equal_var=False).pvalue)


def test_each_smoothed_group_is_compared_with_the_baseline_of_its_own_settings(tmp_path):
    # Two learning rates, a baseline at each, far apart: labels at lr 0.05 minus none at lr 0.05,
    # never minus the baseline of lr 0.005.
    for lr, none, labels in ((0.005, 70, 80), (0.05, 30, 40)):
        for seed in (0, 1):
            write_run(tmp_path, f"none-s{seed}-lr{lr}", "none", 0.0, seed, correct=none + seed,
                      overrides=[f"train.lr={lr}"])  # fmt: skip
            write_run(tmp_path, f"labels-s{seed}-lr{lr}", "labels", 0.1, seed, correct=labels + 2 * seed,
                      overrides=[f"train.lr={lr}"])  # fmt: skip
    found = {d.varied: d for d in aggregate(tmp_path).baseline_comparisons if d.metric == "test_accuracy"}
    assert set(found) == {(("train.lr", "0.005"),), (("train.lr", "0.05"),)}
    for varied, none_mean, labels_mean in (
        ((("train.lr", "0.005"),), 0.705, 0.81),
        ((("train.lr", "0.05"),), 0.305, 0.41),
    ):
        d = found[varied]
        assert (d.a.mean, d.b.mean, d.value) == pytest.approx((labels_mean, none_mean, 0.105)), varied


def test_differences_a_single_test_image_apart_still_have_spread(tmp_path):
    # The margin that calls differences "all one number" is for float rounding: differences that
    # differ by 1e-4 (an image in CIFAR-10's 10000) are seed noise to weigh, not "no spread".
    for seed, (labels, loss) in enumerate([(0.05, 0.0510), (0.06, 0.0611), (0.07, 0.0710)]):
        for method, ece in (("labels", labels), ("loss", loss)):
            run = write_run(tmp_path, f"{method}-s{seed}", method, 0.1, seed, correct=80 + seed)
            metrics = json.loads((run / "metrics.json").read_text())
            write_json(run / "metrics.json", {**metrics, "test_ece": ece})
    ece = next(d for d in aggregate(tmp_path).comparisons if d.metric == "test_ece")
    assert ece.test == "paired" and ece.se == pytest.approx(np.std([0.0010, 0.0011, 0.0010], ddof=1) / np.sqrt(3))
    assert ece.p_value == pytest.approx(scipy.stats.ttest_rel([0.05, 0.06, 0.07], [0.0510, 0.0611, 0.0710]).pvalue)
    assert ece.interval is not None


def test_a_failed_attempt_beside_a_completed_run_of_its_seed_is_no_repeat(tmp_path):
    # A seed that failed in one folder and was run again, to completion, in another: one run in the
    # mean, so no "completed 2 times" warning (naming the failed folder as if it had completed).
    write_run(tmp_path, "first/labels-s0", "labels", 0.1, 0, status="failed", done=1)
    write_run(tmp_path, "again/labels-s0", "labels", 0.1, 0)
    write_run(tmp_path, "again/labels-s1", "labels", 0.1, 1)
    summary = aggregate(tmp_path)
    assert summary.warnings == []
    assert [(g.completed, g.not_completed) for g in summary.groups] == [(2, 1)]


def test_a_statistic_over_one_run_fewer_than_completed_says_so(tmp_path):
    # Three completed runs, one from before calibration: the ECE mean is over two of them.
    write_run(tmp_path, "labels-s0", "labels", 0.1, 0, correct=80)
    write_run(tmp_path, "labels-s1", "labels", 0.1, 1, correct=84)
    write_run(tmp_path, "labels-s2", "labels", 0.1, 2, correct=86, calibrated=False)
    lines = aggregate(tmp_path).markdown.splitlines()
    group = next(line for line in lines if line.startswith("| labels | 0.1 |"))
    assert f"| {(expected_ece(80) + expected_ece(84)) / 2:.4f} ± " in group and " (n=2) |" in group
    assert group.count("(n=") == 2  # ECE and Brier; accuracy and NLL are over all three


def _cells(line):
    """A Markdown table row's cells (an escaped \\| is inside one)."""
    return re.split(r"(?<!\\)\|", line)[1:-1]


def test_every_table_row_has_the_headers_cells_in_the_markdown_and_the_page(tmp_path):
    # A settings column in every table; an alignment list one short broke the Markdown table
    # (its rule row shorter than its header) and cut the page's last column.
    for lr in (0.005, 0.05):
        for method in ("labels", "loss", "none"):
            for seed in (0, 1):
                write_run(tmp_path, f"{method}-s{seed}-lr{lr}", method, 0.0 if method == "none" else 0.1, seed,
                          correct=80 + seed + (method == "labels"), overrides=[f"train.lr={lr}"])  # fmt: skip
    summary = aggregate(tmp_path)
    blocks, block = [], []
    for line in summary.markdown.splitlines() + [""]:
        if line.startswith("|"):
            block.append(line)
        elif block:
            blocks.append(block)
            block = []
    assert len(blocks) == 4  # groups, labels vs loss, vs none, runs
    for block in blocks:
        assert {len(_cells(line)) for line in block} == {len(_cells(block[0]))}, block[0]
    page = (tmp_path / "aggregate.html").read_text()
    for table in re.findall(r"<table.*?</table>", page, flags=re.S):
        heads = len(re.findall(r"<th\b", table))
        for row in re.findall(r"<tr>(?:(?!</tr>).)*<td.*?</tr>", table, flags=re.S):
            assert len(re.findall(r"<td\b", row)) == heads, row[:200]


def test_the_csv_leaves_a_setting_it_cannot_know_empty(tmp_path):
    # "empty for unknown": a run without its spec.yaml has no train.lr to give; not "?" in a numeric column.
    write_run(tmp_path, "a", "labels", 0.1, 0)
    write_run(tmp_path, "b", "labels", 0.1, 1, overrides=["train.lr=0.01"])
    c = write_run(tmp_path, "c", "labels", 0.1, 2)
    (c / "spec.yaml").unlink()
    aggregate(tmp_path)
    rows = {r["run"]: r for r in csv.DictReader(io.StringIO((tmp_path / "aggregate.csv").read_text()))}
    assert (rows["a"]["train.lr"], rows["b"]["train.lr"], rows["c"]["train.lr"]) == ("0.005", "0.01", "")


def test_csv_cells_led_by_a_tab_stay_text(tmp_path):
    # OWASP's list, which FORMULA_START follows: a spreadsheet may also run "\t=...".
    failed = write_run(tmp_path, "a", "labels", 0.1, 1, status="failed", done=1)
    edit_manifest(failed, reason="\t=cmd|' /C calc'!A0")
    aggregate(tmp_path)
    with open(tmp_path / "aggregate.csv", newline="", encoding="utf-8") as f:
        (row,) = csv.DictReader(f)
    assert row["reason"] == "'\t=cmd|' /C calc'!A0"


def test_a_carriage_return_in_a_cell_keeps_the_csv_row_whole(tmp_path):
    # Keras's progress bar and Windows line ends put "\r" in messages: csv.writer before Python
    # 3.13 quotes a field only for the characters of its lineterminator (it was "\n"), so "\r"
    # went out bare and every CSV reader ended the row there.
    failed = write_run(tmp_path, "a", "labels", 0.1, 1, status="failed", done=1)
    edit_manifest(failed, reason="epoch 1/3\rloss became nan")
    aggregate(tmp_path)
    with open(tmp_path / "aggregate.csv", newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    assert [row["reason"] for row in rows] == ["epoch 1/3\rloss became nan"]


def test_the_json_says_which_side_is_which_and_every_count(tmp_path):
    # labels has seeds 0 and 1, one more that failed; none has seeds 0, 1 and 2; lr varies (a none
    # run at 0.05), so the groups have a train.lr setting, a number in the JSON.
    for seed, correct in enumerate((80, 84)):
        write_run(tmp_path, f"labels-s{seed}", "labels", 0.1, seed, correct=correct)
    write_run(tmp_path, "labels-s2", "labels", 0.1, 2, status="failed", done=1)
    for seed, correct in enumerate((70, 71, 75)):
        write_run(tmp_path, f"none-s{seed}", "none", 0.0, seed, correct=correct)
    write_run(tmp_path, "none-s0-lr", "none", 0.0, 0, overrides=["train.lr=0.05"])
    summary = aggregate(tmp_path)
    data = json.loads((tmp_path / "aggregate.json").read_text())
    labels = next(g for g in data["groups"] if g["method"] == "labels")
    assert (labels["completed"], labels["not_completed"]) == (2, 1)
    assert labels["settings"] == {"train.lr": 0.005}
    (d,) = [d for d in data["vs_baseline"] if d["metric"] == "test_accuracy"]
    assert d["method_stats"]["mean"] == pytest.approx(0.82) and d["other_stats"]["mean"] == pytest.approx(0.72)
    assert (d["method_stats"]["n"], d["other_stats"]["n"]) == (2, 3)
    assert d["seeds"] == {"method": [0, 1], "other": [0, 1, 2]}
    assert d["test"] == "Welch" and d["difference_over_se"] == pytest.approx(d["difference"] / d["se"])
    (same,) = [x for x in summary.baseline_comparisons if x.metric == "test_accuracy"]
    assert d["difference_over_se"] == pytest.approx(same.ratio)


def test_a_required_metric_keeps_its_column_when_no_run_has_it_yet(tmp_path):
    write_run(tmp_path, "a", "labels", 0.1, 1, status="failed", done=1)
    lines = aggregate(tmp_path).markdown.splitlines()
    header = next(line for line in lines if line.startswith("| run |"))
    assert "| test acc (%) |" in header and "| val NLL |" in header


def test_a_sweep_of_more_than_eight_factors_stacks_the_comparison_panels(tmp_path, figures):
    # Side by side, three panels of 10 bars each made a figure 36 in wide that the page shrank to
    # an unreadable size: past 8 bars the panels go one under another.
    for i in range(1, 11):
        for method in ("labels", "loss"):
            write_run(tmp_path, f"{method}-f{i}", method, round(0.05 * i, 3), 0, correct=70 + i + (method == "loss"))
    aggregate(tmp_path)
    fig = figures["labels_vs_loss.png"]
    assert len({round(ax.get_position().x0, 3) for ax in fig.axes}) == 1  # one column
    assert len({round(ax.get_position().y0, 3) for ax in fig.axes}) == 3


# A run with spec.yaml but no manifest yet has no backend to know: "?", not "(absent)".
def test_a_run_that_stopped_while_starting_has_an_unknown_backend_not_an_absent_one(tmp_path):
    write_run(tmp_path, "a", "labels", 0.1, 0)
    set_manifest(write_run(tmp_path, "b", "labels", 0.1, 1), backend="jax")
    _starting(tmp_path, "c", 2)
    runs = {r.run: r for r in collect(tmp_path)[0]}
    assert dict(runs["c"].varied)["backend"] == "?"  # no manifest: it never said which backend it ran on
    lines = aggregate(tmp_path).markdown.splitlines()
    assert next(line for line in lines if line.startswith("| c |")).startswith("| c | labels | 0.1 | 2 | ? |")


# A run whose spec.yaml was read but has no such field lacks it ("(absent)");
# only a run without a readable spec.yaml is unknown ("?").
def test_a_setting_a_read_spec_leaves_out_is_absent_and_one_without_a_spec_unknown(tmp_path):
    for seed, holdout in ((0, 1000), (1, 5000)):
        write_run(tmp_path, f"s{seed}", "labels", 0.1, seed,
                  overrides=["eval.temperature_scaling=true", f"eval.holdout_size={holdout}"])  # fmt: skip
    write_run(tmp_path, "plain", "labels", 0.1, 2)  # no temperature scaling: holds nothing out
    (write_run(tmp_path, "nospec", "labels", 0.1, 3) / "spec.yaml").unlink()
    varied = {r.run: dict(r.varied) for r in collect(tmp_path)[0]}
    assert varied["plain"]["eval.holdout_size"] == "(absent)"
    assert varied["nospec"]["eval.holdout_size"] == "?"


# The reason says when a run that stopped while starting has no spec.yaml either.
def test_a_run_that_stopped_while_starting_says_whether_it_has_its_spec(tmp_path):
    claimed = RunDir(tmp_path / "bare")
    claimed.claim()  # killed right after taking its lock: nothing but .lock
    claimed.release()
    set_lock_pid(claimed.path, dead_pid())  # its process is gone
    _starting(tmp_path, "with-spec", 1)
    reasons = {r.run: r.reason for r in collect(tmp_path)[0]}
    assert reasons["bare"] == "no manifest.json: the run stopped while starting (and has no readable spec.yaml)"
    assert reasons["with-spec"] == "no manifest.json: the run stopped while starting"


# A damaged manifest still shows how far the run got, from history.csv.
def test_a_run_with_a_damaged_manifest_still_shows_its_epochs_done(tmp_path):
    run_dir = write_run(tmp_path, "run", "labels", 0.1, 0, status="failed", done=2)
    (run_dir / "manifest.json").write_text("")
    (run,) = collect(tmp_path)[0]
    assert (run.status, run.epochs_done) == ("damaged", 2)


# A reason that is not text is no reason, not a crash of the tables.
def test_a_manifest_reason_that_is_not_text_is_left_out(tmp_path):
    failed = write_run(tmp_path, "run", "labels", 0.1, 0, status="failed", done=1)
    edit_manifest(failed, reason={"error": "nan"})
    summary = aggregate(tmp_path)
    assert [(r.status, r.reason) for r in summary.runs] == [("failed", None)]


# A manifest of whitespace only is empty, as an empty one is.
def test_a_manifest_of_only_whitespace_is_empty(tmp_path):
    run_dir = write_run(tmp_path, "run", "labels", 0.1, 1)
    (run_dir / "manifest.json").write_text("\n  \n")
    (run,) = collect(tmp_path)[0]
    assert run.status == "damaged" and "is empty" in run.reason


# More epochs done than the run was to train is no completed run either.
def test_a_manifest_with_more_epochs_done_than_planned_is_not_completed(tmp_path):
    write_run(tmp_path, "run", "labels", 0.1, 0, done=EPOCHS + 1)  # history.csv agrees: 4 rows
    (run,) = collect(tmp_path)[0]
    assert run.status == "incomplete" and f"{EPOCHS + 1} of {EPOCHS} epochs" in run.reason


# A history.csv with more epochs than the manifest says is a disagreement too.
def test_a_history_longer_than_the_manifests_epochs_done_is_not_completed(tmp_path):
    run_dir = write_run(tmp_path, "run", "labels", 0.1, 0)
    (run_dir / "history.csv").write_text(history_csv(EPOCHS + 1))
    (run,) = collect(tmp_path)[0]
    assert run.status == "incomplete"
    assert f"history.csv has {EPOCHS + 1} epochs, the manifest says {EPOCHS}" in run.reason


# A baseline run that stopped while starting sits at factor 0, as run.py records
# the baseline: an unfinished member of the baseline's group, not a group of its own at its spec's factor.
def test_a_baseline_run_that_stopped_while_starting_is_in_the_baselines_group(tmp_path):
    write_run(tmp_path, "none-s0", "none", 0.0, 0)
    _starting(tmp_path, "none-s1", 1, "smoothing.method=none")  # its spec keeps factor 0.1, which none ignores
    summary = aggregate(tmp_path)
    assert [(g.method, g.factor, g.completed, g.not_completed) for g in summary.groups] == [("none", 0.0, 1, 1)]


# A spec that no longer validates and says nothing of precision ran at the default, off.
def test_a_spec_without_runtime_that_no_longer_validates_ran_at_the_default_precision(tmp_path):
    for seed in (1, 2):
        run = write_run(tmp_path, f"labels-s{seed}", "labels", 0.1, seed)
        spec = yaml.safe_load((run / "spec.yaml").read_text())
        spec["train"]["renamed_since"] = 1
        if seed == 2:
            del spec["runtime"]  # from before runtime settings existed
        (run / "spec.yaml").write_text(yaml.safe_dump(spec))
    summary = aggregate(tmp_path)
    assert [(g.completed, g.varied) for g in summary.groups] == [(2, ())] and summary.warnings == []


# Setting values in order: numbers, then text, then other JSON, then absent or unknown.
def test_setting_values_order_numbers_then_text_then_the_rest():
    values = ["(absent)", "true", '"bf16"', "10", "null", "0.05", "?"]
    assert sorted(values, key=value_order) == ["0.05", "10", '"bf16"', "null", "true", "(absent)", "?"]


# Runs whose setting is unknown come after the known values, in the runs and the groups.
def test_runs_of_unknown_settings_sort_after_the_known_ones(tmp_path):
    (write_run(tmp_path, "0-nospec", "labels", 0.1, 2) / "spec.yaml").unlink()
    write_run(tmp_path, "a", "labels", 0.1, 0)
    write_run(tmp_path, "b", "labels", 0.1, 1, overrides=["train.lr=0.01"])
    summary = aggregate(tmp_path)
    assert [r.run for r in summary.runs] == ["a", "b", "0-nospec"]
    assert [dict(g.varied)["train.lr"] for g in summary.groups] == ["0.005", "0.01", "?"]


# JSON true is not the number 1: a manifest with seed true is of an unknown shape.
def test_a_manifest_with_a_boolean_for_a_number_is_damaged(tmp_path):
    edit_manifest(write_run(tmp_path, "run", "labels", 0.1, 1), seed=True)
    (run,) = collect(tmp_path)[0]
    assert run.status == "damaged" and "'seed' is True, not int" in run.reason


# Python's json reads NaN, Infinity and 1e400 (no run writes them): one such run is listed as
# damaged, and the rest of the sweep is aggregated, where the table and plots raised.
@pytest.mark.parametrize(
    ("key", "text", "shown"),
    [("duration_s", "NaN", "nan"), ("duration_s", "Infinity", "inf"), ("duration_s", "-5", "-5"),
     ("factor", "-Infinity", "-inf"), ("factor", "1e400", "inf"),
     ("factor", "1" + "0" * 400, "10000000000000000000...")],
)  # fmt: skip
def test_a_manifest_number_that_is_not_finite_makes_its_run_damaged_not_the_aggregate_fail(tmp_path, key, text, shown):
    write_run(tmp_path, "good", "labels", 0.1, 1)
    run = write_run(tmp_path, "bad", "labels", 0.1, 2)
    manifest = json.loads((run / "manifest.json").read_text())
    (run / "manifest.json").write_text(json.dumps({**manifest, key: "X"}).replace('"X"', text))
    summary = aggregate(tmp_path)
    bad = by_run(summary.runs)["bad"]
    assert bad.status == "damaged" and f"{key!r} is {shown}" in bad.reason and "not a finite number" in bad.reason
    assert by_run(summary.runs)["good"].status == "completed"


# An optional metric that is not finite is left out, not averaged as NaN.
def test_an_optional_metric_that_is_not_finite_is_left_out(tmp_path):
    for seed in (0, 1):
        run = write_run(tmp_path, f"s{seed}", "labels", 0.1, seed, correct=80 + seed)
    text = (run / "metrics.json").read_text()
    metrics = json.loads(text)
    (run / "metrics.json").write_text(text.replace(json.dumps(metrics["test_ece"]), "NaN", 1))
    summary = aggregate(tmp_path)
    assert [r.status for r in summary.runs] == ["completed", "completed"]
    assert "test_ece" not in summary.runs[1].metrics
    ece = summary.groups[0].stats["test_ece"]
    assert ece.n == 1 and ece.mean == pytest.approx(expected_ece(80))


# Metrics.json and the manifest must agree to the last bits, not to a percent.
def test_a_manifest_a_tenth_of_a_point_off_metrics_json_is_not_completed(tmp_path):
    edit_manifest(write_run(tmp_path, "run", "labels", 0.1, 0, correct=80), test_accuracy=0.801)
    (run,) = collect(tmp_path)[0]
    assert run.status == "incomplete" and "the manifest 0.801" in run.reason


# Epochs_done must be a whole number of epochs.
def test_a_manifest_with_a_fractional_type_of_epochs_done_is_not_completed(tmp_path):
    edit_manifest(write_run(tmp_path, "run", "labels", 0.1, 0), epochs_done=float(EPOCHS))
    (run,) = collect(tmp_path)[0]
    assert run.status == "incomplete" and "no epochs_done" in run.reason


# A loss group whose labels partner completed only at other settings is named too.
def test_a_loss_group_left_out_of_labels_vs_loss_for_its_settings_is_named(tmp_path):
    for method, lr in [("labels", 0.005), ("loss", 0.005), ("loss", 0.01)]:
        write_run(tmp_path, f"{method}-lr{lr}", method, 0.1, 1, overrides=[f"train.lr={lr}"])
    left_out = [w.split(":")[0] for w in aggregate(tmp_path).warnings if "leaves out" in w]
    assert left_out == ["labels vs loss leaves out loss at factor 0.1, train.lr=0.01"]


# A settings warning lists each setting's values in order, whatever the runs' order.
def test_a_settings_warning_lists_every_settings_values_in_order(tmp_path):
    write_run(tmp_path, "a", "labels", 0.1, 0, overrides=["train.lr=0.005", "train.batch_size=256"])
    write_run(tmp_path, "b", "labels", 0.1, 1, overrides=["train.lr=0.01", "train.batch_size=128"])
    warnings = comparison_warnings(collect(tmp_path)[0])
    assert any(w.startswith("completed runs differ in train.batch_size: 128 (1 run), 256 (1 run);") for w in warnings)
    assert any(w.startswith("completed runs differ in train.lr: 0.005 (1 run), 0.01 (1 run);") for w in warnings)


# A difference of exactly 0 has no sign; only a positive one gets "+".
def test_a_zero_difference_reads_without_a_sign(tmp_path):
    for method in ("labels", "loss"):
        for seed in (0, 1):
            write_run(tmp_path, f"{method}-s{seed}", method, 0.1, seed, correct=80 + 2 * seed)
    markdown = aggregate(tmp_path).markdown
    row = "| 0.1 | test acc (%) | 81.00 ± 1.41 (2) | 81.00 ± 1.41 (2) | 0.00 | 0.00 | no spread | – | paired |"
    assert row in markdown


# In aggregate.json a setting a group cannot know is null, not the tables' "?".
def test_the_json_gives_a_setting_it_cannot_know_as_null(tmp_path):
    write_run(tmp_path, "a", "labels", 0.1, 0)
    write_run(tmp_path, "b", "labels", 0.1, 1, overrides=["train.lr=0.01"])
    (write_run(tmp_path, "c", "labels", 0.1, 2) / "spec.yaml").unlink()
    aggregate(tmp_path)
    data = json.loads((tmp_path / "aggregate.json").read_text())
    assert [g["settings"] for g in data["groups"]] == [{"train.lr": 0.005}, {"train.lr": 0.01}, {"train.lr": None}]


# The Markdown right-aligns number columns (its rule row), the text ones not.
def test_markdown_tables_right_align_their_number_columns(aggregated):
    lines = aggregated[1].markdown.splitlines()
    groups = lines.index("## Completed runs by method and factor") + 2
    assert lines[groups + 1] == "| --- | ---: | ---: | ---: |" + " ---: |" * 8
    runs = lines.index("## Runs") + 2
    assert lines[runs + 1].startswith("| --- | --- | ---: | ---: | --- | ---: |")


# The Markdown shortens a long reason to 160 characters,
# ending in "…"; one of 160 stays whole; the CSV keeps it whole.
@pytest.mark.parametrize("length, shown", [(160, None), (161, 159), (400, 159)])
def test_a_long_reason_is_shortened_in_the_markdown_only(tmp_path, length, shown):
    reason = ("x" * 9 + " ") * 40
    reason = reason[: length - 1] + "!"
    edit_manifest(write_run(tmp_path, "run", "labels", 0.1, 0, status="failed", done=1), reason=reason)
    summary = aggregate(tmp_path)
    row = next(line for line in summary.markdown.splitlines() if line.startswith("| run |") and "failed" in line)
    cell = row.rstrip(" |").rsplit(" | ", 1)[1]
    assert cell == (reason if shown is None else reason[:shown] + "…") and len(cell) <= 160
    csv_row = next(csv.DictReader(io.StringIO((tmp_path / "aggregate.csv").read_text())))
    assert csv_row["reason"] == reason


# The tally and the status legend go in STATUSES' order, and the
# legend names only the statuses present.
def test_the_tally_and_the_status_legend_follow_the_statuses_order(aggregated):
    markdown = aggregated[1].markdown
    assert "\n22 runs: 16 completed, 1 killed, 1 interrupted, 1 failed, 2 incomplete, 1 damaged.\n" in markdown
    legend = next(line for line in markdown.splitlines() if line.startswith("Status: "))
    assert re.findall(r"`(\w+)`: ", legend) == [
        "completed", "killed", "interrupted", "failed", "incomplete", "damaged"
    ]  # fmt: skip


# The baseline's factor is ignored, so its group row shows "–", not 0.
def test_the_baselines_group_row_shows_no_factor(aggregated):
    lines = aggregated[1].markdown.splitlines()
    assert any(line.startswith("| none | – | 3 | 0 |") for line in lines)
    assert not any(line.startswith("| none | 0 |") for line in lines)


# A duration reads h:mm:ss, rounded to the second.
@pytest.mark.parametrize("seconds, shown", [(3725.7, "1:02:06"), (59.6, "0:01:00"), (125, "0:02:05")])
def test_a_duration_reads_hours_minutes_seconds(tmp_path, seconds, shown):
    edit_manifest(write_run(tmp_path, "run", "labels", 0.1, 0), duration_s=seconds)
    row = next(line for line in aggregate(tmp_path).markdown.splitlines() if line.startswith("| run | labels"))
    assert f"| 3/3 | {shown} | 1 |" in row


# A group's text setting reads as a reader writes it in the warnings: backend=jax.
def test_a_warning_names_a_groups_text_setting_without_quotes(tmp_path):
    for seed in (0, 1):
        write_run(tmp_path, f"none-s{seed}", "none", 0.0, seed)
        set_manifest(write_run(tmp_path, f"labels-s{seed}", "labels", 0.1, seed), backend="jax")
    warnings = aggregate(tmp_path).warnings
    assert any(w.startswith("Smoothing vs none leaves out labels at factor 0.1, backend=jax: ") for w in warnings)


# A field an older run's spec.yaml did not write counts as its default even where
# newer runs differ in it: the old run joins the group of the default, not a group "(absent)" of its own.
def test_a_field_an_older_run_did_not_write_joins_the_group_of_its_default(tmp_path):
    old = write_run(tmp_path, "old", "labels", 0.1, 0)
    write_run(tmp_path, "new", "labels", 0.1, 1)
    write_run(tmp_path, "scaled", "labels", 0.1, 2, overrides=["eval.temperature_scaling=true"])
    spec = yaml.safe_load((old / "spec.yaml").read_text())
    del spec["eval"]  # from before temperature scaling existed: it ran without
    (old / "spec.yaml").write_text(yaml.safe_dump(spec))
    summary = aggregate(tmp_path)
    assert [(g.varied, g.completed) for g in summary.groups] == [
        ((("eval.temperature_scaling", "false"),), 2),
        ((("eval.temperature_scaling", "true"),), 1),
    ]


# A reason is measured as it reads (runs of spaces and line ends as one space):
# one of 150 words-and-spaces that Keras padded to 300 characters stays whole.
def test_a_reason_padded_with_whitespace_is_measured_as_it_reads(tmp_path):
    words = " ".join(["nan"] * 37) + " loss!"  # 154 characters as it reads
    edit_manifest(write_run(tmp_path, "run", "labels", 0.1, 0, status="failed", done=1),
                  reason=words.replace(" ", " \n  "))  # fmt: skip
    lines = aggregate(tmp_path).markdown.splitlines()
    row = next(line for line in lines if line.startswith("| run |") and "failed" in line)
    assert row.endswith(f"| {words} |")


# Differences that agree to 1e-12 are one number (the margin is 1e-9 of the
# values, far above float64's rounding): no spread, not a difference of 1e10 standard errors.
def test_differences_that_agree_to_a_trillionth_have_no_spread(tmp_path):
    for seed, (labels, jitter) in enumerate([(0.05, 0.0), (0.06, 1e-12), (0.07, -1e-12)]):
        for method, ece in (("labels", labels), ("loss", labels + 0.01 + jitter)):
            run = write_run(tmp_path, f"{method}-s{seed}", method, 0.1, seed, correct=80 + seed)
            metrics = json.loads((run / "metrics.json").read_text())
            write_json(run / "metrics.json", {**metrics, "test_ece": ece})
    ece = next(d for d in aggregate(tmp_path).comparisons if d.metric == "test_ece")
    assert ece.test == "paired" and ece.value == pytest.approx(-0.01)
    assert (ece.se, ece.ratio, ece.p_value, ece.interval) == (0.0, None, None, None)


# A sweep's 0.05 * 3 (0.15000000000000002) reads 0.15, and two factors that differ in the seventh
# digit read apart (as %g, both were 0.123457: two rows alike).
def test_a_factor_reads_as_written_and_two_factors_read_apart(tmp_path):
    for run, factor in (("a", 0.05 * 3), ("b", 0.1234567), ("c", 0.1234568)):
        write_run(tmp_path, run, "labels", factor, 0)
    lines = aggregate(tmp_path).markdown.splitlines()
    for run, shown in (("a", "0.15"), ("b", "0.1234567"), ("c", "0.1234568")):
        assert any(line.startswith(f"| labels | {shown} | 1 | 0 |") for line in lines)  # the groups table
        assert any(line.startswith(f"| {run} | labels | {shown} | 0 |") for line in lines)  # the runs table


# A folder holding a manifest is a run directory even without its .lock
# (copied without hidden files, say): aggregate does not write into it.
def test_aggregate_never_writes_into_a_run_directory_that_lost_its_lock(tmp_path):
    write_run(tmp_path, "results/done", "labels", 0.1, 0)
    elsewhere = write_run(tmp_path, "other/run", "labels", 0.1, 0)  # not under the root aggregated
    (elsewhere / ".lock").unlink()
    with pytest.raises(AggregateError, match="inside the run directory .*pass --out DIR"):
        aggregate(tmp_path / "results", out=elsewhere / "tables")
    assert not (elsewhere / "tables").exists()


def test_a_data_size_sweep_reads_the_whole_set_as_its_size_and_groups_unset_with_it(tmp_path):
    write_run(tmp_path, "small", "labels", 0.1, 0, overrides=["data.train_size=5000"])
    write_run(tmp_path, "unset", "labels", 0.1, 1)
    write_run(tmp_path, "whole", "labels", 0.1, 2, overrides=["data.train_size=50000"])  # the same images as unset
    summary = aggregate(tmp_path)
    assert [(g.varied, g.completed) for g in summary.groups] == [
        ((("data.train_size", "5000"),), 1),
        ((("data.train_size", "50000"),), 2),
    ]
    assert any(line.startswith("| labels | 0.1 | 50000 | 2 |") for line in summary.markdown.splitlines())
