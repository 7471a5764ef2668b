"""Checkpoints: whole or absent, the last two kept, damage detected, mid-epoch state kept."""

import errno
import logging
import os
import stat
import warnings

import numpy as np
import pytest

import job.checkpoint
from job.checkpoint import Checkpoints, MidEpoch, Resume
from job.errors import SpecError, StorageError

keras = pytest.importorskip("keras")


def small_model(seed=0):
    keras.utils.set_random_seed(seed)
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3, activation="softmax")])
    model.compile(keras.optimizers.SGD(0.1, momentum=0.9), "categorical_crossentropy")
    return model


def train_step(model):
    model.fit(np.ones((8, 4)), np.eye(3)[[0, 1] * 4], epochs=1, verbose=0)


def test_restore_brings_back_weights_optimizer_and_history(tmp_path):
    model, store = small_model(), Checkpoints(tmp_path)
    train_step(model)
    store.save(model, 1, [{"epoch": 1}])
    fresh = small_model(seed=1)
    assert store.restore(fresh) == Resume(1, [{"epoch": 1}])
    for a, b in zip(model.get_weights(), fresh.get_weights()):
        np.testing.assert_array_equal(a, b)
    for a, b in zip(model.optimizer.variables, fresh.optimizer.variables):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))  # momentum and iteration count


@pytest.mark.parametrize("saved_scaled", [False, True])
def test_an_optimizer_state_of_another_shape_is_announced_and_the_weights_still_resume(tmp_path, caplog, saved_scaled):
    # fp16 wraps SGD in a LossScaleOptimizer: an attempt on another kind of GPU (precision auto)
    # found a state of another shape, which Keras skipped with only a Python warning.
    def model(scaled, seed):
        keras.utils.set_random_seed(seed)
        m = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3, activation="softmax")])
        sgd = keras.optimizers.SGD(0.1, momentum=0.9)
        m.compile(keras.optimizers.LossScaleOptimizer(sgd) if scaled else sgd, "categorical_crossentropy")
        return m

    trained, store = model(saved_scaled, 0), Checkpoints(tmp_path)
    train_step(trained)
    store.save(trained, 1, [{"epoch": 1}])
    fresh = model(not saved_scaled, 1)
    with caplog.at_level(logging.WARNING, logger="lsjob"):
        assert store.restore(fresh) == Resume(1, [{"epoch": 1}])
    assert "checkpoint epoch-0001: its optimizer state does not fit this attempt's optimizer" in caplog.text
    assert "SGD's momentum starts from zero" in caplog.text
    for a, b in zip(trained.get_weights(), fresh.get_weights()):
        np.testing.assert_array_equal(a, b)
    caplog.clear()
    same = model(saved_scaled, 1)  # the same optimizer: its state loads, and nothing is said
    with caplog.at_level(logging.WARNING, logger="lsjob"):
        store.restore(same)
    assert "optimizer state" not in caplog.text
    assert int(np.asarray(same.optimizer.iterations)) == int(np.asarray(trained.optimizer.iterations)) == 1


def test_keeps_the_newest_two_and_no_temporaries(tmp_path):
    model, store = small_model(), Checkpoints(tmp_path)
    for epoch in (1, 2, 3):
        store.save(model, epoch, [{"epoch": e} for e in range(1, epoch + 1)])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["epoch-0002", "epoch-0003"]


def test_newest_names_the_latest_checkpoint(tmp_path):
    # run.py records whether an attempt saved anything by comparing it before and after: one that
    # resumed from the only checkpoint and saved another made progress, and is no stalled attempt.
    model, store = small_model(), Checkpoints(tmp_path)
    assert store.newest() is None
    for epoch in (1, 2, 3):
        store.save(model, epoch, [{"epoch": e} for e in range(1, epoch + 1)])
        assert store.newest() == f"epoch-{epoch:04d}"


