"""The training loop: schedule, data order, exact resumability, learning real pixels."""

import math
import re

import numpy as np
import pytest

from job import train as train_mod
from job.data import Dataset
from job.errors import DivergedError, SpecError
from job.spec import TrainSpec

keras = pytest.importorskip("keras")


@pytest.mark.parametrize(
    "sets, test_images, uneven",
    [
        ([], 127, "the test set (127)"),
        (["train.eval_batch_size=255"], 128, "train.eval_batch_size (255)"),
        (["eval.temperature_scaling=true", "eval.holdout_size=501"], 128, "eval.holdout_size (501)"),
    ],
)
def test_jax_replicas_refuse_evaluation_batches_they_cannot_split(monkeypatch, sets, test_images, uneven):
    from job import runtime
    from job.errors import SpecError
    from job.spec import load_spec

    spec = load_spec(None, sets)
    monkeypatch.setattr(runtime, "replica_count", lambda: 2)
    monkeypatch.setattr(train_mod.keras.backend, "backend", lambda: "tensorflow")
    train_mod.check_replicas(spec, test_images)  # MirroredStrategy pads the last batch
    monkeypatch.setattr(train_mod.keras.backend, "backend", lambda: "jax")
    with pytest.raises(SpecError, match=rf"JAX backend .* 2 replicas.*{re.escape(uneven)} must be a multiple of 2"):
        train_mod.check_replicas(spec, test_images)


def test_learning_rate_decays_linearly_to_zero_per_epoch():
    spec = TrainSpec()
    assert train_mod.learning_rate(0, spec) == 5e-3
    assert math.isclose(train_mod.learning_rate(35, spec), 2.5e-3)
    assert math.isclose(train_mod.learning_rate(69, spec), 5e-3 / 70)
    assert math.isclose(train_mod.learning_rate(5, TrainSpec(epochs=10, lr_power=2.0)), 5e-3 * 0.25)


def test_linear_lr_scaling_scales_the_whole_schedule():
    # What a multi-GPU run's global batch trains at: 256 is 4 times the reference batch of 64.
    spec = TrainSpec(batch_size=256, lr_scaling="linear")
    assert train_mod.learning_rate(0, spec) == pytest.approx(4 * 5e-3)
    assert train_mod.learning_rate(35, spec) == pytest.approx(2 * 5e-3)


@pytest.mark.parametrize("method, in_the_loss", [("loss", 0.2), ("labels", 0.0), ("none", 0.0)])
def test_the_compiled_loss_smooths_under_method_loss_alone(tiny_spec, method, in_the_loss):
    # Under labels the targets are smoothed already: smoothing them again in the loss would double it.
    spec = tiny_spec(f"smoothing.method={method}", "smoothing.factor=0.2")
    model = train_mod.compile_model(spec, np.zeros((32, 32, 3), np.float32), 10)
    assert model.loss.label_smoothing == pytest.approx(in_the_loss)


@pytest.mark.parametrize("method", ["labels", "loss"])
def test_validation_labels_are_never_smoothed(tiny_spec, tmp_path, monkeypatch, method):
    from job.data import load_dataset

    class Fed(Exception):
        pass

    def validation_feed(x, y, **kwargs):
        raise Fed(y)

    monkeypatch.setattr(train_mod.runtime, "validation_feed", validation_feed)
    spec = tiny_spec(f"smoothing.method={method}", "smoothing.factor=0.2")
    data = load_dataset(spec.data)
    with pytest.raises(Fed) as fed:
        train_mod.train(spec, data, tmp_path)
    np.testing.assert_array_equal(fed.value.args[0], np.eye(10, dtype=np.float32)[data.y_test])


