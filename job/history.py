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
    """Every row, its values as floats (written with repr, so read back exactly). A damaged
    row is a ValueError naming the file, its line and what is wrong."""
    rows = []
    reader = csv.DictReader(io.StringIO(read_own_text(path), newline=""))  # as csv wants: \r\n and \r too
    for number, row in enumerate(reader, start=1):
        try:
            check_row(row, number)
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
