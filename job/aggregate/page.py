"""aggregate.html: a results tree's aggregate as one page, opened in a browser from the volume.

The aggregate's plots are embedded as data URIs, so the file alone shows everything
when it is copied off the volume; each run's own plots are relative links, which
work while the page stays where it was written. The page has no script and loads
nothing from the network, so it opens offline; every text is escaped, since run
names and failure reasons come from the results volume.
"""

from __future__ import annotations

import base64
import html
import os
from pathlib import Path
from urllib.parse import quote

from job.aggregate.plots import COMPARISON_PLOT_NAME, ECE_PLOT_NAME, PLOT_NAME
from job.aggregate.runs import STATUSES, Run
from job.aggregate.stats import BASELINE, SAME_OBJECTIVE, Summary
from job.aggregate.tables import (
    STATS_NOTE,
    Table,
    comparison_sections,
    group_table,
    metrics_note,
    run_cells,
    run_columns,
    shown_metrics,
    tally,
)
from job.atomic import write_text
from job.rundir import CONFUSION_PLOT, RELIABILITY_PLOT, TRAINING_PLOT

# Each run's plots that the page links to, if the run has them: file, link text.
RUN_PLOTS = (
    (TRAINING_PLOT, "training"),
    (RELIABILITY_PLOT, "reliability"),
    (CONFUSION_PLOT, "confusion matrix"),
)
# Row colour by status: a reader must spot what did not finish without reading every row.
TONE = {
    "completed": "ok",
    "running": "busy",
    "interrupted": "warn",
    "incomplete": "warn",
    "killed": "bad",
    "failed": "bad",
    "damaged": "bad",
}
NUMBER = ' class="num"'
CSS = """
body { font: 15px/1.45 system-ui, sans-serif; margin: 1.5em auto; max-width: 1800px; padding: 0 1em; color: #222; }
h1 { font-size: 1.5em; } h2 { margin-top: 2em; border-bottom: 1px solid #ccc; }
code { background: #f3f3f3; padding: 0 .2em; }
table { border-collapse: collapse; margin: .5em 0; font-size: .9em; }
th, td { border: 1px solid #ccc; padding: .25em .5em; vertical-align: top; text-align: left; }
th { background: #eee; }
.wide { overflow-x: auto; }
td.num { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
td.run, td.plots a { white-space: nowrap; }
td.reason { min-width: 16em; max-width: 40em; white-space: pre-wrap; overflow-wrap: anywhere; }
tr.busy { background: #e8f0fb; } tr.warn { background: #fff4d6; } tr.bad { background: #fde2e0; }
.status { font-weight: bold; white-space: nowrap; }
tr.warn .status::before, tr.bad .status::before { content: "⚠ "; }
.note { color: #555; max-width: 70em; }
.warnings { background: #fff4d6; border: 1px solid #e0c060; padding: .5em 1em; }
.warnings h2 { margin-top: .3em; }
figure { margin: 1em 0; } figure img { max-width: 100%; border: 1px solid #ddd; }
nav a { margin-right: 1em; }
""".strip()


def write_page(summary: Summary, path: Path, plots: Path | None = None) -> None:
    write_text(path, render_page(summary, plots))