def test_keras_other_warnings_while_loading_a_checkpoint_still_reach_the_user(tmp_path, monkeypatch):
    # Only the optimizer-shape warning is turned into a log line; any other is Keras's to say.
    model, store = small_model(), Checkpoints(tmp_path)
    train_step(model)
    store.save(model, 1, [{"epoch": 1}])
    fresh = small_model(seed=1)
    real = type(fresh).load_weights

    def load_weights(self, path, *args, **kwargs):
        warnings.warn("A total of 1 objects could not be loaded", UserWarning)
        return real(self, path, *args, **kwargs)

    monkeypatch.setattr(type(fresh), "load_weights", load_weights)
    with pytest.warns(UserWarning, match="objects could not be loaded"):
        store.restore(fresh)


def test_a_damaged_newest_checkpoint_falls_back_to_the_previous(tmp_path, caplog):
    model, store = small_model(), Checkpoints(tmp_path)
    train_step(model)  # as in a run: the optimizer's momentum exists before the first save
    store.save(model, 1, [{"epoch": 1}])
    store.save(model, 2, [{"epoch": 1}, {"epoch": 2}])
    weights = tmp_path / "epoch-0002" / "state.weights.h5"
    weights.write_bytes(weights.read_bytes()[:100])  # a torn write
    with caplog.at_level(logging.WARNING, logger="lsjob"):
        assert store.restore(small_model()) == Resume(1, [{"epoch": 1}])
    assert "epoch-0002 is unusable" in caplog.text
    # Set aside: left in the sequence, the newest by name, it kept a place among the two that
    # pruning spares, and the intact epoch-0001 the run resumed from went first.
    assert sorted(p.name for p in tmp_path.iterdir()) == ["damaged-epoch-0002", "epoch-0001"]
    store.save(model, 1, [{"epoch": 1}], MidEpoch(4, []))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["damaged-epoch-0002", "epoch-0001", "epoch-0001-step-000004"]
    weights = tmp_path / "epoch-0001-step-000004" / "state.weights.h5"
    weights.write_bytes(weights.read_bytes()[:100])  # damaged too: epoch-0001 is still there to resume from
    assert store.restore(small_model()) == Resume(1, [{"epoch": 1}])
    assert (tmp_path / "damaged-epoch-0001-step-000004").is_dir()


def two_saved(directory):
    """Checkpoints of epochs 1 and 2 in `directory`, of a model trained a step (its optimizer's
    momentum exists before the first save, as in a run)."""
    model, store = small_model(), Checkpoints(directory)
    train_step(model)
    store.save(model, 1, [{"epoch": 1}])
    store.save(model, 2, [{"epoch": 1}, {"epoch": 2}])
    return store


def contents(directory):
    return {p.relative_to(directory): p.read_bytes() for p in sorted(directory.rglob("*")) if p.is_file()}


def test_when_no_checkpoint_loads_the_run_stops_instead_of_starting_over(tmp_path, caplog):
    # Starting over would lose the run's progress, and pruning would then keep these two,
    # higher-numbered, over every new checkpoint: each later attempt would start over again.
    store = two_saved(tmp_path)
    for name in ("epoch-0001", "epoch-0002"):
        (tmp_path / name / "state.weights.h5").write_bytes(b"garbage")
    before = contents(tmp_path)
    with pytest.raises(SpecError, match=r"no checkpoint in .* can be loaded \(epoch-0002: .*; epoch-0001: .*--force"):
        store.restore(small_model())
    assert contents(tmp_path) == before


def test_a_storage_fault_while_loading_stops_the_run_and_judges_nothing_damaged(tmp_path, monkeypatch):
    # An NFS hiccup on the newest must not make the run fall back to the older one, or to epoch 1.
    store = two_saved(tmp_path)
    before = contents(tmp_path)

    def failing_read(path):
        raise OSError(errno.EIO, os.strerror(errno.EIO), str(path))

    monkeypatch.setattr(job.checkpoint, "sha256_file", failing_read)
    with pytest.raises(StorageError, match="epoch-0002.*the storage failed") as caught:
        store.restore(small_model())
    assert caught.value.exit_code == 1 and contents(tmp_path) == before


