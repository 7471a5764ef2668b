"""Aggregate a results tree: one row per run, a per-(method, factor) summary, plots, a page.

`aggregate(root)` finds every run directory under `root` at any depth and writes
`aggregate.csv`, `aggregate.json`, `aggregate.md`, `accuracy_vs_factor.png`,
`ece_vs_factor.png`, `labels_vs_loss.png` and `aggregate.html` (job.aggregate.page). Every run directory
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

The package, in the order the data flows: runs (each run directory read into a `Run`,
its status and settings), stats (the groups' statistics, labels vs loss, smoothing vs none,
the warnings, among them the groups a comparison leaves out),
tables (the CSV and the Markdown, and the cells the page shows), plots (the figures),
page (aggregate.html); display says how a value reads in all of them. This module
writes the set, as one.

A new metric (MCE, NLL after temperature scaling, ...) is one more `Metric` in
runs.METRICS: it then gets its CSV, Markdown and HTML columns and its summary statistics.
A plot against the factor is one more entry in plots.FACTOR_PLOTS, a comparison (labels vs
loss, smoothing vs none) one more name in stats.COMPARED_METRICS.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
from pathlib import Path

from job.aggregate.page import write_page
from job.aggregate.plots import COMPARISON_PLOT_NAME, FACTOR_PLOTS, write_comparison_plot, write_factor_plot
from job.aggregate.runs import METRIC, METRICS, AggregateError, NoRunsError, Run, collect
from job.aggregate.stats import (
    Summary,
    compare,
    compare_with_baseline,
    comparison_warnings,
    seed_warnings,
    summarize,
    unpaired_warnings,
)
from job.aggregate.tables import CSV_COLUMNS, render_csv, render_json, render_markdown
from job.atomic import clear_abandoned_staging, file_set, write_text
from job.errors import NO_SPACE_ERRNOS, NoSpaceError, storage_fault
from job.rundir import LOCK, MANIFEST, SPEC_FILE, is_run_directory, links_to_nothing, nearest_existing

# What other modules and the tests use; the rest lives in the modules named above.
__all__ = [
    "CSV_COLUMNS",
    "CSV_NAME",
    "HTML_NAME",
    "JSON_NAME",
    "MARKDOWN_NAME",
    "METRIC",
    "METRICS",
    "AggregateError",
    "NoRunsError",
    "Summary",
    "aggregate",
    "collect",
    "comparison_warnings",
]

log = logging.getLogger("lsjob")

CSV_NAME = "aggregate.csv"
MARKDOWN_NAME = "aggregate.md"
HTML_NAME = "aggregate.html"
JSON_NAME = "aggregate.json"
# An aggregate writes its set in seconds; a staging folder this old is a killed one's.
ABANDONED_STAGING_S = 3600


def aggregate(root: str | os.PathLike, out: str | os.PathLike | None = None) -> Summary:
    """Read every run under `root`, write the aggregate files into `out` (default: root)."""
    root = Path(root)
    runs, warnings = collect(root)
    if not runs:
        raise NoRunsError(
            f"no lsjob runs under {root}: no directory there holds a {MANIFEST}, a {SPEC_FILE} or a {LOCK} "
            "written by lsjob; give the results root that holds the run directories"
        )
    out = root if out is None else Path(out)
    _refuse_file(out)
    _refuse_run_directory(out, runs)
    groups = summarize(runs)
    comparisons, baseline_comparisons = compare(groups), compare_with_baseline(groups)
    warnings += (
        comparison_warnings(runs) + unpaired_warnings(groups) + seed_warnings(comparisons + baseline_comparisons)
    )
    # Headed by the absolute path: `aggregate .` and `aggregate $PWD` write the same files, and a page
    # opened elsewhere still says where its runs are.
    where = Path(os.path.abspath(root))
    markdown = render_markdown(where, runs, groups, comparisons, baseline_comparisons, warnings)
    names = (CSV_NAME, JSON_NAME, MARKDOWN_NAME, *(name for name, *_ in FACTOR_PLOTS), COMPARISON_PLOT_NAME, HTML_NAME)
    outputs = tuple(out / n for n in names)
    summary = Summary(where, out, runs, groups, comparisons, baseline_comparisons, warnings, markdown, outputs)
    try:
        out.mkdir(parents=True, exist_ok=True)
        clear_abandoned_staging(out, ABANDONED_STAGING_S)
        # A failure leaves the previous aggregate whole, not half replaced; a second aggregate
        # into the same folder waits, so the two cannot interleave their files' renames.
        with _one_writer_at_a_time(out), file_set(out) as files:
            write_text(files.path(CSV_NAME), render_csv(runs))
            write_text(files.path(JSON_NAME), render_json(groups, comparisons, baseline_comparisons, warnings))
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


@contextlib.contextmanager
def _one_writer_at_a_time(out: Path):
    """A flock on the output folder itself, for the while a set is written: nothing is left behind
    in the folder, and the lock dies with its holder. On NFS a folder's flock holds within one
    node only; where none can be had at all, the set is written unlocked, as before."""
    fd = os.open(out, os.O_RDONLY | os.O_DIRECTORY)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            log.warning("another lsjob aggregate is writing into %s; waiting for it to finish", out)
            with contextlib.suppress(OSError):
                fcntl.flock(fd, fcntl.LOCK_EX)
        except OSError:
            pass
        yield
    finally:
        os.close(fd)  # closing drops the flock


def _refuse_file(out: Path) -> None:
    """--out naming a file, a link to nothing or a folder below one: mkdir said only "File exists"."""
    try:
        existing = nearest_existing(out)
        if existing.is_dir():
            return
        what = "a link to nothing" if links_to_nothing(existing) else "a file"
    except OSError as e:  # a folder above it this user may not look into; a link loop
        raise AggregateError(f"cannot write the aggregate into {out}: {e.strerror or e}; pass --out DIR") from None
    raise AggregateError(
        f"cannot write the aggregate into {out}: {existing} is {what}, and the aggregate is a folder of files; "
        "pass --out DIR naming a folder (made if missing)"
    )


def _refuse_run_directory(out: Path, runs: list[Run]) -> None:
    """A run directory holds only what its run writes: anything else there, and a run that
    stopped while starting no longer resumes ("not an lsjob run directory"). Those found under
    the root, and any other (rundir.is_run_directory)."""
    where = out.resolve()
    found = [run.path.resolve() for run in runs]
    for folder in (where, *where.parents):
        if folder in found or is_run_directory(folder):
            raise AggregateError(
                f"{out} is inside the run directory {folder}, where aggregate does not write; give the folder "
                "holding the runs, or pass --out DIR elsewhere"
            )
