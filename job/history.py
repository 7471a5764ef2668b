"""history.csv: one row per finished epoch, written by the trainer and read back whole.

`lsjob report` reads it to redraw the training plot and `lsjob aggregate` to count a run's
epochs; both must tell a copy cut short from a whole file the same way.
"""

from __future__ import annotations

import csv
import io
from pathlib import Path

from job import atomic
from job.rundir import read_own_text

# What Keras's fit logs at an epoch's end, kept as it reports them.
FIT_LOGS = ("loss", "accuracy", "val_loss", "val_accuracy", "val_nll")
HISTORY_COLUMNS = ("epoch", *FIT_LOGS, "lr", "seconds")


def check_row(row: dict, number: int) -> None:
    """A row the trainer wrote whole: every column of the header, each a number. `row` as
    csv.DictReader gives it, which fills a short row with None and gathers a long one's extra
    fields under the key None."""
    if None in row or None in row.values():
        more = "more" if None in row else "fewer"
        raise ValueError(f"row {number} has {more} fields than the header (a copy cut short?)")
    for name, value in row.items():
        try:
            float(value)
        except ValueError:
            raise ValueError(f"row {number} has {name} {value!r}, not a number") from None


def read_history(path: Path) -> list[dict]:
    """Every row, its values as floats (written with repr, so read back exactly), epochs numbered
    1..n. A damaged file is a ValueError naming it, the line and what is wrong: an empty file or a
    header cut short too, which would otherwise read as a run of no epochs or blank curves."""
    rows = []
    try:
        text = read_own_text(path)
    except UnicodeDecodeError as e:  # a ValueError that would name neither the file nor its kind
        raise ValueError(f"{path.name} is not UTF-8 text, as lsjob writes it (bit rot?): {e}") from None
    reader = csv.DictReader(io.StringIO(text, newline=""))  # as csv wants: \r\n and \r too
    if reader.fieldnames is None:
        raise ValueError(f"{path.name} is empty (a copy cut short?)")
    missing = [name for name in HISTORY_COLUMNS if name not in reader.fieldnames]
    if missing:
        raise ValueError(f"{path.name}'s header has no {', '.join(missing)} column (a copy cut short?)")
    for number, row in enumerate(reader, start=1):
        try:
            check_row(row, number)
            if float(row["epoch"]) != number:
                raise ValueError(f"row {number} is epoch {row['epoch']}: epochs must be numbered 1, 2, ...")
        except ValueError as e:
            raise ValueError(f"{path.name} line {reader.line_num}: {e}") from None
        rows.append({k: float(v) for k, v in row.items()})
    return rows


def write_history_csv(path: Path, history: list[dict]) -> None:
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=HISTORY_COLUMNS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(history)
    atomic.write_text(path, out.getvalue())