def test_a_run_trains_on_the_training_mean_with_each_epochs_learning_rate_and_the_specs_momentum(tiny_spec, tmp_path):
    """The recipe as the model trained it, not as the spec says: mean subtraction with the
    training images' own mean (the test set's would leak it into training), the learning rate
    the schedule gives each epoch, and SGD with the spec's momentum."""
    from job.data import load_dataset, per_pixel_mean

    spec = tiny_spec("train.momentum=0.8")
    data = load_dataset(spec.data)
    result = train_mod.train(spec, data, tmp_path)
    mean = np.asarray(result.model.get_layer("mean_subtract").mean).reshape(32, 32, 3)
    np.testing.assert_allclose(mean, per_pixel_mean(data.x_train), rtol=1e-6)
    assert not np.allclose(mean, per_pixel_mean(data.x_test), rtol=1e-3)
    # Two epochs from 5e-3 down to 0: the second trains at half.
    assert [row["lr"] for row in result.history] == pytest.approx([5e-3, 2.5e-3])
    assert float(result.model.optimizer.learning_rate) == pytest.approx(2.5e-3)  # what the last epoch used
    assert float(result.model.optimizer.momentum) == pytest.approx(0.8)


def test_every_epoch_draws_its_own_shifts_flips_and_dropout_masks():
    """The random streams are re-seeded from (seed, epoch): an epoch draws the same again (what
    resume relies on) and the next epoch draws afresh, or augmentation would repeat every epoch."""
    from job.model import build_model
    from job.spec import AugmentSpec

    model = build_model(np.zeros((32, 32, 3), np.float32), AugmentSpec(), seed=1)
    seeds = train_mod.EpochSeeds(7)
    seeds.set_model(model)

    def states(epoch):
        seeds.on_epoch_begin(epoch)
        return [tuple(np.asarray(v).tolist()) for v in train_mod._seed_states(model)]

    first = states(0)
    assert len(first) == 2 and len(set(first)) == 2  # augmentation and dropout, each its own stream
    second = states(1)
    assert all(a != b for a, b in zip(first, second))
    assert states(0) == first
    # Stream i is the i-th state in _seed_states' order, the one a mid-epoch checkpoint restores
    # by: renumbered, every seed would give another run than before.
    assert first == [(train_mod.epoch_seed(7, 0, 1), 0), (train_mod.epoch_seed(7, 0, 2), 0)]


def test_epoch_order_follows_seed_and_epoch_only():
    order = train_mod.epoch_order(seed=7, epoch=4, size=100, batch_size=32)
    assert len(order) == 96  # the partial last batch is dropped, as steps_per_epoch = N // batch
    assert len(set(order)) == 96 and order.max() < 100  # no repeats within an epoch
    np.testing.assert_array_equal(order, train_mod.epoch_order(7, 4, 100, 32))
    assert not np.array_equal(order, train_mod.epoch_order(7, 5, 100, 32))
    assert not np.array_equal(order, train_mod.epoch_order(8, 4, 100, 32))


def test_progress_bar_counts_the_runs_epochs():
    bar = train_mod.Progress(epochs=70)
    bar.set_params({"verbose": 1, "epochs": 5, "steps": 781})
    assert bar.epochs == 70


@pytest.mark.parametrize("terminal", [False, True])
def test_the_runs_callbacks_leave_the_loop_free_to_queue_steps_ahead(tiny_spec, tmp_path, monkeypatch, terminal):
    # One synchronous batch-end hook and Keras makes every step wait for the device
    # (JAX, torch); with a progress bar on a terminal too. TensorFlow never runs callbacks
    # off the loop, so the backend is made to say it is thread-safe here.
    from job import runtime
    from job.data import load_dataset

    class Captured(Exception):
        pass

    def fit(self, *args, callbacks=None, **kwargs):
        raise Captured(callbacks)

    spec = tiny_spec()
    runtime.configure(spec.runtime, spec.train.seed)
    monkeypatch.setattr(train_mod.sys.stdout, "isatty", lambda: terminal)
    monkeypatch.setattr(keras.Model, "fit", fit)
    with pytest.raises(Captured) as captured:
        train_mod.train(spec, load_dataset(spec.data), tmp_path)
    callbacks = captured.value.args[0]
    assert any(isinstance(c, train_mod.Progress) for c in callbacks) == terminal
    monkeypatch.setattr(keras.src.backend, "IS_THREAD_SAFE", True)
    assert keras.callbacks.CallbackList(callbacks)._async_train


