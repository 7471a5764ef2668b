"""One run, end to end: set up the devices and load the data, claim the directory, train, report,
mark complete.

Re-running the same command is always safe: a completed run is left alone, an
interrupted or failed one resumes from its last checkpoint.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from pathlib import Path

import keras
import numpy as np

from job import atomic, preemption, report, runtime, stall_guard
from job.checkpoint import Checkpoints
from job.data import load_dataset
from job.errors import EXIT_OK, NO_SPACE_ERRNOS, InterruptedRun, JobError, NoSpaceError, SpecError, storage_fault
from job.model import save_model
from job.rundir import (
    CHECKPOINTS,
    COMPLETED,
    FAILED,
    INTERRUPTED,
    LOCK,
    MODEL_FILE,
    RUN_LOG,
    RUNNING,
    SPEC_FILE,
    RunDir,
    check_writable,
    code_versions,
    enclosing_run,
    links_to_nothing,
    now,
    open_own,
    slurm_restart,
)
from job.spec import Spec, identity_differences, load_spec
from job.train import check_fits, steps_per_epoch, train

log = logging.getLogger("lsjob")


def execute(spec: Spec, force: bool = False, dataset=None, sweep_point: dict | None = None) -> int:
    """Run `spec`; returns the exit code. `dataset` replaces the spec's data (tests, notebooks);
    `sweep_point` (index and values) is recorded in the manifest of a sweep's run."""
    run_dir = RunDir(spec.run_dir)
    force = force and not _discarded_by_this_job(run_dir, spec)
    # A peek without the lock: only a run with work left needs its devices and data. Both are
    # set up before the run directory exists, so runtime settings this machine cannot honour
    # and bad or hostile data leave nothing behind (nor a failed run that would refuse the
    # corrected spec as a different one).
    previous = None if force else run_dir.read_manifest()
    if _complete_on_read_only_storage(previous, run_dir, spec):
        # A finished sweep on a volume now mounted read-only: nothing to do, so nothing to refuse.
        log.info("%s is already complete%s; nothing to do", run_dir.path, _result(previous))
        return EXIT_OK
    root = spec.run_dir.parent
    if (inside := enclosing_run(root)) is not None:
        raise SpecError(
            f"output.root {root} is inside the run directory {inside}, which holds only what its own run writes "
            "(a finished run clears its checkpoints/ and --force refuses the rest): choose a results root outside it"
        )
    check_writable(root, create=False)  # a read-only root fails before any download
    if os.path.lexists(run_dir.path) and not run_dir.path.is_dir():  # before any download too
        what = "a link to nothing" if links_to_nothing(run_dir.path) else "not a directory"
        raise SpecError(f"{run_dir.path} is {what}, so no run can be written there; remove it, or use "
                        f"{_elsewhere(sweep_point)}")  # fmt: skip
    setup = None
    try:
        if not (previous or {}).get("status") == COMPLETED:
            try:
                setup = runtime.configure(spec.runtime, spec.train.seed)
                dataset = dataset if dataset is not None else load_dataset(spec.data)
            except KeyboardInterrupt as e:  # a second Ctrl-C in a download: nothing started, nothing lost
                raise _second_ctrl_c(e) from None
            check_fits(spec, len(dataset.x_train), len(dataset.x_test))
        run_dir.claim()  # may wait for an earlier attempt's lock, and be stopped there
    except InterruptedRun as e:
        # No attempt is recorded yet; a stop in a download or a lock wait counts towards the guard too.
        stalled = stall_guard.stalled_before_claim(run_dir)
        if stalled:
            raise stalled from e
        raise
    try:
        return _execute_claimed(spec, run_dir, force, dataset, sweep_point, setup)
    finally:
        run_dir.release()


def _result(manifest: dict) -> str:
    accuracy = manifest.get("test_accuracy")
    return f" (test accuracy {accuracy:.4f})" if isinstance(accuracy, float) else ""


