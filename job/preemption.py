"""SIGTERM/SIGINT as a request to stop at the next safe point, not an exception thrown anywhere.

An exception raised inside a signal handler surfaces wherever Python happens to be;
inside TensorFlow's own code it was caught and re-raised as a TypeError. So the
handler only records the signal, and training checks for it after each batch and
after each epoch's checkpoint. A second signal acts at once, as if none were handled.
"""

from __future__ import annotations

import signal

import keras

from job.errors import InterruptedRun

_requested: str | None = None


def install() -> None:
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, _record)


def _record(signum, frame) -> None:
    global _requested
    _requested = signal.Signals(signum).name
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.default_int_handler)


def check() -> None:
    if _requested:
        raise InterruptedRun(f"stopped by {_requested}; re-run the same command to resume")


class StopOnSignal(keras.callbacks.Callback):
    """Checks between steps; listed after the checkpointing callback, so a finished epoch is kept."""

    def on_train_batch_end(self, batch, logs=None):
        check()

    def on_epoch_end(self, epoch, logs=None):
        check()
