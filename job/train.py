"""Training: the recipe as `model.fit`, one call per epoch, plus what a batch job needs around it.

Every random stream of an epoch (shuffle order, augmentation, dropout) is derived
from (seed, epoch) at the start of that epoch. Together with the end-of-epoch
checkpoint of weights and optimizer, that makes a resumed run continue exactly as
an uninterrupted one would. Inside an epoch (every `output.checkpoint_steps` steps,
and always at a stop on SIGTERM) a checkpoint also records how far the random streams
and the epoch's running metrics have got; the resumed epoch trains on the rest of the
same order from there.
"""

from __future__ import annotations

import logging
import math
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import keras
import numpy as np

from job import preemption, runtime, smoothing
from job.checkpoint import Checkpoints, MidEpoch, Resume
from job.data import Dataset, per_pixel_mean
from job.errors import DivergedError, SpecError
from job.history import FIT_LOGS, write_history_csv
from job.model import build_model, synchronize_batch_norm, validation_nll
from job.rundir import CHECKPOINTS, HISTORY_FILE
from job.spec import Spec, TrainSpec

log = logging.getLogger("lsjob")


def learning_rate(epoch: int, train: TrainSpec) -> float:
    """The recipe's polynomial decay, applied per epoch: base_lr (the recipe's 5e-3, times the
    batch's factor under lr_scaling) falling to 0 at train.epochs, linearly at lr_power 1."""
    return train.base_lr * (1.0 - epoch / train.epochs) ** train.lr_power


def epoch_seed(seed: int, epoch: int, stream: int) -> int:
    return int(np.random.SeedSequence([seed, epoch, stream]).generate_state(1)[0] >> 1)


def steps_per_epoch(size: int, batch_size: int) -> int:
    """Whole batches only: the tutorial's steps_per_epoch = N // batch, and a fixed batch shape
    spares a second compilation."""
    return size // batch_size


def epoch_order(seed: int, epoch: int, size: int, batch_size: int) -> np.ndarray:
    """The epoch's shuffle: a permutation fixed by (seed, epoch), cut to whole batches."""
    order = np.random.default_rng(epoch_seed(seed, epoch, 0)).permutation(size)
    return order[: steps_per_epoch(size, batch_size) * batch_size]


# The terminal, between the bar (redrawn from Keras's callback threads, on stdout) and a log
# line inside an epoch (stderr): held by whichever writes, so a line never lands inside the other.
_screen = threading.Lock()


class Progress(keras.callbacks.ProgbarLogger):
    """Keras's progress bar, counting the run's epochs rather than those of one fit call."""

    # As Keras's own default bar runs (it is added after Keras decides what runs off the
    # loop): a callback list holding a synchronous batch-end hook makes every step wait.
    async_safe = True

    def __init__(self, epochs: int):
        super().__init__()
        self.total_epochs = epochs

    def set_params(self, params):
        super().set_params({**params, "epochs": self.total_epochs})

    def on_train_batch_end(self, batch, logs=None):
        with _screen:
            super().on_train_batch_end(batch, logs)


def _log_inside_epoch(message: str, *args) -> None:
    """A log line while the bar, if any, is mid-line: the bar's line is ended first."""
    with _screen:
        if sys.stdout.isatty():  # train() shows the bar exactly then
            sys.stdout.write("\n")
            sys.stdout.flush()
        log.info(message, *args)


class EpochSeeds(keras.callbacks.Callback):
    """Re-seed every layer's random stream (augmentation, dropout) from (seed, epoch)."""

    def __init__(self, seed: int):
        super().__init__()
        self.seed = seed

    def on_epoch_begin(self, epoch, logs=None):
        for stream, state in enumerate(_seed_states(self.model), start=1):
            state.assign(np.array([epoch_seed(self.seed, epoch, stream), 0], dtype=state.dtype))


def _seed_states(model: keras.Model) -> list:
    """Every layer's random stream, in one order: EpochSeeds numbers them by it, and a mid-epoch
    checkpoint saves and restores them by it."""
    return [v for v in model.variables if v.name == "seed_generator_state"]


