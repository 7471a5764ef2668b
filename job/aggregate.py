"""Aggregate a results tree: one row per run, a per-(method, factor) summary, plots, a page.

`aggregate(root)` finds every run directory under `root` at any depth and writes
`aggregate.csv`, `aggregate.md`, `accuracy_vs_factor.png`, `ece_vs_factor.png`,
`labels_vs_loss.png` and `aggregate.html` (job.summary_page). Every run directory
found gets a row; a run that is not provably complete never counts as completed,
and only completed runs enter the means and the plots.

Runs are grouped by method and factor, and by every setting that changes results and
differs between the completed runs (a sweep's `train.lr`, the backend, the precision a
run computed in): each such setting gets a column, and each of its values a group, a
line in the plots and its own labels-vs-loss comparison, so that the spread of a group
is seed noise and nothing else.

It only reads: no run's lock is taken (a task starting its run must never find it
busy because someone is reading it), and neither Keras nor TensorFlow is imported,
so it runs in seconds on a laptop holding a copy of the results volume.

A new metric (MCE, NLL after temperature scaling, ...) is one more `Metric` in
METRICS: it then gets its CSV, Markdown and HTML columns and its summary statistics.
A plot against the factor is one more entry in FACTOR_PLOTS, a labels-vs-loss
comparison one more name in COMPARED_METRICS.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import matplotlib.style
import numpy as np
import yaml
from matplotlib.figure import Figure

from job.atomic import file_set, save_png, write_text
from job.errors import EXIT_BAD_INPUT, NO_SPACE_ERRNOS, JobError, NoSpaceError, storage_fault
from job.history import read_history
from job.rundir import LOCK, MANIFEST, is_lsjob_lock, lock_holder, run_directories
from job.spec import Spec, flatten

SPEC_FILE = "spec.yaml"
METRICS_FILE = "metrics.json"
HISTORY_FILE = "history.csv"
CSV_NAME = "aggregate.csv"
MARKDOWN_NAME = "aggregate.md"
PLOT_NAME = "accuracy_vs_factor.png"
ECE_PLOT_NAME = "ece_vs_factor.png"
COMPARISON_PLOT_NAME = "labels_vs_loss.png"
HTML_NAME = "aggregate.html"

COMPLETED = "completed"
NO_FACTOR = "none"  # the method whose factor is ignored: a reference line, not a curve
# Two implementations of one objective (smoothed targets vs a smoothed loss): any
# difference between them at the same factor is run-to-run noise, or a bug.
SAME_OBJECTIVE = ("labels", "loss")
# Display order; also every status a row can have.
STATUSES = {
    "completed": "finished, and its manifest, metrics.json and history.csv agree",
    "running": "the manifest says running and its process may be alive",
    "killed": "the manifest says running, but the process its .lock names is gone (same host)",
    "interrupted": "stopped by SIGTERM/SIGINT; re-run the same command to resume",
    "failed": "ended with an error (see reason); re-run to resume",
    "incomplete": "never wrote a manifest, or says completed while results are missing or disagree",
    "damaged": "manifest.json unreadable or of an unknown shape",
}
MANIFEST_STATUSES = ("running", "completed", "failed", "interrupted")  # what run.py writes
# What a manifest must hold, and of which JSON type, to be read at all.
MANIFEST_FIELDS = {
    "status": str, "method": str, "factor": float, "seed": int,
    "epochs": int, "spec_hash": str, "attempts": list, "duration_s": float,
}  # fmt: skip
# Spec fields that are no setting to group runs by (runs differing only here compare): the
# groups' own axes (smoothing, train.seed); where things are kept (output, data paths, caches);
# how one computation is carried out (XLA, deterministic ops, steps per call, evaluation batch),
# which changes results in the last bits at most, so a run keeps them in its identity
# (spec.content_hash) but they are not an experiment; and precision and replicas, compared as
# the manifest resolved them (PRECISION, REPLICAS).
NOT_COMPARED = {
    "output", "smoothing", "sweep", "train.seed", "train.eval_batch_size", "data.path", "data.cache_dir",
    "runtime.jit_compile", "runtime.deterministic", "runtime.steps_per_execution", "runtime.compile_cache",
    "runtime.mixed_precision", "runtime.replicas",
}  # fmt: skip
BACKEND, PRECISION, REPLICAS = "backend", "runtime.precision", "runtime.replicas"
ABSENT = "(absent)"  # a setting a run's spec does not have
UNKNOWN = "?"  # a run without a readable spec.yaml
MD_REASON_CHARS = 160  # the Markdown table shortens reasons; the CSV keeps them whole


class AggregateError(JobError):
    """The results root cannot be aggregated (missing, empty, output not writable): bad input."""

    exit_code = EXIT_BAD_INPUT


class NoRunsError(AggregateError):
    """No lsjob run directory anywhere under the root."""


@dataclass(frozen=True)
class Metric:
    """A final-model metric from metrics.json: one CSV column, one Markdown column, summary stats."""

    name: str  # CSV column and key in Run.metrics
    key: str  # key in metrics.json
    label: str  # Markdown header
    percent: bool = False  # shown as a percentage in Markdown
    digits: int = 4  # decimals in Markdown
    # A completed run must have it, and its manifest must agree. Metrics added later are
    # optional: runs from before they existed stay completed, with an empty cell.
    required: bool = False
    note: str = ""  # what it is, under the summary table

    def show(self, value: float | None) -> str:
        if value is None:
            return ""
        return f"{100 * value:.{self.digits}f}" if self.percent else f"{value:.{self.digits}f}"


METRICS = (
    Metric("test_accuracy", "test_accuracy", "test acc (%)", percent=True, digits=2, required=True),
    # The manifest's test_nll: the final model's unsmoothed NLL on the validation set,
    # which in this recipe is the CIFAR-10 test set.
    Metric(
        "val_nll",
        "test_nll",
        "val NLL",
        digits=4,
        required=True,
        note="the final model's unsmoothed NLL on the validation set (the CIFAR-10 test set in this "
        "recipe), comparable across methods",
    ),
    Metric(
        "test_ece",
        "test_ece",
        "ECE",
        digits=4,
        note="expected calibration error on the test set, 15 equal-width bins of top-1 confidence",
    ),
    Metric("test_brier", "test_brier", "Brier", digits=4, note="multi-class Brier score on the test set"),
    # Only runs with eval.temperature_scaling have these.
    Metric("temperature", "temperature", "T", digits=3, note="softmax temperature fitted on the held-out slice"),
    Metric("test_ece_scaled", "test_ece_scaled", "ECE after T", digits=4, note="test ECE after temperature scaling"),
)
METRIC = {m.name: m for m in METRICS}
COMPARED_METRICS = ("test_accuracy", "test_ece")  # labels vs loss
# The plots of a metric against the factor: file, metric, title, y-axis label.
FACTOR_PLOTS = (
    (PLOT_NAME, "test_accuracy", "Test accuracy", "test accuracy (%)"),
    (ECE_PLOT_NAME, "test_ece", "Expected calibration error", "ECE (15 equal-width bins of top-1 confidence)"),
)
PLOT_TITLE = {metric: title for _, metric, title, _ in FACTOR_PLOTS}


@dataclass
class Run:
    """One run directory, as far as it could be read."""

    path: Path
    run: str  # relative to the root, '/'-separated
    status: str
    reason: str | None = None
    method: str | None = None
    factor: float | None = None
    seed: int | None = None
    epochs_done: int | None = None
    epochs_total: int | None = None
    duration_s: float | None = None
    attempts: int | None = None
    spec_hash: str | None = None
    metrics: dict[str, float] = field(default_factory=dict)  # completed runs only
    settings: dict[str, str] | None = None  # result-changing fields as JSON text, for comparisons
    spec_read: bool = False  # settings hold spec.yaml's fields, not only what the manifest says
    # The settings that differ between the completed runs, and this run's values of them
    # (JSON text, ABSENT or UNKNOWN): with method and factor, they make its group.
    varied: tuple[tuple[str, str], ...] = ()

    @property
    def completed(self) -> bool:
        return self.status == COMPLETED

    def sort_key(self) -> tuple:
        return (*_group_key(self.method, self.factor, self.varied), self.seed is None, self.seed or 0, self.run)


@dataclass(frozen=True)
class Stats:
    mean: float
    std: float | None  # sample standard deviation (ddof=1); None for a single run
    min: float
    max: float
    n: int  # runs it is over: fewer than a group's completed runs when some of them lack the metric


@dataclass
class Group:
    """The runs of one (method, factor, varied settings); statistics over the completed ones."""

    method: str
    factor: float
    varied: tuple[tuple[str, str], ...]  # as Run.varied
    completed: int
    not_completed: int
    stats: dict[str, Stats]  # Metric.name -> statistics; absent when no completed run has it


@dataclass(frozen=True)
class Difference:
    """labels minus loss in one metric's mean at one factor, beside each method's seed spread."""

    factor: float
    varied: tuple[tuple[str, str], ...]  # the settings both sides share, as Run.varied
    metric: str  # Metric.name
    labels: Stats
    loss: Stats

    @property
    def value(self) -> float:
        return self.labels.mean - self.loss.mean

    @property
    def se(self) -> float | None:
        """Standard error of a difference of two means, sqrt(s1²/n1 + s2²/n2); None with one seed."""
        if self.labels.std is None or self.loss.std is None:
            return None
        return math.sqrt(self.labels.std**2 / self.labels.n + self.loss.std**2 / self.loss.n)

    @property
    def ratio(self) -> float | None:
        """difference / SE: how many standard errors of seed noise the difference is."""
        se = self.se
        return self.value / se if se else None


@dataclass
class Summary:
    """What aggregate() found and wrote; the CLI prints `markdown`."""

    root: Path
    out: Path
    runs: list[Run]
    groups: list[Group]
    comparisons: list[Difference]
    warnings: list[str]
    markdown: str
    files: tuple[Path, ...]

    @property
    def counts(self) -> dict[str, int]:
        counts = Counter(r.status for r in self.runs)
        return {status: counts[status] for status in STATUSES if counts[status]}


@dataclass(frozen=True)
class Column:
    """A column of the runs table: its CSV value and, when `label` is set, its Markdown cell."""

    name: str  # CSV header; "" for a Markdown-only column
    get: Callable[[Run], Any]
    label: str | None = None  # Markdown header; None keeps it out of the Markdown table
    show: Callable[[Run], str] | None = None  # Markdown cell; default: the value as text
    right: bool = False  # right-aligned in Markdown (numbers)


def _metric_column(metric: Metric) -> Column:
    return Column(
        metric.name,
        lambda r: r.metrics.get(metric.name),
        metric.label,
        lambda r: metric.show(r.metrics.get(metric.name)),
        right=True,
    )


COLUMNS = (
    Column("run", lambda r: r.run, "run"),
    Column("method", lambda r: r.method, "method"),
    Column("factor", lambda r: r.factor, "factor", lambda r: _show_factor(r.method, r.factor), right=True),
    Column("seed", lambda r: r.seed, "seed", right=True),
    Column("status", lambda r: r.status, "status"),
    *(_metric_column(m) for m in METRICS),
    Column("epochs_done", lambda r: r.epochs_done),
    Column("epochs_total", lambda r: r.epochs_total),
    Column("", lambda r: None, "epochs", lambda r: f"{_text(r.epochs_done, '?')}/{_text(r.epochs_total, '?')}", True),
    Column("duration_s", lambda r: r.duration_s, "duration", lambda r: _show_duration(r.duration_s), right=True),
    Column("attempts", lambda r: r.attempts, "attempts", right=True),
    Column("spec_hash", lambda r: r.spec_hash, "spec hash"),
    Column("reason", lambda r: r.reason, "reason", lambda r: _shorten(r.reason or "", MD_REASON_CHARS)),
)
CSV_COLUMNS = tuple(c for c in COLUMNS if c.name)


def _with_settings(columns: tuple[Column, ...] | list[Column], runs: list[Run], csv: bool) -> list[Column]:
    """The columns, with one per varied setting after the seed (empty in the CSV where unknown)."""
    keys = [key for key, _ in runs[0].varied] if runs else []
    added = [
        Column(key, lambda r, i=i: _csv_value(r.varied[i][1]) if csv else _show_value(r.varied[i][1]), key)
        for i, key in enumerate(keys)
    ]
    at = next(i for i, c in enumerate(columns) if c.name == "seed") + 1
    return [*columns[:at], *added, *columns[at:]]


# ---------------------------------------------------------------------------- entry point


def aggregate(root: str | os.PathLike, out: str | os.PathLike | None = None) -> Summary:
    """Read every run under `root`, write the aggregate files into `out` (default: root)."""
    # Imported here, not above: the page is drawn from this module's Summary, Run and tables.
    from job.summary_page import write_page

    root = Path(root)
    runs, warnings = collect(root)
    if not runs:
        raise NoRunsError(f"no lsjob runs under {root}: no directory there holds a {MANIFEST}, {SPEC_FILE} or {LOCK}")
    out = root if out is None else Path(out)
    _refuse_run_directory(out, runs)
    groups = summarize(runs)
    comparisons = compare(groups)
    warnings += comparison_warnings(runs)
    markdown = render_markdown(root, runs, groups, comparisons, warnings)
    names = (CSV_NAME, MARKDOWN_NAME, *(name for name, *_ in FACTOR_PLOTS), COMPARISON_PLOT_NAME, HTML_NAME)
    summary = Summary(root, out, runs, groups, comparisons, warnings, markdown, tuple(out / n for n in names))
    try:
        out.mkdir(parents=True, exist_ok=True)
        with file_set(out) as files:  # a failure leaves the previous aggregate whole, not half replaced
            write_text(files.path(CSV_NAME), render_csv(runs))
            for name, metric, title, ylabel in FACTOR_PLOTS:
                write_factor_plot(runs, METRIC[metric], title, ylabel, files.path(name))
            write_comparison_plot(comparisons, files.path(COMPARISON_PLOT_NAME))
            write_page(summary, files.path(HTML_NAME), plots=files.staging)  # after the plots: it embeds them
            write_text(files.path(MARKDOWN_NAME), markdown)
    except OSError as e:
        kept = "the files there are unchanged"
        if e.errno in NO_SPACE_ERRNOS:
            raise NoSpaceError(f"cannot write the aggregate into {out}: {e.strerror}; {kept}: free space and "
                               "run it again, or pass --out DIR to write it elsewhere") from None  # fmt: skip
        raise storage_fault(out, e) or AggregateError(
            f"cannot write the aggregate into {out}: {e.strerror or e}; {kept}; pass --out DIR to write it elsewhere"
        ) from None
    return summary


def _refuse_run_directory(out: Path, runs: list[Run]) -> None:
    """A run directory holds only what its run writes: anything else there, and a run that
    stopped while starting no longer resumes ("not an lsjob run directory"). Those found under
    the root, and any other: a folder holding a manifest or lsjob's lock (taken first) is one."""
    where = out.resolve()
    found = [run.path.resolve() for run in runs]
    for folder in (where, *where.parents):
        if folder in found or (folder / MANIFEST).is_file() or is_lsjob_lock(folder / LOCK):
            raise AggregateError(
                f"{out} is inside the run directory {folder}, where aggregate does not write; give the folder "
                "holding the runs, or pass --out DIR elsewhere"
            )


