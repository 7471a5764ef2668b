"""The statistics over the runs `collect` read: a `Group` per (method, factor, varied settings)
with each metric's mean, std, min and max over its completed runs; the differences of means
(`Difference`, for COMPARED_METRICS) of labels minus loss at each factor, and of each smoothed
group minus the unsmoothed baseline, with a t-test paired over seeds where it can be; the
warnings that say where those means mislead; and the `Summary` that aggregate() returns."""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import scipy.stats

from job.aggregate.display import count_runs, factor_text, show_factor, show_value, show_varied
from job.aggregate.runs import METRIC, METRICS, NO_FACTOR, STATUSES, UNKNOWN, Run, group_key, value_order
from job.rundir import SPEC_FILE

# Two implementations of one objective (smoothed targets vs a smoothed loss): any
# difference between them at the same factor is run-to-run noise, or a bug.
SAME_OBJECTIVE = ("labels", "loss")
BASELINE = NO_FACTOR  # no smoothing: what either method is meant to improve on
COMPARED_METRICS = ("test_accuracy", "val_nll", "test_ece")


@dataclass(frozen=True)
class Stats:
    mean: float
    std: float | None  # sample standard deviation (ddof=1), exactly 0 where all are equal; None for a single run
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
    values: dict[str, tuple[tuple[int | None, float], ...]]  # Metric.name -> (seed, value) of each run behind stats

    @property
    def seeds(self) -> dict[str, tuple[int, ...]]:
        """Metric.name -> the known seeds of the completed runs that have it, sorted, each once."""
        return {name: tuple(sorted({s for s, _ in runs if s is not None})) for name, runs in self.values.items()}


@dataclass(frozen=True)
class Difference:
    """`method` minus `other` in one metric's mean, at one factor and the same other settings,
    beside each side's seed spread: labels minus loss, or a smoothed method minus the baseline."""

    factor: float  # the method's (the baseline has none)
    varied: tuple[tuple[str, str], ...]  # the settings both sides share, as Run.varied
    metric: str  # Metric.name
    a: Stats  # the method's
    b: Stats  # the other's
    method: str
    other: str
    seeds: tuple[tuple[int, ...], tuple[int, ...]]  # each side's completed runs' seeds that have the metric
    # (method's, other's) value per seed, in seed order, where both sides completed the same seeds,
    # once each, and at least two: then the test pairs them. None otherwise.
    pairs: tuple[tuple[float, float], ...] | None = None

    @property
    def value(self) -> float:
        return self.a.mean - self.b.mean

    @property
    def seeds_differ(self) -> bool:
        """The two sides completed different seeds: the difference then also holds the seeds one
        side lacks, which can move a mean by more than the methods differ (seed_warnings names them)."""
        return set(self.seeds[0]) != set(self.seeds[1])

    @property
    def test(self) -> str | None:
        """'paired' or 'Welch': which t-test gives SE and p; None where neither can (one seed)."""
        if self.pairs is not None:
            return "paired"
        return None if self.a.std is None or self.b.std is None else "Welch"

    @property
    def se(self) -> float | None:
        """Standard error of the difference. Paired: std of the per-seed differences / sqrt(n), in
        which noise that both runs of a seed share cancels. Welch: sqrt(s1²/n1 + s2²/n2). None with
        one seed."""
        if self.pairs is not None:
            differences = self._differences()
            return 0.0 if differences is None else float(differences.std(ddof=1)) / math.sqrt(len(differences))
        if self.test is None:
            return None
        return math.sqrt(self.a.std**2 / self.a.n + self.b.std**2 / self.b.n)

    def _differences(self) -> np.ndarray | None:
        """The per-seed differences; None where they are all one number: subtracting rounds, so
        equal differences (each seed 10 images apart) can differ in the last bits, which made a
        std of 1e-17 and a difference / SE of 1e14. A metric carries the rounding of what it was
        computed from too (ECE from accuracies near 0.9), so the margin is far above float64's
        and far below any difference a run makes."""
        pairs = np.asarray(self.pairs, dtype=np.float64)
        differences = pairs[:, 0] - pairs[:, 1]
        rounding = 1e-9 * max(float(np.abs(pairs).max()), 1.0)
        return None if np.ptp(differences) <= rounding else differences

    @property
    def ratio(self) -> float | None:
        """difference / SE: how many standard errors of seed noise the difference is; None where
        the SE is unknown (one seed) or 0 (every seed of both gave the same value)."""
        se = self.se
        return self.value / se if se else None

    @property
    def interval(self) -> tuple[float, float] | None:
        """The difference's 95% confidence interval, from the same t-test as p: it leaves out 0
        exactly when p < 0.05. None where p is."""
        if not self.se:
            return None
        if self.pairs is not None:
            df = len(self.pairs) - 1
        else:  # Welch-Satterthwaite, as scipy's Welch test uses
            va, vb = self.a.std**2 / self.a.n, self.b.std**2 / self.b.n
            df = (va + vb) ** 2 / (va**2 / (self.a.n - 1) + vb**2 / (self.b.n - 1))
        half = float(scipy.stats.t.ppf(0.975, df)) * self.se
        return self.value - half, self.value + half

    @property
    def p_value(self) -> float | None:
        """The t-test's chance that seed noise alone gives a difference of means at least this
        large: paired over the seeds where `pairs` has them, else Welch's. Read against the t
        distribution, not the normal: with 2 seeds a side a difference of 3 SE happens by chance
        about one time in ten (Welch's). None where `ratio` is."""
        if not self.se:
            return None
        if self.pairs is not None:
            mine, theirs = zip(*self.pairs)
            return float(scipy.stats.ttest_rel(mine, theirs).pvalue)
        a, b = self.a, self.b
        return float(scipy.stats.ttest_ind_from_stats(a.mean, a.std, a.n, b.mean, b.std, b.n, equal_var=False).pvalue)