def test_on_a_terminal_the_bar_ends_its_line_before_each_log_line(tiny_spec, tmp_path, monkeypatch, caplog):
    # Both reach one terminal: the bar on stdout, the log on stderr. Each epoch's line, and each
    # step checkpoint's inside an epoch, must start a line of its own, not be glued to the bar.
    import io
    import logging

    from job.data import load_dataset

    screen = []

    class Terminal(io.StringIO):
        def write(self, text):
            screen.append(text)
            return len(text)

        def isatty(self):
            return True

    class Stderr(logging.Handler):
        def emit(self, record):
            screen.append(f"LOG {record.getMessage()}\n")

    monkeypatch.setattr(train_mod.sys, "stdout", Terminal())
    handler = Stderr()
    train_mod.log.addHandler(handler)
    caplog.set_level(logging.INFO, logger=train_mod.log.name)  # setLevel: logging caches what a level lets through
    try:
        train_mod.train(tiny_spec("output.checkpoint_steps=3"), load_dataset(tiny_spec().data), tmp_path)
    finally:
        train_mod.log.removeHandler(handler)
    text = "".join(screen)
    assert "━" in text and text.count("LOG epoch ") == 2 and text.count("LOG checkpoint ") == 4  # steps 3 and 6
    for logged in ("LOG epoch ", "LOG checkpoint "):
        assert all(line.startswith(logged) for line in re.findall(rf"[^\n]*{logged}[^\n]*", text)), text
    assert "  ~" in text.split("LOG epoch 1/2")[1].split("\n")[0]  # the time left, after the first epoch
    assert "left" not in text.split("LOG epoch 2/2")[1].split("\n")[0]


def test_off_a_terminal_a_log_line_inside_an_epoch_writes_nothing_to_stdout(monkeypatch, caplog):
    # Under Slurm or kubectl logs stdout is a file with no bar to end: no blank line per checkpoint.
    import io
    import logging

    out = io.StringIO()  # isatty() is False
    monkeypatch.setattr(train_mod.sys, "stdout", out)
    with caplog.at_level(logging.INFO, logger=train_mod.log.name):
        train_mod._log_inside_epoch("checkpoint %s", "x")
    assert out.getvalue() == "" and "checkpoint x" in caplog.text


def test_the_bar_redraws_under_the_screen_lock(monkeypatch):
    # Keras redraws the bar from its callback threads (JAX, torch): a log line must not land inside it.
    import keras

    held = []
    monkeypatch.setattr(
        keras.callbacks.ProgbarLogger,
        "on_train_batch_end",
        lambda self, batch, logs=None: held.append(train_mod._screen.locked()),
    )
    train_mod.Progress(epochs=2).on_train_batch_end(0, {})
    assert held == [True]


@pytest.mark.parametrize(
    "seconds, shown", [(45, "45s"), (59.4, "59s"), (59.6, "1m"), (60, "1m"), (721, "12m"), (3900, "1h05m")]
)
def test_the_time_left_reads_as_one_reads_a_clock(seconds, shown):
    assert train_mod._duration(seconds) == shown


def test_non_finite_loss_fails_the_run():
    cb = train_mod.StopOnNonFiniteLoss()
    cb.on_epoch_begin(2)
    cb.on_train_batch_end(0, {"loss": 1.5})
    with pytest.raises(DivergedError, match="epoch 3, step 5"):
        cb.on_train_batch_end(4, {"loss": float("nan")})