def collect(root: str | os.PathLike) -> tuple[list[Run], list[str]]:
    """Every run under `root`, sorted by method, factor, the varied settings, seed and path (Run.sort_key);
    plus warnings. Writes nothing."""
    root = Path(root)
    if not root.exists():
        raise AggregateError(f"{root} does not exist")
    if not root.is_dir():
        raise AggregateError(f"{root} is not a directory")
    warnings: list[str] = []
    runs = []
    for path, has_manifest in run_directories(root, warnings):
        try:
            runs.append(read_run(path, root, has_manifest))
        except Exception as e:  # noqa: BLE001 - one odd directory must not hide all the others
            runs.append(Run(path, _relative(path, root), "damaged", f"could not be read ({type(e).__name__}: {e})"))
    keys = varied_settings(runs)
    for run in runs:
        run.varied = tuple((key, _setting(run, key)) for key in keys)
    runs.sort(key=Run.sort_key)
    return runs, warnings


def varied_settings(runs: list[Run]) -> list[str]:
    """The result-changing settings whose values differ between runs that record them, finished
    or not: a failed run at another train.lr is not an unfinished member of this one's group."""
    known = [r for r in runs if r.settings is not None]
    keys = sorted({key for r in known for key in r.settings})
    return [key for key in keys if len({r.settings[key] for r in known if key in r.settings}) > 1]


