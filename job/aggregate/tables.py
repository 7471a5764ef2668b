"""The tables as text: aggregate.csv (a row per run, every column, full precision),
aggregate.json (the groups and comparisons, for scripts) and aggregate.md, and the cells of
the groups, comparison and runs tables that the HTML page (page.py) shows as they are here.
A new column of the runs table is one more `Column` in COLUMNS."""

from __future__ import annotations

import csv
import io
import json
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from job.aggregate.display import (
    as_text,
    count_runs,
    csv_value,
    factor_text,
    markdown_cell,
    shorten,
    show_duration,
    show_factor,
    show_value,
)
from job.aggregate.runs import METRIC, METRICS, STATUSES, Metric, Run
from job.aggregate.stats import BASELINE, SAME_OBJECTIVE, Difference, Group, Stats

MD_REASON_CHARS = 160  # the Markdown table shortens reasons; the CSV keeps them whole


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
    Column("factor", lambda r: r.factor, "factor", lambda r: show_factor(r.method, r.factor), right=True),
    Column("seed", lambda r: r.seed, "seed", right=True),
    Column("status", lambda r: r.status, "status"),
    *(_metric_column(m) for m in METRICS),
    Column("epochs_done", lambda r: r.epochs_done),
    Column("epochs_total", lambda r: r.epochs_total),
    Column(
        "", lambda r: None, "epochs", lambda r: f"{as_text(r.epochs_done, '?')}/{as_text(r.epochs_total, '?')}", True
    ),
    # "≥": a killed run's 0:00:00 read as a run that never ran; its last attempt's time is unknown.
    Column(
        "duration_s",
        lambda r: r.duration_s,
        "duration",
        lambda r: "≥ " * (r.duration_partial and r.duration_s is not None) + show_duration(r.duration_s),
        right=True,
    ),
    Column("attempts", lambda r: r.attempts, "attempts", right=True),
    Column("spec_hash", lambda r: r.spec_hash, "spec hash"),
    Column("reason", lambda r: r.reason, "reason", lambda r: shorten(r.reason or "", MD_REASON_CHARS)),
)
CSV_COLUMNS = tuple(c for c in COLUMNS if c.name)


def _with_settings(columns: tuple[Column, ...] | list[Column], runs: list[Run], csv: bool) -> list[Column]:
    """The columns, with one per varied setting after the seed (empty in the CSV where unknown)."""
    keys = [key for key, _ in runs[0].varied] if runs else []
    added = [
        Column(key, lambda r, i=i: csv_value(r.varied[i][1]) if csv else show_value(r.varied[i][1]), key)
        for i, key in enumerate(keys)
    ]
    at = next(i for i, c in enumerate(columns) if c.name == "seed") + 1
    return [*columns[:at], *added, *columns[at:]]


def render_csv(runs: list[Run]) -> str:
    """One row per run, every column, floats at full (round-trip) precision, empty for unknown."""
    out = io.StringIO()
    # RFC 4180's line end: Python before 3.13 quotes a field only for the characters of the
    # lineterminator, so with "\n" alone a "\r" in a reason went out bare and split its row.
    writer = csv.writer(out, lineterminator="\r\n")
    columns = _with_settings(CSV_COLUMNS, runs, csv=True)
    writer.writerow([c.name for c in columns])
    for run in runs:
        writer.writerow(["" if (v := c.get(run)) is None else repr(v) if isinstance(v, float) else _csv_text(v)
                         for c in columns])  # fmt: skip
    return out.getvalue()


# A spreadsheet runs a cell that starts with one of these as a formula (=HYPERLINK(...), a DDE
# call): a run folder's name or a reason, which anyone who can write to the results may choose,
# is kept as text by a leading ', as OWASP advises. Numbers (-0.5) stay as they are.
FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def _csv_text(value):
    if isinstance(value, str) and value.startswith(FORMULA_START):
        try:
            float(value)
        except ValueError:
            return "'" + value
    return value


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
# How to read a difference of means over few seeds: both comparison tables say it.
TEST_NOTE = (
    "p is from a t-test: the chance that seed noise alone gives a difference at least this large. The test is "
    "paired where both sides completed the same seeds, once each: a seed starts every method from the same "
    "weights, data order and augmentation, so SE = std of the per-seed differences / sqrt(n), in which noise "
    "a seed's two runs share cancels. Otherwise it is Welch's, SE = sqrt(std_a²/n_a + std_b²/n_b). With few "
    "seeds only a large difference / SE is evidence: p < 0.05 takes about 12.7 SE with 2 paired seeds, 4.3 "
    "with 3 and 2.8 with 5; Welch's, 4.3 to 12.7 SE with 2 seeds per side and 2.8 to 4.3 with 3, the more the "
    'two sides\' spreads differ. "seeds differ": the two sides completed different seeds, so the difference '
    "also holds the seeds one side lacks (the warnings name them)."
)
COMPARISON_NOTE = (
    "labels and loss optimise the same objective, so their difference at the same factor should be "
    "run-to-run noise: compare it with each method's std across seeds and with the standard error of the "
    "difference, SE. " + TEST_NOTE
)
BASELINE_NOTE = (
    f"Each smoothed group minus the baseline ({BASELINE}) trained with the same other settings: what smoothing "
    "changed; a higher accuracy and a lower NLL or ECE are better. " + TEST_NOTE
)
NO_SPREAD_NOTE = (
    "No spread: there is no noise to weigh the difference against. Welch's: the seeds of each method agreed "
    "exactly; paired: every seed's two runs differed by the same amount (by 0 where they matched run for run)."
)