@dataclass
class Summary:
    """What aggregate() found and wrote; the CLI prints `markdown`."""

    root: Path
    out: Path
    runs: list[Run]
    groups: list[Group]
    comparisons: list[Difference]  # labels minus loss
    baseline_comparisons: list[Difference]  # each smoothed group minus the baseline
    warnings: list[str]
    markdown: str
    files: tuple[Path, ...]

    @property
    def counts(self) -> dict[str, int]:
        counts = Counter(r.status for r in self.runs)
        return {status: counts[status] for status in STATUSES if counts[status]}


def summarize(runs: list[Run]) -> list[Group]:
    """One Group per (method, factor, varied settings) that any run has, statistics over its
    completed runs."""
    by_key: dict[tuple, list[Run]] = {}
    for run in runs:
        if run.method is not None and run.factor is not None:
            by_key.setdefault((run.method, run.factor, run.varied), []).append(run)
    groups = []
    for (method, factor, varied), members in sorted(by_key.items(), key=lambda item: group_key(*item[0])):
        done = [r for r in members if r.completed]
        stats, values = {}, {}
        for metric in METRICS:
            having = [r for r in done if metric.name in r.metrics]
            if having:
                stats[metric.name] = describe([r.metrics[metric.name] for r in having])
                values[metric.name] = tuple((r.seed, r.metrics[metric.name]) for r in having)
        groups.append(Group(method, factor, varied, len(done), len(members) - len(done), stats, values))
    return groups


def describe(values: list[float]) -> Stats:
    array = np.asarray(values, dtype=np.float64)
    low, high = float(array.min()), float(array.max())
    # The float mean of equal values can land a rounding step outside them (mean([0.05] * 3) is
    # 0.05000000000000001): a negative error bar, which matplotlib refuses, and a std of 1e-17
    # that made difference / SE read 1e14.
    mean = min(max(float(array.mean()), low), high)
    std = None if len(array) < 2 else 0.0 if low == high else float(array.std(ddof=1))
    return Stats(mean, std, low, high, len(array))


def compare(groups: list[Group]) -> list[Difference]:
    """labels minus loss at every factor and varied settings where both have completed runs
    with the metric."""
    by_key = {(g.method, g.factor, g.varied): g for g in groups}
    labels, loss = SAME_OBJECTIVE
    return [
        difference
        for g in groups  # in the groups' order: by settings, then factor
        if g.method == labels and (loss, g.factor, g.varied) in by_key
        for difference in _differences(g, by_key[(loss, g.factor, g.varied)])
    ]