def _setting(run: Run, key: str) -> str:
    if run.settings is not None and key in run.settings:
        return run.settings[key]
    # A run without spec.yaml, or one that never wrote a manifest (no backend yet).
    return ABSENT if run.spec_read and key not in (BACKEND, PRECISION, REPLICAS) else UNKNOWN


# ---------------------------------------------------------------------------- finding runs


def _relative(path: Path, root: Path) -> str:
    return path.relative_to(root).as_posix()  # "." when the root is itself a run


# ---------------------------------------------------------------------------- reading one run


class _Unreadable(Exception):
    """A file of the run cannot be used; the message says why."""


def read_run(path: Path, root: Path, has_manifest: bool = True) -> Run:
    """One run directory as a row; a problem becomes its status and reason, never an exception."""
    run = Run(path, _relative(path, root), "incomplete")
    spec = _read_spec(path)
    if spec is not None:
        _identity_from_spec(run, spec)
        spec = _with_defaults(spec)
        run.settings, run.spec_read = _settings(spec), True

    if not has_manifest:
        run.epochs_done = _epochs_so_far(path)
        holder = lock_holder(path)
        if holder.alive:
            run.status, run.reason = "running", f"starting, no manifest yet: {holder.text}"
        else:
            run.reason = "no manifest.json: the run stopped while starting"
            if spec is None:
                run.reason += " (and has no readable spec.yaml)"
            if holder.remote:
                run.reason += f", or is starting now: its lock names {holder.text}"
        return run

    try:
        manifest = _read_manifest(path / MANIFEST)
    except _Unreadable as e:
        run.status, run.reason = "damaged", str(e)
        run.epochs_done = _epochs_so_far(path)
        return run

    run.method, run.factor, run.seed = manifest["method"], float(manifest["factor"]), manifest["seed"]
    run.settings = {**(run.settings or {}), **_resolved_settings(manifest, spec)} or None
    run.epochs_total, run.spec_hash = manifest["epochs"], manifest["spec_hash"]
    run.duration_s, run.attempts = float(manifest["duration_s"]), len(manifest["attempts"])
    status = manifest["status"]

    if status == COMPLETED:
        problems, metrics = _completion_problems(path, manifest)
        if problems:
            run.reason = "the manifest says completed, but " + "; ".join(problems)
            run.epochs_done = _epochs_so_far(path)
        else:
            run.status, run.metrics, run.epochs_done = COMPLETED, metrics, manifest["epochs_done"]
        return run

    run.epochs_done = _epochs_so_far(path)
    if status == "running":
        holder = lock_holder(path)
        if holder.dead:
            run.status = "killed"
            run.reason = f"the manifest says running, but {holder.text} is gone; re-run the same command to resume"
        else:
            run.status, run.reason = "running", holder.text
        return run
    run.status, run.reason = status, manifest.get("reason") if isinstance(manifest.get("reason"), str) else None
    return run