def _discarded_by_this_job(run_dir: RunDir, spec: Spec) -> bool:
    """Whether an earlier attempt of this Slurm job, before Slurm requeued it, already discarded
    the run with --force: the requeued attempt (the same options, SLURM_JOB_ID, which an array
    task keeps too, and a higher SLURM_RESTART_COUNT) then resumes what the job trained since
    instead of discarding it again. Commands run one after another in one allocation (salloc)
    share SLURM_JOB_ID but not a restart: each --force there discards. An attempt stopped before
    it discarded anything (while the data loaded) leaves none on record."""
    job = os.environ.get("SLURM_JOB_ID")
    try:
        manifest = (run_dir.read_manifest() or {}) if job else {}
    except JobError:  # a damaged manifest: --force discards it
        return False
    attempts = manifest.get("attempts", [])
    if not isinstance(attempts, list) or _spec_differences(manifest, run_dir, spec) is not None:
        return False  # damaged, or another spec's run: --force discards it
    restart = slurm_restart()
    for attempt in attempts:
        if isinstance(attempt, dict) and attempt.get("forced") and attempt.get("slurm_job") == job:
            # One recorded without its restart (by an older lsjob) counts as its job's first attempt.
            recorded = attempt.get("slurm_restart", 0)
            if isinstance(recorded, int) and restart > recorded:
                log.info("--force: slurm job %s discarded this run before it was requeued; this attempt resumes it",
                         job)  # fmt: skip
                return True
    return False


def _elsewhere(sweep_point: dict | None) -> str:
    # A sweep's points take their names from the sweep, so only another root keeps both.
    return "another output.root for this sweep" if sweep_point is not None else "another output.run"


def _complete_on_read_only_storage(previous: dict | None, run_dir: RunDir, spec: Spec) -> bool:
    return (
        previous is not None
        and previous.get("status") == COMPLETED
        and not os.access(run_dir.path, os.W_OK)
        and _spec_differences(previous, run_dir, spec) is None
    )


def _spec_differences(previous: dict, run_dir: RunDir, spec: Spec) -> list[str] | None:
    """None when the run in `run_dir` is this spec's; else how its spec differed (empty when
    its spec.yaml cannot tell). Its manifest's hash says so at once; else its spec.yaml
    (written with the manifest at every attempt) hashed as this version of lsjob hashes: an
    older version's hash still counted fields that cannot change the results."""
    if previous.get("spec_hash") == spec.content_hash():
        return None
    try:
        made = load_spec(run_dir.path / SPEC_FILE)
    except (SpecError, OSError):
        return []
    return None if made.content_hash() == spec.content_hash() else identity_differences(made, spec)


def _execute_claimed(
    spec: Spec, run_dir: RunDir, force: bool, dataset, sweep_point: dict | None, setup: runtime.Setup | None
) -> int:
    previous = run_dir.read_manifest() if not force else None
    if previous is not None and _already_complete(previous, run_dir, spec, sweep_point):
        return EXIT_OK
    discarded = None
    if force:
        discarded = _what_force_discards(run_dir)
        run_dir.wipe()

    handler = _log_to_file(run_dir.path / RUN_LOG)
    manifest = _start_manifest(spec, previous, forced=force)
    if sweep_point is not None:
        manifest["sweep"] = sweep_point
    started = time.monotonic()
    checkpoints = Checkpoints(run_dir.path / CHECKPOINTS)
    resumes_from = checkpoints.newest()
    if resumes_from is not None:
        manifest["attempts"][-1]["resumed_from"] = resumes_from  # epoch-NNNN[-step-SSSSSS]: how far it began
    nothing_kept = False
    try:
        if discarded:  # the new run.log's first line: the old one, which said so, is gone
            log.warning("--force: discarded the run that was in %s (%s)", run_dir.path, discarded)
        atomic.write_text(run_dir.path / SPEC_FILE, spec.to_yaml())
        run_dir.write_manifest(manifest)
        # A later array's task i trains point K+i (--index-offset): the log says which.
        point = f" of sweep point {sweep_point['index']}" if sweep_point is not None else ""
        log.info("run %s: attempt %d%s", run_dir.path, len(manifest["attempts"]), point)
        # Already done in execute() unless the run looked complete there and no longer does.
        setup = setup or runtime.configure(spec.runtime, spec.train.seed)
        data = dataset if dataset is not None else load_dataset(spec.data)
        data, holdout = _hold_out(spec, data, manifest)
        _record_setup(spec, data, setup, manifest, previous)
        run_dir.write_manifest(manifest)
        _log_computing(spec, data, manifest)

        result = train(spec, data, run_dir.path)
        metrics = _write_results(spec, data, holdout, result, run_dir.path)
        _finish(manifest, started, COMPLETED)
        manifest.update(
            epochs_done=len(result.history),
            **{key: metrics[key] for key in report.MANIFEST_METRICS},
        )
        run_dir.write_manifest(manifest)
        # Only now: until the manifest says completed, a re-run resumes from these.
        checkpoints.clear()
        # ECE, and T where fitted, too: a scheduler's log is often all one reads of a run.
        scaled = (f" (after T = {metrics['temperature']:.3f}: ECE {metrics['test_ece_scaled']:.4f}, "
                  f"NLL {metrics['test_nll_scaled']:.4f})") if "temperature" in metrics else ""  # fmt: skip
        log.info(
            "completed: test accuracy %.4f, test NLL %.4f, ECE %.4f%s -> %s",
            metrics["test_accuracy"], metrics["test_nll"], metrics["test_ece"], scaled, run_dir.path,
        )  # fmt: skip
        if preemption.requested():
            # The last check is at the last epoch's end: stopping after it would save nothing, and
            # the results take seconds where a requeue would take minutes.
            log.info("%s came after training ended, so the run finished rather than stop", preemption.requested())
        return EXIT_OK
    except BaseException as e:
        error = _no_space_error(e, run_dir.path) or _second_ctrl_c(e) or _storage_error(e, run_dir.path) or e
        if isinstance(error, InterruptedRun):
            # A second Ctrl-C raised KeyboardInterrupt before any handler could record a signal.
            stopped_by = "SIGINT" if isinstance(e, KeyboardInterrupt) else preemption.requested()
            saved = checkpoints.newest()
            manifest["attempts"][-1].update(stopped_by=stopped_by, checkpointed=saved != resumes_from)
            if saved != resumes_from:
                manifest["attempts"][-1]["checkpoint"] = saved  # how far it got, as the next attempt resumes
            # A Ctrl-C of a new run before it saved anything (in the start-up, which compiles for a
            # minute on a GPU): typically a mistyped command, whose folder would refuse the corrected
            # one as another spec's. A scheduler's SIGTERM keeps its record (stall_guard counts them).
            nothing_kept = stopped_by == "SIGINT" and previous is None and not checkpoints.any_saved()
            if nothing_kept:
                raise InterruptedRun(
                    "stopped by Ctrl-C before anything was trained or saved, so the run's folder was removed: run "
                    "the command again (corrected or not) to start afresh"
                ) from e
            error = stall_guard.stalled(manifest["attempts"]) or error
        status = INTERRUPTED if isinstance(error, InterruptedRun) else FAILED
        reason = str(error) if isinstance(error, JobError) else f"{type(error).__name__}: {error}"
        _finish(manifest, started, status, reason)
        try:
            run_dir.write_manifest(manifest)
        except OSError as again:  # the disk is still full: the log line must do
            log.error("could not record the %s run in its manifest: %s", status, again)
        # A preemption is routine, not an error: a sweep's logs searched for ERROR find failures only.
        (log.warning if status == INTERRUPTED else log.error)("run %s: %s", status, reason)
        if error is not e:
            raise error from e
        raise
    finally:
        log.removeHandler(handler)
        handler.close()
        if nothing_kept:
            run_dir.remove()


