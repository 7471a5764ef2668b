"""How a value reads in the tables, the plots' legends and the warnings: a factor, a setting's
JSON text, a duration, a Markdown cell; shared by stats, tables and plots, so that a value reads
the same everywhere. Text in, text out."""

from __future__ import annotations

import json
from typing import Any

from job.aggregate.runs import ABSENT, NO_FACTOR, UNKNOWN


def as_text(value: Any, missing: str = "") -> str:
    return missing if value is None else str(value)


def count_runs(n: int) -> str:
    return f"{n} run{'s' * (n != 1)}"


def factor_text(factor: float) -> str:
    """12 significant digits: a sweep's 0.15000000000000002 reads 0.15, yet two groups at 0.1234567
    and 0.1234568 (6 digits, :g, would show both as 0.123457) read apart."""
    return f"{factor:.12g}"


def show_factor(method: str | None, factor: float | None) -> str:
    if method == NO_FACTOR:
        return "–"  # the factor is ignored
    return "" if factor is None else factor_text(factor)


def show_value(text: str) -> str:
    """A setting's JSON text as a reader writes it: bf16, not "bf16"."""
    try:
        value = json.loads(text)
    except ValueError:
        return text  # ABSENT, UNKNOWN
    return value if isinstance(value, str) else text


def csv_value(text: str) -> str:
    return "" if text in (ABSENT, UNKNOWN) else show_value(text)


def show_varied(varied: tuple[tuple[str, str], ...], lead: str, sep: str = ", ") -> str:
    """`lead` and "key=value, ..." (joined by `sep`) for a group's varied settings; "" where nothing varies."""
    return lead + sep.join(f"{key}={show_value(value)}" for key, value in varied) if varied else ""


def show_duration(seconds: float | None) -> str:
    if seconds is None:
        return ""
    minutes, secs = divmod(round(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}"


def shorten(text: str, limit: int) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def markdown_cell(text: str) -> str:
    """Markdown table cell: one line, pipes escaped."""
    return " ".join(str(text).split()).replace("|", "\\|")