def _read_manifest(path: Path) -> dict:
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, ValueError) as e:
        raise _Unreadable(f"cannot read {MANIFEST}: {_why(e)}") from None
    if not text.strip():
        raise _Unreadable(f"{MANIFEST} is empty")
    try:
        manifest = json.loads(text)
    except ValueError as e:
        raise _Unreadable(f"{MANIFEST} is not valid JSON (truncated or half-written?): {e}") from None
    if not isinstance(manifest, dict):
        raise _Unreadable(f"{MANIFEST} holds a JSON {type(manifest).__name__}, not an object")
    problems = []
    for key, kind in MANIFEST_FIELDS.items():
        if key not in manifest:
            problems.append(f"no {key!r}")
        elif not _is(manifest[key], kind):
            problems.append(f"{key!r} is {manifest[key]!r}, not {'a number' if kind is float else kind.__name__}")
    if not problems and manifest["status"] not in MANIFEST_STATUSES:
        problems.append(f"unknown status {manifest['status']!r}")
    if problems:
        raise _Unreadable(f"{MANIFEST} is of an unknown shape: " + "; ".join(problems))
    return manifest


def _completion_problems(path: Path, manifest: dict) -> tuple[list[str], dict[str, float]]:
    """Why a manifest that says completed cannot be trusted (empty: it can), and the metrics."""
    problems = []
    done = manifest.get("epochs_done")
    if not _is(done, int):
        problems.append("it has no epochs_done")
    elif done != manifest["epochs"]:
        problems.append(f"only {done} of {manifest['epochs']} epochs are done")

    metrics: dict[str, float] = {}
    try:
        recorded = _read_json_object(path / METRICS_FILE)
    except _Unreadable as e:
        problems.append(str(e))
        recorded = None
    for metric in METRICS if recorded is not None else ():
        value = _finite(recorded.get(metric.key))
        if value is None:
            if metric.required:
                problems.append(f"{METRICS_FILE} has no finite {metric.key}")
            continue
        in_manifest = manifest.get(metric.key)
        if in_manifest is None and metric.required:
            problems.append(f"the manifest has no {metric.key}")
        elif in_manifest is not None and not _agree(value, in_manifest):
            problems.append(f"{METRICS_FILE} has {metric.key} {value!r}, the manifest {in_manifest!r}")
        metrics[metric.name] = value

    try:
        rows = _history_epochs(path)
    except _Unreadable as e:
        problems.append(str(e))
    else:
        if _is(done, int) and rows != done:
            problems.append(f"{HISTORY_FILE} has {rows} epochs, the manifest says {done}")
    return problems, metrics


def _read_json_object(path: Path) -> dict:
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise _Unreadable(f"there is no {path.name}") from None
    except (OSError, ValueError) as e:
        raise _Unreadable(f"{path.name} is unreadable: {_why(e)}") from None
    if not isinstance(doc, dict):
        raise _Unreadable(f"{path.name} holds a JSON {type(doc).__name__}, not an object")
    return doc