@dataclass(frozen=True)
class Section:
    """A comparison as the Markdown and the page both show it: a note and a table, or a sentence."""

    anchor: str  # the page's id for it
    title: str
    note: str | None  # None where there is nothing to compare
    table: Table | None
    absent: Callable[[Callable[[str], str]], str]  # the sentence instead; its argument marks up a method's name


def comparison_sections(comparisons: list[Difference], baseline_comparisons: list[Difference]) -> list[Section]:
    labels, loss = SAME_OBJECTIVE
    return [
        Section(
            "labels-vs-loss", f"{labels} vs {loss} at the same factor",
            comparison_note(comparisons) if comparisons else None,
            comparison_table(comparisons) if comparisons else None,
            # "With the same other settings": both may have runs at a factor, only not comparable ones.
            lambda code: f"No factor has completed runs of both {code(labels)} and {code(loss)} with the same other "
            "settings.",
        ),
        Section(
            "vs-baseline", f"Smoothing vs {BASELINE}",
            comparison_note(baseline_comparisons, BASELINE_NOTE) if baseline_comparisons else None,
            baseline_table(baseline_comparisons) if baseline_comparisons else None,
            lambda code: f"No smoothed group has completed runs beside completed {code(BASELINE)} runs of the same "
            "other settings.",
        ),
    ]  # fmt: skip


def comparison_note(comparisons: list[Difference], note: str = COMPARISON_NOTE) -> str:
    """How to read a comparison table (shown only when there is one): 'no spread' only when it says so."""
    no_spread = any(d.se is not None and d.ratio is None for d in comparisons)
    return note + (" " + NO_SPREAD_NOTE if no_spread else "")


def tally(runs: list[Run]) -> str:
    counts = Counter(r.status for r in runs)
    return f"{count_runs(len(runs))}: " + ", ".join(f"{counts[s]} {s}" for s in STATUSES if counts[s])


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
    return [c.show(run) if c.show else as_text(c.get(run)) for c in columns]


