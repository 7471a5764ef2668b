"""A run end to end: the results directory, re-runs, and refusals that protect results."""

import errno
import hashlib
import json
import logging
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import keras
import numpy as np
import pytest

from job import preemption, rundir, stall_guard
from job import run as run_mod
from job.errors import (
    EXIT_BAD_INPUT,
    DivergedError,
    InterruptedRun,
    NoSpaceError,
    RunBusyError,
    SpecError,
    StorageError,
)
from job.rundir import RunDir
from job.spec import load_spec

ROOT = Path(__file__).resolve().parents[1]
# conftest.TINY for the command line: a run of seconds.
TINY_RUN = ["data.train_size=128", "data.test_size=32", "train.batch_size=16", "runtime.deterministic=true"]
ARTIFACTS = {
    "spec.yaml", "manifest.json", "history.csv", "metrics.json", "classification_report.txt",
    "training.png", "confusion_matrix.png", "model.keras", "run.log", "predictions.npz", "calibration.json",
    "reliability.png",
}  # fmt: skip


@pytest.fixture(scope="module")
def completed(tmp_path_factory):
    """One finished tiny run, shared by the tests that only read it."""
    from conftest import TINY

    from job.spec import load_spec

    root = tmp_path_factory.mktemp("results")
    spec = load_spec(None, [*TINY, f"output.root={root}", "output.run=done"])
    assert run_mod.execute(spec) == 0
    return spec