def test_a_nan_loss_in_real_training_stops_the_run_though_the_check_runs_off_the_loop(tiny_spec, tmp_path,
                                                                                      monkeypatch):  # fmt: skip
    # The check is async_safe (Keras runs it in a worker thread): its error must still end training.
    from job import runtime
    from job.data import load_dataset

    spec = tiny_spec()
    data = load_dataset(spec.data)
    poisoned = train_mod.smoothing.training_targets(data.y_train, 10, spec.smoothing)
    poisoned[40:] = np.nan  # in every shuffled batch
    monkeypatch.setattr(train_mod.smoothing, "training_targets", lambda *args: poisoned)
    runtime.configure(spec.runtime, spec.train.seed)
    with pytest.raises(DivergedError, match=r"loss became nan at epoch 1, step \d+"):
        train_mod.train(spec, data, tmp_path)
    assert not (tmp_path / "checkpoints").exists()  # the diverged epoch is not checkpointed


def test_a_mid_epoch_checkpoint_is_never_taken_of_a_diverged_state(tmp_path):
    # The non-finite check runs off the loop, so a step checkpoint can fall due before it
    # has spoken; the checkpoint itself must then refuse.
    import keras

    from job.checkpoint import Checkpoints

    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(2, activation="softmax")])
    model.compile("sgd", "categorical_crossentropy")
    recorder = train_mod.EpochRecorder([], tmp_path, Checkpoints(tmp_path / "checkpoints"), TrainSpec(), every=1)
    recorder.set_model(model)
    recorder.on_epoch_begin(0)
    recorder.on_train_batch_begin(1)
    assert [p.name for p in (tmp_path / "checkpoints").iterdir()] == ["epoch-0000-step-000001"]
    model.metrics_variables[0].assign(float("nan"))  # the running loss sum
    with pytest.raises(DivergedError, match="non-finite in epoch 1 before step 3"):
        recorder.on_train_batch_begin(2)
    assert [p.name for p in (tmp_path / "checkpoints").iterdir()] == ["epoch-0000-step-000001"]


@pytest.mark.parametrize(
    ("every", "per_execution", "offset", "expected"),
    [
        (3, 1, 0, [3, 6, 9, 12, 15]),
        (3, 4, 0, [4, 8, 12, 16]),  # Keras calls between executions: the first at or past each multiple
        (5, 4, 0, [8, 12, 16]),
        (8, 4, 0, [8, 16]),
        (3, 2, 4, [6, 10, 12, 16]),  # a resumed epoch, 4 steps in: nothing at 4 itself, again at 6
    ],
)
def test_step_checkpoints_fall_due_every_n_steps_whatever_the_steps_per_execution(
    tmp_path, every, per_execution, offset, expected
):
    recorder = train_mod.EpochRecorder([], tmp_path, None, TrainSpec(), every=every)
    saved = []
    recorder._save_mid_epoch = saved.append
    recorder.step_offset = offset
    recorder.on_epoch_begin(0)
    for batch in range(0, 17 - offset, per_execution):
        recorder.on_train_batch_begin(batch)
    assert saved == expected


@pytest.mark.slow
def test_learns_real_cifar10_pixels(cifar_sample, tiny_spec, tmp_path):
    from job import runtime

    data = Dataset(
        cifar_sample["x_train"][:1600], cifar_sample["y_train"][:1600],
        cifar_sample["x_test"], cifar_sample["y_test"], "CIFAR-10 sample",
    )  # fmt: skip
    # 200 steps: fewer leave BatchNorm's moving statistics (momentum 0.99) too far from
    # the data for inference to mean anything. Seen here: 34.5% test accuracy.
    spec = tiny_spec("train.epochs=2", "train.batch_size=16", "train.lr=0.01")
    runtime.configure(spec.runtime, spec.train.seed)
    result = train_mod.train(spec, data, tmp_path)
    accuracy = float((result.test_probs.argmax(axis=1) == data.y_test).mean())
    # 1,000 test images: chance is 10% +- 1%; a pipeline that scrambled pixels or labels stays there.
    assert accuracy > 0.2, accuracy


def test_epoch_seeds_fit_every_backends_seed_state():
    # PyTorch keeps seed_generator_state as int32 (JAX uint32, TensorFlow int64): a seed of 2**31
    # or more would not even assign there. Half of all raw 32-bit states are; none of ours.
    seeds = [train_mod.epoch_seed(seed, epoch, stream) for seed in (0, 42, 2**40) for epoch in range(70)
             for stream in range(3)]  # fmt: skip
    assert all(0 <= s < 2**31 for s in seeds)
    assert len(set(seeds)) == len(seeds)