def _already_complete(previous: dict, run_dir: RunDir, spec: Spec, sweep_point: dict | None) -> bool:
    """Whether the run in `run_dir` is this spec's and complete: nothing to do. A run of another
    spec there is refused."""
    differences = _spec_differences(previous, run_dir, spec)
    if differences is not None:
        what = f"it differs in {'; '.join(differences)}" if differences else (
            f"hash {previous.get('spec_hash')}, this spec {spec.content_hash()}")  # fmt: skip
        raise SpecError(
            f"{run_dir.path} holds a run of a different spec ({what}); use {_elsewhere(sweep_point)}, or "
            "--force to discard that run"
        )
    if previous.get("status") != COMPLETED:
        return False
    # Removed after the manifest said completed: a process killed in between left them.
    Checkpoints(run_dir.path / CHECKPOINTS).clear()
    log.info("%s is already complete%s; nothing to do (--force runs it again from scratch)",
             run_dir.path, _result(previous))  # fmt: skip
    return True


def _hold_out(spec: Spec, data, manifest: dict):
    """The data to train on, and the held-out slice temperature scaling is fitted on (None when off)."""
    if not spec.eval.temperature_scaling:
        return data, None
    loaded = len(data.x_train)
    data, x_holdout, y_holdout = data.split_holdout(spec.eval.holdout_size)
    manifest["holdout"] = {
        "examples": len(y_holdout),
        "train_indices": [loaded - len(y_holdout), loaded],  # start and end (excluded), in the order loaded
        "class_counts": np.bincount(y_holdout, minlength=data.num_classes).tolist(),
        "what": "the last training images, excluded from training; temperature scaling is fitted on them",
    }
    return data, (x_holdout, y_holdout)


def _record_setup(spec: Spec, data, setup: runtime.Setup, manifest: dict, previous: dict | None) -> None:
    """What this attempt trains on and computes with, in the manifest."""
    manifest["data"] = data.description
    log.info("data: %s", data.description)
    manifest["devices"] = runtime.devices()
    _record_computation(manifest, previous, setup)
    manifest["runtime"] = {
        **setup.describe(),
        "global_batch": spec.train.batch_size,
        "per_replica_batch": spec.train.batch_size // setup.replicas,
        "lr_scaling": spec.train.lr_scaling,
        "base_lr": spec.train.base_lr,  # epoch 0's learning rate, after scaling
    }