def test_results_directory_is_complete(completed):
    run_dir = completed.run_dir
    names = {p.name for p in run_dir.iterdir()}
    assert ARTIFACTS <= names
    # What --force discards (rundir.RUN_FILES) is what a run writes: a file added here must be added there.
    assert names == rundir.RUN_FILES - {"checkpoints"}
    assert not [n for n in names if ".tmp" in n], "temporary files left behind"
    assert "checkpoints" not in names  # no longer needed once complete

    manifest = json.loads((run_dir / "manifest.json").read_text())
    assert manifest["status"] == "completed" and manifest["reason"] is None
    assert manifest["spec_hash"] == completed.content_hash()
    assert (manifest["method"], manifest["factor"], manifest["seed"]) == ("labels", 0.1, 42)
    assert manifest["epochs_done"] == 2 and manifest["duration_s"] > 0
    assert {"lsjob", "python", "keras"} <= set(manifest["versions"])
    assert manifest["backend"] and manifest["devices"] and manifest["started"] and manifest["finished"]

    history = (run_dir / "history.csv").read_text().splitlines()
    assert history[0] == "epoch,loss,accuracy,val_loss,val_accuracy,val_nll,lr,seconds"
    assert len(history) == 3 and history[1].startswith("1,") and history[2].startswith("2,")

    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["test_accuracy"] == manifest["test_accuracy"]
    assert set(metrics["per_class"]) >= {"airplane", "truck"}
    assert "accuracy" in (run_dir / "classification_report.txt").read_text()
    for png in ("training.png", "confusion_matrix.png", "reliability.png"):
        assert (run_dir / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "epoch 2/2" in (run_dir / "run.log").read_text()
    assert metrics["test_ece"] == manifest["test_ece"] and 0 <= metrics["test_ece"] <= 1
    assert "holdout" not in manifest and "temperature" not in metrics


def test_lsjob_report_rewrites_the_same_files_without_the_training_stack(completed, tmp_path):
    import shutil
    import subprocess
    import sys

    copy = tmp_path / "done"
    shutil.copytree(completed.run_dir, copy)
    reports = ("metrics.json", "calibration.json", "classification_report.txt", "training.png",
               "confusion_matrix.png", "reliability.png")  # fmt: skip
    original = {name: (copy / name).read_bytes() for name in reports}
    for name in reports:
        (copy / name).unlink()
    code = (
        "import sys; from job.cli import main; sys.argv = ['lsjob', 'report', sys.argv[1]]\n"
        "try:\n    main()\nexcept SystemExit as e:\n    assert not e.code, e.code\n"
        "assert not [m for m in ('keras', 'tensorflow', 'jax', 'torch') if m in sys.modules]"
    )
    proc = subprocess.run([sys.executable, "-c", code, str(copy)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert "reports rewritten" in proc.stdout
    assert {name: (copy / name).read_bytes() for name in reports} == original


def test_temperature_scaling_holds_out_the_last_training_images(tiny_spec, monkeypatch):
    from job.data import load_dataset

    spec = tiny_spec("output.run=scaled", "eval.temperature_scaling=true", "eval.holdout_size=32")
    trained_on = []
    real_train = run_mod.train
    monkeypatch.setattr(run_mod, "train", lambda spec, data, d: real_train(spec, trained_on.append(data) or data, d))
    assert run_mod.execute(spec) == 0
    full = load_dataset(spec.data)
    (seen,) = trained_on
    assert len(seen.x_train) == len(full.x_train) - 32
    np.testing.assert_array_equal(seen.x_train, full.x_train[:-32])
    # Not one held-out image reaches training (the synthetic images are all distinct).
    held_out = {image.tobytes() for image in full.x_train[-32:]}
    assert len(held_out) == 32 and not held_out & {image.tobytes() for image in seen.x_train}
    manifest = json.loads((spec.run_dir / "manifest.json").read_text())
    assert manifest["holdout"]["examples"] == 32 and "last 32 train held out" in manifest["data"]
    # Which images, as a reader of the manifest alone can take them: not only in words.
    assert manifest["holdout"]["train_indices"] == [len(full.x_train) - 32, len(full.x_train)]
    assert manifest["holdout"]["class_counts"] == np.bincount(full.y_train[-32:], minlength=10).tolist()
    metrics = json.loads((spec.run_dir / "metrics.json").read_text())
    assert metrics["temperature"] > 0 and "test_ece_scaled" in metrics
    # The log's last line carries them: a scheduler's log is often all one reads of a run.
    last = (spec.run_dir / "run.log").read_text().splitlines()[-1]
    assert (
        f"completed: test accuracy {metrics['test_accuracy']:.4f}, test NLL {metrics['test_nll']:.4f}, "
        f"ECE {metrics['test_ece']:.4f} (after T = {metrics['temperature']:.3f}: ECE "
        f"{metrics['test_ece_scaled']:.4f}, NLL {metrics['test_nll_scaled']:.4f}) -> {spec.run_dir}"
    ) in last, last
    # The temperature is fitted on the held-out images' predictions and their own labels: the
    # trained model's, as saved, on exactly those images (the test set is as large here).
    import keras

    model = keras.saving.load_model(spec.run_dir / "model.keras")
    with np.load(spec.run_dir / "predictions.npz") as f:
        assert f["holdout_probs"].shape == (32, 10) and f["test_probs"].shape == (32, 10)
        np.testing.assert_allclose(f["holdout_probs"], model.predict(full.x_train[-32:], verbose=0), atol=1e-5)
        np.testing.assert_array_equal(f["holdout_labels"], full.y_train[-32:])


def test_saved_model_reproduces_the_reported_accuracy(completed):
    import keras

    from job.data import load_dataset

    model = keras.saving.load_model(completed.run_dir / "model.keras")
    data = load_dataset(completed.data)
    probs = model.predict(data.x_test, verbose=0)
    metrics = json.loads((completed.run_dir / "metrics.json").read_text())
    assert np.isclose((probs.argmax(1) == data.y_test).mean(), metrics["test_accuracy"])


def test_rerun_of_a_completed_run_is_a_no_op(completed, caplog):
    caplog.set_level("INFO", logger="lsjob")
    before = {p.name: p.stat().st_mtime_ns for p in completed.run_dir.iterdir() if p.name != ".lock"}
    assert run_mod.execute(completed) == 0
    accuracy = json.loads((completed.run_dir / "manifest.json").read_text())["test_accuracy"]
    assert f"already complete (test accuracy {accuracy:.4f}); nothing to do" in caplog.text
    after = {p.name: p.stat().st_mtime_ns for p in completed.run_dir.iterdir() if p.name != ".lock"}
    assert before == after


def test_a_different_spec_under_the_same_name_is_refused_naming_what_differs(completed):
    changed = completed.model_copy(update={"train": completed.train.model_copy(update={"epochs": 3, "lr": 0.01})})
    with pytest.raises(
        SpecError, match=r"different spec \(it differs in train.epochs: 2 -> 3; train.lr: 0.005 -> 0.01\)"
    ):
        run_mod.execute(changed)
    with pytest.raises(SpecError, match="use another output.run, or --force"):
        run_mod.execute(changed)
    # A sweep's point cannot take another output.run (the sweep names it): another root keeps both.
    with pytest.raises(SpecError, match="use another output.root for this sweep, or --force"):
        run_mod.execute(changed, sweep_point={"index": 0, "values": {"train.epochs": 3}})


def test_what_force_says_it_discards_never_stops_it(tmp_path, monkeypatch):
    run_dir = RunDir(tmp_path / "r")
    run_dir.claim()  # the folder and its lock, as --force finds them for a run never started
    try:
        assert run_mod._what_force_discards(run_dir) is None
        run_dir.write_manifest({"status": "running"})  # a manifest of an older shape: no epochs_done
        assert run_mod._what_force_discards(run_dir) == "status running, ? epoch(s) done"

        def failing_disk(*args, **kwargs):
            raise OSError(errno.EIO, "Input/output error")

        # --force never read the manifest before: a line describing it must not make it fail.
        monkeypatch.setattr(rundir, "read_own_text", failing_disk)
        assert run_mod._what_force_discards(run_dir) == "its manifest.json could not be read"
    finally:
        run_dir.release()


def test_force_discards_once_per_slurm_job_so_a_requeued_attempt_resumes(tiny_spec, monkeypatch, caplog):
    caplog.set_level("INFO", logger="lsjob")
    monkeypatch.delenv("SLURM_RESTART_COUNT", raising=False)
    # sbatch requeues an attempt with the options it was submitted with, --force included.
    spec = tiny_spec("train.epochs=1")  # it trains 7 times: one epoch each is all --force's record needs
    run_mod.execute(spec)
    monkeypatch.setenv("SLURM_JOB_ID", "77")

    def stopped_while_loading(*args, **kwargs):
        raise InterruptedRun("stopped by SIGTERM")

    with monkeypatch.context() as m:  # preempted before it discarded anything: the next attempt must
        m.setattr(run_mod, "load_dataset", stopped_while_loading)
        with pytest.raises(InterruptedRun):
            run_mod.execute(spec, force=True)
    assert [a.get("forced") for a in RunDir(spec.run_dir).read_manifest()["attempts"]] == [None]
    run_mod.execute(spec, force=True)  # discards and trains anew, on record as job 77's
    (attempt,) = RunDir(spec.run_dir).read_manifest()["attempts"]
    assert (attempt["forced"], attempt["slurm_job"], attempt["slurm_restart"]) == (True, "77", 0)
    started = attempt["started"]
    run_mod.execute(spec, force=True)  # job 77 runs it again unrequeued (salloc: one job, many commands)
    (attempt,) = RunDir(spec.run_dir).read_manifest()["attempts"]
    assert attempt["forced"] is True and attempt["started"] != started  # discarded again, as asked
    before = {p.name: p.stat().st_mtime_ns for p in spec.run_dir.iterdir() if p.name != ".lock"}
    caplog.clear()
    monkeypatch.setenv("SLURM_RESTART_COUNT", "1")
    run_mod.execute(spec, force=True)  # job 77 requeued: what it trained is kept
    assert "already complete" in caplog.text
    assert {p.name: p.stat().st_mtime_ns for p in spec.run_dir.iterdir() if p.name != ".lock"} == before
    changed = spec.model_copy(update={"train": spec.train.model_copy(update={"lr": 0.01})})
    monkeypatch.setenv("SLURM_RESTART_COUNT", "2")
    run_mod.execute(changed, force=True)  # another spec's run is no part of what job 77 trained: discarded
    (attempt,) = RunDir(spec.run_dir).read_manifest()["attempts"]
    assert attempt["forced"] is True and RunDir(spec.run_dir).read_manifest()["spec_hash"] == changed.content_hash()
    monkeypatch.setenv("SLURM_JOB_ID", "78")  # another job's --force discards again
    run_mod.execute(spec, force=True)
    (attempt,) = RunDir(spec.run_dir).read_manifest()["attempts"]
    assert attempt["forced"] is True and attempt["slurm_job"] == "78"
    manifest = RunDir(spec.run_dir).read_manifest()
    damaged = [{**manifest["attempts"][0], "slurm_restart": "0"}]  # not a number: --force discards it
    RunDir(spec.run_dir).write_manifest({**manifest, "attempts": damaged})
    run_mod.execute(spec, force=True)
    (attempt,) = RunDir(spec.run_dir).read_manifest()["attempts"]
    assert attempt["slurm_restart"] == 2
    manifest = RunDir(spec.run_dir).read_manifest()
    RunDir(spec.run_dir).write_manifest({**manifest, "attempts": 5})  # damaged: --force still discards it
    run_mod.execute(spec, force=True)
    (attempt,) = RunDir(spec.run_dir).read_manifest()["attempts"]
    assert attempt["forced"] is True


def test_a_completed_run_on_storage_now_read_only_is_still_a_no_op(completed, caplog, monkeypatch):
    caplog.set_level("INFO", logger="lsjob")
    real_access = os.access

    def read_only(path, mode, *args, **kwargs):  # root may write anywhere: os.access is the run's only test
        inside = Path(path).resolve().is_relative_to(completed.output.root.resolve())
        return False if inside and mode & os.W_OK else real_access(path, mode, *args, **kwargs)

    monkeypatch.setattr(os, "access", read_only)
    assert run_mod.execute(completed) == 0
    assert "already complete" in caplog.text
    changed = completed.model_copy(update={"train": completed.train.model_copy(update={"epochs": 3})})
    with pytest.raises(SpecError, match="not writable"):  # work to do: refused as before
        run_mod.execute(changed)


def fail_one_attempt(spec, monkeypatch):
    """An attempt of `spec` that fails as training starts: a run directory with a failed manifest."""
    monkeypatch.setattr(run_mod, "train", lambda *a, **k: (_ for _ in ()).throw(DivergedError("nan")))
    with pytest.raises(DivergedError):
        run_mod.execute(spec)
    monkeypatch.undo()


def test_a_change_that_cannot_alter_results_resumes_the_same_run(tiny_spec, monkeypatch, tmp_path):
    # A requeued task on a smaller GPU lowers its evaluation batch; the cache moved.
    spec = tiny_spec("train.epochs=1")
    fail_one_attempt(spec, monkeypatch)
    moved = tiny_spec("train.epochs=1", "train.eval_batch_size=8", f"data.cache_dir={tmp_path / 'cache'}")
    assert run_mod.execute(moved) == 0
    manifest = json.loads((spec.run_dir / "manifest.json").read_text())
    assert [a["status"] for a in manifest["attempts"]] == ["failed", "completed"]
    # Why the failed attempt failed stays on record once the run's own reason is cleared.
    assert manifest["attempts"][0]["reason"] == "nan" and manifest["reason"] is None
    assert "reason" not in manifest["attempts"][1]


def hash_0_1_0(spec):
    """Spec.content_hash as lsjob 0.1.0 computed it: the evaluation batch and the cache folder counted."""
    payload = spec.model_dump(mode="json", exclude={"output": True, "sweep": True, "runtime": {"compile_cache"}})
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]


@pytest.mark.parametrize("change", [[], ["train.eval_batch_size=8"], ["data.cache_dir=/elsewhere"]])
def test_a_run_made_by_lsjob_0_1_0_is_still_this_specs(completed, caplog, change):
    caplog.set_level("INFO", logger="lsjob")
    assert hash_0_1_0(load_spec(None)) == "df2b159edd972a9b"  # what 0.1.0 wrote for the default spec
    manifest_path = completed.run_dir / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    manifest_path.write_text(json.dumps({**manifest, "spec_hash": hash_0_1_0(completed)}))
    try:
        again = load_spec(completed.run_dir / "spec.yaml", change)
        assert run_mod.execute(again) == 0
        assert "already complete" in caplog.text
    finally:
        manifest_path.write_text(json.dumps(manifest))


def fail_an_attempt(spec) -> dict:
    """One attempt of `spec` that fails as training starts, as a diverged run does; its manifest."""

    def diverge(*args, **kwargs):
        raise DivergedError("loss became nan at epoch 1, batch 3")

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(run_mod, "train", diverge)
        with pytest.raises(DivergedError):
            run_mod.execute(spec)
    return json.loads((spec.run_dir / "manifest.json").read_text())


def test_failure_is_recorded_with_its_reason_and_resumable(tiny_spec, monkeypatch):
    spec = tiny_spec("train.epochs=1")
    manifest = fail_an_attempt(spec)
    assert manifest["status"] == "failed" and "nan" in manifest["reason"]
    assert not (spec.run_dir / "metrics.json").exists()
    monkeypatch.setattr(run_mod, "now", lambda: "2099-01-01T00:00:00+00:00")  # the next attempt, much later
    assert run_mod.execute(spec) == 0  # the same command finishes it
    manifest = json.loads((spec.run_dir / "manifest.json").read_text())
    assert manifest["status"] == "completed"
    assert [a["status"] for a in manifest["attempts"]] == ["failed", "completed"]
    # The run started with its first attempt, not its last.
    assert manifest["started"] == manifest["attempts"][0]["started"] < manifest["attempts"][1]["started"]


def test_each_attempt_records_its_code_and_a_resume_on_other_code_is_warned_of(tiny_spec, monkeypatch, caplog):
    # The run's versions and commit were the last attempt's alone: a resume after an upgrade (a new
    # image between a preemption and the requeue) read as one version from start to end.
    spec = tiny_spec("train.epochs=1")
    fail_one_attempt(spec, monkeypatch)
    path = spec.run_dir / "manifest.json"
    manifest = json.loads(path.read_text())
    assert manifest["attempts"][-1]["versions"] == manifest["versions"]
    older = {**manifest["versions"], "keras": "3.0.0", "python": "3.10.0"}  # Python's version changes no number
    path.write_text(json.dumps({**manifest, "versions": older, "git_commit": "c0ffee" * 6 + "beef"}))
    with caplog.at_level("WARNING", logger="lsjob"):
        assert run_mod.execute(spec) == 0
    last = json.loads(path.read_text())["attempts"][-1]
    assert last["versions"]["keras"] == keras.__version__ and "git_commit" in last
    moved = f"keras 3.0.0 -> {keras.__version__}" + (
        f", git commit c0ffeec0ffee -> {last['git_commit'][:12]}" if last["git_commit"] else ""
    )
    assert f"this attempt runs other code than the run so far ({moved})" in caplog.text
    assert "python" not in caplog.text.split("other code than the run so far")[1].split(")")[0]


def test_an_attempt_killed_without_a_word_and_a_change_of_backend_are_on_record(tiny_spec, monkeypatch, caplog):
    spec = tiny_spec("train.epochs=1")
    fail_one_attempt(spec, monkeypatch)
    # As SIGKILL leaves it, on a machine with another backend, computing in bf16.
    here = keras.backend.backend()
    other = "torch" if here == "jax" else "jax"
    path = spec.run_dir / "manifest.json"
    manifest = json.loads(path.read_text())
    for key in ("ended", "status", "seconds"):
        del manifest["attempts"][-1][key]
    manifest.update(status="running", backend=other, runtime={**manifest["runtime"], "precision": "bf16"})
    path.write_text(json.dumps(manifest))
    with caplog.at_level("WARNING", logger="lsjob"):
        assert run_mod.execute(spec) == 0
    assert f"another setting than the run so far (backend {other} -> {here}, precision bf16 -> off)" in caplog.text
    attempts = json.loads(path.read_text())["attempts"]
    assert [a["status"] for a in attempts] == ["unrecorded", "completed"]
    assert {k: attempts[-1][k] for k in ("backend", "precision", "replicas")} == {
        "backend": here, "precision": "off", "replicas": 1,
    }  # fmt: skip


def test_a_storage_fault_while_training_is_a_one_line_error_not_a_traceback(tiny_spec, monkeypatch):
    from job.checkpoint import Checkpoints

    spec = tiny_spec("output.run=eio")

    def failing_save(self, model, epochs_done, history, mid_epoch=None):
        raise OSError(errno.EIO, os.strerror(errno.EIO), str(self.directory))

    monkeypatch.setattr(Checkpoints, "save", failing_save)
    with pytest.raises(StorageError, match="the storage failed") as caught:
        run_mod.execute(spec)
    assert caught.value.exit_code == 1
    manifest = json.loads((spec.run_dir / "manifest.json").read_text())
    assert manifest["status"] == "failed" and "the storage failed" in manifest["reason"]
    # The checkpoint is written before history.csv: no epoch is listed that no checkpoint holds.
    assert not (spec.run_dir / "history.csv").exists()


def test_a_fresh_start_drops_the_history_of_epochs_no_checkpoint_holds(tiny_spec, monkeypatch):
    from job import train as train_mod

    spec = tiny_spec("train.epochs=1")
    fail_one_attempt(spec, monkeypatch)
    (spec.run_dir / "history.csv").write_text("epoch,loss\n1,2.0\n")  # as an older lsjob's failed save left it
    seen = []
    real_fit = train_mod.keras.Model.fit

    def fit(self, *args, **kwargs):
        seen.append((spec.run_dir / "history.csv").exists())
        return real_fit(self, *args, **kwargs)

    monkeypatch.setattr(train_mod.keras.Model, "fit", fit)
    assert run_mod.execute(spec) == 0
    assert seen == [False]


def test_a_second_ctrl_c_stops_at_once_as_an_interruption_to_resume(tiny_spec, monkeypatch):
    from job.errors import EXIT_INTERRUPTED, InterruptedRun

    spec = tiny_spec("train.epochs=1")
    fail_an_attempt(spec)  # a run with a record: kept (a new one that saved nothing is removed, below)

    def second_ctrl_c(*args, **kwargs):
        raise KeyboardInterrupt  # what job.preemption lets the second SIGINT raise, anywhere

    monkeypatch.setattr(run_mod, "train", second_ctrl_c)
    with pytest.raises(InterruptedRun, match="second Ctrl-C") as err:
        run_mod.execute(spec)
    assert err.value.exit_code == EXIT_INTERRUPTED
    manifest = json.loads((spec.run_dir / "manifest.json").read_text())
    assert manifest["status"] == "interrupted" and "second Ctrl-C" in manifest["reason"]


@pytest.mark.parametrize("how", ["first", "second"])
def test_ctrl_c_of_a_new_run_before_it_saved_anything_removes_its_folder(tiny_spec, monkeypatch, how):
    # A mistyped command stopped in its start-up: its folder refused the corrected command as
    # another spec's run ("use --force"). It kept nothing, so nothing of it is left.
    from job.errors import EXIT_INTERRUPTED, InterruptedRun

    spec = tiny_spec("train.epochs=1")

    def stopped(*args, **kwargs):
        if how == "second":
            raise KeyboardInterrupt
        preemption._requested = "SIGINT"  # put back when the context below ends
        preemption.check()  # as training does before its first step

    said = (r"^stopped by Ctrl-C before anything was trained or saved, so the run's folder was removed: run the "
            r"command again \(corrected or not\) to start afresh$")  # fmt: skip
    with monkeypatch.context() as m:
        m.setattr(run_mod, "train", stopped)
        m.setattr(preemption, "_requested", None)
        with pytest.raises(InterruptedRun, match=said) as err:
            run_mod.execute(spec)
    assert err.value.exit_code == EXIT_INTERRUPTED
    assert not spec.run_dir.exists() and list(spec.run_dir.parent.iterdir()) == []
    assert run_mod.execute(tiny_spec("train.epochs=1", "train.lr=0.01")) == 0  # the corrected command


def test_a_second_ctrl_c_while_the_data_loads_is_an_interruption_with_nothing_written(tiny_spec, monkeypatch):
    # Before the run is claimed (a download of minutes): a traceback until now.
    spec = tiny_spec()

    def second_ctrl_c(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(run_mod, "load_dataset", second_ctrl_c)
    with pytest.raises(InterruptedRun, match="second Ctrl-C") as err:
        run_mod.execute(spec)
    assert err.value.exit_code == 75 and not spec.run_dir.exists()


def _assert_same_run(run_dir, straight):
    import keras

    def history(directory):  # all but the wall-clock seconds
        return [row.rsplit(",", 1)[0] for row in (directory / "history.csv").read_text().splitlines()]

    assert history(run_dir) == history(straight)
    for name in ("metrics.json", "calibration.json"):
        assert json.loads((run_dir / name).read_text()) == json.loads((straight / name).read_text()), name
    with np.load(run_dir / "predictions.npz") as a, np.load(straight / "predictions.npz") as b:
        np.testing.assert_array_equal(a["test_probs"], b["test_probs"])
    for a, b in zip(*(keras.saving.load_model(d / "model.keras").get_weights() for d in (run_dir, straight))):
        np.testing.assert_array_equal(a, b)


# Each SIGKILL, in this order, and the checkpoint the next attempt resumes from (8-step
# epochs, output.checkpoint_steps=3: step checkpoints at 3 and 6 of each epoch).
KILL_POINTS = {
    "mid-epoch": "resuming after epoch 1 of 2",  # killed at epoch 2 step 3, before its checkpoint
    "after-checkpoint": "resuming epoch 2 of 2 at step 3",
    "after-step-checkpoint": "resuming epoch 2 of 2 at step 6",  # from a mid-epoch checkpoint to the next
    "final-evaluation": "resuming after epoch 2 of 2",
    "report": "resuming after epoch 2 of 2",
    "model-save": "resuming after epoch 2 of 2",
}


@pytest.mark.slow
def test_killed_at_every_hard_point_then_rerun_ends_exactly_as_a_run_never_killed(completed, tmp_path):
    """SIGKILL (nothing can be caught or recorded) at six points in turn, one re-run after
    each; the run then finishes with the uninterrupted run's history, metrics and weights.
    Mid-epoch checkpoints are on: step counters, random streams and the epoch's running
    loss and accuracy must all come back, or the history and weights would differ."""
    import subprocess
    import sys

    from conftest import ROOT, TINY

    sets = [*TINY, f"output.root={tmp_path}", "output.run=killed", "output.checkpoint_steps=3"]
    args = [a for item in sets for a in ("--set", item)]
    run_dir = tmp_path / "killed"
    resumed_from = []
    for point, next_resume in KILL_POINTS.items():
        proc = subprocess.run([sys.executable, str(ROOT / "tests" / "kill_at.py"), point, "run", "/dev/null", *args],
                              capture_output=True, text=True)  # fmt: skip
        assert proc.returncode == -9, (point, proc.stderr[-2000:])
        manifest = json.loads((run_dir / "manifest.json").read_text())
        assert manifest["status"] != "completed", point  # killed before it could claim to be done
        resumed_from.append(next_resume)
    proc = subprocess.run([sys.executable, "-m", "job", "run", "/dev/null", *args], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-2000:]

    manifest = json.loads((run_dir / "manifest.json").read_text())
    assert manifest["status"] == "completed" and len(manifest["attempts"]) == len(KILL_POINTS) + 1
    assert not [p.name for p in run_dir.iterdir() if ".tmp" in p.name] and not (run_dir / "checkpoints").exists()
    # Every attempt logged where it resumed from: each kill point was reached where intended.
    log = (run_dir / "run.log").read_text()
    assert [line.split("resuming ", 1)[1].split(" from ")[0] for line in log.splitlines() if "resuming " in line] == [
        expected.removeprefix("resuming ") for expected in resumed_from
    ]
    _assert_same_run(run_dir, completed.run_dir)


def test_sigterm_mid_epoch_checkpoints_that_step_and_the_rerun_ends_exactly_the_same(completed, tiny_spec,
                                                                                    monkeypatch):  # fmt: skip
    from job import preemption, train
    from job.errors import InterruptedRun

    steps = {"n": 0}
    original = train.EpochRecorder.on_train_batch_begin

    def on_train_batch_begin(self, batch, logs=None):
        steps["n"] += 1
        if steps["n"] == 8 + 5:  # as a SIGTERM arriving during epoch 2's 4th step
            monkeypatch.setattr(preemption, "_requested", "SIGTERM")
        original(self, batch, logs)

    monkeypatch.setattr(train.EpochRecorder, "on_train_batch_begin", on_train_batch_begin)
    spec = tiny_spec()
    with pytest.raises(InterruptedRun, match="SIGTERM"):
        run_mod.execute(spec)
    assert sorted(p.name for p in (spec.run_dir / "checkpoints").iterdir()) == ["epoch-0001", "epoch-0001-step-000004"]
    monkeypatch.setattr(preemption, "_requested", None)
    monkeypatch.setattr(train.EpochRecorder, "on_train_batch_begin", original)
    assert run_mod.execute(spec) == 0
    _assert_same_run(spec.run_dir, completed.run_dir)
    # How far each attempt got, in the manifest itself, not only in run.log and a folder's name.
    first, second = json.loads((spec.run_dir / "manifest.json").read_text())["attempts"]
    assert first["checkpoint"] == "epoch-0001-step-000004" and first["checkpointed"] and "resumed_from" not in first
    assert second["resumed_from"] == "epoch-0001-step-000004" and "checkpoint" not in second


def test_attempts_stopped_before_any_checkpoint_end_the_run_rather_than_requeue_forever(completed, tiny_spec,
                                                                                     monkeypatch):  # fmt: skip
    # sbatch --time=5 with --signal=B:TERM@300: TERM comes before every attempt's first step, and
    # each exit 75 was requeued to be stopped the same way again, without end.
    from job import preemption, train
    from job.errors import EXIT_BAD_INPUT, InterruptedRun

    spec = tiny_spec()
    monkeypatch.setattr(stall_guard, "STALLED_ATTEMPTS", 3)  # not 5: each attempt builds a model

    def stopped_attempts(n):
        with monkeypatch.context() as m:
            m.setattr(preemption, "_requested", "SIGTERM")
            for _ in range(n):
                with pytest.raises(InterruptedRun, match="SIGTERM"):
                    run_mod.execute(spec)

    stopped_attempts(stall_guard.STALLED_ATTEMPTS - 1)
    # One that saved a step breaks the streak: a job that gets somewhere each time is requeued on.
    original = train.EpochRecorder.on_train_batch_begin

    def stop_after_a_step(self, batch, logs=None):
        if batch == 2:
            monkeypatch.setattr(preemption, "_requested", "SIGTERM")
        original(self, batch, logs)

    with monkeypatch.context() as m:
        m.setattr(train.EpochRecorder, "on_train_batch_begin", stop_after_a_step)
        with pytest.raises(InterruptedRun):
            run_mod.execute(spec)
    monkeypatch.setattr(preemption, "_requested", None)
    stopped_attempts(stall_guard.STALLED_ATTEMPTS - 1)
    attempts = RunDir(spec.run_dir).read_manifest()["attempts"]
    assert [a["checkpointed"] for a in attempts] == [False] * 2 + [True] + [False] * 2
    assert all(a["status"] == "interrupted" for a in attempts)

    with monkeypatch.context() as m:  # the third in a row: not a stop to requeue, exit 2 saying why
        m.setattr(preemption, "_requested", "SIGTERM")
        with pytest.raises(SpecError, match="stopped 3 attempts in a row before any of them saved a checkpoint") as err:
            run_mod.execute(spec)
    # Outside Slurm (a Kubernetes pod, say) no time limit of lsjob's scripts is the cause.
    assert err.value.exit_code == EXIT_BAD_INPUT and "something stops it each time before it trains" in str(err.value)
    manifest = RunDir(spec.run_dir).read_manifest()
    assert manifest["status"] == "failed" and manifest["attempts"][-1]["checkpointed"] is False
    assert sorted(p.name for p in (spec.run_dir / "checkpoints").iterdir()) == ["epoch-0000-step-000002"]
    assert run_mod.execute(spec) == 0  # given its time, the same command resumes and finishes
    _assert_same_run(spec.run_dir, completed.run_dir)


def test_slurm_attempts_stopped_before_they_claimed_the_run_count_towards_the_guard(tiny_spec, monkeypatch):
    # A first sweep on a cold cache with --time=5: TERM comes in the download (or the wait on the
    # cache lock), before the run directory exists, so no attempt is ever recorded; Slurm's
    # restart count still tells how many there were, where slurm/'s scripts say each was this run's.
    from job import preemption, run
    from job.errors import EXIT_BAD_INPUT, InterruptedRun

    def download(_data):
        preemption.check()  # as cifar10's downloader does between chunks
        raise AssertionError("the stop must come first")

    spec = tiny_spec()
    monkeypatch.setattr(run, "load_dataset", download)
    monkeypatch.setattr(preemption, "_requested", "SIGTERM")
    one_run = {"SLURM_JOB_ID": "4242", "LSJOB_SLURM_ONE_RUN": "1"}
    # Each of these leaves nothing behind: the next tells them from its restart count alone.
    for restart in range(stall_guard.STALLED_ATTEMPTS - 1):
        _scheduler(monkeypatch, **one_run, SLURM_RESTART_COUNT=str(restart))
        with pytest.raises(InterruptedRun, match="SIGTERM"):
            run_mod.execute(spec)
        assert not spec.run_dir.exists()
    _scheduler(monkeypatch, **one_run, SLURM_RESTART_COUNT=str(stall_guard.STALLED_ATTEMPTS - 1))
    with pytest.raises(SpecError, match="stopped 5 attempts in a row") as err:
        run_mod.execute(spec)
    assert err.value.exit_code == EXIT_BAD_INPUT and "give the job more time" in str(err.value)
    assert "(5 of them left no record in the run's manifest; SLURM_RESTART_COUNT counts them)" in str(err.value)
    assert not spec.run_dir.exists()  # nothing written, as for any stop before the claim
    # A script of the user's own may have spent those restarts on other runs: a plain stop.
    for off in ({}, {"LSJOB_SLURM_ONE_RUN": "0"}):
        _scheduler(monkeypatch, SLURM_JOB_ID="4242", SLURM_RESTART_COUNT=str(stall_guard.STALLED_ATTEMPTS - 1), **off)
        with pytest.raises(InterruptedRun):
            run_mod.execute(spec)
    _scheduler(monkeypatch)  # and outside Slurm nothing counts them
    with pytest.raises(InterruptedRun):
        run_mod.execute(spec)


def test_a_run_started_late_in_a_job_of_several_runs_is_not_ended_by_their_restarts(tiny_spec, monkeypatch):
    # A script of the user's own trains run a, then run b, in one requeueable job: a took restarts
    # 0 to 3, and b's first attempt, at restart 4, is stopped before its first step. A stop, not
    # the stall guard's exit 2: b has been stopped once.
    from job.errors import InterruptedRun

    _scheduler(monkeypatch, SLURM_JOB_ID="4242", SLURM_RESTART_COUNT="4")
    monkeypatch.setattr(preemption, "_requested", "SIGTERM")
    spec = tiny_spec("output.run=b")
    with pytest.raises(InterruptedRun, match="SIGTERM"):
        run_mod.execute(spec)
    assert [a["status"] for a in RunDir(spec.run_dir).read_manifest()["attempts"]] == ["interrupted"]


def test_unrecorded_slurm_attempts_take_their_place_among_the_recorded_ones(tmp_path, monkeypatch):
    from job import preemption
    from job.errors import StorageError

    def attempt(restart, checkpointed, job="4242"):
        return {"slurm_job": job, "slurm_restart": restart, "status": "interrupted", "stopped_by": "SIGTERM",
                "checkpointed": checkpointed}  # fmt: skip

    def stalled(restart, attempts, one_run="1"):
        _scheduler(monkeypatch, SLURM_JOB_ID="4242", SLURM_RESTART_COUNT=str(restart), LSJOB_SLURM_ONE_RUN=one_run)
        monkeypatch.setattr(RunDir, "read_manifest", lambda self: {"attempts": attempts})
        return stall_guard.stalled_before_claim(RunDir(tmp_path / "run")) is not None

    monkeypatch.setattr(preemption, "_requested", "SIGTERM")
    # Restart 0 saved a step; 1 to 3 left no record; this one (4) is the fourth stop in a row, not the fifth.
    assert not stalled(4, [attempt(0, True)])
    assert stalled(5, [attempt(0, True)])
    # Recorded stops and unrecorded ones make one streak, in restart order.
    assert stalled(4, [attempt(1, False), attempt(3, False)])
    # Restart 3 saved a step: the unrecorded 0 to 2 came before it, and only 4 to 6 after.
    assert not stalled(6, [attempt(3, True)]) and stalled(8, [attempt(3, True)])
    # Without slurm/'s word that the job is this run's alone, only restarts after the run's first
    # record are its own: restarts 0 to 2 may have trained other runs.
    assert not stalled(4, [attempt(3, False)], one_run="") and stalled(4, [attempt(3, False)])
    assert stalled(6, [attempt(2, False)], one_run="")
    # An earlier submission's attempts are its own: they stand for none of this job's restarts.
    earlier_job = [attempt(restart, True, "99") for restart in range(4)]
    assert stalled(4, earlier_job) and not stalled(3, earlier_job)
    # Records of an lsjob from before restarts were recorded: no restart numbers to go by.
    assert not stalled(6, [{**attempt(0, False), "slurm_restart": None}])
    monkeypatch.setattr(RunDir, "read_manifest", lambda self: (_ for _ in ()).throw(StorageError("EIO")))
    assert not stall_guard.stalled_before_claim(RunDir(tmp_path / "run"))  # unreadable: no streak can be told
    monkeypatch.setattr(preemption, "_requested", "SIGINT")  # a person's Ctrl-C: never counted
    assert not stalled(9, [])


def test_ctrl_c_before_a_checkpoint_is_not_counted_as_a_stalled_requeue(tiny_spec, monkeypatch):
    # The guard is for a scheduler's TERM repeating forever; a person pressing Ctrl-C while trying
    # things is not that, and their next TERM-stopped attempt must still be requeued.
    from job import preemption
    from job.errors import InterruptedRun

    spec = tiny_spec()
    monkeypatch.setattr(stall_guard, "STALLED_ATTEMPTS", 3)
    for signal_name in ("SIGTERM", "SIGINT", "SIGTERM", "SIGTERM"):
        with monkeypatch.context() as m:
            m.setattr(preemption, "_requested", signal_name)
            with pytest.raises(InterruptedRun, match=signal_name):
                run_mod.execute(spec)
    attempts = RunDir(spec.run_dir).read_manifest()["attempts"]
    assert [(a["status"], a["stopped_by"], a["checkpointed"]) for a in attempts] == [
        ("interrupted", "SIGTERM", False), ("interrupted", "SIGINT", False),
        ("interrupted", "SIGTERM", False), ("interrupted", "SIGTERM", False),
    ]  # fmt: skip


def test_a_run_the_stall_guard_ended_counts_afresh_when_run_again(monkeypatch):
    # "give the job more time, then run the same command": one early SIGTERM of that re-run is a
    # requeue, not exit 2 again; the failed attempt the guard ended breaks the streak.
    _scheduler(monkeypatch)
    n = stall_guard.STALLED_ATTEMPTS
    stopped = {"status": "interrupted", "stopped_by": "SIGTERM", "checkpointed": False}
    ended = {**stopped, "status": "failed"}
    this = {"stopped_by": "SIGTERM", "checkpointed": False}  # its status is not yet written
    assert stall_guard.stalled([stopped] * (n - 1) + [this]) is not None
    assert stall_guard.stalled([stopped] * (n - 1) + [ended, this]) is None


def test_a_second_ctrl_c_after_a_term_is_recorded_as_sigint(tiny_spec, monkeypatch):
    # The scheduler's TERM came first; then a person pressed Ctrl-C twice, and the second raised.
    # Recorded as the TERM, it would count towards the stall guard, which is for TERMs alone.
    from job.errors import InterruptedRun

    spec = tiny_spec("train.epochs=1")
    fail_an_attempt(spec)  # a run with a record: a new one that saved nothing leaves no folder
    monkeypatch.setattr(preemption, "_requested", "SIGTERM")

    def second_ctrl_c(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(run_mod, "train", second_ctrl_c)
    with pytest.raises(InterruptedRun, match="second Ctrl-C"):
        run_mod.execute(spec)
    attempt = RunDir(spec.run_dir).read_manifest()["attempts"][-1]
    assert attempt["stopped_by"] == "SIGINT" and attempt["checkpointed"] is False


def test_a_term_after_training_ended_lets_the_run_finish_and_says_so(tiny_spec, monkeypatch, caplog):
    # Past the last epoch's checkpoint a stop would save nothing: the results are written, exit 0,
    # and the log tells the operator who sent the TERM why the job did not stop.
    real_write_results = run_mod._write_results

    def term_while_writing(*args, **kwargs):
        monkeypatch.setattr(preemption, "_requested", "SIGTERM")
        return real_write_results(*args, **kwargs)

    monkeypatch.setattr(run_mod, "_write_results", term_while_writing)
    spec = tiny_spec()
    with caplog.at_level(logging.INFO, logger="lsjob"):
        assert run_mod.execute(spec) == 0
    assert RunDir(spec.run_dir).read_manifest()["status"] == "completed"
    assert "SIGTERM came after training ended, so the run finished rather than stop" in caplog.text


def test_a_full_disk_fails_the_run_keeps_the_last_checkpoint_and_a_rerun_resumes(tiny_spec, monkeypatch):
    import errno

    from job.checkpoint import Checkpoints
    from job.errors import NoSpaceError

    spec = tiny_spec("output.run=full-disk")
    real_save = Checkpoints.save

    def save_until_full(self, model, epochs_done, history):
        if epochs_done == 2:  # the disk fills up half-way through the second checkpoint
            (self.directory / ".epoch-0002.partial").mkdir()
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_save(self, model, epochs_done, history)

    monkeypatch.setattr(Checkpoints, "save", save_until_full)
    with pytest.raises(NoSpaceError, match="ran out of disk space.*re-run the same command") as err:
        run_mod.execute(spec)
    assert err.value.exit_code == 6
    manifest = json.loads((spec.run_dir / "manifest.json").read_text())
    assert manifest["status"] == "failed" and "ran out of disk space" in manifest["reason"]
    assert (spec.run_dir / "checkpoints" / "epoch-0001" / "state.json").is_file()

    monkeypatch.setattr(Checkpoints, "save", real_save)  # space freed
    assert run_mod.execute(spec) == 0
    manifest = json.loads((spec.run_dir / "manifest.json").read_text())
    assert [a["status"] for a in manifest["attempts"]] == ["failed", "completed"]
    assert manifest["epochs_done"] == 2


@pytest.mark.slow
@pytest.mark.skipif(
    os.geteuid() != 0 or not shutil.which("unshare"), reason="mounts a small tmpfs: needs root, unshare"
)
def test_a_disk_that_really_fills_up_mid_checkpoint_fails_the_run_cleanly_with_exit_6(tmp_path):
    # Keras leaves the weights file of a failed save open, and HDF5 kept it so to the end of the
    # process: the disk stayed full (the failure could not be recorded) and h5py crashed at exit.
    # 34 MB: two checkpoints of MiniGoogLeNet (13 MB each) fit, the third does not.
    disk, out = tmp_path / "disk", tmp_path / "out"
    disk.mkdir(), out.mkdir()
    overrides = [f"--set={o}" for o in TINY_RUN] + ["--set=train.epochs=3", '--set=output.root="$1"']
    script = (
        'mount -t tmpfs -o size=34m none "$1" || exit 99\n'
        f'"$2" -m job run specs/smoke.yaml {" ".join(overrides)} --set=output.run=r 2> "$3/stderr"\n'
        'echo $? > "$3/rc"\n'
        'cp "$1/r/manifest.json" "$3/" && ls -A "$1/r/checkpoints" > "$3/checkpoints" && df -k "$1" > "$3/df"\n'
    )
    proc = subprocess.run(["unshare", "-m", "sh", "-c", script, "sh", str(disk), sys.executable, str(out)],
                          cwd=ROOT, capture_output=True, text=True, timeout=600)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    stderr = (out / "stderr").read_text()
    assert (out / "rc").read_text().strip() == "6", stderr  # 139 (SIGSEGV) before
    assert "ran out of disk space" in stderr and "Exception ignored" not in stderr
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["status"] == "failed" and manifest["attempts"][-1]["status"] == "failed"
    assert (out / "checkpoints").read_text().split() == ["epoch-0001", "epoch-0002"]  # no partial save left
    free_kb = int((out / "df").read_text().split("\n")[1].split()[3])
    assert free_kb > 1024  # the failed save's space is free again


def test_a_second_task_on_the_same_run_is_refused(tmp_path):
    first, second = RunDir(tmp_path / "r"), RunDir(tmp_path / "r")
    first.claim()
    try:
        with pytest.raises(RunBusyError, match=f"pid {os.getpid()}") as err:
            second.claim()
        assert err.value.exit_code == 5
    finally:
        first.release()
    second.claim()  # free again once the holder is gone
    second.release()


def test_a_requeued_slurm_attempt_waits_for_the_lock_its_earlier_attempt_left(monkeypatch, caplog, tmp_path):
    # A node that went down can leave its task's lock on a shared filesystem (NFS, Lustre) until
    # the server lets it expire; the requeued attempt used to fail at once with exit 5, never requeued.
    monkeypatch.setattr(rundir, "LOCK_POLL_S", 0.01)
    _scheduler(monkeypatch, SLURM_JOB_ID="4242", SLURM_RESTART_COUNT="0")
    earlier = _held(tmp_path)  # stands for the lost node's lock: released below, as the server lets it expire
    lock = tmp_path / "r" / ".lock"
    assert lock.read_text().strip().endswith(" slurm job 4242 restart 0") and rundir.is_lsjob_lock(lock)
    monkeypatch.setenv("SLURM_RESTART_COUNT", "1")
    requeued = RunDir(tmp_path / "r")
    errors = _claim_as_it_lets_go(requeued, earlier, "this Slurm job's attempt before it was requeued", caplog)
    try:
        assert errors == []
        assert lock.read_text().strip().endswith(" slurm job 4242 restart 1")
        assert rundir.lock_holder(tmp_path / "r").alive
    finally:
        requeued.release()


def test_a_lock_that_outlasts_the_wait_is_refused_with_how_to_clear_it(monkeypatch, tmp_path):
    monkeypatch.setattr(rundir, "LOCK_WAIT_S", 0.05)
    monkeypatch.setattr(rundir, "LOCK_POLL_S", 0.01)
    _scheduler(monkeypatch, SLURM_JOB_ID="4242", SLURM_RESTART_COUNT="2")
    held = "pid 4711 on node7.cluster.example since 2026-12-06T07:00:00+00:00 slurm job 4242 restart 2\n"
    earlier = _held(tmp_path, held)  # as a lost node wrote it; the flock is still held
    monkeypatch.setenv("SLURM_RESTART_COUNT", "3")
    try:
        with pytest.raises(RunBusyError, match="still locked by pid") as err:
            RunDir(tmp_path / "r").claim()
        assert err.value.exit_code == 5
        assert f"remove {tmp_path / 'r' / '.lock'} and resubmit it" in str(err.value)
        assert "`scontrol show node node7`" in str(err.value)  # Slurm's short node name
        assert (tmp_path / "r" / ".lock").read_text() == held  # the holder's record is left as it was
    finally:
        earlier.release()


def test_the_lock_file_has_the_umask_permissions(tmp_path):
    umask = os.umask(0o002)  # a team's: group-writable, so a teammate may resume the run
    try:
        run_dir = RunDir(tmp_path / "r")
        run_dir.claim()
        run_dir.release()
    finally:
        os.umask(umask)
    assert (tmp_path / "r" / ".lock").stat().st_mode & 0o777 == 0o664


OTHER_USER = 54321
as_root = pytest.mark.skipif(os.geteuid() != 0, reason="making another user's file, as a teammate's, needs root")


def stopped_run(path):
    """A run directory of a run that stopped, to be resumed."""
    run_dir = RunDir(path)
    run_dir.claim()
    run_dir.write_manifest({"status": "interrupted"})
    run_dir.release()
    return path


@as_root
@pytest.mark.parametrize("name", ["run.log", "checkpoints"])
def test_a_link_to_another_users_file_is_never_written_through(tmp_path, name):
    # In a results root others may write to, a link planted in a run directory made this user's run
    # append to (run.log) or write into (checkpoints) whatever of theirs it pointed at.
    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "thesis.tex").write_text("a year of work\n")
    for path in (victim, victim / "thesis.tex"):
        os.chown(path, OTHER_USER, OTHER_USER)
    run = stopped_run(tmp_path / "root" / "r")
    (run / name).unlink(missing_ok=True)
    (run / name).symlink_to(victim if name == "checkpoints" else victim / "thesis.tex")
    with pytest.raises(SpecError, match=rf"{run / name} is a symbolic link to another user's file \(not followed\)"):
        RunDir(run).claim()
    assert (victim / "thesis.tex").read_text() == "a year of work\n" and os.listdir(victim) == ["thesis.tex"]
    # Nor is a link to nothing followed to create its target.
    (run / name).unlink()
    (run / name).symlink_to(victim / "new")
    with pytest.raises(SpecError, match="is a symbolic link to nothing"):
        RunDir(run).claim()
    assert not (victim / "new").exists()


@pytest.mark.parametrize("name", ["run.log", "checkpoints"])
def test_a_link_to_nothing_among_a_runs_files_is_never_followed(tmp_path, name):
    # Without root as well: a dangling link would have the run create its target, wherever it points.
    run = stopped_run(tmp_path / "root" / "r")
    (run / name).unlink(missing_ok=True)
    (run / name).symlink_to(tmp_path / "elsewhere")
    with pytest.raises(SpecError, match=rf"{run / name} is a symbolic link to nothing"):
        RunDir(run).claim()
    assert not (tmp_path / "elsewhere").exists()


@as_root
def test_a_hard_link_to_another_users_file_is_never_written_through(tmp_path):
    (tmp_path / "thesis.tex").write_text("a year of work\n")
    os.chown(tmp_path / "thesis.tex", OTHER_USER, OTHER_USER)
    run = stopped_run(tmp_path / "root" / "r")
    (run / ".lock").unlink()
    os.link(tmp_path / "thesis.tex", run / ".lock")
    with pytest.raises(SpecError, match=r"\.lock is another user's file of several names \(hard links\)"):
        RunDir(run).claim()
    assert (tmp_path / "thesis.tex").read_text() == "a year of work\n"


@pytest.mark.parametrize("target", ["own file", "nothing", "another user's file"])
def test_a_lock_is_never_taken_through_a_link_even_ones_own(tmp_path, target):
    # The lock is emptied and rewritten at every start: through a link of one's own, it destroyed the
    # file it pointed at (as root, any file: /etc/passwd), by `lsjob run` and `lsjob report` alike.
    notes = tmp_path / "notes.txt"
    if target != "nothing":
        notes.write_text("a year of work\n")
    if target == "another user's file":
        if os.geteuid() != 0:
            pytest.skip("making another user's file, as a teammate's, needs root")
        os.chown(notes, OTHER_USER, OTHER_USER)
    run = stopped_run(tmp_path / "root" / "r")
    (run / ".lock").unlink()
    (run / ".lock").symlink_to(notes)
    for take in (RunDir.claim, RunDir.lock):  # lock() alone: lsjob report
        with pytest.raises(SpecError, match=rf"{run / '.lock'} is a symbolic link: .* Remove the link") as err:
            take(RunDir(run))
        assert err.value.exit_code == EXIT_BAD_INPUT
    assert notes.read_text() == "a year of work\n" if target != "nothing" else not notes.exists()
    assert (run / ".lock").is_symlink()


def test_links_of_ones_own_are_followed(tmp_path):
    # A run's log or checkpoints kept on another disk, by a link its owner made.
    scratch = tmp_path / "scratch"
    (scratch / "checkpoints").mkdir(parents=True)
    (scratch / "run.log").write_text("attempt 1\n")
    run = stopped_run(tmp_path / "root" / "r")
    for name in ("run.log", "checkpoints"):
        (run / name).symlink_to(scratch / name)
    run_dir = RunDir(run)
    run_dir.claim()
    run_dir.release()
    with open(rundir.open_own(run / "run.log", os.O_WRONLY | os.O_APPEND), "a") as log:
        log.write("attempt 2\n")
    assert (scratch / "run.log").read_text() == "attempt 1\nattempt 2\n"


def test_run_files_that_are_not_plain_files_are_refused_at_once(tmp_path):
    for name in (".lock", "run.log"):
        run = stopped_run(tmp_path / name)
        (run / name).unlink(missing_ok=True)
        os.mkfifo(run / name)  # would hold the lock's text for no one; a log opened for writing blocks
        with pytest.raises(SpecError, match=rf"{run / name} is not a plain file: lsjob uses a run's files") as err:
            RunDir(run).claim()
        assert err.value.exit_code == EXIT_BAD_INPUT
    run = stopped_run(tmp_path / "folder")
    (run / ".lock").unlink()
    (run / ".lock").mkdir()  # IsADirectoryError: a traceback, exit 1, by lsjob run and lsjob report alike
    for take in (RunDir.claim, RunDir.lock):
        with pytest.raises(SpecError, match=rf"{run / '.lock'} is not a plain file: lsjob uses a run's files"):
            take(RunDir(run))


def test_a_run_whose_lock_another_user_owns_is_refused_in_one_line(monkeypatch, tmp_path):
    (tmp_path / "r").mkdir()
    (tmp_path / "r" / ".lock").write_text("")
    real_open = os.open

    def denied(path, *args, **kwargs):
        if str(path).endswith(".lock"):
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(path))
        return real_open(path, *args, **kwargs)

    monkeypatch.setattr(os, "open", denied)
    owner = (tmp_path / "r" / ".lock").stat().st_uid
    monkeypatch.setattr(os, "getuid", lambda: owner + 1)  # a teammate
    with pytest.raises(SpecError, match=rf"cannot lock the run directory .* it belongs to user {owner}\b") as err:
        RunDir(tmp_path / "r").claim()
    assert err.value.exit_code == EXIT_BAD_INPUT  # a traceback and exit 1 ("a bug") before
    assert f"ask them to make the run folder writable to your group (chmod -R g+rwX {tmp_path / 'r'})" in str(err.value)


def test_a_file_of_ones_own_that_is_closed_is_not_blamed_on_another_user(tmp_path):
    (tmp_path / "r").mkdir()
    advice = rundir.owned_by(tmp_path / "r" / ".lock", tmp_path / "r")  # no .lock: the run folder's owner
    assert advice.startswith("it is yours, yet closed to you") and f"chmod -R u+rwX {tmp_path / 'r'}" in advice


def test_the_lock_says_who_holds_it_on_the_storage_before_training(monkeypatch, tmp_path):
    # Left in this node's cache, the text dies with a node lost early on: the requeued attempt
    # would find an empty lock it cannot tell for its own earlier attempt's.
    synced = []
    real_fsync = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: synced.append(os.readlink(f"/proc/self/fd/{fd}")) or real_fsync(fd))
    run_dir = RunDir(tmp_path / "r")
    run_dir.claim()
    try:
        assert str(tmp_path / "r" / ".lock") in synced
    finally:
        run_dir.release()


@pytest.mark.parametrize("holder_env, ours", [
    ({"SLURM_JOB_ID": "4242", "SLURM_RESTART_COUNT": "0"}, {"SLURM_JOB_ID": "5151", "SLURM_RESTART_COUNT": "1"}),
    ({"SLURM_JOB_ID": "4242", "SLURM_RESTART_COUNT": "1"}, {"SLURM_JOB_ID": "4242", "SLURM_RESTART_COUNT": "1"}),
    ({}, {"SLURM_JOB_ID": "4242", "SLURM_RESTART_COUNT": "1"}),
    ({"SLURM_JOB_ID": "4242", "SLURM_RESTART_COUNT": "0"}, {}),
])  # fmt: skip
def test_a_lock_held_by_another_task_is_refused_without_waiting(holder_env, ours, monkeypatch, tmp_path):
    # Another job, the same attempt twice (srun started two tasks), or outside Slurm: a duplicate.
    _scheduler(monkeypatch, **holder_env)
    holder = RunDir(tmp_path / "r")
    holder.claim()
    _scheduler(monkeypatch, **ours)
    monkeypatch.setattr(rundir.time, "sleep", lambda s: pytest.fail("waited for another task's lock"))
    try:
        with pytest.raises(RunBusyError, match="is in use by pid"):
            RunDir(tmp_path / "r").claim()
    finally:
        holder.release()


def test_a_kubernetes_pod_waits_for_the_lock_an_earlier_pod_of_its_index_left(monkeypatch, caplog, tmp_path):
    # The replacement pod of an Indexed Job's index has the earlier pod's hostname, <job>-<index>,
    # and lsjob is PID 1 in both: the lock names "pid 1 on <its own hostname>".
    monkeypatch.setattr(rundir, "LOCK_POLL_S", 0.01)
    _scheduler(monkeypatch, JOB_COMPLETION_INDEX="3")
    earlier = _held(tmp_path, f"pid {os.getpid()} on {socket.gethostname()} since 2026-12-06T07:00:00+00:00\n")
    replacement = RunDir(tmp_path / "r")
    errors = _claim_as_it_lets_go(replacement, earlier, "an earlier pod of this Job's index 3", caplog)
    try:
        assert errors == []
    finally:
        replacement.release()


def test_a_kubernetes_lock_that_outlasts_the_wait_says_how_to_check_the_index(monkeypatch, tmp_path):
    monkeypatch.setattr(rundir, "LOCK_WAIT_S", 0.05)
    monkeypatch.setattr(rundir, "LOCK_POLL_S", 0.01)
    _scheduler(monkeypatch, JOB_COMPLETION_INDEX="3")
    monkeypatch.setattr(socket, "gethostname", lambda: "lsjob-sweep-3")  # an Indexed Job's pod
    earlier = _held(tmp_path, f"pid {os.getpid()} on lsjob-sweep-3 since 2026-12-06T07:00:00+00:00\n")
    try:
        with pytest.raises(RunBusyError, match="an earlier pod of this Job's index 3") as err:
            RunDir(tmp_path / "r").claim()
        label = "-A -l batch.kubernetes.io/job-name=lsjob-sweep,batch.kubernetes.io/job-completion-index=3"
        assert label in str(err.value) and "let the Job retry" in str(err.value)
    finally:
        earlier.release()


@pytest.mark.parametrize("holder", ["another_host", "alive_here"])
def test_a_kubernetes_pod_refuses_at_once_a_lock_of_another_pod_or_process(holder, monkeypatch, tmp_path):
    # Another index's pod (another hostname), or a process in this very pod (kubectl exec): live.
    _scheduler(monkeypatch, JOB_COMPLETION_INDEX="3")
    pid, host = (os.getpid(), "lsjob-sweep-4") if holder == "another_host" else (os.getppid(), socket.gethostname())
    earlier = _held(tmp_path, f"pid {pid} on {host} since 2026-12-06T07:00:00+00:00\n")
    monkeypatch.setattr(rundir.time, "sleep", lambda s: pytest.fail("waited for a live process's lock"))
    try:
        with pytest.raises(RunBusyError, match="is in use by pid"):
            RunDir(tmp_path / "r").claim()
    finally:
        earlier.release()


def _claim_as_it_lets_go(run_dir, earlier, holder_is, caplog):
    """Claim `run_dir` in a thread; once it says it waits for the lock (held by what `holder_is`
    names), let `earlier` go, as the file server lets an expired lock go. The claim's errors."""
    errors = []

    def claim():
        try:
            run_dir.claim()
        except BaseException as e:  # noqa: BLE001 - surfaced by the test
            errors.append(e)

    waiter = threading.Thread(target=claim)
    with caplog.at_level(logging.INFO, logger="lsjob"):
        waiter.start()
        deadline = time.monotonic() + 30
        while "waiting up to" not in caplog.text and time.monotonic() < deadline:
            time.sleep(0.01)
        assert waiter.is_alive() and holder_is in caplog.text
        earlier.release()
        waiter.join(30)
    assert not waiter.is_alive()
    return errors


def _scheduler(monkeypatch, **env):
    """The scheduler's variables this process sees: exactly `env`."""
    for name in ("SLURM_JOB_ID", "SLURM_RESTART_COUNT", "JOB_COMPLETION_INDEX", "LSJOB_SLURM_ONE_RUN"):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)


