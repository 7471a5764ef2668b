"""`lsjob aggregate`: fake results trees written the way run.py and report.py write them,
then every run's status, the statistics, the CSV, the Markdown and the plot checked."""

import ast
import copy
import csv
import fcntl
import functools
import io
import json
import math
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import matplotlib.image
import numpy as np
import pytest
from matplotlib.figure import Figure

from job.aggregate import (
    CSV_COLUMNS,
    METRICS,
    AggregateError,
    NoRunsError,
    aggregate,
    collect,
    comparison_warnings,
)
from job.atomic import write_json, write_text
from job.data import CLASS_NAMES
from job.errors import EXIT_BAD_INPUT
from job.report import classification_metrics
from job.rundir import RunDir, now
from job.spec import load_spec

ROOT = Path(__file__).resolve().parents[1]
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
OUTPUTS = {"aggregate.csv", "aggregate.md", "accuracy_vs_factor.png"}
# history.csv's header as job/train.py writes it (checked against the source below,
# without importing the training stack).
HISTORY_COLUMNS = ("epoch", "loss", "accuracy", "val_loss", "val_accuracy", "val_nll", "lr", "seconds")
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
def fake_metrics(correct):
    """metrics.json as report.py computes it (cached: sklearn takes a tenth of a second)."""
    return classification_metrics(*predictions(correct), CLASS_NAMES)[0]


def expected_nll(correct):
    return -(correct * math.log(0.9) + (N_TEST - correct) * math.log(0.1 / 9)) / N_TEST


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


def write_run(root, rel, method, factor, seed, status="completed", correct=80, done=None, overrides=()):
    """A run directory as job.run writes it: lock, spec.yaml, history, metrics, manifest."""
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
        metrics = copy.deepcopy(fake_metrics(correct))
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
    "pilot/round-1/labels-f0.3-s1": "completed",  # a nested sub-sweep
}  # fmt: skip


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

    starting = root / "sweep/labels-f0.2-s8"
    spec = load_spec(None, ["smoothing.factor=0.2", "train.seed=8", f"output.root={starting.parent}"])
    starting.mkdir(parents=True)
    write_text(starting / "spec.yaml", spec.to_yaml())

    no_metrics = write_run(root, "sweep/loss-f0.1-s5", "loss", 0.1, 5, correct=90)
    (no_metrics / "metrics.json").unlink()
    damaged = write_run(root, "sweep/loss-f0.2-s9", "loss", 0.2, 9, correct=90)
    text = (damaged / "manifest.json").read_text()
    (damaged / "manifest.json").write_text(text[: len(text) // 2])

    write_run(root, "pilot/round-1/labels-f0.3-s1", "labels", 0.3, 1, correct=83)
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


def test_rows_carry_the_run_identity_and_progress(tree):
    runs = by_run(collect(tree)[0])
    done = runs["sweep/labels-f0.1-s1"]
    assert (done.method, done.factor, done.seed, done.epochs_done, done.epochs_total) == ("labels", 0.1, 1, 3, 3)
    assert done.duration_s == pytest.approx(124.456) and done.attempts == 1 and len(done.spec_hash) == 16
    assert done.metrics == pytest.approx({"test_accuracy": 0.82, "val_nll": expected_nll(82)})
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


def test_aggregate_never_takes_a_run_lock(tree, monkeypatch):
    def refuse(*args):
        raise AssertionError("aggregate must not take a run's flock")

    monkeypatch.setattr(fcntl, "flock", refuse)
    monkeypatch.setattr(fcntl, "lockf", refuse)
    aggregate(tree)


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


def test_settings_that_change_results_are_flagged(tmp_path):
    for seed in range(2):
        write_run(tmp_path, f"a/labels-f0.1-s{seed}", "labels", 0.1, seed)
    write_run(tmp_path, "b/labels-f0.1-s0", "labels", 0.1, 0, overrides=["train.lr=0.01", "train.eval_batch_size=32"])
    warnings = comparison_warnings(collect(tmp_path)[0])
    assert any("train.lr" in w and "0.005 (2 runs)" in w and "0.01 (1 runs)" in w for w in warnings)
    assert not any("eval_batch_size" in w for w in warnings)  # does not change results
    assert any("seed 0 completed 2 times" in w for w in warnings)


def test_a_clean_sweep_has_no_warnings(aggregated):
    assert aggregated[1].warnings == []
    assert "## Warnings" not in aggregated[1].markdown


# ---------------------------------------------------------------------------- files


def test_csv_round_trips(aggregated):
    tree, summary = aggregated
    with open(tree / "aggregate.csv", newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == [c.name for c in CSV_COLUMNS]
    assert {"run", "method", "factor", "seed", "status", "reason", "test_accuracy", "val_nll", "epochs_done",
            "epochs_total", "duration_s", "attempts", "spec_hash"} <= set(rows[0])  # fmt: skip
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


def test_png_is_a_valid_png(aggregated):
    tree, _ = aggregated
    data = (tree / "accuracy_vs_factor.png").read_bytes()
    assert data.startswith(PNG_MAGIC) and len(data) > 1000
    image = matplotlib.image.imread(tree / "accuracy_vs_factor.png")
    assert image.ndim == 3 and image.shape[0] > 100 and image.shape[1] > 100


@pytest.fixture
def plots(monkeypatch):
    """What each saved figure shows: its title, legend labels and horizontal reference lines."""
    seen = []
    savefig = Figure.savefig

    def record(fig, *args, **kwargs):
        ax = fig.axes[0]
        seen.append({
            "title": ax.get_title(),
            "legend": ax.get_legend_handles_labels()[1],
            "lines": {line.get_label(): line.get_ydata() for line in ax.get_lines()},
            "xticks": [t.get_text() for t in ax.get_xticklabels()],
        })  # fmt: skip
        return savefig(fig, *args, **kwargs)

    monkeypatch.setattr(Figure, "savefig", record)
    return seen


def test_plot_shows_completed_runs_and_says_how_many_were_left_out(tree, plots):
    aggregate(tree)
    (plot,) = plots
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


def test_plot_copes_with_no_completed_runs(tmp_path, plots):
    write_run(tmp_path, "run", "labels", 0.1, 0, status="failed", done=1)
    summary = aggregate(tmp_path)
    assert summary.counts == {"failed": 1} and summary.groups[0].stats == {}
    assert "0 completed run(s) plotted; 1 left out" in plots[0]["title"] and plots[0]["legend"] == []
    assert (tmp_path / "accuracy_vs_factor.png").read_bytes().startswith(PNG_MAGIC)


def test_only_the_three_outputs_are_written_to_root(tree):
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
    with pytest.raises(AggregateError, match="cannot write the aggregate"):
        aggregate(tmp_path / "results", out=tmp_path / "file" / "out")


def test_a_folder_that_keeps_a_spec_beside_its_runs_is_not_a_run(tmp_path):
    write_run(tmp_path, "sweep/labels-f0.1-s0", "labels", 0.1, 0)
    write_text(tmp_path / "sweep" / "spec.yaml", "train:\n  epochs: 3\n")
    assert [r.run for r in collect(tmp_path)[0]] == ["sweep/labels-f0.1-s0"]


# ---------------------------------------------------------------------------- staying in step


def test_fake_history_header_matches_the_trainer():
    tree_ = ast.parse((ROOT / "job" / "train.py").read_text())
    found = [ast.literal_eval(node.value) for node in tree_.body
             if isinstance(node, ast.Assign) and getattr(node.targets[0], "id", "") == "HISTORY_COLUMNS"]  # fmt: skip
    assert found == [HISTORY_COLUMNS]


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