def test_another_users_checkpoint_is_not_judged_damaged(tmp_path, monkeypatch):
    # A teammate resuming a run in a shared folder it may not read: passed over as damaged, the run
    # would end advising --force, which throws the intact work away.
    store = two_saved(tmp_path)
    before = contents(tmp_path)

    def denied(path):
        raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(path))

    monkeypatch.setattr(job.checkpoint, "sha256_file", denied)
    owner = (tmp_path / "epoch-0002").stat().st_uid
    monkeypatch.setattr(os, "getuid", lambda: owner + 1)  # a teammate
    with pytest.raises(SpecError, match=r"cannot read the checkpoint .*epoch-0002.* it is not damaged") as caught:
        store.restore(small_model())
    assert "--force" not in str(caught.value) and contents(tmp_path) == before
    assert f"belongs to user {owner}. Run as that user, or ask them" in str(caught.value)


def test_a_checkpoint_has_the_umask_permissions_and_a_group_folder_setgid_bit(tmp_path):
    # mkdtemp's 0700 stayed with the checkpoint: a team sharing the results folder could not resume it.
    tmp_path.chmod(0o2775)  # a team's folder: new files and folders get its group
    model, store = small_model(), Checkpoints(tmp_path)
    train_step(model)
    saved = store.save(model, 1, [{"epoch": 1}])
    umask = os.umask(0)
    os.umask(umask)
    assert saved.stat().st_mode & 0o7777 == (0o777 & ~umask) | stat.S_ISGID


def test_a_save_killed_midway_leaves_nothing_once_the_run_resumes(tmp_path):
    model, store = small_model(), Checkpoints(tmp_path)
    train_step(model)
    store.save(model, 1, [{"epoch": 1}])
    for torn in (".epoch-0002.k1ll3d_x", ".epoch-0001-step-000040.a8b_q0"):  # what SIGKILL mid-save leaves
        (tmp_path / torn).mkdir()
        (tmp_path / torn / "state.weights.h5").write_bytes(b"\0" * 1000)
    (tmp_path / ".epochs-notes").mkdir()  # not a save's: left alone
    assert store.restore(small_model()) == Resume(1, [{"epoch": 1}])
    assert sorted(p.name for p in tmp_path.iterdir()) == [".epochs-notes", "epoch-0001"]


def test_an_epoch_saved_again_after_a_crash_replaces_the_earlier_save(tmp_path):
    # A run killed after saving epoch 1 but before recording it saves epoch 1 again on resume;
    # refusing to overwrite would fail every resume of that run.
    model, store = small_model(), Checkpoints(tmp_path)
    store.save(model, 1, [{"epoch": 1, "loss": 2.0}])
    train_step(model)
    store.save(model, 1, [{"epoch": 1, "loss": 1.0}])
    fresh = small_model(seed=1)
    assert store.restore(fresh) == Resume(1, [{"epoch": 1, "loss": 1.0}])
    for a, b in zip(model.get_weights(), fresh.get_weights()):
        np.testing.assert_array_equal(a, b)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["epoch-0001"]


def test_no_checkpoint_means_a_fresh_start(tmp_path):
    assert Checkpoints(tmp_path / "none").restore(small_model()) == Resume()


def test_a_mid_epoch_checkpoint_keeps_its_state_and_sorts_between_epoch_ends(tmp_path):
    model, store = small_model(), Checkpoints(tmp_path)
    train_step(model)
    store.save(model, 1, [{"epoch": 1}])
    state = MidEpoch(steps_done=120, seed_states=[[7, 240], [9, 120]], metric_values=[[1.5], [64.0]], seconds=3.25)
    path = store.save(model, 1, [{"epoch": 1}], state)
    assert path.name == "epoch-0001-step-000120"
    assert store.restore(small_model()) == Resume(1, [{"epoch": 1}], state)
    # The end of that epoch is newer than any step inside it, and older checkpoints go.
    store.save(model, 2, [{"epoch": 1}, {"epoch": 2}])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["epoch-0001-step-000120", "epoch-0002"]
    assert store.restore(small_model()).mid_epoch is None