class StopOnNonFiniteLoss(keras.callbacks.Callback):
    """Like keras's TerminateOnNaN, but the run ends as failed instead of looking finished."""

    # Keras then runs the check in a worker thread, off the training loop: reading the loss
    # waits for the device, and a synchronous batch-end callback makes every step wait.
    # The error still surfaces, a step or two later, from the training loop.
    async_safe = True

    def __init__(self):
        super().__init__()
        self.epoch, self.step_offset = 0, 0

    def on_train_batch_end(self, batch, logs=None):
        loss = float((logs or {}).get("loss", 0.0))
        if not math.isfinite(loss):
            raise DivergedError(f"loss became {loss} at epoch {self.epoch + 1}, step {self.step_offset + batch + 1}")

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch = epoch


class ResumeMidEpoch(keras.callbacks.Callback):
    """Puts back a mid-epoch checkpoint's random-stream counters and running metric sums,
    once, when its epoch begins: after EpochSeeds and after Keras has reset the metrics."""

    def __init__(self, epoch: int, state: MidEpoch):
        super().__init__()
        self.epoch, self.state = epoch, state

    def on_epoch_begin(self, epoch, logs=None):
        if self.state is None or epoch != self.epoch:
            return
        model = self.model
        seeds, metrics = _seed_states(model), model.metrics_variables
        if len(seeds) != len(self.state.seed_states) or len(metrics) != len(self.state.metric_values):
            raise SpecError(
                f"the mid-epoch checkpoint holds {len(self.state.seed_states)} random streams and "
                f"{len(self.state.metric_values)} metric values, this model {len(seeds)} and {len(metrics)}: "
                "it comes from another version of the model; delete the run's checkpoints/ to start over"
            )
        for variable, value in zip([*seeds, *metrics], [*self.state.seed_states, *self.state.metric_values]):
            variable.assign(np.asarray(value, dtype=variable.dtype))
        self.state = None


class EpochRecorder(keras.callbacks.Callback):
    """One history row per finished epoch: history.csv, a checkpoint, a log line; and,
    inside an epoch, a checkpoint every `every` steps and at a stop on SIGTERM, after which
    the stop is raised. Listed last: an epoch that finished is kept."""

    def __init__(self, history: list[dict], run_dir: Path, checkpoints: Checkpoints, train: TrainSpec, every: int = 0):
        super().__init__()
        self.history, self.run_dir, self.checkpoints, self.train = history, run_dir, checkpoints, train
        self.every = every
        self.step_offset, self.seconds_before = 0, 0.0  # set by train() for a resumed epoch
        self.steps_saved = 0

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch, self.started = epoch, time.perf_counter()
        self.steps_saved = self.step_offset  # the epoch's steps already in a checkpoint

    # At a batch's beginning the previous step is complete, so the state saved is the state
    # after exactly `steps_done` steps (a batch-end hook would make Keras wait on every step).
    # With runtime.steps_per_execution > 1 Keras calls this only between executions, so a
    # checkpoint is due at the first one at or past each multiple of `every`, not at exact ones.
    def on_train_batch_begin(self, batch, logs=None):
        steps_done = self.step_offset + batch
        stop = preemption.requested()
        due = self.every and steps_done // self.every > self.steps_saved // self.every
        if steps_done > self.steps_saved and (stop or due):
            self._save_mid_epoch(steps_done)
            self.steps_saved = steps_done
        if stop:
            preemption.check()

    def _save_mid_epoch(self, steps_done: int) -> None:
        model = self.model
        metric_values = [np.asarray(v).tolist() for v in model.metrics_variables]
        # StopOnNonFiniteLoss runs off the loop and may not have spoken yet: never save a
        # diverged state (the running loss sum is then NaN or infinite) as a checkpoint.
        if not np.isfinite(np.asarray(metric_values, dtype=np.float64)).all():
            raise DivergedError(f"loss became non-finite in epoch {self.epoch + 1} before step {steps_done + 1}")
        state = MidEpoch(
            steps_done=steps_done,
            seed_states=[np.asarray(v).tolist() for v in _seed_states(model)],
            metric_values=metric_values,
            seconds=self.seconds_before + time.perf_counter() - self.started,
        )
        path = self.checkpoints.save(model, self.epoch, self.history, state)
        _log_inside_epoch(
            "checkpoint %s/%s (epoch %d, step %d)", path.parent.name, path.name, self.epoch + 1, steps_done
        )

    def on_epoch_end(self, epoch, logs=None):
        logs = logs or {}
        row = {"epoch": epoch + 1, **{k: float(logs[k]) for k in FIT_LOGS}}
        row["lr"] = learning_rate(epoch, self.train)
        row["seconds"] = round(self.seconds_before + time.perf_counter() - self.started, 3)
        self.history.append(row)
        # The checkpoint first: history.csv never lists an epoch that no checkpoint holds.
        self.checkpoints.save(self.model, epoch + 1, self.history)
        write_history_csv(self.run_dir / HISTORY_FILE, self.history)
        left = self.train.epochs - (epoch + 1)
        log.info(
            "epoch %d/%d  loss %.4f  acc %.4f  val_loss %.4f  val_acc %.4f  val_nll %.4f  lr %.2e  %.1fs%s",
            epoch + 1, self.train.epochs, row["loss"], row["accuracy"], row["val_loss"],
            row["val_accuracy"], row["val_nll"], row["lr"], row["seconds"],
            f"  ~{_duration(left * row['seconds'])} left" if left else "",
        )  # fmt: skip