def test_a_restart_count_that_is_not_a_number_counts_as_no_restart(monkeypatch):
    # A site's prolog or a user's export may garble it: the run goes on, as a first attempt.
    for value in ("x", "1.5", ""):
        _scheduler(monkeypatch, SLURM_JOB_ID="4242", SLURM_RESTART_COUNT=value)
        assert rundir.slurm_restart() == 0
    _scheduler(monkeypatch, SLURM_JOB_ID="4242", SLURM_RESTART_COUNT="3")
    assert rundir.slurm_restart() == 3


def _held(tmp_path, as_written: str | None = None) -> RunDir:
    """The run directory r, claimed here, its lock's text replaced by `as_written` where given:
    what the earlier attempt (a lost node, an earlier pod) wrote into it."""
    earlier = RunDir(tmp_path / "r")
    earlier.claim()
    if as_written is not None:
        (tmp_path / "r" / ".lock").write_text(as_written)
    return earlier


def test_a_stop_while_waiting_for_the_lock_stops_at_once(monkeypatch, tmp_path):
    _scheduler(monkeypatch, SLURM_JOB_ID="4242", SLURM_RESTART_COUNT="0")
    earlier = _held(tmp_path)
    monkeypatch.setenv("SLURM_RESTART_COUNT", "1")
    monkeypatch.setattr(preemption, "_requested", "SIGTERM")
    monkeypatch.setattr(rundir, "LOCK_WAIT_S", 5.0)  # unheeded, it would end in RunBusyError
    try:
        with pytest.raises(InterruptedRun, match="SIGTERM"):  # exit 75: the job requeues again
            RunDir(tmp_path / "r").claim()
    finally:
        earlier.release()