def group_table(groups: list[Group], metrics: list[Metric]) -> Table:
    keys = [key for key, _ in groups[0].varied] if groups else []
    header = ["method", "factor", *keys, "completed", "not completed"]
    for metric in metrics:
        header += [f"{metric.label} mean ± std", f"{metric.label} min – max"]
    rows = []
    for g in groups:
        cells = [g.method, show_factor(g.method, g.factor), *(show_value(v) for _, v in g.varied), str(g.completed),
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
    """labels minus loss, a row per factor, varied settings and metric."""
    labels, loss = SAME_OBJECTIVE
    keys = [key for key, _ in comparisons[0].varied] if comparisons else []
    header = ["factor", *keys, "metric", f"{labels} mean ± std (n)", f"{loss} mean ± std (n)", f"{labels} − {loss}",
              "SE", "difference / SE", "p", "test"]  # fmt: skip
    rows = [[factor_text(d.factor), *(show_value(v) for _, v in d.varied), *_difference_cells(d)] for d in comparisons]
    return Table(header, rows, [True, *[False] * len(keys), False, True, True, True, True, True, True, False])


def baseline_table(comparisons: list[Difference]) -> Table:
    """Each smoothed group minus the baseline, a row per method, factor, varied settings and metric."""
    keys = [key for key, _ in comparisons[0].varied] if comparisons else []
    header = ["method", "factor", *keys, "metric", "method mean ± std (n)", f"{BASELINE} mean ± std (n)",
              f"method − {BASELINE}", "SE", "difference / SE", "p", "test"]  # fmt: skip
    rows = [[d.method, factor_text(d.factor), *(show_value(v) for _, v in d.varied), *_difference_cells(d)]
            for d in comparisons]  # fmt: skip
    return Table(header, rows, [False, True, *[False] * len(keys), False, True, True, True, True, True, True, False])


def _difference_cells(d: Difference) -> list[str]:
    metric = METRIC[d.metric]
    sign = "+" if d.value > 0 else ""
    return [
        metric.label, _spread(metric, d.a), _spread(metric, d.b), sign + metric.show(d.value),
        "–" if d.se is None else metric.show(d.se),
        "–" if d.se is None else "no spread" if d.ratio is None else f"{d.ratio:+.1f}",
        "–" if d.p_value is None else p_text(d.p_value),
        "; ".join(filter(None, [d.test, "seeds differ" if d.seeds_differ else None])) or "–",
    ]  # fmt: skip


# The thresholds p is read against: its text never rounds across one (0.0496 printed "0.05").
P_THRESHOLDS = (0.05, 0.01)


def p_text(p: float) -> str:
    """p to 2 significant digits, or more where 2 would land it on the other side of a threshold."""
    for digits in range(2, 7):
        text = f"{p:.{digits}g}"
        if all((float(text) < t) == (p < t) for t in P_THRESHOLDS):
            return text
    return text


def _spread(metric: Metric, s: Stats) -> str:
    return f"{metric.show(s.mean)} ± {'–' if s.std is None else metric.show(s.std)} ({s.n})"


def render_json(
    groups: list[Group], comparisons: list[Difference], baseline_comparisons: list[Difference], warnings: list[str]
) -> str:
    """aggregate.json: the groups' statistics and both comparisons at full precision, for scripts
    (aggregate.csv has the runs). A varied setting is its value; null where a run lacks it."""

    def stats(s: Stats) -> dict:
        return {"mean": s.mean, "std": s.std, "min": s.min, "max": s.max, "n": s.n}

    def difference(d: Difference) -> dict:
        return {
            "method": d.method, "other": d.other, "factor": d.factor, "settings": _json_settings(d.varied),
            "metric": d.metric, "method_stats": stats(d.a), "other_stats": stats(d.b), "difference": d.value,
            "se": d.se, "difference_over_se": d.ratio, "p": d.p_value, "test": d.test,
            "ci95": None if d.interval is None else list(d.interval),
            "seeds": {"method": list(d.seeds[0]), "other": list(d.seeds[1])},
        }  # fmt: skip

    summary = {
        "groups": [
            {
                "method": g.method,
                "factor": g.factor,
                "settings": _json_settings(g.varied),
                "completed": g.completed,
                "not_completed": g.not_completed,
                "stats": {name: stats(s) for name, s in g.stats.items()},
                "seeds": {name: list(seeds) for name, seeds in g.seeds.items()},
            }  # fmt: skip
            for g in groups
        ],
        "labels_vs_loss": [difference(d) for d in comparisons],
        "vs_baseline": [difference(d) for d in baseline_comparisons],
        "warnings": warnings,
    }
    return json.dumps(summary, indent=2) + "\n"


def _json_settings(varied: tuple[tuple[str, str], ...]) -> dict[str, Any]:
    def value(text: str) -> Any:
        try:
            return json.loads(text)
        except ValueError:
            return None  # ABSENT, UNKNOWN

    return {key: value(text) for key, text in varied}


def render_markdown(
    root: Path,
    runs: list[Run],
    groups: list[Group],
    comparisons: list[Difference],
    baseline_comparisons: list[Difference],
    warnings: list[str],
) -> str:
    metrics = shown_metrics(runs)
    lines = [f"# lsjob runs under `{root}`", "", tally(runs) + ".", ""]
    lines += ["## Completed runs by method and factor", "", *_table(group_table(groups, metrics)), ""]
    lines += [STATS_NOTE + " " + metrics_note(metrics), ""]

    for section in comparison_sections(comparisons, baseline_comparisons):
        lines += [f"## {section.title}", ""]
        if section.table is not None:
            lines += [section.note, "", *_table(section.table), ""]
        else:
            lines += [section.absent(lambda name: f"`{name}`"), ""]

    columns = run_columns(runs)
    lines += ["## Runs", ""]
    rows = [run_cells(r, columns) for r in runs]
    lines += _table(Table([c.label for c in columns], rows, [c.right for c in columns]))
    present = [s for s in STATUSES if any(r.status == s for r in runs)]
    lines += ["", "Status: " + "; ".join(f"`{s}`: {STATUSES[s]}" for s in present) + "."]
    if warnings:
        lines += ["", "## Warnings", "", *(f"- {markdown_cell(w)}" for w in warnings)]
    return "\n".join(lines) + "\n"


def _table(table: Table) -> list[str]:
    rule = ["---:" if r else "---" for r in table.right]
    return ["| " + " | ".join(markdown_cell(c) for c in row) + " |" for row in (table.header, rule, *table.rows)]
