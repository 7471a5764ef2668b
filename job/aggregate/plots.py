"""The aggregate's figures: a metric against the smoothing factor, a line per method and varied
settings (one file per entry of FACTOR_PLOTS), and labels minus loss with its confidence interval
beside each method's seed spread (labels_vs_loss.png). Only completed runs are drawn."""

from __future__ import annotations

from pathlib import Path

import matplotlib.style
import numpy as np
from matplotlib.figure import Figure

from job.aggregate.display import count_runs, factor_text, show_varied
from job.aggregate.runs import METRIC, NO_FACTOR, Metric, Run, group_key
from job.aggregate.stats import COMPARED_METRICS, SAME_OBJECTIVE, Difference, describe
from job.atomic import save_png

PLOT_NAME = "accuracy_vs_factor.png"
ECE_PLOT_NAME = "ece_vs_factor.png"
COMPARISON_PLOT_NAME = "labels_vs_loss.png"
# The plots of a metric against the factor: file, metric, title, y-axis label.
FACTOR_PLOTS = (
    (PLOT_NAME, "test_accuracy", "Test accuracy", "test accuracy (%)"),
    (ECE_PLOT_NAME, "test_ece", "Expected calibration error", "ECE (15 equal-width bins of top-1 confidence)"),
)
PLOT_TITLE = {metric: title for _, metric, title, _ in FACTOR_PLOTS}


def write_factor_plot(runs: list[Run], metric: Metric, title: str, ylabel: str, path: Path) -> None:
    """A metric against the smoothing factor: a line per method (and varied settings), `none` as
    a reference band."""
    completed = [r for r in runs if r.completed and r.method is not None and r.factor is not None]
    done = [r for r in completed if metric.name in r.metrics]
    scale = 100 if metric.percent else 1
    values: dict[tuple[str, tuple], dict[float, list[float]]] = {}
    for r in done:
        values.setdefault((r.method, r.varied), {}).setdefault(r.factor, []).append(scale * r.metrics[metric.name])

    order = sorted(values, key=lambda series: group_key(series[0], None, series[1]))
    curves = {series: values[series] for series in order if series[0] != NO_FACTOR}
    references = {series: values[series] for series in order if series[0] == NO_FACTOR}
    factors = sorted({f for points in curves.values() for f in points})
    span = (factors[-1] - factors[0]) if len(factors) > 1 else 0.5

    with matplotlib.style.context("ggplot"):
        # ggplot's 7 colours, or 20 where more lines would share one.
        palette = matplotlib.rcParams["axes.prop_cycle"].by_key()["color"]
        if len(curves) + len(references) > len(palette):
            palette = matplotlib.colormaps["tab20"].colors
        fig = Figure(figsize=(8, 5.5), layout="constrained")
        ax = fig.add_subplot()
        fewer = _draw_curves(ax, curves, span, palette)
        _draw_references(ax, references, palette, first_colour=len(curves))
        if factors:
            ax.set_xticks(factors, [factor_text(f) for f in factors])
        if len(factors) == 1:  # else the axis spans only the offsets, and "slightly apart" looks far apart
            ax.set_xlim(factors[0] - 0.1 * span, factors[0] + 0.1 * span)
        if not done:
            empty = "no completed runs" if not completed else f"no completed run reports {metric.label}"
            ax.text(0.5, 0.5, empty, transform=ax.transAxes, ha="center", va="center")
        ax.set_xlabel("label-smoothing factor" + (" (lines drawn slightly apart)" if len(curves) > 1 else ""))
        ax.set_ylabel(ylabel)
        subtitle = f"{len(done)} completed run(s) plotted; {len(runs) - len(completed)} left out as not completed"
        legend = ["lines: means, bars: min–max, dots: single runs"] if curves else []
        legend += ["n=k: a mean over fewer runs than the others (a seed missing: see the warnings)"] if fewer else []
        legend += ["dashed: mean without smoothing, band: min–max (dotted edges)"] if references else []
        if legend:  # one line each: side by side they outgrew the figure's width
            subtitle += "\n" + "\n".join(legend)
        if len(completed) > len(done):
            subtitle += f"\n{len(completed) - len(done)} completed run(s) without {metric.label} left out (older runs)"
        ax.set_title(f"{title} vs label-smoothing factor\n{subtitle}", fontsize="medium")
        _place_legend(fig, ax)
        _keep_texts_apart(fig)
        save_png(fig, path)