def render_page(summary: Summary, plots: Path | None = None) -> str:
    """The page, with the aggregate plots embedded from `plots` (default: where it goes)."""
    runs, out = summary.runs, summary.out
    plots = out if plots is None else plots
    metrics = shown_metrics(runs)
    labels, loss = SAME_OBJECTIVE
    title = f"lsjob runs under {summary.root}"
    sections = [("summary", "by method and factor"), ("labels-vs-loss", f"{labels} vs {loss}"),
                ("vs-baseline", f"smoothing vs {BASELINE}"), ("plots", "plots"), ("runs", "runs")]  # fmt: skip
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en">',
        '<head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{_e(title)}</title>",
        f"<style>\n{CSS}\n</style>",
        "</head>",
        "<body>",
        f"<h1>lsjob runs under <code>{_e(summary.root)}</code></h1>",
        f'<p class="tally">{_e(tally(runs))}.</p>',
        "<nav>" + "".join(f'<a href="#{anchor}">{_e(text)}</a>' for anchor, text in sections) + "</nav>",
    ]
    if summary.warnings:
        parts += ['<div class="warnings"><h2 id="warnings">Warnings</h2><ul>']
        parts += [f"<li>{_e(w)}</li>" for w in summary.warnings]
        parts += ["</ul></div>"]

    parts += ['<h2 id="summary">Completed runs by method and factor</h2>', _table(group_table(summary.groups, metrics))]
    parts += [f'<p class="note">{_e(STATS_NOTE + " " + metrics_note(metrics))}</p>']

    # The page alone shows a figure beside a comparison's table.
    caption = f"{labels} minus {loss} at each factor, with its 95% confidence interval, beside the seed spread"
    figures = {"labels-vs-loss": (COMPARISON_PLOT_NAME, caption)}
    for section in comparison_sections(summary.comparisons, summary.baseline_comparisons):
        parts += [f'<h2 id="{section.anchor}">{_e(section.title)}</h2>']
        if section.table is not None:
            parts += [f'<p class="note">{_e(section.note)}</p>', _table(section.table)]
        else:
            parts += [f"<p>{section.absent(lambda name: f'<code>{_e(name)}</code>')}</p>"]
        if section.anchor in figures:
            parts += [_figure(plots / figures[section.anchor][0], figures[section.anchor][1])]

    parts += ['<h2 id="plots">Plots</h2>']
    parts += [_figure(plots / PLOT_NAME, "test accuracy against the label-smoothing factor, per method")]
    ece_caption = "expected calibration error against the label-smoothing factor, per method"
    parts += [_figure(plots / ECE_PLOT_NAME, ece_caption)]

    parts += ['<h2 id="runs">Runs</h2>', _runs_table(runs, out)]
    present = [s for s in STATUSES if any(r.status == s for r in runs)]
    parts += ['<dl class="note">', *(f"<dt>{_e(s)}</dt><dd>{_e(STATUSES[s])}</dd>" for s in present), "</dl>"]
    footer = (
        f"Written by lsjob aggregate into {os.path.abspath(out)}. The plots above are part of this file; the links "
        "to each run's plots are relative to its folder, so they work while it stays beside the results."
    )
    parts += [f'<p class="note">{_e(footer)}</p>', "</body>", "</html>"]
    return "\n".join(parts) + "\n"


def _runs_table(runs: list[Run], out: Path) -> str:
    columns = run_columns(runs)
    # The links right after the status, where a wide table still shows them without scrolling.
    after = [c.name for c in columns].index("status") + 1
    head = [c.label for c in columns]
    head.insert(after, "plots")
    rows = []
    for run in runs:
        cells = []
        for column, text in zip(columns, run_cells(run, columns)):
            if column.name == "reason":
                cells.append(f'<td class="reason">{_e(run.reason or "")}</td>')  # whole: the Markdown shortens it
            elif column.name in ("status", "run"):
                cells.append(f'<td class="{column.name}">{_e(text)}</td>')
            else:
                cells.append(f"<td{NUMBER if column.right else ''}>{_e(text)}</td>")
        links = [f'<a href="{_e(_href(run.path / name, out))}">{_e(text)}</a>'
                 for name, text in RUN_PLOTS if (run.path / name).is_file()]  # fmt: skip
        cells.insert(after, f'<td class="plots">{"<br>".join(links)}</td>')
        rows.append(f'<tr class="{TONE.get(run.status, "bad")}" data-status="{_e(run.status)}">{"".join(cells)}</tr>')
    return _html_table(head, rows, ' class="runs"')


def _table(table: Table) -> str:
    rows = ["<tr>" + "".join(f"<td{NUMBER if right else ''}>{_e(c)}</td>" for c, right in zip(row, table.right))
            + "</tr>" for row in table.rows]  # fmt: skip
    return _html_table(table.header, rows)


def _html_table(header: list[str], rows: list[str], attributes: str = "") -> str:
    """Header texts and rendered rows as a table that scrolls sideways by itself, leaving the
    page, its headings and plots in place."""
    head = "".join(f"<th>{_e(h)}</th>" for h in header)
    body = "\n".join(rows)
    return f'<div class="wide"><table{attributes}><thead><tr>{head}</tr></thead><tbody>\n{body}\n</tbody></table></div>'


def _figure(path: Path, caption: str) -> str:
    data = base64.b64encode(path.read_bytes()).decode("ascii")
    return (f'<figure><img src="data:image/png;base64,{data}" alt="{_e(caption)}">'
            f"<figcaption>{_e(caption)} ({_e(path.name)})</figcaption></figure>")  # fmt: skip


def _href(target: Path, base: Path) -> str:
    """A relative URL from the page's folder to `target`, each path segment percent-encoded
    (a run named 'a #1' must not become a fragment); '../' where out is not above the runs."""
    relative = os.path.relpath(os.path.abspath(target), os.path.abspath(base))
    return "/".join(quote(part, safe="") for part in relative.split(os.sep))


def _e(value: object) -> str:
    return html.escape(str(value), quote=True)