def _log_computing(spec: Spec, data, manifest: dict) -> None:
    """What computes, for whoever reads only the log (a Slurm .out, kubectl logs); once the
    manifest has it."""
    computing = manifest["runtime"]
    log.info(
        "computing: %s on %s; precision %s (%s); batch %d (%d per replica), %d steps per epoch",
        ", ".join(f"{name} {version}" for name, version in code_versions(manifest)[0].items()),
        ", ".join(computing["replica_devices"]), computing["precision"], computing["precision_source"],
        computing["global_batch"], computing["per_replica_batch"],
        steps_per_epoch(len(data.x_train), spec.train.batch_size),
    )  # fmt: skip


def _write_results(spec: Spec, data, holdout, result, path: Path) -> dict:
    """The trained model's predictions, the reports made from them, and model.keras; the metrics."""
    holdout_probs = y_holdout = None
    if holdout is not None:
        x_holdout, y_holdout = holdout
        holdout_probs = result.model.predict(
            **runtime.feed(x_holdout, batch_size=spec.train.eval_batch_size), verbose=0
        )
    report.save_predictions(
        path, report.Predictions(result.test_probs, data.y_test, data.class_names, holdout_probs, y_holdout)
    )
    metrics = report.write_reports(path, epochs=len(result.history))
    save_model(result.model, path / MODEL_FILE)
    return metrics


# h5py and some Keras paths re-raise with the errno only in the message.
NO_SPACE_TEXT = ("No space left on device", "Disk quota exceeded", "File too large")


def _no_space_error(error: BaseException, path: Path) -> NoSpaceError | None:
    for seen in _chain(error):
        if not isinstance(seen, OSError):
            continue
        # The reason alone: h5py's message runs to a dozen fields of its write call.
        why = os.strerror(seen.errno) if seen.errno in NO_SPACE_ERRNOS else _no_space_text(seen)
        if why is None:
            continue
        then = (
            "it resumes from the last intact checkpoint"
            if Checkpoints(path / CHECKPOINTS).any_saved()
            else "no checkpoint was written yet, so it starts the training over"
        )
        return NoSpaceError(
            f"ran out of disk space writing {path} ({why}); free space there (or raise the quota or "
            f"file-size limit) and re-run the same command: {then}"
        )
    return None


def _no_space_text(error: OSError) -> str | None:
    return next((text for text in NO_SPACE_TEXT if text in str(error)), None)


def _storage_error(error: BaseException, path: Path) -> JobError | None:
    """An I/O error or a stale handle while training (writing a checkpoint, history.csv): the
    one-line message of a storage fault, not a traceback that reads as a bug."""
    if isinstance(error, JobError):
        return None  # already says what it is
    for seen in _chain(error):
        if isinstance(seen, OSError) and (fault := storage_fault(path, seen)) is not None:
            return fault
    return None


def _chain(error: BaseException):
    """The error and those it was raised from or while handling: Keras and h5py wrap OSErrors."""
    seen, visited = error, set()
    while seen is not None and id(seen) not in visited:
        visited.add(id(seen))
        yield seen
        seen = seen.__cause__ or seen.__context__


def _what_force_discards(run_dir: RunDir) -> str | None:
    """The run --force is about to discard, in words; None where the folder holds nothing yet.
    Never fails: --force never needed the manifest read, and a line saying what went must not
    stop it going."""
    try:
        if not any(p.name != LOCK for p in run_dir.path.iterdir()):
            return None
        manifest = run_dir.read_manifest()
    except (JobError, OSError):  # damaged, a link not followed, a failing disk: wipe() says if it matters
        return "its manifest.json could not be read"
    if manifest is None:
        return "it had no manifest.json yet"
    status, done = manifest.get("status"), manifest.get("epochs_done")
    status = status if isinstance(status, str) else "?"
    done = done if isinstance(done, int) and not isinstance(done, bool) else "?"
    return f"status {status}, {done} epoch(s) done"