def _draw_curves(ax, curves: dict[tuple[str, tuple], dict[float, list[float]]], span: float, palette) -> bool:
    """A line of means per series, min-max bars, and a dot per run; a mean over fewer runs than
    the most any point has is marked n=k (a missing seed moves it, as much as a method would).
    Whether any was."""
    most = max((len(v) for by_factor in curves.values() for v in by_factor.values()), default=0)
    fewer = False
    # Lines sharing a factor are drawn a little apart so that their bars and dots stay legible.
    offsets = np.linspace(-1, 1, len(curves)) * 0.01 * span if len(curves) > 1 else [0.0]
    for i, (((method, varied), by_factor), offset) in enumerate(zip(curves.items(), offsets)):
        points = sorted(by_factor.items())
        x = np.array([f for f, _ in points]) + offset
        stats = [describe(v) for _, v in points]  # the tables' numbers
        means = np.array([s.mean for s in stats])
        low, high = means - [s.min for s in stats], [s.max for s in stats] - means
        n = sum(len(v) for _, v in points)
        label = f"{method}{show_varied(varied, ', ')} ({count_runs(n)})"
        # Past the palette, each round of colours in a line style and marker of its own.
        again = i // len(palette)
        (line,) = ax.plot(x, means, marker="osD^"[again % 4], linestyle=("-", ":", "-.")[again % 3], label=label,
                          zorder=3, color=palette[i % len(palette)])  # fmt: skip
        ax.errorbar(x, means, yerr=[low, high], fmt="none", ecolor=line.get_color(), capsize=4, zorder=2)
        seeds_x = [f + offset for f, v in points for _ in v]
        seeds_y = [a for _, v in points for a in v]
        ax.scatter(seeds_x, seeds_y, s=22, color=line.get_color(), edgecolors="white", linewidths=0.6,
                   zorder=4)  # fmt: skip
        for at, mean, (_, v) in zip(x, means, points):
            if len(v) < most:
                fewer = True
                ax.annotate(f"n={len(v)}", (at, mean), xytext=(6, 0), textcoords="offset points", ha="left",
                            va="center", fontsize=8, color=line.get_color())  # fmt: skip
    return fewer


def _draw_references(ax, references: dict[tuple[str, tuple], dict[float, list[float]]], palette, first_colour: int):
    """`none`'s runs, of each varied setting: a dashed mean across the plot, and a min-max band."""
    for i, ((_, varied), by_factor) in enumerate(references.items()):
        reference = [a for v in by_factor.values() for a in v]
        # Grey when it is the only one; otherwise each in a colour of its own.
        color = "0.35" if len(references) == 1 else palette[(first_colour + i) % len(palette)]
        label = f"{NO_FACTOR}{show_varied(varied, ', ')} ({count_runs(len(reference))}, no smoothing)"
        ax.axhline(describe(reference).mean, color=color, linestyle="--", label=label)
        ax.axhspan(min(reference), max(reference), color=color, alpha=0.15, linewidth=0)
        # Edges: on ggplot's grey a band across most of the plot read as the plot's own background.
        for edge in (min(reference), max(reference)):
            ax.axhline(edge, color=color, linestyle=":", linewidth=1)


def _place_legend(fig: Figure, ax) -> None:
    """The legend outside the plot, which grows for it: inside, a sweep of many factors or a long
    legend left it no free corner, and it hid points. Below it on a line, else beside it."""
    entries = len(ax.get_legend_handles_labels()[0])
    if entries > 3:
        fig.set_size_inches(13, max(5.5, 1.5 + 0.22 * entries))
        fig.legend(loc="outside right upper", fontsize="small")
        fig.draw_without_rendering()  # a legend of long settings took most of the 13 in: the plot keeps 7
        plot_width = ax.get_position().width * fig.get_figwidth()
        fig.set_figwidth(fig.get_figwidth() + max(0.0, 7 - plot_width))
    elif entries:
        fig.set_figheight(5.8)
        legend = fig.legend(loc="outside lower center", fontsize="small", ncols=entries)
        fig.draw_without_rendering()
        if legend.get_window_extent().width > fig.bbox.width:  # long settings: both ends were cut off
            legend.remove()
            fig.set_figheight(5.5 + 0.25 * entries)
            legend = fig.legend(loc="outside lower center", fontsize="small", ncols=1)
            fig.draw_without_rendering()
            fig.set_figwidth(max(fig.get_figwidth(), legend.get_window_extent().width / fig.dpi + 0.2))