def _duration(seconds: float) -> str:
    """A time left as one reads it in a log: 45s, 12m, 1h05m (the first epoch's compile makes it high)."""
    minutes = round(seconds / 60)
    if round(seconds) < 60:
        return f"{seconds:.0f}s"
    return f"{minutes}m" if minutes < 60 else f"{minutes // 60}h{minutes % 60:02d}m"


class StopOnSignal(keras.callbacks.Callback):
    """Acts on a recorded SIGTERM after an epoch's checkpoint (EpochRecorder acts on it
    between steps, after a mid-epoch checkpoint)."""

    def on_epoch_end(self, epoch, logs=None):
        preemption.check()


@dataclass
class TrainResult:
    model: keras.Model
    history: list[dict]
    test_probs: np.ndarray


def compile_model(spec: Spec, mean_image: np.ndarray, num_classes: int) -> keras.Model:
    """The model, compiled; call it (and load checkpoints into it) under runtime.replica_scope()."""
    model = build_model(mean_image, spec.augment, spec.train.seed, num_classes)
    synchronize_batch_norm(model, runtime.mirrored())
    model.compile(
        optimizer=keras.optimizers.SGD(learning_rate=spec.train.base_lr, momentum=spec.train.momentum),
        loss=smoothing.training_loss(spec.smoothing),
        # val_nll: cross-entropy against the hard test labels, comparable across methods.
        metrics=["accuracy", validation_nll()],
        jit_compile=spec.runtime.jit_compile,
        steps_per_execution=spec.runtime.steps_per_execution,
    )
    return model


def check_fits(spec: Spec, train_images: int, test_images: int) -> None:
    """Bad input that only the data and the machine reveal (the spec's own sizes are checked as
    it is read); run.py checks it before the run directory exists. `train_images`: before the
    holdout of temperature scaling is set aside."""
    holdout = spec.eval.holdout_size if spec.eval.temperature_scaling else 0
    left = max(train_images - holdout, 0)
    if left < spec.train.batch_size:
        held = f", {holdout} of them held out by eval.holdout_size, leaving {left}" if holdout else ""
        raise SpecError(
            f"the training set has {train_images} images{held}, fewer than train.batch_size "
            f"{spec.train.batch_size}: lower the batch size or use more data"
        )
    check_replicas(spec, test_images)


def check_batch_splits(spec: Spec) -> None:
    """The training batch across the replicas; `lsjob bench` needs only this part."""
    replicas = runtime.replica_count()
    if spec.train.batch_size % replicas:
        raise SpecError(
            f"train.batch_size {spec.train.batch_size} does not split evenly across the {replicas} replicas "
            "of runtime.replicas: all; make it a multiple of the number of GPUs"
        )


def check_replicas(spec: Spec, test_images: int) -> None:
    """The global batch must split evenly across the replicas `runtime.configure` set up: with
    runtime.replicas: all, only the machine tells how many there are."""
    check_batch_splits(spec)
    replicas = runtime.replica_count()
    if replicas == 1 or keras.backend.backend() != "jax":
        return
    # JAX's DataParallel splits every evaluation batch, the last, shorter one too (TensorFlow's
    # MirroredStrategy pads it): found only at the first validation, after an epoch of training.
    sizes = {"train.eval_batch_size": spec.train.eval_batch_size, "the test set": test_images}
    if spec.eval.temperature_scaling:
        sizes["eval.holdout_size"] = spec.eval.holdout_size
    uneven = [f"{name} ({size})" for name, size in sizes.items() if size % replicas]
    if uneven:
        raise SpecError(
            f"on the JAX backend every evaluation batch is split across the {replicas} replicas, the last one "
            f"too, so {' and '.join(uneven)} must be a multiple of {replicas}: use a number of GPUs that "
            "divides them, or make them multiples (data.test_size, train.eval_batch_size)"
            + runtime.or_use("tensorflow")
        )