def _start_manifest(spec: Spec, previous: dict | None, forced: bool = False) -> dict:
    attempts = (previous or {}).get("attempts", [])
    if attempts and "ended" not in attempts[-1]:
        # Its end was never written: SIGKILL, the OOM killer, a lost node, or a disk too full for it.
        attempts[-1]["status"] = "unrecorded"
    versions, commit = runtime.versions(), runtime.git_commit()
    # The run's versions and commit are the latest attempt's: each attempt keeps its own too.
    attempt = {"host": socket.gethostname(), "started": now(), "backend": keras.backend.backend(),
               "versions": versions, "git_commit": commit}  # fmt: skip
    if os.environ.get("SLURM_JOB_ID"):
        attempt["slurm_job"] = os.environ["SLURM_JOB_ID"]
        attempt["slurm_restart"] = slurm_restart()
    if forced:
        attempt["forced"] = True  # this attempt discarded an earlier run (--force)
    attempts.append(attempt)
    return {
        "run": spec.run_name,
        "status": RUNNING,
        "reason": None,
        "spec_hash": spec.content_hash(),
        "method": spec.smoothing.method,
        "factor": spec.smoothing.effective_factor,
        "seed": spec.train.seed,
        "epochs": spec.train.epochs,
        "started": (previous or {}).get("started", now()),
        "finished": None,
        "duration_s": (previous or {}).get("duration_s", 0.0),
        "attempts": attempts,
        "backend": keras.backend.backend(),
        "versions": versions,
        "git_commit": commit,
    }


def _record_computation(manifest: dict, previous: dict | None, setup: runtime.Setup) -> None:
    """What this attempt computes with, in its record; a warning when it is not what the run so far
    computed with (requeued on another GPU kind, where auto precision resolves otherwise, or under
    another KERAS_BACKEND): it goes on from its checkpoint, but no single setting gives its result.
    Another warning where it runs other code (rundir.code_versions) than the attempt before."""
    attempt = manifest["attempts"][-1]
    attempt.update(precision=setup.precision, replicas=setup.replicas)
    before = previous or {}
    earlier = {
        "backend": before.get("backend"),
        **{k: (before.get("runtime") or {}).get(k) for k in ("precision", "replicas")},
    }
    changed = [f"{key} {earlier[key]} -> {attempt[key]}" for key in earlier
               if earlier[key] is not None and earlier[key] != attempt[key]]  # fmt: skip
    if changed:
        log.warning(
            "this attempt computes with another setting than the run so far (%s): it resumes from the checkpoint, "
            "but the result is not one that either setting alone would give; each attempt's is in the manifest",
            ", ".join(changed),
        )
    # Other code (a library upgraded in the image, a checkout moved on) between a stop and a resume:
    # compared by library where both have it, as another backend is warned of above.
    (old_versions, old_commit), (versions, commit) = code_versions(before), code_versions(manifest)
    moved = [f"{name} {old_versions[name]} -> {version}" for name, version in versions.items()
             if name in old_versions and old_versions[name] != version]  # fmt: skip
    if old_commit and commit and commit != old_commit:
        moved.append(f"git commit {old_commit[:12]} -> {commit[:12]}")
    if moved:
        log.warning(
            "this attempt runs other code than the run so far (%s): it resumes from the checkpoint, but a change "
            "between them may alter the result; each attempt's versions are in the manifest",
            ", ".join(moved),
        )


def _second_ctrl_c(error: BaseException) -> InterruptedRun | None:
    # The first Ctrl-C asks for a stop at the next step (job.preemption); a second one stops at
    # once, wherever Python is. Still an interruption to resume, not a failure.
    if isinstance(error, KeyboardInterrupt):
        return InterruptedRun("stopped at once by a second Ctrl-C; re-run the same command to resume")
    return None


def _finish(manifest: dict, started: float, status: str, reason: str | None = None) -> None:
    """Close this attempt; duration_s adds up every attempt of the run whose end was recorded.
    The reason goes with the attempt too: the run's own is the last attempt's, and a later
    success clears it."""
    elapsed = time.monotonic() - started
    manifest.update(status=status, reason=reason, finished=now())
    manifest["duration_s"] = round(manifest["duration_s"] + elapsed, 3)
    manifest["attempts"][-1].update(ended=now(), status=status, seconds=round(elapsed, 3))
    if reason:
        manifest["attempts"][-1]["reason"] = reason


class _RunLog(logging.FileHandler):
    """run.log, opened as a run's files are (rundir.open_own): never through a symbolic link."""

    def _open(self):
        fd = open_own(Path(self.baseFilename), os.O_WRONLY | os.O_APPEND | os.O_CREAT)
        return open(fd, "a", encoding=self.encoding, errors=self.errors)


def _log_to_file(path: Path) -> logging.Handler:
    handler = _RunLog(path, encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    handler.setLevel(logging.INFO)
    log.addHandler(handler)
    if log.getEffectiveLevel() > logging.INFO:  # the run log keeps every epoch, whatever the console shows
        log.setLevel(logging.INFO)
    return handler