def write_comparison_plot(comparisons: list[Difference], path: Path) -> None:
    """labels minus loss per factor with its 95% confidence interval (the tables' t-test: an
    interval across zero cannot tell the difference from seed noise with these seeds), beside a
    ±1 std band of either method's seeds around zero: how much each method's runs vary."""
    labels, loss = SAME_OBJECTIVE
    width = 0.25
    # A sweep of many factors (or factors times varied settings) widens the panels, up to a point,
    # and past 8 bars stacks them: side by side, the page would shrink them to an unreadable size.
    most = max((sum(d.metric == name for d in comparisons) for name in COMPARED_METRICS), default=0)
    stacked = most > 8
    panel_width = min(12.0, max(8.0 if stacked else 5.0, 1.5 + 0.45 * most))
    rows, cols = (len(COMPARED_METRICS), 1) if stacked else (1, len(COMPARED_METRICS))
    with matplotlib.style.context("ggplot"):
        fig = Figure(figsize=(panel_width * cols, 5 * rows), layout="constrained")
        for ax, name in zip(fig.subplots(rows, cols, squeeze=False).flat, COMPARED_METRICS):
            metric = METRIC[name]
            scale = 100 if metric.percent else 1
            diffs = [d for d in comparisons if d.metric == name]
            x = np.arange(len(diffs))
            ax.axhline(0, color="0.3", linewidth=0.8)
            if diffs:
                value = np.array([scale * d.value for d in diffs])
                ax.bar(x - width, value, width, color="0.25", label=f"{labels} − {loss} (difference of means)")
                # No interval with a single seed, nor where the seeds left no spread: no bar, not a 0-wide one.
                has = np.array([d.interval is not None for d in diffs])
                # Each value written past its interval, which ran through it at the bar's end (bar_label's place).
                end = value.copy()
                if has.any():
                    low, high = scale * np.array([d.interval for d in diffs if d.interval is not None]).T
                    ax.errorbar(x[has] - width, value[has], yerr=[value[has] - low, high - value[has]], fmt="none",
                                ecolor="black", elinewidth=1.5, capsize=4,
                                label="95% confidence interval of the difference (the tables' t-test)")  # fmt: skip
                    end[has] = np.where(value[has] >= 0, high, low)
                ax.margins(y=0.15)  # room past the outermost interval for its value
                for at, top, d in zip(x - width, end, diffs):
                    up = d.value >= 0
                    ax.annotate(
                        metric.show(d.value) + ("\nseeds differ" if d.seeds_differ else ""),
                        (at, top),
                        xytext=(0, 3 if up else -3),
                        textcoords="offset points",
                        ha="center",
                        va="bottom" if up else "top",
                        fontsize=8,
                    )
                for offset, method, color in ((0.0, labels, "C0"), (width, loss, "C1")):
                    std = np.array([scale * ((d.a if method == labels else d.b).std or 0.0) for d in diffs])
                    spread = ax.bar(x + offset, 2 * std, width, bottom=-std, color=color, alpha=0.45,
                                    label=f"±1 std of {method} across seeds (none for a single seed)")  # fmt: skip
                    for bar in spread:  # a margin below them too: flush with the axis, they looked cut off
                        bar.sticky_edges.y.clear()
                ax.set_xticks(x, [factor_text(d.factor) + show_varied(d.varied, "\n", "\n") for d in diffs])
            else:
                ax.set_xticks([])
                ax.text(0.5, 0.5, f"no factor has completed {labels} and {loss} runs\nof the same other settings "
                        f"that report {metric.label}",
                        transform=ax.transAxes, ha="center", va="center")  # fmt: skip
            ax.set_xlabel("label-smoothing factor")
            ax.set_ylabel(f"{labels} − {loss}" + (" (percentage points)" if metric.percent else ""))
            ax.set_title(f"{PLOT_TITLE.get(name, metric.label)}: {labels} − {loss}")
        fig.suptitle(f"{labels} vs {loss} at the same factor: the difference, its 95% interval (across 0: not told "
                     "apart from seed noise by these seeds), and each method's seed spread", wrap=True)  # fmt: skip
        if comparisons:  # one legend below the panels: inside one it hid a wide spread's bar
            keys = {label: handle for ax in fig.axes for handle, label in zip(*ax.get_legend_handles_labels())}
            fig.legend(keys.values(), keys.keys(), loc="outside lower center", ncols=2, fontsize="small")
            _keep_texts_apart(fig)
        save_png(fig, path)


def _keep_texts_apart(fig: Figure) -> None:
    """Turns a panel's values over the bars, or its factors under them, upright where side by side
    they would run into each other (a sweep of many factors, or of several settings), and grows
    the figure by what upright factors take: their height, row by row, and width where they still
    touch. Measured after a layout: how large a text draws depends on its font and the figure."""
    fig.draw_without_rendering()
    for ax in fig.axes:
        for texts in (ax.texts, ax.get_xticklabels()):
            if _crowding(texts) > 1:
                for text in texts:
                    text.set_rotation(90)
        if any(t.get_rotation() == 90 for t in ax.texts):
            ax.margins(y=0.25)  # room above and below the bars for the taller, upright values
    upright = [ax for ax in fig.axes if any(t.get_rotation() == 90 for t in ax.get_xticklabels())]
    if upright:
        fig.draw_without_rendering()
        tallest = max(t.get_window_extent().height for ax in upright for t in ax.get_xticklabels()) / fig.dpi
        rows = {round(ax.get_position().y0, 3) for ax in upright}
        wider = max(1.0, 1.1 * max(_crowding(ax.get_xticklabels()) for ax in upright))
        fig.set_size_inches(fig.get_figwidth() * wider, fig.get_figheight() + len(rows) * tallest)


def _crowding(texts) -> float:
    """How much room texts side by side take over what their centres leave: above 1, they touch."""
    boxes = sorted((t.get_window_extent() for t in texts if t.get_text()), key=lambda box: box.x0)
    return max(
        [((a.width + b.width) / 2 + 2) / max(1.0, (b.x0 + b.width / 2) - (a.x0 + a.width / 2))
         for a, b in zip(boxes, boxes[1:])],
        default=0.0,
    )  # fmt: skip