def test_an_infinite_loss_fails_the_run_as_a_nan_does():
    # A loss that overflowed to inf is as diverged as NaN.
    cb = train_mod.StopOnNonFiniteLoss()
    cb.on_epoch_begin(0)
    for loss in (float("inf"), float("-inf")):
        with pytest.raises(DivergedError, match=rf"loss became {loss} at epoch 1, step 3"):
            cb.on_train_batch_end(2, {"loss": loss})


def test_a_non_finite_loss_in_a_resumed_epoch_names_its_step_in_the_whole_epoch():
    # Resumed at step 120 of epoch 4, the 5th step after it is the epoch's step 125.
    cb = train_mod.StopOnNonFiniteLoss()
    cb.step_offset = 120  # as train() sets it for the resumed epoch
    cb.on_epoch_begin(3)
    with pytest.raises(DivergedError, match=r"epoch 4, step 125$"):
        cb.on_train_batch_end(4, {"loss": float("nan")})


def test_a_mid_epoch_checkpoint_of_another_model_is_refused_not_half_restored():
    # Zip() would restore what lines up and silently drop the rest.
    from job.checkpoint import MidEpoch

    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(2, activation="softmax")])
    model.compile("sgd", "categorical_crossentropy", metrics=["accuracy"])
    metrics = len(model.metrics_variables)
    before = [np.asarray(v).tolist() for v in model.metrics_variables]
    state = MidEpoch(steps_done=3, seed_states=[[7, 3]], metric_values=[[9.0]] * metrics)  # a stream this model lacks
    resume = train_mod.ResumeMidEpoch(2, state)
    resume.set_model(model)
    with pytest.raises(SpecError, match=rf"holds 1 random streams and {metrics} metric values, this model 0 and "
                                        rf"{metrics}.*delete the run's checkpoints/"):  # fmt: skip
        resume.on_epoch_begin(2)
    assert [np.asarray(v).tolist() for v in model.metrics_variables] == before


def test_a_resumed_epoch_counts_the_seconds_it_ran_before_the_stop(tmp_path, monkeypatch):
    # The epoch's seconds in a step checkpoint and in history.csv include those its
    # earlier attempt ran (MidEpoch.seconds, handed in as seconds_before).
    from job.history import FIT_LOGS

    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(2, activation="softmax")])
    model.compile("sgd", "categorical_crossentropy", metrics=["accuracy"])
    saved = []

    class Saves:
        def save(self, model, epochs_done, history, mid_epoch=None):
            saved.append(mid_epoch)
            return tmp_path / "checkpoints" / "saved"

    now = [100.0]
    monkeypatch.setattr(train_mod.time, "perf_counter", lambda: now[0])
    recorder = train_mod.EpochRecorder([], tmp_path, Saves(), TrainSpec(epochs=2), every=3)
    recorder.set_model(model)
    recorder.step_offset, recorder.seconds_before = 4, 25.0  # resumed at step 4, after 25 s
    recorder.on_epoch_begin(1)
    now[0] = 130.0
    recorder.on_train_batch_begin(2)  # step 6: a step checkpoint
    assert saved[-1].steps_done == 6 and saved[-1].seconds == pytest.approx(55.0)
    now[0] = 160.0
    recorder.on_epoch_end(1, {k: 1.0 for k in FIT_LOGS})
    assert recorder.history[-1]["seconds"] == pytest.approx(85.0)
    assert saved[-1] is None  # the epoch's own checkpoint


@pytest.mark.parametrize("seconds, shown", [(3570, "1h00m"), (3629, "1h00m"), (3569, "59m")])
def test_an_hour_left_reads_as_hours(seconds, shown):
    # 60 minutes is 1h00m, not 60m.
    assert train_mod._duration(seconds) == shown