@pytest.mark.parametrize("call, code, error, exit_code", [
    ("pwrite", errno.ENOSPC, NoSpaceError, 6), ("open", errno.EDQUOT, NoSpaceError, 6),
    ("pwrite", errno.EFBIG, NoSpaceError, 6),  # over a file-size limit (ulimit -f)
    ("mkdir", errno.EIO, StorageError, 1), ("mkdir", errno.ETIMEDOUT, StorageError, 1),  # an NFS timeout
    ("mkdir", errno.ENOTCONN, StorageError, 1),
])  # fmt: skip
def test_a_full_or_failing_disk_when_a_run_starts_is_said_in_one_line(call, code, error, exit_code, monkeypatch,
                                                                      tmp_path):  # fmt: skip
    # The run directory and its lock come before training's error handling: a full disk there was
    # a traceback with exit 1, "please report the traceback".
    real = getattr(os, call)

    def failing(path_or_fd, *args, **kwargs):
        if call == "pwrite" or str(path_or_fd).startswith(str(tmp_path / "r")):
            raise OSError(code, os.strerror(code))
        return real(path_or_fd, *args, **kwargs)

    monkeypatch.setattr(os, call, failing)
    with pytest.raises(error, match="disk space|storage failed") as err:
        RunDir(tmp_path / "r").claim()
    assert err.value.exit_code == exit_code
    if error is StorageError:  # the storage's fault, retried, and the line says what to do
        assert str(err.value) == (
            f"{tmp_path / 'r'}: {os.strerror(code)} (the storage failed, not the spec); run the same command "
            "again once the storage is healthy: a run resumes where it stopped"
        )
    monkeypatch.undo()
    run_dir = RunDir(tmp_path / "r")  # once the disk is back, the same run starts
    run_dir.claim()
    run_dir.release()


