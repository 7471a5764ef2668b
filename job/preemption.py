"""SIGTERM/SIGINT as a request to stop at the next safe point, not an exception thrown anywhere.

An exception raised inside a signal handler surfaces wherever Python happens to be;
inside TensorFlow's own code it was caught and re-raised as a TypeError. So the
handler only records the signal, and training checks for it between steps, after
checkpointing the step it stopped at (train.EpochRecorder), and after each epoch's
checkpoint (train.StopOnSignal). A second Ctrl-C acts at once; a
second SIGTERM does not, since a scheduler may send it twice for one stop. No Keras
import here: the CLI installs this before the ML stack loads.
"""

from __future__ import annotations

import signal

from job.errors import InterruptedRun

_requested: str | None = None


def install() -> None:
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, _record)


def _record(signum, frame) -> None:
    global _requested
    _requested = _requested or signal.Signals(signum).name
    # Ctrl-C twice means now. Repeated SIGTERMs stay graceful: Slurm signals every process
    # of a job and its batch script forwards the same stop, and schedulers escalate with SIGKILL.
    signal.signal(signal.SIGINT, signal.default_int_handler)


def requested() -> str | None:
    """The name of the signal that asked for a stop, if one did."""
    return _requested


def check() -> None:
    if _requested:
        raise InterruptedRun(f"stopped by {_requested}; re-run the same command to resume")
