"""Sweeps: one spec describes a grid of runs; each scheduler task trains one point.

A spec's `sweep` is a grid (dotted field path -> values) or a list of grids. Points
are numbered grid by grid; within a grid the keys vary in the order written, the
last fastest, like nested for-loops:

    sweep:
      smoothing.method: [labels, loss]     # 0-2: labels, 3-5: loss
      smoothing.factor: [0.05, 0.1, 0.2]   # 0: labels 0.05, 1: labels 0.1, ...

Every point is an ordinary single-run spec (no sweep, `output.run` named from its
values), so resume, idempotency and preemption work per point exactly as for a
single run, and two tasks of a sweep never share a directory.
"""

from __future__ import annotations

import copy
import itertools
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from pydantic import ValidationError

from job.errors import SpecError
from job.spec import RUN_NAME, RUN_NAME_FIELDS, Spec, problem_lines

# The array-task index variables of the schedulers we document, in the order read.
INDEX_ENV = ("SLURM_ARRAY_TASK_ID", "JOB_COMPLETION_INDEX")
# An invalid sweep names at most this many points per problem.
SHOWN_INDICES = 10


@dataclass(frozen=True)
class Point:
    index: int
    values: dict[str, Any]  # the swept fields' values, dotted path -> value, in grid order
    spec: Spec  # an ordinary single-run spec

    @property
    def run_name(self) -> str:
        return self.spec.run_name

    def describe(self) -> str:
        shown = show_values(self.values)
        return f"{self.run_name} ({shown})" if shown else self.run_name


def points(spec: Spec) -> list[Point]:
    """Every point of the spec, validated; a spec without a sweep is one point.
    Every invalid point is reported at once, so one fix round covers the whole grid."""
    if spec.sweep is None:
        return [Point(0, {}, spec)]
    base = spec.model_dump(mode="json", exclude={"sweep"})
    combos = [dict(zip(grid, combo)) for grid in spec.grids for combo in itertools.product(*grid.values())]
    result: list[Point] = []
    problems: dict[str, list[int]] = {}  # problem line -> the points that have it
    for index, values in enumerate(combos):
        try:
            result.append(_point(base, index, values))
        except _InvalidPoint as e:
            for line in e.problems:
                problems.setdefault(line, []).append(index)
    if problems:
        raise SpecError(_describe_invalid(problems, combos))
    _refuse_shared_directories(result)
    return result


def select(
    all_points: list[Point], index: int | None, environ: Mapping[str, str] = os.environ, offset: int = 0
) -> Point:
    """The point this task trains: --index, else the scheduler's array index plus `offset` (of a
    sweep only: an array over plain spec files, `lsjob run run-$SLURM_ARRAY_TASK_ID.yaml`, is not
    indexing). The offset is --index-offset: a sweep larger than the scheduler's largest array is
    submitted as several arrays, each numbered from 0 (slurm/submit.sh)."""
    source = "--index"
    plain = len(all_points) == 1 and not all_points[0].values
    if index is not None and offset:
        raise SpecError("--index-offset adds to the array index; with --index, give the point itself and no offset")
    if index is None and not plain:
        for var in INDEX_ENV:
            raw = environ.get(var, "").strip()
            if raw:
                if not re.fullmatch(r"[0-9]+", raw):  # \d would take other scripts' digits too (１)
                    raise SpecError(f"{var}={raw!r} is not a sweep index; expected an integer 0..{len(all_points) - 1}")
                index, source = int(raw) + offset, f"{var} {int(raw)} + --index-offset {offset} =" if offset else var
                break
    if offset and source == "--index":  # no array index was read
        raise SpecError(
            f"--index-offset {offset} adds to the array index, but "
            + ("this spec is not a sweep" if plain else f"neither {' nor '.join(INDEX_ENV)} is set")
        )
    if index is None:
        if len(all_points) == 1:
            return all_points[0]
        raise SpecError(
            f"this spec is a sweep of {len(all_points)} runs: pick one with --index 0..{len(all_points) - 1}, "
            "or submit it as an array job (SLURM_ARRAY_TASK_ID or JOB_COMPLETION_INDEX sets it); "
            "`lsjob sweep list SPEC` lists the points"
        )
    if not 0 <= index < len(all_points):
        count = len(all_points)
        fix = "slurm/submit.sh sizes the arrays and their offsets from the count" if offset else (
            f"an array job for it must be --array=0-{count - 1}"
        )  # fmt: skip
        raise SpecError(
            f"{source} {index} is out of range: the spec has {count} point{'s' if count > 1 else ''} "
            f"(0..{count - 1}); {fix}"
        )
    return all_points[index]