def test_a_lock_file_left_by_a_dead_process_is_taken_over(tmp_path):
    (tmp_path / "r").mkdir()
    (tmp_path / "r" / ".lock").write_text("pid 999999 on some-host since yesterday\n")
    run_dir = RunDir(tmp_path / "r")
    run_dir.claim()
    assert f"pid {os.getpid()}" in (tmp_path / "r" / ".lock").read_text()
    run_dir.release()


def test_a_foreign_directory_is_never_written_into(tiny_spec):
    spec = tiny_spec()
    spec.run_dir.mkdir(parents=True)
    (spec.run_dir / "thesis.tex").write_text("precious")
    with pytest.raises(SpecError, match="not an lsjob run directory"):
        run_mod.execute(spec)
    assert {p.name for p in spec.run_dir.iterdir()} == {"thesis.tex"}


def test_a_run_killed_while_writing_its_first_files_is_still_ours(tmp_path):
    # SIGKILL during the first spec.yaml or manifest write leaves job.atomic's temporary file.
    (tmp_path / "r").mkdir()
    for name in (".lock", "run.log", ".spec.yaml.k2j4x_1q.tmp", ".manifest.json.a8b_q0xz.tmp"):
        (tmp_path / "r" / name).write_text("")
    assert not RunDir(tmp_path / "r").is_foreign()
    (tmp_path / "r" / ".thesis.tex.a8b_q0xz.tmp").write_text("")
    assert RunDir(tmp_path / "r").is_foreign()