def compare_with_baseline(groups: list[Group]) -> list[Difference]:
    """Each smoothed group minus the baseline's group of the same varied settings, where both
    have completed runs with the metric: what smoothing changed."""
    baseline = {g.varied: g for g in groups if g.method == BASELINE}
    return [
        difference
        for g in groups
        if g.method != BASELINE and g.varied in baseline
        for difference in _differences(g, baseline[g.varied])
    ]


def _differences(group: Group, other: Group) -> list[Difference]:
    return [
        Difference(
            group.factor,
            group.varied,
            metric,
            group.stats[metric],
            other.stats[metric],
            group.method,
            other.method,
            (group.seeds[metric], other.seeds[metric]),
            _pairs(group.values[metric], other.values[metric]),
        )  # fmt: skip
        for metric in COMPARED_METRICS
        if metric in group.stats and metric in other.stats
    ]


def _pairs(mine, theirs) -> tuple[tuple[float, float], ...] | None:
    """Each seed's two values, where both sides have the same seeds, each once, and at least two
    of them. A seed starts every method from the same weights, data order and augmentation, so
    its two runs share that part of their noise. Anything else (a seed one side lacks, a seed run
    twice, a run of unknown seed) leaves the test unpaired, Welch's; the warnings name a seed one
    side lacks and a seed run twice."""
    mine_by_seed, theirs_by_seed = dict(mine), dict(theirs)
    seeds = set(mine_by_seed)
    paired = (
        None not in seeds and len(seeds) >= 2 and seeds == set(theirs_by_seed)
        and len(mine) == len(theirs) == len(seeds)  # no seed twice on either side
    )  # fmt: skip
    return tuple((mine_by_seed[s], theirs_by_seed[s]) for s in sorted(seeds)) if paired else None


def seed_warnings(comparisons: list[Difference]) -> list[str]:
    """Comparisons over different seeds: a seed starts every method from the same weights, data
    order and augmentation, so a seed one side lacks can move the other's mean by more than the
    methods differ, and the sample sizes alone would not tell. One warning per group that lacks
    seeds its partners have, naming them (a baseline short of one seed is one warning, not one per
    smoothed group), and the metrics where only some lack them (older runs have no ECE)."""
    lacking: dict[str, dict[int, set[str]]] = {}  # group -> missing seed -> the partners that have it
    metrics: dict[str, set[str]] = {}  # group -> the metrics it lacks some seed in
    compared: dict[str, set[str]] = {}  # group -> the metrics it is compared in
    order: dict[str, int] = {}  # group -> where it first comes: the tables' order
    for d in comparisons:
        a, b = _group_name(d.method, d.factor, d.varied), _group_name(d.other, d.factor, d.varied)
        for name in (a, b):
            order.setdefault(name, len(order))
            compared.setdefault(name, set()).add(d.metric)
        for me, mine, partner, theirs in ((a, d.seeds[0], b, d.seeds[1]), (b, d.seeds[1], a, d.seeds[0])):
            for seed in set(theirs) - set(mine):
                lacking.setdefault(me, {}).setdefault(seed, set()).add(partner)
                metrics.setdefault(me, set()).add(d.metric)
    warnings = []
    for me in sorted(lacking, key=order.__getitem__):
        seeds = sorted(lacking[me])
        partners = sorted(set().union(*lacking[me].values()), key=order.__getitem__)
        which = "" if metrics[me] == compared[me] else f" in {_labels(metrics[me])}"
        warnings.append(
            f"{me} lacks seed{'s' * (len(seeds) > 1)} {_join(map(str, seeds))}{which}, which {_join(partners)} "
            f"{'has' if len(partners) == 1 else 'have'}: their comparisons are over different seeds; run the "
            "missing seeds for a like-for-like comparison"
        )
    return warnings


