"""A scheduler's SIGTERM is recorded, then acted on at a safe point between steps."""

import os
import signal
from pathlib import Path

import pytest

from job import preemption
from job.errors import EXIT_INTERRUPTED, InterruptedRun
from job.spec import TrainSpec
from job.train import EpochRecorder, StopOnSignal


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
        preemption.check()
    assert err.value.exit_code == EXIT_INTERRUPTED


def test_a_second_sigterm_stays_graceful_a_second_ctrl_c_does_not(handlers):
    preemption.install()
    os.kill(os.getpid(), signal.SIGTERM)
    os.kill(os.getpid(), signal.SIGTERM)  # Slurm's, then the batch script's forward: still a request
    with pytest.raises(InterruptedRun, match="SIGTERM"):
        preemption.check()
    with pytest.raises(KeyboardInterrupt):
        os.kill(os.getpid(), signal.SIGINT)  # the person at the terminal means now


def test_a_first_ctrl_c_is_a_request_to_stop_and_the_second_stops_at_once(handlers):
    # Python's own SIGINT handler raises at once: the first Ctrl-C must only ask for a stop.
    preemption.install()
    os.kill(os.getpid(), signal.SIGINT)  # raises here if install() left Python's handler in place
    with pytest.raises(InterruptedRun, match="stopped by SIGINT"):
        preemption.check()
    with pytest.raises(KeyboardInterrupt):
        os.kill(os.getpid(), signal.SIGINT)


def test_the_first_signal_is_the_one_reported(handlers):
    # The log says what stopped the run: the scheduler's SIGTERM, not a Ctrl-C that came after it.
    preemption._record(signal.SIGTERM, None)
    preemption._record(signal.SIGINT, None)
    assert preemption.requested() == "SIGTERM"
    with pytest.raises(InterruptedRun, match="stopped by SIGTERM"):
        preemption.check()


class RecordedSaves:
    def __init__(self):
        self.saves = []

    def save(self, model, epochs_done, history, mid_epoch=None):
        self.saves.append((epochs_done, mid_epoch))
        return Path("checkpoints") / f"epoch-{epochs_done:04d}-step-{mid_epoch.steps_done:06d}"


def test_a_stop_between_steps_checkpoints_that_step_first_and_after_an_epoch_it_stops(handlers):
    keras = pytest.importorskip("keras")
    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(2, activation="softmax")])
    model.compile("sgd", "categorical_crossentropy", metrics=["accuracy"])
    saves = RecordedSaves()
    recorder = EpochRecorder([], Path("unused"), saves, TrainSpec())
    recorder.set_model(model)
    recorder.on_epoch_begin(4)
    recorder.on_train_batch_begin(0)
    StopOnSignal().on_epoch_end(3)  # no stop asked for: nothing happens
    preemption._record(signal.SIGINT, None)
    recorder.on_epoch_begin(4)
    with pytest.raises(InterruptedRun, match="SIGINT"):
        recorder.on_train_batch_begin(0)  # nothing trained in this epoch yet: the last checkpoint stands
    assert saves.saves == []
    with pytest.raises(InterruptedRun, match="SIGINT"):
        recorder.on_train_batch_begin(7)  # 7 steps done in epoch 5: they are saved before the stop
    ((epochs_done, state),) = saves.saves
    assert epochs_done == 4 and state.steps_done == 7 and state.seconds >= 0
    with pytest.raises(InterruptedRun, match="SIGINT"):
        StopOnSignal().on_epoch_end(4)