@pytest.mark.parametrize("name", [".spec.yaml.old.tmp", ".manifest.json.bak", ".spec.yaml.k2j4x_1q"])
def test_a_file_only_named_like_a_first_write_leaves_a_directory_foreign(tmp_path, name):
    # Only job.atomic's own temporaries (.spec.yaml.<8 random>.tmp) are a killed first write's; a
    # user's hidden backup beside a lock is not, and the directory is not lsjob's to wipe.
    (tmp_path / "r").mkdir()
    for entry in (".lock", name):
        (tmp_path / "r" / entry).write_text("")
    assert RunDir(tmp_path / "r").is_foreign()


def test_unwritable_results_root_fails_before_the_data_loads(tmp_path, tiny_spec, monkeypatch):
    # Before a 170 MB CIFAR-10 download and the devices' set-up, not after.
    def no_data(*args, **kwargs):
        raise AssertionError("the data was loaded before the refusal")

    monkeypatch.setattr(run_mod, "load_dataset", no_data)
    (tmp_path / "file").write_text("")
    with pytest.raises(SpecError, match="cannot create the results root .*file is not a directory"):
        run_mod.execute(tiny_spec(f"output.root={tmp_path / 'file' / 'results'}"))
    (tmp_path / "read-only").mkdir()
    real_access = os.access  # tests run as root here, to whom every folder is writable
    monkeypatch.setattr("job.rundir.os.access", lambda p, mode: Path(p).name != "read-only" and real_access(p, mode))
    with pytest.raises(SpecError, match="the results root .*read-only/results is not writable"):
        run_mod.execute(tiny_spec(f"output.root={tmp_path / 'read-only' / 'results'}"))
    assert list((tmp_path / "read-only").iterdir()) == []


@pytest.mark.parametrize("code, error, exit_code", [
    (errno.ENOSPC, NoSpaceError, 6), (errno.EDQUOT, NoSpaceError, 6), (errno.ETIMEDOUT, StorageError, 1),
])  # fmt: skip
def test_a_full_disk_making_the_results_root_is_no_bad_input(code, error, exit_code, monkeypatch, tmp_path):
    # Exit 2 (bad input) is never retried: a full disk there must read as one, as one level down.
    real = os.mkdir

    def failing(path, *args, **kwargs):
        if str(path).startswith(str(tmp_path / "root")):
            raise OSError(code, os.strerror(code))
        return real(path, *args, **kwargs)

    monkeypatch.setattr(os, "mkdir", failing)
    with pytest.raises(error, match="disk space making the results root|storage failed") as err:
        rundir.check_writable(tmp_path / "root" / "results")
    assert err.value.exit_code == exit_code


@pytest.mark.parametrize("create", [False, True])  # run's check before the data, and the claim's mkdir
@pytest.mark.parametrize("below", ["", "results"])
def test_a_results_root_through_a_link_to_nothing_says_so(tmp_path, create, below):
    # mkdir said only "File exists", and the early check "is not a directory", of a path that looks like one.
    (tmp_path / "root").symlink_to(tmp_path / "unmounted")
    with pytest.raises(SpecError, match=r"root is a link to nothing \(to .*unmounted\); create what it points to"):
        rundir.check_writable(tmp_path / "root" / below, create=create)
    assert not (tmp_path / "unmounted").exists()
    (tmp_path / "file").write_text("")
    with pytest.raises(SpecError, match=r"results root .*file/results: .*file is not a directory; set output.root"):
        rundir.check_writable(tmp_path / "file" / "results", create=create)


def test_claiming_a_run_clears_temporary_files_of_writers_killed_midway_and_nothing_else(tmp_path):
    # Left by a process killed mid-write (SIGKILL, the OOM killer): only job.atomic's own names.
    run = RunDir(tmp_path / "r")
    run.path.mkdir()
    (run.path / "manifest.json").write_text("{}")
    (run.path / ".model.keras.a8b_q0xz.tmp.keras").write_text("torn")
    (run.path / ".staging.x1y2z3q4.tmp").mkdir()
    (run.path / ".staging.x1y2z3q4.tmp" / "calibration.json").write_text("torn")
    for users in ("notes.tmp", ".notes.old.tmp", ".notes.backup.tmp", ".draft.v2.tmp.bak"):
        (run.path / users).write_text("the user's")
    (run.path / ".staging.old.tmp").mkdir()  # the user's folder, not file_set's
    (run.path / ".staging.old.tmp" / "draft.txt").write_text("the user's")
    future = time.time() + 3600  # another node's clock: however new it looks, nothing else writes here
    os.utime(run.path / ".model.keras.a8b_q0xz.tmp.keras", (future, future))
    run.claim()
    try:
        left = sorted(p.name for p in run.path.iterdir())
        assert left == [
            ".draft.v2.tmp.bak",
            ".lock",
            ".notes.backup.tmp",
            ".notes.old.tmp",
            ".staging.old.tmp",
            "manifest.json",
            "notes.tmp",
        ]
    finally:
        run.release()


def test_a_file_or_dangling_link_where_the_run_goes_is_refused_before_the_data_loads(tmp_path, tiny_spec, monkeypatch):
    def no_data(*args, **kwargs):
        raise AssertionError("the data was loaded (a CIFAR-10 download) before the refusal")

    monkeypatch.setattr(run_mod, "load_dataset", no_data)
    (tmp_path / "a-file").write_text("")
    (tmp_path / "a-link").symlink_to(tmp_path / "nowhere")
    for name, what in [("a-file", "not a directory"), ("a-link", "a link to nothing")]:
        with pytest.raises(SpecError, match=f"{name} is {what}, so no run can be written there") as err:
            run_mod.execute(tiny_spec(f"output.root={tmp_path}", f"output.run={name}"))
        assert err.value.exit_code == EXIT_BAD_INPUT
    assert (tmp_path / "a-file").read_text() == "" and (tmp_path / "a-link").is_symlink()