class _InvalidPoint(Exception):
    def __init__(self, problems: list[str]):
        self.problems = problems


def _point(base: dict, index: int, values: dict[str, Any]) -> Point:
    doc = copy.deepcopy(base)
    for path, value in values.items():
        section, name = path.split(".")
        doc[section][name] = value
    spec = _validate(doc)
    doc["output"]["run"] = _run_name(spec, values)
    return Point(index, values, _validate(doc))


def _validate(doc: dict) -> Spec:
    try:
        return Spec.model_validate(doc)
    except ValidationError as e:
        raise _InvalidPoint(problem_lines(e)) from None


def _run_name(spec: Spec, values: dict[str, Any]) -> str:
    """The derived name plus `-<field>_<value>` for each other swept field, e.g.
    labels-f0.1-s42-lr_0.01: a directory listing shows what each run varied."""
    parts = [spec.run_name]
    for path in values:
        if path not in RUN_NAME_FIELDS:
            section, name = path.split(".")
            parts.append(f"{name}_{_slug(getattr(getattr(spec, section), name))}")
    name = "-".join(parts)
    if not RUN_NAME.fullmatch(name):
        longest = max(parts[1:] or parts, key=len)
        raise _InvalidPoint([
            f"output.run: the derived run name is {len(name)} characters, more than 128; its longest part, "
            f"{longest[:60]!r}{'...' if len(longest) > 60 else ''} ({len(longest)}), comes from a swept value: "
            "sweep shorter values (a path: a shorter folder or a link to it), or fewer fields per grid"
        ])  # fmt: skip
    return name


def _describe_invalid(problems: dict[str, list[int]], combos: list[dict[str, Any]]) -> str:
    """Each distinct problem once, with the points that have it and the values of the first."""
    bad = len({i for indices in problems.values() for i in indices})
    lines = [f"sweep: {bad} of {len(combos)} points invalid"]
    for line, indices in problems.items():
        shown = ", ".join(str(i) for i in indices[:SHOWN_INDICES])
        if len(indices) > SHOWN_INDICES:
            shown += f", ... ({len(indices)} in all)"
        first = show_values(combos[indices[0]])
        if len(indices) == 1:
            lines += [f"  {line}", f"    in point {shown} ({first})"]
        else:
            lines += [f"  {line}", f"    in points {shown}; point {indices[0]} is {first}"]
    return "\n".join(lines)


def _slug(value: Any) -> str:
    # Values become one path component: anything but letters, digits and '.' turns into
    # '_', so no swept value (a path, '..', '/') can reach outside the results root.
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float):
        return f"{value:g}"
    return re.sub(r"[^A-Za-z0-9.]+", "_", str(value)).strip("_.") or "_"


def show_value(value: Any) -> str:
    # Exact (repr), not 6 digits: two values that differ further down must not print alike.
    if isinstance(value, bool):
        return str(value).lower()
    return repr(value) if isinstance(value, float) else str(value)


def show_values(values: dict[str, Any]) -> str:
    """`field=value, ...` of a point's swept fields."""
    return ", ".join(f"{k}={show_value(v)}" for k, v in values.items())


def _refuse_shared_directories(all_points: list[Point]) -> None:
    seen: dict[str, Point] = {}
    for point in all_points:
        first = seen.setdefault(point.run_name, point)
        if first is point:
            continue
        if first.values == point.values:  # 0.1 and 0.10, 1e-5 and 0.00001
            raise SpecError(
                f"sweep points {first.index} and {point.index} are the same run, {point.describe()}: a value is "
                "listed twice; list it once"
            )
        hint = (
            " (method none ignores smoothing.factor: give the baseline its own grid, "
            "sweep: [{...labels/loss grid...}, {smoothing.method: [none], train.seed: [...]}])"
            if point.spec.smoothing.method == "none"
            else ""
        )
        raise SpecError(
            f"sweep points {first.index} and {point.index} would both write run {point.run_name!r}: "
            f"{first.describe()} vs {point.describe()}{hint}"
        )
    # The same experiment under two names (the same content_hash: the settings that can change results): a
    # grid repeating another's value (the baseline lr in an lr grid and again in a momentum grid),
    # or a swept field that changes nothing (eval_batch_size) would train it twice, and aggregate
    # would count it as two samples.
    experiments: dict[str, Point] = {}
    for point in all_points:
        same = experiments.setdefault(point.spec.content_hash(), point)
        if same is not point:
            raise SpecError(
                f"sweep points {same.index} and {point.index} are the same experiment under two names, "
                f"{same.describe()} and {point.describe()}: each would train it; leave the repeated value out of "
                "one grid, and sweep only fields that change results"
            )