def _history_epochs(path: Path) -> int:
    """Finished epochs in history.csv: whole rows numbered 1..n, read as `lsjob report` reads them."""
    try:
        epochs = [row["epoch"] for row in read_history(path / HISTORY_FILE)]
    except FileNotFoundError:
        raise _Unreadable(f"there is no {HISTORY_FILE}") from None
    except (OSError, csv.Error, KeyError, ValueError) as e:
        raise _Unreadable(f"{HISTORY_FILE} is unreadable: {_why(e)}") from None
    if epochs != list(range(1, len(epochs) + 1)):
        raise _Unreadable(f"{HISTORY_FILE} does not number its epochs 1..{len(epochs)}")
    return len(epochs)


def _epochs_so_far(path: Path) -> int | None:
    """Epochs done by an unfinished run: 0 before history.csv exists, None if it cannot be read."""
    if not (path / HISTORY_FILE).exists():
        return 0
    try:
        return _history_epochs(path)
    except _Unreadable:
        return None


def _read_spec(path: Path) -> dict | None:
    try:
        doc = yaml.safe_load((path / SPEC_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError, yaml.YAMLError):
        return None
    return doc if isinstance(doc, dict) else None


def _identity_from_spec(run: Run, spec: dict) -> None:
    """Method, factor, seed and epochs from spec.yaml, for runs whose manifest cannot tell."""
    smoothing, train = spec.get("smoothing"), spec.get("train")
    smoothing = smoothing if isinstance(smoothing, dict) else {}
    train = train if isinstance(train, dict) else {}
    if isinstance(smoothing.get("method"), str):
        run.method = smoothing["method"]
    if run.method == NO_FACTOR:
        run.factor = 0.0  # as run.py records it: the effective factor
    elif _is(smoothing.get("factor"), float):
        run.factor = float(smoothing["factor"])
    if _is(train.get("seed"), int):
        run.seed = train["seed"]
    if _is(train.get("epochs"), int):
        run.epochs_total = train["epochs"]


def _with_defaults(spec: dict) -> dict:
    """spec.yaml with the fields a run of an older version did not write filled in with the
    defaults it ran with; as written where it no longer validates (a field since renamed)."""
    try:
        return Spec.model_validate(spec).model_dump(mode="json")
    except (ValueError, JobError):
        return spec


def _settings(spec: dict) -> dict[str, str]:
    """spec.yaml flattened to dotted keys, without the fields that do not change results."""
    flat = {
        key: json.dumps(value, sort_keys=True)
        for key, value in flatten(spec).items()
        if not any(key == skip or key.startswith(skip + ".") for skip in NOT_COMPARED)
    }
    if flat.get("eval.temperature_scaling") != "true":
        flat.pop("eval.holdout_size", None)  # holds nothing out without temperature scaling
    return flat


def _resolved_settings(manifest: dict, spec: dict | None) -> dict[str, str]:
    """What the run computed with, from its manifest: the backend, and the precision and
    replica count that `auto` and `all` became on its machine (same spec, another result).
    A manifest from before they were recorded: as its spec asked (the defaults if unsaid)."""
    resolved = {}
    if isinstance(manifest.get("backend"), str):
        resolved[BACKEND] = json.dumps(manifest["backend"])
    runtime = manifest.get("runtime") if isinstance(manifest.get("runtime"), dict) else {}
    asked = (spec or {}).get("runtime") if isinstance((spec or {}).get("runtime"), dict) else {}
    for key, recorded, requested, default in ((PRECISION, "precision", "mixed_precision", "off"),
                                              (REPLICAS, "replicas", "replicas", 1)):  # fmt: skip
        if recorded in runtime:
            resolved[key] = json.dumps(runtime[recorded])
        elif spec is not None:
            resolved[key] = json.dumps(asked.get(requested, default))
    return resolved


# ---------------------------------------------------------------------------- summaries


def _group_key(method: str | None, factor: float | None, varied: tuple = ()) -> tuple:
    # Each setting's block together, then method and factor as in a sweep without one.
    settings = tuple(_value_order(value) for _, value in varied)
    return (settings, method is None, method or "", factor is None, factor or 0.0)


def _value_order(text: str) -> tuple:
    """Numbers in numeric order (0.005 < 0.05 < 1 < 10), then text, then absent or unknown."""
    try:
        value = json.loads(text)
    except ValueError:
        return (3, 0.0, text)
    if _is(value, float):
        return (0, float(value), "")
    return (1, 0.0, value) if isinstance(value, str) else (2, 0.0, text)


def summarize(runs: list[Run]) -> list[Group]:
    """One Group per (method, factor, varied settings) that any run has, statistics over its
    completed runs."""
    by_key: dict[tuple, list[Run]] = {}
    for run in runs:
        if run.method is not None and run.factor is not None:
            by_key.setdefault((run.method, run.factor, run.varied), []).append(run)
    groups = []
    for (method, factor, varied), members in sorted(by_key.items(), key=lambda item: _group_key(*item[0])):
        done = [r for r in members if r.completed]
        stats = {}
        for metric in METRICS:
            values = [r.metrics[metric.name] for r in done if metric.name in r.metrics]
            if values:
                stats[metric.name] = _stats(values)
        groups.append(Group(method, factor, varied, len(done), len(members) - len(done), stats))
    return groups


def _stats(values: list[float]) -> Stats:
    array = np.asarray(values, dtype=np.float64)
    std = float(array.std(ddof=1)) if len(array) > 1 else None
    return Stats(float(array.mean()), std, float(array.min()), float(array.max()), len(array))


def compare(groups: list[Group]) -> list[Difference]:
    """labels minus loss at every factor and varied settings where both have completed runs
    with the metric."""
    by_key = {(g.method, g.factor, g.varied): g for g in groups}
    labels, loss = SAME_OBJECTIVE
    found = []
    for g in groups:  # in the groups' order: by settings, then factor
        if g.method != labels or (loss, g.factor, g.varied) not in by_key:
            continue
        for metric in COMPARED_METRICS:
            a, b = g.stats.get(metric), by_key[(loss, g.factor, g.varied)].stats.get(metric)
            if a is not None and b is not None:
                found.append(Difference(g.factor, g.varied, metric, a, b))
    return found


def comparison_warnings(runs: list[Run]) -> list[str]:
    """What makes the completed runs' means misleading: mixed settings, a seed counted twice."""
    return _settings_warnings(runs) + _duplicate_warnings(runs)


def _settings_warnings(runs: list[Run]) -> list[str]:
    """Completed runs whose settings differ in more than seed and smoothing: each value is a group
    of its own, which the reader should know, the more so where it was not meant (two backends)."""
    done = [r for r in runs if r.completed]
    known = [r for r in done if r.spec_read]
    warnings = []
    if len(known) < len(done):
        warnings.append(
            f"{len(done) - len(known)} completed run(s) have no readable {SPEC_FILE}; "
            "their settings could not be compared with the others"
        )
    keys = sorted({key for r in known for key in r.settings})
    for key in keys:
        values = Counter(r.settings.get(key, ABSENT) for r in known)
        if len(values) > 1:
            listed = ", ".join(f"{value} ({n} runs)" for value, n in sorted(values.items()))
            warnings.append(
                f"completed runs differ in {key}: {listed}; each value is a group of its own in the tables "
                "and the plots, with a column for it"
            )
    return warnings


def _duplicate_warnings(runs: list[Run]) -> list[str]:
    seen: dict[tuple, list[str]] = {}
    for run in runs:
        if run.completed:
            seen.setdefault((run.method, run.factor, run.varied, run.seed), []).append(run.run)
    return [
        f"{method} factor {_show_factor(method, factor) or '-'}{_show_varied(varied, ', ')} seed {seed} "
        f"completed {len(paths)} times ({', '.join(paths)}); each counts in the mean"
        for (method, factor, varied, seed), paths in seen.items()
        if len(paths) > 1
    ]


# ---------------------------------------------------------------------------- outputs


def render_csv(runs: list[Run]) -> str:
    """One row per run, every column, floats at full (round-trip) precision, empty for unknown."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    columns = _with_settings(CSV_COLUMNS, runs, csv=True)
    writer.writerow([c.name for c in columns])
    for run in runs:
        writer.writerow(["" if (v := c.get(run)) is None else repr(v) if isinstance(v, float) else v
                         for c in columns])  # fmt: skip
    return out.getvalue()


@dataclass(frozen=True)
class Table:
    """A table as text cells: the Markdown and the HTML page show the same ones."""

    header: list[str]
    rows: list[list[str]]
    right: list[bool]  # right-aligned (numbers)


STATS_NOTE = (
    "Statistics cover completed runs only; std is the sample standard deviation (n - 1), – for a single "
    "run; (n=k) marks a statistic over fewer runs than completed: runs from before calibration have no ECE "
    "or Brier, and only runs with temperature scaling have T."
)
COMPARISON_NOTE = (
    "labels and loss optimise the same objective, so their difference at the same factor should be "
    "run-to-run noise: compare it with each method's std across seeds and with the standard error of the "
    "difference, SE = sqrt(std_labels²/n_labels + std_loss²/n_loss); with a few seeds per method, "
    "a difference / SE between about -3 and +3 is within that noise."
)


def tally(runs: list[Run]) -> str:
    counts = Counter(r.status for r in runs)
    return f"{len(runs)} runs: " + ", ".join(f"{counts[s]} {s}" for s in STATUSES if counts[s])


def shown_metrics(runs: list[Run]) -> list[Metric]:
    """The metrics worth a column: the required ones, and those some run has (no empty T column)."""
    return [m for m in METRICS if m.required or any(m.name in r.metrics for r in runs)]


def metrics_note(metrics: list[Metric]) -> str:
    return " ".join(f"{m.label}: {m.note}." for m in metrics if m.note)


def run_columns(runs: list[Run]) -> list[Column]:
    """The runs table's displayed columns, leaving out metrics no run has."""
    hidden = {m.name for m in METRICS} - {m.name for m in shown_metrics(runs)}
    return [c for c in _with_settings(COLUMNS, runs, csv=False) if c.label is not None and c.name not in hidden]


def run_cells(run: Run, columns: list[Column]) -> list[str]:
    return [c.show(run) if c.show else _text(c.get(run)) for c in columns]


def group_table(groups: list[Group], metrics: list[Metric]) -> Table:
    keys = [key for key, _ in groups[0].varied] if groups else []
    header = ["method", "factor", *keys, "completed", "not completed"]
    for metric in metrics:
        header += [f"{metric.label} mean ± std", f"{metric.label} min – max"]
    rows = []
    for g in groups:
        cells = [g.method, _show_factor(g.method, g.factor), *(_show_value(v) for _, v in g.varied), str(g.completed),
                 str(g.not_completed)]  # fmt: skip
        for metric in metrics:
            s = g.stats.get(metric.name)
            if s is None:
                cells += ["", ""]
                continue
            std = "–" if s.std is None else metric.show(s.std)
            fewer = f" (n={s.n})" if s.n < g.completed else ""
            cells += [f"{metric.show(s.mean)} ± {std}{fewer}", f"{metric.show(s.min)} – {metric.show(s.max)}"]
        rows.append(cells)
    return Table(header, rows, [False, True, *[False] * len(keys), True, True, *[True] * (2 * len(metrics))])


def comparison_table(comparisons: list[Difference]) -> Table:
    labels, loss = SAME_OBJECTIVE
    keys = [key for key, _ in comparisons[0].varied] if comparisons else []
    header = ["factor", *keys, "metric", f"{labels} mean ± std (n)", f"{loss} mean ± std (n)", f"{labels} − {loss}",
              "SE", "difference / SE"]  # fmt: skip
    rows = []
    for d in comparisons:
        metric = METRIC[d.metric]
        sign = "+" if d.value > 0 else ""
        rows.append([
            f"{d.factor:g}", *(_show_value(v) for _, v in d.varied), metric.label, _spread(metric, d.labels),
            _spread(metric, d.loss), sign + metric.show(d.value), "–" if d.se is None else metric.show(d.se),
            "–" if d.ratio is None else f"{d.ratio:+.1f}",
        ])  # fmt: skip
    return Table(header, rows, [True, *[False] * len(keys), False, True, True, True, True, True])


def _spread(metric: Metric, s: Stats) -> str:
    return f"{metric.show(s.mean)} ± {'–' if s.std is None else metric.show(s.std)} ({s.n})"


def render_markdown(
    root: Path, runs: list[Run], groups: list[Group], comparisons: list[Difference], warnings: list[str]
) -> str:
    metrics = shown_metrics(runs)
    lines = [f"# lsjob runs under `{root}`", "", tally(runs) + ".", ""]
    lines += ["## Completed runs by method and factor", "", *_table(group_table(groups, metrics)), ""]
    lines += [STATS_NOTE + " " + metrics_note(metrics), ""]

    labels, loss = SAME_OBJECTIVE
    lines += [f"## {labels} vs {loss} at the same factor", "", COMPARISON_NOTE, ""]
    if comparisons:
        lines += _table(comparison_table(comparisons))
    else:
        lines += [f"No factor has completed runs of both `{labels}` and `{loss}`."]

    columns = run_columns(runs)
    lines += ["", "## Runs", ""]
    rows = [run_cells(r, columns) for r in runs]
    lines += _table(Table([c.label for c in columns], rows, [c.right for c in columns]))
    present = [s for s in STATUSES if any(r.status == s for r in runs)]
    lines += ["", "Status: " + "; ".join(f"`{s}`: {STATUSES[s]}" for s in present) + "."]
    if warnings:
        lines += ["", "## Warnings", "", *(f"- {_cell(w)}" for w in warnings)]
    return "\n".join(lines) + "\n"


def _table(table: Table) -> list[str]:
    rule = ["---:" if r else "---" for r in table.right]
    return ["| " + " | ".join(_cell(c) for c in row) + " |" for row in (table.header, rule, *table.rows)]


def write_factor_plot(runs: list[Run], metric: Metric, title: str, ylabel: str, path: Path) -> None:
    """A metric against the smoothing factor: a line per method (and varied settings), `none` as
    a reference band."""
    completed = [r for r in runs if r.completed and r.method is not None and r.factor is not None]
    done = [r for r in completed if metric.name in r.metrics]
    scale = 100 if metric.percent else 1
    values: dict[tuple[str, tuple], dict[float, list[float]]] = {}
    for r in done:
        values.setdefault((r.method, r.varied), {}).setdefault(r.factor, []).append(scale * r.metrics[metric.name])

    order = sorted(values, key=lambda series: _group_key(series[0], None, series[1]))
    curves = [series for series in order if series[0] != NO_FACTOR]
    references = [series for series in order if series[0] == NO_FACTOR]
    factors = sorted({f for series in curves for f in values[series]})
    # Lines sharing a factor are drawn a little apart so that their bars and dots stay legible.
    span = (factors[-1] - factors[0]) if len(factors) > 1 else 0.5
    offsets = np.linspace(-1, 1, len(curves)) * 0.01 * span if len(curves) > 1 else [0.0]

    with matplotlib.style.context("ggplot"):
        fig = Figure(figsize=(8, 5.5), layout="constrained")
        ax = fig.add_subplot()
        for (method, varied), offset in zip(curves, offsets):
            points = sorted(values[(method, varied)].items())
            x = np.array([f for f, _ in points]) + offset
            means = np.array([np.mean(v) for _, v in points])
            low = means - np.array([min(v) for _, v in points])
            high = np.array([max(v) for _, v in points]) - means
            n = sum(len(v) for _, v in points)
            label = f"{method}{_show_varied(varied, ', ')} ({n} runs)"
            (line,) = ax.plot(x, means, marker="o", label=label, zorder=3)
            ax.errorbar(x, means, yerr=[low, high], fmt="none", ecolor=line.get_color(), capsize=4, zorder=2)
            seeds_x = [f + offset for f, v in points for _ in v]
            seeds_y = [a for _, v in points for a in v]
            ax.scatter(seeds_x, seeds_y, s=22, color=line.get_color(), edgecolors="white", linewidths=0.6,
                       zorder=4)  # fmt: skip
        for i, (method, varied) in enumerate(references):
            reference = [a for v in values[(method, varied)].values() for a in v]
            # Grey when it is the only one; otherwise each in a colour of its own.
            color = "0.35" if len(references) == 1 else f"C{(len(curves) + i) % 10}"
            label = f"{NO_FACTOR}{_show_varied(varied, ', ')} ({len(reference)} runs, no smoothing)"
            ax.axhline(float(np.mean(reference)), color=color, linestyle="--", label=label)
            ax.axhspan(min(reference), max(reference), color=color, alpha=0.15, linewidth=0)
        if factors:
            ax.set_xticks(factors, [f"{f:g}" for f in factors])
        if len(factors) == 1:  # else the axis spans only the offsets, and "slightly apart" looks far apart
            ax.set_xlim(factors[0] - 0.1 * span, factors[0] + 0.1 * span)
        if not done:
            empty = "no completed runs" if not completed else f"no completed run reports {metric.label}"
            ax.text(0.5, 0.5, empty, transform=ax.transAxes, ha="center", va="center")
        ax.set_xlabel("label-smoothing factor" + (" (lines drawn slightly apart)" if len(curves) > 1 else ""))
        ax.set_ylabel(ylabel)
        subtitle = f"{len(done)} completed run(s) plotted; {len(runs) - len(completed)} left out as not completed"
        legend = ["lines: means, bars: min–max, dots: single runs"] if curves else []
        legend += ["dashed: mean without smoothing, band: min–max"] if references else []
        if legend:
            subtitle += "\n" + "; ".join(legend)
        if len(completed) > len(done):
            subtitle += f"\n{len(completed) - len(done)} completed run(s) without {metric.label} left out (older runs)"
        ax.set_title(f"{title} vs label-smoothing factor\n{subtitle}")
        if ax.get_legend_handles_labels()[0]:
            ax.legend(loc="best", fontsize="small")
        save_png(fig, path)


def write_comparison_plot(comparisons: list[Difference], path: Path) -> None:
    """labels minus loss per factor, each beside a ±1 std band of either method's seeds around
    zero: a difference inside the bands is no bigger than run-to-run noise."""
    labels, loss = SAME_OBJECTIVE
    width = 0.25
    with matplotlib.style.context("ggplot"):
        fig = Figure(figsize=(11, 5), layout="constrained")
        for ax, name in zip(fig.subplots(1, len(COMPARED_METRICS), squeeze=False)[0], COMPARED_METRICS):
            metric = METRIC[name]
            scale = 100 if metric.percent else 1
            diffs = [d for d in comparisons if d.metric == name]
            x = np.arange(len(diffs))
            ax.axhline(0, color="0.3", linewidth=0.8)
            if diffs:
                value = np.array([scale * d.value for d in diffs])
                bars = ax.bar(x - width, value, width, color="0.25", label=f"{labels} − {loss} (difference of means)")
                ax.bar_label(bars, [metric.show(d.value) for d in diffs], fontsize=8, padding=2)
                for offset, method, color in ((0.0, labels, "C0"), (width, loss, "C1")):
                    std = np.array([scale * (getattr(d, method).std or 0.0) for d in diffs])
                    ax.bar(x + offset, 2 * std, width, bottom=-std, color=color, alpha=0.45,
                           label=f"±1 std of {method} across seeds (none for a single seed)")  # fmt: skip
                ax.set_xticks(x, [f"{d.factor:g}" + _show_varied(d.varied, "\n") for d in diffs])
                ax.legend(loc="best", fontsize="small")
            else:
                ax.set_xticks([])
                ax.text(0.5, 0.5, f"no factor has completed {labels} and {loss} runs\nthat report {metric.label}",
                        transform=ax.transAxes, ha="center", va="center")  # fmt: skip
            ax.set_xlabel("label-smoothing factor")
            ax.set_ylabel(f"{labels} − {loss}" + (" (percentage points)" if metric.percent else ""))
            ax.set_title(f"{PLOT_TITLE.get(name, metric.label)}: {labels} − {loss}")
        fig.suptitle(f"{labels} vs {loss} at the same factor: the difference beside each method's seed spread")
        save_png(fig, path)


# ---------------------------------------------------------------------------- small helpers


def _is(value: Any, kind: type) -> bool:
    """JSON/YAML type check: bools are not numbers, ints are floats."""
    if isinstance(value, bool):
        return kind is bool
    if kind is float:
        return isinstance(value, (int, float))
    return isinstance(value, kind)


def _finite(value: Any) -> float | None:
    return float(value) if _is(value, float) and math.isfinite(value) else None


def _agree(a: float, b: Any) -> bool:
    return _finite(b) is not None and math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-12)