@pytest.mark.parametrize("code, error, exit_code", [(errno.ESTALE, StorageError, 1), (errno.EACCES, SpecError, 2)])
def test_a_storage_fault_is_not_called_bad_input_nor_a_damaged_run(tmp_path, monkeypatch, code, error, exit_code):
    # A stale NFS handle or an I/O error may pass: exit 1 (retried by k8s/), never 2 (failed for
    # good) nor "damaged: pass --force", which would discard a healthy run.
    def fail(*args, **kwargs):
        raise OSError(code, os.strerror(code))

    run_dir = RunDir(tmp_path / "root" / "r")
    with monkeypatch.context() as m:
        m.setattr(Path, "mkdir", fail)
        with pytest.raises(error) as err:
            run_dir.claim()
    assert err.value.exit_code == exit_code and "--force" not in str(err.value)
    run_dir.claim()
    run_dir.write_manifest({"status": "running"})
    run_dir.release()
    monkeypatch.setattr(rundir, "read_own_text", fail)
    with pytest.raises(error) as err:
        run_dir.read_manifest()
    assert err.value.exit_code == exit_code
    assert ("--force" in str(err.value)) == (error is SpecError)


def test_a_holdout_that_leaves_nothing_to_train_on_is_a_clear_error(tiny_spec):
    with pytest.raises(SpecError, match="eval.holdout_size: 128 leaves no training images"):
        tiny_spec("eval.temperature_scaling=true", "eval.holdout_size=128")


def test_too_few_images_for_a_batch_is_a_clear_error(tiny_spec):
    with pytest.raises(SpecError, match="train.batch_size: 16 is more than the 8 training images"):
        tiny_spec("data.train_size=8")


def test_data_given_in_place_of_the_spec_is_still_checked_before_the_run_directory_exists(tiny_spec):
    # A dataset handed to execute() (tests, notebooks) is not the spec's: its size is known only there.
    from job.data import load_dataset

    spec = tiny_spec()
    with pytest.raises(SpecError, match="the training set has 8 images, fewer than train.batch_size 16"):
        run_mod.execute(spec, dataset=load_dataset(spec.data).head(8, None))
    assert not spec.run_dir.exists()  # so the corrected call is not refused as a different run


def test_checkpoints_left_by_a_process_killed_after_completing_are_cleared_by_a_rerun(completed):
    # Killed between writing the completed manifest and removing checkpoints/.
    (completed.run_dir / "checkpoints" / "epoch-0002").mkdir(parents=True)
    assert run_mod.execute(completed) == 0
    assert not (completed.run_dir / "checkpoints").exists()


def test_force_removes_the_manifest_last(completed, monkeypatch):
    # Killed midway, the folder must still read as a run of ours, which --force can finish;
    # without its manifest it reads as foreign, and no command writes into it again.
    removed = []
    real_rmtree, real_unlink = shutil.rmtree, Path.unlink
    monkeypatch.setattr("job.rundir.shutil.rmtree", lambda p, *a, **k: (removed.append(Path(p).name), real_rmtree(p)))
    monkeypatch.setattr(Path, "unlink", lambda p, *a, **k: (removed.append(p.name), real_unlink(p, *a, **k)))
    RunDir(completed.run_dir).wipe()
    monkeypatch.undo()
    assert removed[-2:] == ["spec.yaml", "manifest.json"] and len(removed) == len(ARTIFACTS)
    assert run_mod.execute(completed) == 0  # a fresh run: the next test checks what --force leaves


def test_force_discards_a_failed_runs_checkpoints_and_trains_from_the_start(tiny_spec, monkeypatch, caplog):
    # Every other --force test starts from a completed run, which keeps no checkpoints.
    spec = tiny_spec("output.run=failed-then-forced")
    real_train = run_mod.train

    def train_then_fail(*args):
        real_train(*args)  # both epochs checkpointed
        raise DivergedError("loss became nan after training")

    monkeypatch.setattr(run_mod, "train", train_then_fail)
    with pytest.raises(DivergedError):
        run_mod.execute(spec)
    assert (spec.run_dir / "checkpoints" / "epoch-0002").is_dir()
    monkeypatch.undo()
    caplog.clear()
    with caplog.at_level("INFO", logger="lsjob"):
        assert run_mod.execute(spec, force=True) == 0
    assert "resuming" not in caplog.text and "epoch 1/2" in caplog.text and "epoch 2/2" in caplog.text
    manifest = json.loads((spec.run_dir / "manifest.json").read_text())
    assert [a["status"] for a in manifest["attempts"]] == ["completed"] and manifest["attempts"][0]["forced"]


def test_a_run_of_another_hash_whose_spec_yaml_cannot_be_read_is_refused_not_taken_over(tiny_spec):
    # As a newer lsjob leaves it (a field this version does not know): nothing says it is this spec's run.
    spec = tiny_spec("output.run=unreadable")
    manifest = fail_an_attempt(spec)
    (spec.run_dir / "manifest.json").write_text(json.dumps({**manifest, "spec_hash": "0" * 16}))
    (spec.run_dir / "spec.yaml").write_text("train: {a_field_from_the_future: 1}\n")
    with pytest.raises(
        SpecError, match=f"holds a run of a different spec \\(hash 0{{16}}, this spec {spec.content_hash()}"
    ):
        run_mod.execute(spec)


def test_force_starts_over(completed):
    # Last in this module: it replaces the shared run the tests above read.
    first = json.loads((completed.run_dir / "manifest.json").read_text())
    model = (completed.run_dir / "model.keras").stat().st_mtime_ns
    assert run_mod.execute(completed, force=True) == 0
    second = json.loads((completed.run_dir / "manifest.json").read_text())
    (attempt,) = second["attempts"]  # a fresh run, not another attempt of the old one
    # Trained anew: not "already complete, nothing to do", which leaves the manifest as it was.
    assert attempt["forced"] is True and attempt["started"] != first["attempts"][-1]["started"]
    assert (completed.run_dir / "model.keras").stat().st_mtime_ns != model
    assert second["status"] == "completed" and second["finished"] >= first["finished"]
    # run.log holds only the new run: its first line says an earlier one was discarded.
    lines = (completed.run_dir / "run.log").read_text().splitlines()
    assert (
        f"WARNING --force: discarded the run that was in {completed.run_dir} (status completed, 2 epoch(s) done)"
        in lines[0]
    )
    assert sum("attempt 1" in line for line in lines) == 1


def test_a_full_disk_says_in_one_line_whether_a_rerun_resumes_or_starts_over(tmp_path):
    from job.run import _no_space_error

    # h5py re-raises ENOSPC with the errno only in a message of a dozen fields.
    h5py_like = OSError("Unable to synchronously write data (file write failed: time = Sun Dec 6, filename = "
                        "'x.h5', errno = 28, error message = 'No space left on device', buf = 0x5563)")  # fmt: skip
    fresh = str(_no_space_error(h5py_like, tmp_path))
    assert "(No space left on device)" in fresh and "buf =" not in fresh
    assert fresh.endswith("no checkpoint was written yet, so it starts the training over")
    (tmp_path / "checkpoints" / "epoch-0003").mkdir(parents=True)
    resumed = str(_no_space_error(OSError(errno.EDQUOT, "Disk quota exceeded"), tmp_path))
    assert "(Disk quota exceeded)" in resumed and resumed.endswith("it resumes from the last intact checkpoint")
    assert _no_space_error(OSError(errno.EACCES, "Permission denied"), tmp_path) is None


def test_the_baseline_is_recorded_at_factor_zero_whatever_the_specs_factor(tiny_spec):
    """aggregate places each run at its manifest's factor: the baseline (method none, whose
    spec still carries the default factor 0.1) belongs at 0, not beside the smoothed runs."""
    from job.run import _start_manifest

    manifest = _start_manifest(tiny_spec("smoothing.method=none"), None)
    assert (manifest["method"], manifest["factor"]) == ("none", 0.0)
    assert _start_manifest(tiny_spec("smoothing.factor=0.2"), None)["factor"] == 0.2


def test_the_log_says_what_computes_only_once_the_manifest_records_it(tiny_spec, monkeypatch, caplog):
    # A disk that fills as the attempt's setup is recorded: run.log must not describe a setup
    # that its manifest never got.
    real_write = RunDir.write_manifest

    def full_at_the_setup(self, manifest):
        if manifest.get("runtime") is not None and manifest["status"] == "running":
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_write(self, manifest)

    monkeypatch.setattr(RunDir, "write_manifest", full_at_the_setup)
    monkeypatch.setattr(run_mod, "train", lambda *a, **k: pytest.fail("trained without its setup recorded"))
    caplog.set_level("INFO", logger="lsjob")
    with pytest.raises(NoSpaceError):
        run_mod.execute(tiny_spec("train.epochs=1"))
    assert "data: synthetic" in caplog.text and "computing:" not in caplog.text


def test_a_completed_run_is_a_no_op_without_its_data_or_its_devices(completed, monkeypatch):
    # A finished sweep resubmitted where its data is gone (a node offline, a cleared cache)
    # has nothing to do: neither a download nor the devices' set-up may stand in its way.
    monkeypatch.setattr(run_mod, "load_dataset", lambda *a, **k: pytest.fail("loaded the data of a completed run"))
    monkeypatch.setattr(run_mod.runtime, "configure", lambda *a, **k: pytest.fail("set up devices for a completed run"))
    assert run_mod.execute(completed) == 0


def test_a_full_disk_as_the_run_is_marked_completed_keeps_its_checkpoints_and_the_rerun_trains_nothing(
    tiny_spec, monkeypatch, caplog
):
    # Checkpoints/ goes only once the manifest says completed; cleared first, a failure
    # (or a kill) there threw away the whole training, and the re-run started it over.
    spec = tiny_spec("output.run=last-write")
    real_write = RunDir.write_manifest

    def full_at_the_end(self, manifest):
        if manifest["status"] == "completed":
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_write(self, manifest)

    with monkeypatch.context() as m:
        m.setattr(RunDir, "write_manifest", full_at_the_end)
        with pytest.raises(NoSpaceError, match="it resumes from the last intact checkpoint"):
            run_mod.execute(spec)
    caplog.clear()
    caplog.set_level("INFO", logger="lsjob")
    assert run_mod.execute(spec) == 0
    assert "resuming after epoch 2 of 2" in caplog.text and "epoch 1/2" not in caplog.text


def test_an_unexpected_error_is_recorded_with_its_type(tiny_spec, monkeypatch):
    # A bug's reason in the manifest ("KeyError: 'val_nll'"), not a bare "'val_nll'".
    spec = tiny_spec("train.epochs=1")
    monkeypatch.setattr(run_mod, "train", lambda *a, **k: (_ for _ in ()).throw(KeyError("val_nll")))
    with pytest.raises(KeyError):
        run_mod.execute(spec)
    manifest = RunDir(spec.run_dir).read_manifest()
    assert manifest["status"] == "failed" and manifest["reason"] == "KeyError: 'val_nll'"
    assert manifest["attempts"][-1]["reason"] == "KeyError: 'val_nll'"


def test_a_disk_too_full_to_record_the_failure_still_exits_as_a_full_disk(tiny_spec, monkeypatch, caplog):
    # The manifest's own write failing must not replace the full disk (exit 6) by a traceback.
    from job.checkpoint import Checkpoints

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    real_write = RunDir.write_manifest
    monkeypatch.setattr(Checkpoints, "save", full)
    monkeypatch.setattr(
        RunDir, "write_manifest", lambda self, m: full() if m["status"] == "failed" else real_write(self, m)
    )
    spec = tiny_spec("train.epochs=1", "output.run=still-full")
    with caplog.at_level("ERROR", logger="lsjob"), pytest.raises(NoSpaceError, match="ran out of disk space") as err:
        run_mod.execute(spec)
    assert err.value.exit_code == 6
    assert "could not record the failed run in its manifest" in caplog.text