def test_a_resumed_epoch_hands_its_step_and_seconds_to_the_callbacks_and_trains_on_the_rest(tiny_spec, tmp_path,
                                                                                          monkeypatch):  # fmt: skip
    # Resumed at step 5 of 8 after 12.5 s, epoch 2's fit
    # gets the last 3 batches of its order, and the recorder and the non-finite check count on
    # from step 5 and 12.5 s.
    from job.checkpoint import Checkpoints, MidEpoch, Resume
    from job.data import load_dataset
    from job.history import FIT_LOGS

    class Captured(Exception):
        pass

    def fit(self, *args, x=None, callbacks=None, initial_epoch=None, **kwargs):
        raise Captured(x, callbacks, initial_epoch)

    spec = tiny_spec()
    data = load_dataset(spec.data)
    train_mod.runtime.configure(spec.runtime, spec.train.seed)
    row = {"epoch": 1, **{k: 1.0 for k in FIT_LOGS}, "lr": 5e-3, "seconds": 3.0}

    def restore(self, model):
        metrics = [np.asarray(v).tolist() for v in model.metrics_variables]
        seeds = [np.asarray(v).tolist() for v in train_mod._seed_states(model)]
        return Resume(1, [row], MidEpoch(steps_done=5, seed_states=seeds, metric_values=metrics, seconds=12.5))

    monkeypatch.setattr(Checkpoints, "restore", restore)
    monkeypatch.setattr(keras.Model, "fit", fit)
    monkeypatch.setattr(
        train_mod.runtime, "feed", lambda x, y=None, *, batch_size: {"x": x, "y": y, "batch_size": batch_size}
    )
    with monkeypatch.context() as m:
        m.setattr(keras.Model, "evaluate", lambda *a, **k: None)
        with pytest.raises(Captured) as captured:
            train_mod.train(spec, data, tmp_path)
    x, callbacks, initial_epoch = captured.value.args
    order = train_mod.epoch_order(spec.train.seed, 1, len(data.x_train), 16)
    assert initial_epoch == 1
    np.testing.assert_array_equal(x, data.x_train[order[5 * 16 :]])
    recorder = next(c for c in callbacks if isinstance(c, train_mod.EpochRecorder))
    diverged = next(c for c in callbacks if isinstance(c, train_mod.StopOnNonFiniteLoss))
    assert (recorder.step_offset, diverged.step_offset, recorder.seconds_before) == (5, 5, 12.5)


def test_every_epochs_streams_start_at_counter_zero_from_that_epochs_seed():
    # The existing test pins epoch 0 only, where the epoch number and 0 coincide.
    from job.model import build_model
    from job.spec import AugmentSpec

    model = build_model(np.zeros((32, 32, 3), np.float32), AugmentSpec(), seed=1)
    seeds = train_mod.EpochSeeds(7)
    seeds.set_model(model)
    seeds.on_epoch_begin(5)
    assert [tuple(np.asarray(v).tolist()) for v in train_mod._seed_states(model)] == [
        (train_mod.epoch_seed(7, 5, 1), 0), (train_mod.epoch_seed(7, 5, 2), 0)
    ]  # fmt: skip


def test_check_fits_takes_the_holdout_off_and_lets_exactly_one_batch_through(tiny_spec):
    # Exactly one batch of images is enough (steps_per_epoch 1); the holdout of temperature
    # scaling is not trained on, so it does not count towards the batch.
    spec = tiny_spec()
    train_mod.check_fits(spec, 16, 32)  # one whole batch: trains
    with pytest.raises(SpecError, match="the training set has 15 images, fewer than train.batch_size 16"):
        train_mod.check_fits(spec, 15, 32)
    # Data handed to execute() in place of the spec's (its size known only there): 100 held out.
    held = tiny_spec("eval.temperature_scaling=true", "eval.holdout_size=100")
    train_mod.check_fits(held, 116, 32)  # 16 left after the holdout
    with pytest.raises(SpecError, match="has 108 images, 100 of them held out by eval.holdout_size, leaving 8, fewer"):
        train_mod.check_fits(held, 108, 32)