def _why(error: Exception) -> str:
    return (error.strerror if isinstance(error, OSError) and error.strerror else None) or str(error)


def _text(value: Any, missing: str = "") -> str:
    return missing if value is None else str(value)


def _show_factor(method: str | None, factor: float | None) -> str:
    if method == NO_FACTOR:
        return "–"  # the factor is ignored
    return "" if factor is None else f"{factor:g}"


def _show_value(text: str) -> str:
    """A setting's JSON text as a reader writes it: bf16, not "bf16"."""
    try:
        value = json.loads(text)
    except ValueError:
        return text  # ABSENT, UNKNOWN
    return value if isinstance(value, str) else text


def _csv_value(text: str) -> str:
    return "" if text in (ABSENT, UNKNOWN) else _show_value(text)


def _show_varied(varied: tuple[tuple[str, str], ...], lead: str) -> str:
    """`lead` and "key=value, ..." for a group's varied settings; "" where nothing varies."""
    return lead + ", ".join(f"{key}={_show_value(value)}" for key, value in varied) if varied else ""


def _show_duration(seconds: float | None) -> str:
    if seconds is None:
        return ""
    minutes, secs = divmod(round(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}"


def _shorten(text: str, limit: int) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _cell(text: str) -> str:
    """Markdown table cell: one line, pipes escaped."""
    return " ".join(str(text).split()).replace("|", "\\|")