def unpaired_warnings(groups: list[Group]) -> list[str]:
    """Completed groups a comparison table leaves out because their partner completed runs only
    with other settings (labels at batch 128 beside none at batch 64): their rows would be missing
    without a word. Where the partner has no completed run at all, the section's own sentence says so."""
    done = [g for g in groups if g.completed]
    warnings = []
    baseline = {g.varied for g in done if g.method == BASELINE}
    left = [g for g in done if g.method != BASELINE and g.varied not in baseline]
    if baseline and left:
        warnings.append(
            f"Smoothing vs {BASELINE} leaves out {_join(_group_name(g.method, g.factor, g.varied) for g in left)}: "
            f"no completed {BASELINE} run has the same other settings; run {BASELINE} with those settings to "
            "compare them"
        )
    labels, loss = SAME_OBJECTIVE
    by_factor: dict[tuple[str, float], set] = {}
    for g in done:
        by_factor.setdefault((g.method, g.factor), set()).add(g.varied)
    left = [
        g for g in done
        if g.method in SAME_OBJECTIVE
        and (partners := by_factor.get((loss if g.method == labels else labels, g.factor)))
        and g.varied not in partners
    ]  # fmt: skip
    if left:
        warnings.append(
            f"{labels} vs {loss} leaves out {_join(_group_name(g.method, g.factor, g.varied) for g in left)}: the "
            "other method has completed runs at that factor only with other settings; run it with those "
            "settings to compare them"
        )
    return warnings


def _join(words) -> str:
    words = list(words)
    return words[0] if len(words) == 1 else f"{', '.join(words[:-1])} and {words[-1]}"


def _group_name(method: str, factor: float, varied: tuple[tuple[str, str], ...]) -> str:
    where = "" if method == BASELINE else f" at factor {factor_text(factor)}"
    return f"{method}{where}{show_varied(varied, ', ')}"


def _labels(metrics: set[str]) -> str:
    return ", ".join(METRIC[m].label for m in COMPARED_METRICS if m in metrics)


def comparison_warnings(runs: list[Run]) -> list[str]:
    """What makes the completed runs' means misleading: mixed settings or versions, a seed counted twice."""
    return _settings_warnings(runs) + _version_warnings(runs) + _duplicate_warnings(runs)


def _version_warnings(runs: list[Run]) -> list[str]:
    """Completed runs of one block of settings (those compared with each other) made by different
    versions of lsjob, Keras or the backend's library: a sweep topped up after an upgrade. They are
    grouped and compared together; a change between the versions may have moved the results."""
    blocks: dict[tuple, dict[str, list[str]]] = {}
    for run in runs:
        if run.completed and run.made_by is not None:
            blocks.setdefault(run.varied, {}).setdefault(run.made_by, []).append(run.run)
    warnings = []
    for varied, by_version in blocks.items():
        if len(by_version) < 2:
            continue
        listed = "; ".join(
            f"{version} ({count_runs(len(names))}{': ' + ', '.join(names) if len(names) <= 3 else ''})"
            for version, names in sorted(by_version.items(), key=lambda item: (-len(item[1]), item[0]))
        )
        warnings.append(
            f"completed runs{show_varied(varied, ' with ')} were made by different versions: {listed}; they are "
            "grouped and compared together: where a change between these versions can move the results, compare "
            "runs of one version (each manifest records its versions and git_commit)"
        )
    return warnings


def _settings_warnings(runs: list[Run]) -> list[str]:
    """Completed runs whose settings differ in more than seed and smoothing: each value is a group
    of its own, which the reader should know, the more so where it was not meant (two backends)."""
    done = [r for r in runs if r.completed]
    known = [r for r in done if r.spec_read]
    warnings = []
    if len(known) < len(done):
        warnings.append(
            f"{len(done) - len(known)} completed run(s) have no readable {SPEC_FILE}; "
            "their settings could not be compared with the others, but for what their manifests record "
            "(backend, precision, replicas)"
        )
    # The settings the tables give a column and split the groups by (Run.varied), valued as
    # there: counting a run that does not record a key as one more value promised a column and
    # groups that did not exist (holdout_size, dropped without temperature scaling; an old
    # manifest's missing backend). A run without spec.yaml counts where its manifest tells
    # (backend, precision, replicas): two backends are warned of whether or not specs were kept.
    for key in [key for key, _ in done[0].varied] if done else []:
        values = Counter(value for r in done if (value := dict(r.varied)[key]) != UNKNOWN or r.spec_read)
        if len(values) > 1:
            in_order = sorted(values.items(), key=lambda item: value_order(item[0]))
            listed = ", ".join(f"{show_value(value)} ({count_runs(n)})" for value, n in in_order)
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
        f"{method} factor {show_factor(method, factor) or '-'}{show_varied(varied, ', ')} seed {seed} "
        f"completed {len(paths)} times ({', '.join(paths)}); each counts in the mean"
        for (method, factor, varied, seed), paths in seen.items()
        if len(paths) > 1
    ]