def train(spec: Spec, data: Dataset, run_dir: Path) -> TrainResult:
    """Train on `data` (its holdout already set aside); check_fits first."""
    check_replicas(spec, len(data.x_test))
    log.info(smoothing.describe(data.y_train, data.num_classes, spec.smoothing))
    checkpoints = Checkpoints(run_dir / CHECKPOINTS)
    with runtime.replica_scope():  # mirrored variables, optimizer slots included, on every replica
        model = compile_model(spec, per_pixel_mean(data.x_train), data.num_classes)
        resume: Resume = checkpoints.restore(model)
    start_epoch, history, mid_epoch = resume.epochs_done, resume.history, resume.mid_epoch
    if mid_epoch is not None:
        log.info("resuming epoch %d of %d at step %d from %s", start_epoch + 1, spec.train.epochs,
                 mid_epoch.steps_done, checkpoints.directory)  # fmt: skip
    elif start_epoch:
        log.info("resuming after epoch %d of %d from %s", start_epoch, spec.train.epochs, checkpoints.directory)
    # As the checkpoint has it: rows of epochs it does not hold (an attempt that failed saving
    # its first one) would be trained again.
    if history:
        write_history_csv(run_dir / HISTORY_FILE, history)
    else:
        (run_dir / HISTORY_FILE).unlink(missing_ok=True)

    targets = smoothing.training_targets(data.y_train, data.num_classes, spec.smoothing)
    test_targets = smoothing.one_hot(data.y_test, data.num_classes)  # never smoothed
    recorder = EpochRecorder(history, run_dir, checkpoints, spec.train, every=spec.output.checkpoint_steps)
    diverged = StopOnNonFiniteLoss()
    callbacks = [
        EpochSeeds(spec.train.seed),
        ResumeMidEpoch(start_epoch, mid_epoch),  # after EpochSeeds: it moves the streams on
        keras.callbacks.LearningRateScheduler(lambda epoch: learning_rate(epoch, spec.train)),
        diverged,
        runtime.RunAheadLimit(),  # before the recorder: a stop then waits for two steps, not an epoch's
        recorder,
        StopOnSignal(),  # after the recorder: an epoch that finished is checkpointed
    ]
    if mid_epoch is not None:
        # TensorFlow builds the compiled metrics at the first step, after the epoch has begun:
        # build them now (one test batch, no state kept) so their running sums can be put back.
        n = min(len(data.x_test), spec.train.eval_batch_size)
        model.evaluate(**runtime.feed(data.x_test[:n], test_targets[:n], batch_size=n), verbose=0)
    if sys.stdout.isatty():  # a progress bar for people; logs get one line per epoch instead
        # Before the recorder: the bar ends its line before the epoch's log line is printed.
        callbacks.insert(callbacks.index(recorder), Progress(spec.train.epochs))
    # One fit call per epoch, on that epoch's order: the shuffle then depends on (seed, epoch)
    # alone. runtime.feed hands the arrays over (a PyDataset measured half as fast here on the
    # TensorFlow backend).
    validation = runtime.validation_feed(data.x_test, test_targets, batch_size=spec.train.eval_batch_size)
    for epoch in range(start_epoch, spec.train.epochs):
        order = epoch_order(spec.train.seed, epoch, len(data.x_train), spec.train.batch_size)
        # A resumed epoch trains on the rest of its order: the same batches, from that step.
        skip = mid_epoch.steps_done if mid_epoch is not None and epoch == start_epoch else 0
        recorder.step_offset = diverged.step_offset = skip
        recorder.seconds_before = mid_epoch.seconds if skip else 0.0
        order = order[skip * spec.train.batch_size :]
        model.fit(
            **runtime.feed(data.x_train[order], targets[order], batch_size=spec.train.batch_size),
            shuffle=False,
            initial_epoch=epoch,
            epochs=epoch + 1,
            **validation,
            callbacks=callbacks,
            verbose=1 if sys.stdout.isatty() else 0,
        )
    probs = model.predict(**runtime.feed(data.x_test, batch_size=spec.train.eval_batch_size), verbose=0)
    return TrainResult(model, history, np.asarray(probs, dtype=np.float32))
