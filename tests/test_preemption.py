"""A scheduler's SIGTERM is recorded, then acted on at a safe point between steps."""

import os
import signal

import pytest

from job import preemption
from job.errors import EXIT_INTERRUPTED, InterruptedRun
from job.train import StopOnSignal


@pytest.fixture
def handlers(monkeypatch):
    saved = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGINT)}
    monkeypatch.setattr(preemption, "_requested", None)
    yield
    for sig, handler in saved.items():
        signal.signal(sig, handler)


def test_sigterm_is_recorded_not_raised_where_it_lands(handlers):
    preemption.install()
    preemption.check()  # nothing yet
    os.kill(os.getpid(), signal.SIGTERM)  # the handler must not raise inside whatever runs now
    with pytest.raises(InterruptedRun, match="SIGTERM") as err:
        StopOnSignal().on_train_batch_end(3)
    assert err.value.exit_code == EXIT_INTERRUPTED


def test_a_second_sigterm_stays_graceful_a_second_ctrl_c_does_not(handlers):
    preemption.install()
    os.kill(os.getpid(), signal.SIGTERM)
    os.kill(os.getpid(), signal.SIGTERM)  # Slurm's, then the batch script's forward: still a request
    with pytest.raises(InterruptedRun, match="SIGTERM"):
        preemption.check()
    with pytest.raises(KeyboardInterrupt):
        os.kill(os.getpid(), signal.SIGINT)  # the person at the terminal means now


def test_the_callback_stops_after_a_batch_and_after_an_epoch(handlers):
    callback = StopOnSignal()
    callback.on_train_batch_end(0)
    callback.on_epoch_end(0)
    preemption._record(signal.SIGINT, None)
    for stop in (lambda: callback.on_train_batch_end(1), lambda: callback.on_epoch_end(1)):
        with pytest.raises(InterruptedRun, match="SIGINT"):
            stop()
