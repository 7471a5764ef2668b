"""Reading the runs under a results root (rundir.run_directories finds them): what each one's
manifest, metrics.json, history.csv and spec.yaml say and, from that, its status (completed only
where they all agree), its metrics and the result-changing settings it ran with, as a `Run`;
`collect` reads them all and sorts them. Nothing here writes, and no run's lock is taken."""

from __future__ import annotations

import csv
import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from job.errors import EXIT_BAD_INPUT, JobError
from job.history import read_history
from job.rundir import (
    COMPLETED,
    FAILED,
    HISTORY_FILE,
    INTERRUPTED,
    MANIFEST,
    MANIFEST_STATUSES,
    METRICS_FILE,
    RUNNING,
    SPEC_FILE,
    code_versions,
    lock_holder,
    read_own_text,
    run_directories,
)
from job.spec import Spec, flatten, sizes_shown
from job.spec_yaml import load_yaml

NO_FACTOR = "none"  # the method whose factor is ignored: a reference line, not a curve
# Display order; also every status a row can have.
STATUSES = {
    COMPLETED: "finished, and its manifest, metrics.json and history.csv agree",
    RUNNING: "the manifest says running and its process may be alive",
    "killed": "the manifest says running, but the process its .lock names is gone (same host)",
    INTERRUPTED: "stopped by SIGTERM/SIGINT; re-run the same command to resume",
    FAILED: "ended with an error (see reason); re-run to resume",
    "incomplete": "never wrote a manifest, or says completed while results are missing or disagree",
    "damaged": "manifest.json unreadable or of an unknown shape",
}
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
    duration_partial: bool = False  # an attempt's end was never recorded (killed, or running): duration_s omits it
    attempts: int | None = None
    spec_hash: str | None = None
    made_by: str | None = None  # the versions its manifest records: "lsjob 0.1.0 (commit 21de4e9), keras ..."
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
        return (*group_key(self.method, self.factor, self.varied), self.seed is None, self.seed or 0, self.run)


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


# ---------------------------------------------------------------------------- reading one run


def _relative(path: Path, root: Path) -> str:
    return path.relative_to(root).as_posix()  # "." when the root is itself a run


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
            run.status, run.reason = RUNNING, f"starting, no manifest yet: {holder.text}"
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
    run.made_by = _code_text(manifest)
    run.duration_partial = any(not isinstance(a, dict) or "ended" not in a for a in manifest["attempts"])
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
    if status == RUNNING:
        holder = lock_holder(path)
        if holder.dead:
            run.status = "killed"
            run.reason = f"the manifest says running, but {holder.text} is gone; re-run the same command to resume"
        else:
            run.status, run.reason = RUNNING, holder.text
        return run
    run.status, run.reason = status, manifest.get("reason") if isinstance(manifest.get("reason"), str) else None
    return run


def _code_text(manifest: dict) -> str | None:
    """The code and libraries a run's manifest records (rundir.code_versions), as one text; None
    where it records none."""
    versions, commit = code_versions(manifest)
    at = f" (commit {commit[:12]})" if commit else ""
    return ", ".join(f"{name} {version}{at if name == 'lsjob' else ''}" for name, version in versions.items()) or None


def _read_manifest(path: Path) -> dict:
    try:
        text = read_own_text(path)
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
        elif kind is float and (_finite(manifest[key]) is None or (key == "duration_s" and manifest[key] < 0)):
            # JSON as Python reads it takes NaN, Infinity and 1e400; no run writes them, nor a negative duration.
            need = "a finite number" + (" >= 0" if key == "duration_s" else "")
            problems.append(f"{key!r} is {_short_number(manifest[key])}, not {need}")
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
        doc = json.loads(read_own_text(path))
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
        return len(read_history(path / HISTORY_FILE))
    except FileNotFoundError:
        raise _Unreadable(f"there is no {HISTORY_FILE}") from None
    except (OSError, csv.Error, ValueError) as e:
        raise _Unreadable(f"{HISTORY_FILE} is unreadable: {_why(e)}") from None


def _epochs_so_far(path: Path) -> int | None:
    """Epochs done by an unfinished run: 0 before history.csv exists, None if it cannot be read."""
    if not (path / HISTORY_FILE).exists():
        return 0
    try:
        return _history_epochs(path)
    except _Unreadable:
        return None


def _read_spec(path: Path) -> dict | None:
    try:  # as lsjob run reads a spec (YAML 1.2): PyYAML's own loader reads an unquoted `off` as false
        doc = load_yaml(read_own_text(path / SPEC_FILE))
    except (OSError, ValueError, yaml.YAMLError, RecursionError):
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
    """spec.yaml as the run's identity counts it (Spec.identity): the fields a run of an older
    version did not write filled in with the defaults it ran with, and a field the spec's own
    settings ignore (lr_reference_batch without lr_scaling, say) at its default, so that runs
    which are one experiment to `lsjob run` are one group here too. As written where it no
    longer validates (a field since renamed)."""
    try:
        return Spec.model_validate(spec).identity()
    except (ValueError, JobError):
        return spec


def _settings(spec: dict) -> dict[str, str]:
    """spec.yaml flattened to dotted keys, without the fields that do not change results; an
    unset data size as the whole set's (a data-size sweep's last column reads 50000, not null)."""
    flat = {
        key: json.dumps(value, sort_keys=True)
        for key, value in sizes_shown(flatten(spec)).items()
        if not any(key == skip or key.startswith(skip + ".") for skip in NOT_COMPARED)
    }
    # Spec.identity's rule again, for a spec.yaml that no longer validates (read as written).
    if flat.get("eval.temperature_scaling") != "true":
        flat.pop("eval.holdout_size", None)  # holds nothing out without temperature scaling
    if flat.get("train.lr_scaling") != '"linear"':
        flat.pop("train.lr_reference_batch", None)  # scales nothing without lr_scaling
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


# ---------------------------------------------------------------------------- order


def group_key(method: str | None, factor: float | None, varied: tuple = ()) -> tuple:
    # Each setting's block together, then method and factor as in a sweep without one.
    settings = tuple(value_order(value) for _, value in varied)
    return (settings, method is None, method or "", factor is None, factor or 0.0)


def value_order(text: str) -> tuple:
    """Numbers in numeric order (0.005 < 0.05 < 1 < 10), then text, then absent or unknown."""
    try:
        value = json.loads(text)
    except ValueError:
        return (3, 0.0, text)
    if _is(value, float):
        return (0, float(value), "")
    return (1, 0.0, value) if isinstance(value, str) else (2, 0.0, text)


# ---------------------------------------------------------------------------- small helpers


def _is(value: Any, kind: type) -> bool:
    """JSON/YAML type check: bools are not numbers, ints are floats."""
    if isinstance(value, bool):
        return kind is bool
    if kind is float:
        return isinstance(value, (int, float))
    return isinstance(value, kind)


def _finite(value: Any) -> float | None:
    if not _is(value, float):
        return None
    try:
        number = float(value)
    except OverflowError:  # an int past float's range, as JSON may hold
        return None
    return number if math.isfinite(number) else None


def _short_number(value: float) -> str:
    text = repr(value)
    return text if len(text) <= 24 else f"{text[:20]}... ({len(text)} digits)"


def _agree(a: float, b: Any) -> bool:
    return _finite(b) is not None and math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-12)


def _why(error: Exception) -> str:
    return (error.strerror if isinstance(error, OSError) and error.strerror else None) or str(error)