def test_no_change_of_setting_is_warned_of_on_a_first_attempt_nor_a_resume_on_the_same_setup(tiny_spec, monkeypatch,
                                                                                            caplog):  # fmt: skip
    # A setting the run never recorded (its first attempt) is no change.
    spec = tiny_spec("train.epochs=1")
    with caplog.at_level("WARNING", logger="lsjob"):
        fail_one_attempt(spec, monkeypatch)
        assert run_mod.execute(spec) == 0
    assert "another setting than the run so far" not in caplog.text and "other code than" not in caplog.text


def test_each_run_logs_into_its_own_run_log_only(tiny_spec, monkeypatch):
    # A process that runs several specs (a notebook, tests) must not log run b into a's run.log.
    first = tiny_spec("train.epochs=1", "output.run=first")
    second = tiny_spec("train.epochs=1", "output.run=second")
    fail_one_attempt(first, monkeypatch)
    fail_one_attempt(second, monkeypatch)
    assert str(second.run_dir) not in (first.run_dir / "run.log").read_text()


def test_an_error_raised_while_handling_a_full_disk_is_still_a_full_disk(tmp_path):
    # Keras and h5py also raise their own error inside an `except OSError` (no `from`): the
    # ENOSPC is then the error's __context__, and must still say "free space, re-run".
    try:
        try:
            raise OSError(errno.ENOSPC, "No space left on device")
        except OSError:
            raise RuntimeError("could not save the model")  # noqa: B904
    except RuntimeError as e:
        wrapped = e
    assert wrapped.__cause__ is None and isinstance(wrapped.__context__, OSError)
    error = run_mod._no_space_error(wrapped, tmp_path)
    assert error is not None and "(No space left on device)" in str(error)


def test_outside_slurm_a_stop_before_the_claim_is_a_stop_whatever_the_run_recorded(tmp_path, monkeypatch):
    # The streak of unrecorded stops is told by Slurm's restart count; elsewhere (Kubernetes,
    # a terminal) a stop in the download is requeued as any stop, never ended by the guard.
    stopped = {"status": "interrupted", "stopped_by": "SIGTERM", "checkpointed": False}
    _scheduler(monkeypatch)
    monkeypatch.setattr(preemption, "_requested", "SIGTERM")
    monkeypatch.setattr(RunDir, "read_manifest", lambda self: {"attempts": [stopped] * stall_guard.STALLED_ATTEMPTS})
    assert stall_guard.stalled_before_claim(RunDir(tmp_path / "run")) is None
    _scheduler(monkeypatch, SLURM_JOB_ID="4242", SLURM_RESTART_COUNT="0")  # under Slurm the same record is a streak
    assert stall_guard.stalled_before_claim(RunDir(tmp_path / "run")) is not None


def test_a_forced_attempt_recorded_without_its_restart_counts_as_its_jobs_first(tiny_spec, monkeypatch):
    # An lsjob from before restarts were recorded wrote only the job id; once Slurm requeues
    # that job, --force must resume what it trained, not discard it again.
    spec = tiny_spec()
    record = {"spec_hash": spec.content_hash(), "attempts": [{"forced": True, "slurm_job": "77"}]}
    monkeypatch.setattr(RunDir, "read_manifest", lambda self: record)
    _scheduler(monkeypatch, SLURM_JOB_ID="77", SLURM_RESTART_COUNT="1")
    assert run_mod._discarded_by_this_job(RunDir(spec.run_dir), spec)
    _scheduler(monkeypatch, SLURM_JOB_ID="77", SLURM_RESTART_COUNT="0")
    assert not run_mod._discarded_by_this_job(RunDir(spec.run_dir), spec)


def test_the_manifest_records_the_backends_version(completed):
    # Which TensorFlow, JAX or PyTorch computed the run.
    import importlib

    backend = keras.backend.backend()
    manifest = json.loads((completed.run_dir / "manifest.json").read_text())
    assert manifest["versions"][backend] == importlib.import_module(backend).__version__


def test_a_manifest_that_is_not_a_json_object_is_a_damaged_run_that_force_discards(tiny_spec):
    # Exit 2 with what to do, not an AttributeError traceback (exit 1, "a bug").
    spec = tiny_spec("train.epochs=1")
    fail_an_attempt(spec)
    (spec.run_dir / "manifest.json").write_text("[]")
    with pytest.raises(SpecError, match=r"holds a JSON list, not an object; the run directory is damaged") as err:
        run_mod.execute(spec)
    assert err.value.exit_code == EXIT_BAD_INPUT and "--force" in str(err.value)
    assert run_mod.execute(spec, force=True) == 0
    assert "(its manifest.json could not be read)" in (spec.run_dir / "run.log").read_text().splitlines()[0]


def test_a_run_killed_after_writing_its_spec_before_its_manifest_is_still_ours(tiny_spec):
    # .lock, run.log and spec.yaml, all three (killed between the two first writes): the
    # same command resumes it, rather than refusing the folder as foreign for good.
    spec = tiny_spec("train.epochs=1")
    spec.run_dir.mkdir(parents=True)
    (spec.run_dir / ".lock").write_text("")
    (spec.run_dir / "run.log").write_text("")
    (spec.run_dir / "spec.yaml").write_text(spec.to_yaml())
    assert run_mod.execute(spec) == 0


def test_force_refuses_a_run_folder_holding_what_no_run_writes_and_removes_nothing(tiny_spec):
    # A user's notes beside a run, or a run made inside it, are not the run's to discard.
    spec = tiny_spec("train.epochs=1")
    fail_an_attempt(spec)
    (spec.run_dir / "NOTES.md").write_text("what I saw\n")
    (spec.run_dir / "inner" / "checkpoints").mkdir(parents=True)
    before = sorted(p.relative_to(spec.run_dir) for p in spec.run_dir.rglob("*"))
    with pytest.raises(SpecError, match=r"--force would discard the run in .*, which also holds what no run writes "
                       r"there: NOTES\.md, inner/\. Move that out of it") as err:  # fmt: skip
        run_mod.execute(spec, force=True)
    assert err.value.exit_code == EXIT_BAD_INPUT
    assert sorted(p.relative_to(spec.run_dir) for p in spec.run_dir.rglob("*")) == before
    (spec.run_dir / "NOTES.md").unlink()
    shutil.rmtree(spec.run_dir / "inner")
    assert run_mod.execute(spec, force=True) == 0


@pytest.mark.parametrize("below", ["", "checkpoints", "checkpoints/deeper"])
def test_a_results_root_inside_a_run_directory_is_refused_before_anything_is_written(tiny_spec, below):
    # A run's checkpoints/ goes when it completes, and what else it holds --force refuses:
    # a run made in there would be lost, or stop --force on the run around it.
    outer = tiny_spec("train.epochs=1")
    fail_an_attempt(outer)
    root = outer.run_dir / below
    before = sorted(outer.run_dir.rglob("*"))
    inner = tiny_spec("train.epochs=1", f"output.root={root}", "output.run=inner")
    with pytest.raises(SpecError, match=f"output.root {root} is inside the run directory {outer.run_dir}, "):
        run_mod.execute(inner)
    assert sorted(outer.run_dir.rglob("*")) == before


def test_a_folder_holding_some_other_tools_manifest_json_may_hold_a_results_root(tiny_spec, tmp_path):
    # Only a folder with lsjob's lock, or a run's manifest and spec, is a run directory.
    (tmp_path / "manifest.json").write_text("{}")
    spec = tiny_spec("train.epochs=1")
    assert rundir.enclosing_run(spec.run_dir.parent) is None
    assert rundir.enclosing_run(spec.run_dir / "x") is None  # not yet made
    fail_an_attempt(spec)
    assert rundir.enclosing_run(spec.run_dir / "x") == spec.run_dir.resolve()


def test_force_removes_a_link_of_ones_own_in_place_of_checkpoints(tmp_path):
    # --force on a run whose checkpoints/ its owner keeps elsewhere by a link: the link goes,
    # what it points at is not the run's to delete, and nothing fails (rmtree refuses a link).
    scratch = tmp_path / "scratch" / "checkpoints"
    (scratch / "epoch-0001").mkdir(parents=True)
    run = stopped_run(tmp_path / "root" / "r")
    (run / "checkpoints").symlink_to(scratch)
    run_dir = RunDir(run)
    run_dir.claim()
    try:
        run_dir.wipe()
    finally:
        run_dir.release()
    assert sorted(p.name for p in run.iterdir()) == [".lock"]
    assert (scratch / "epoch-0001").is_dir()


def test_a_run_directory_the_kernel_will_not_make_is_bad_input_in_one_line():
    # As root, os.access says /proc is writable; mkdir there fails (ENOENT), which was a traceback.
    with pytest.raises(SpecError, match=r"set output.root to a writable directory$") as err:
        RunDir(Path("/proc/lsjob-run")).claim()
    assert err.value.exit_code == EXIT_BAD_INPUT


def test_a_results_root_several_folders_deep_is_made(tmp_path):
    # Output.root=/scratch/$USER/project/results on a fresh scratch disk.
    run_dir = RunDir(tmp_path / "a" / "b" / "results" / "r")
    run_dir.claim()
    run_dir.release()
    assert (tmp_path / "a" / "b" / "results" / "r" / ".lock").is_file()


@pytest.mark.parametrize("code", [errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL])
def test_a_filesystem_without_locks_is_warned_of_and_the_run_goes_on(code, monkeypatch, caplog, tmp_path):
    # Some NFS and Lustre mounts refuse flock: a warning, not a failure before training.
    def no_locks(fd, operation):
        raise OSError(code, os.strerror(code))

    monkeypatch.setattr(rundir.fcntl, "flock", no_locks)
    run_dir = RunDir(tmp_path / "r")
    with caplog.at_level("WARNING", logger="lsjob"):
        run_dir.claim()
    run_dir.release()
    assert "does not support locks; duplicate tasks are not detected" in caplog.text
    assert f"pid {os.getpid()} on " in (tmp_path / "r" / ".lock").read_text()


def test_the_lock_names_only_its_new_holder_whatever_a_longer_earlier_one_wrote(tmp_path):
    # The earlier holder's longer text must not trail the new one's: aggregate reads the lock
    # to tell a live run from a killed one.
    (tmp_path / "r").mkdir()
    (tmp_path / "r" / ".lock").write_text(
        "pid 999999 on a-node-with-a-long-name.cluster.example since 2026-12-06T07:00:00+00:00 "
        "slurm job 4242 restart 7\n"
    )
    run_dir = RunDir(tmp_path / "r")
    run_dir.claim()
    try:
        assert rundir.is_lsjob_lock(tmp_path / "r" / ".lock")
        assert rundir.lock_holder(tmp_path / "r").alive
        assert "4242" not in (tmp_path / "r" / ".lock").read_text()
    finally:
        run_dir.release()


def test_a_lock_naming_pid_0_names_no_process(tmp_path):
    # Kill(0, 0) signals this very process group and succeeds: pid 0 must never read as alive.
    (tmp_path / "r").mkdir()
    (tmp_path / "r" / ".lock").write_text(f"pid 0 on {socket.gethostname()} since 2026-12-06T07:00:00+00:00\n")
    holder = rundir.lock_holder(tmp_path / "r")
    assert not holder.alive and "does not name a process" in holder.text


def test_an_unwritable_root_says_which_folder_cannot_hold_it(tmp_path, monkeypatch):
    # Where the root does not exist yet, the folder that refuses it is named.
    (tmp_path / "read-only").mkdir()
    real_access = os.access
    monkeypatch.setattr(
        "job.rundir.os.access", lambda p, mode: os.path.basename(p) != "read-only" and real_access(p, mode)
    )
    with pytest.raises(SpecError, match=rf"results is not writable \({tmp_path / 'read-only'} cannot hold it\)"):
        rundir.check_writable(tmp_path / "read-only" / "results", create=False)
