"""Checkpoints that survive being killed at any moment.

A checkpoint is a directory `epoch-NNNN/` (N epochs done) or `epoch-NNNN-step-SSSSSS/`
(S steps into epoch N+1; see `output.checkpoint_steps`) holding the weights with the optimizer
state (Keras's .weights.h5 carries both) and `state.json` (the history so far and
the weights' sha256). It is built under a temporary name and renamed into place,
so it either exists whole or not at all; the previous one is deleted only after
that. Loading verifies the digest and falls back to an older checkpoint, with a
warning, if the newest is damaged; when every one is damaged the run stops rather than
start over (a storage fault that may pass stops it too, before anything is judged damaged).

Keras's BackupAndRestore would restore weights and optimizer but not the rest of
the training state; the shuffle order and augmentation streams are derived from
(seed, epoch) instead (see train.py), so these files are all a resume needs at an
epoch's end. Inside an epoch, state.json also carries what is not in the weights file
and cannot be derived: the random streams' counters and the epoch's running metric
sums (loss and accuracy so far), so the epoch's history row comes out as if never cut.
"""

from __future__ import annotations

import contextlib
import errno
import gc
import json
import logging
import os
import re
import shutil
import traceback
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import keras

from job.atomic import fsync_dir, sha256_file, temporary_folder
from job.errors import SpecError, storage_fault
from job.rundir import owned_by

log = logging.getLogger("lsjob")
KEEP = 2  # the newest and the one before, in case the newest turns out damaged
TORN_SAVE = re.compile(r"\.epoch-\d{4,}(-step-\d{6,})?\.[A-Za-z0-9_]+")  # save()'s temporary folders


@dataclass
class MidEpoch:
    """Where inside an epoch a checkpoint was taken, and the state that goes with it."""

    steps_done: int
    seed_states: list[list[int]]  # every seed_generator_state variable, in model.variables order
    metric_values: list[list[float]] = field(default_factory=list)  # model.metrics_variables, in order
    seconds: float = 0.0  # the epoch's wall time before the checkpoint


@dataclass
class Resume:
    epochs_done: int = 0
    history: list[dict] = field(default_factory=list)
    mid_epoch: MidEpoch | None = None


class Checkpoints:
    def __init__(self, directory: Path):
        self.directory = Path(directory)

    def save(
        self, model: keras.Model, epochs_done: int, history: list[dict], mid_epoch: MidEpoch | None = None
    ) -> Path:
        self.directory.mkdir(parents=True, exist_ok=True)
        name = f"epoch-{epochs_done:04d}" + (f"-step-{mid_epoch.steps_done:06d}" if mid_epoch else "")
        final = self.directory / name
        tmp = temporary_folder(f".{final.name}.", self.directory)
        try:
            weights = tmp / "state.weights.h5"
            _save_weights(model, weights)
            state = {"epochs_done": epochs_done, "history": history, "weights_sha256": sha256_file(weights)}
            if mid_epoch is not None:
                state["mid_epoch"] = vars(mid_epoch)
            (tmp / "state.json").write_text(json.dumps(state, indent=1))
            for f in tmp.iterdir():
                with open(f, "rb") as fh:
                    os.fsync(fh.fileno())
            if final.exists():  # a re-save of the same epoch after an earlier crash
                shutil.rmtree(final)
            tmp.rename(final)
            fsync_dir(self.directory)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        for old in self._complete()[:-KEEP]:
            shutil.rmtree(old, ignore_errors=True)
        return final

    def restore(self, model: keras.Model) -> Resume:
        """Load the newest intact checkpoint's weights into `model`; a fresh start when there
        is none. A mid-epoch checkpoint's other state is returned, for train.py to put back
        once Keras has begun the epoch (it resets the metrics then)."""
        if model.optimizer is not None and not model.optimizer.built:
            model.optimizer.build(model.trainable_variables)  # its variables must exist to be loaded
        self._remove_torn_saves()
        unusable, damaged = [], []
        for path in reversed(self._complete()):
            try:
                state = json.loads((path / "state.json").read_text())
                weights = path / "state.weights.h5"
                if sha256_file(weights) != state["weights_sha256"]:
                    raise ValueError("weights do not match their recorded sha256")
                mid_epoch = MidEpoch(**state["mid_epoch"]) if "mid_epoch" in state else None
                _load_weights(model, weights, path.name)
                self._set_aside(damaged)
                return Resume(int(state["epochs_done"]), list(state["history"]), mid_epoch)
            except Exception as e:  # any damage: fall back to the previous checkpoint
                # An NFS hiccup is not damage: judged so, every checkpoint would be passed over.
                fault = storage_fault(path, e) if isinstance(e, OSError) else None
                if fault is not None:
                    raise fault from None
                if isinstance(e, OSError) and e.errno in (errno.EACCES, errno.EPERM):
                    # Another user's (a teammate's run in a shared folder): intact, only not ours to read.
                    raise SpecError(
                        f"cannot read the checkpoint {path} as user {os.getuid()} ({e.strerror or e}); it is not "
                        f"damaged: {owned_by(path, self.directory.parent)}"
                    ) from None
                log.warning("checkpoint %s is unusable (%s); trying an older one", path, e)
                unusable.append(f"{path.name}: {e}")
                damaged.append(path)
        if unusable:
            # Starting over would throw away the run's progress, and pruning would then keep the
            # damaged, higher-numbered checkpoints over every new one.
            raise SpecError(
                f"no checkpoint in {self.directory} can be loaded ({'; '.join(unusable)}), so the run cannot "
                f"resume; restore them from a copy, or move {self.directory} aside (or pass --force) to start over"
            )
        return Resume()

    def _set_aside(self, damaged: list[Path]) -> None:
        """Rename damaged checkpoints out of the run's sequence once an older one has loaded.
        Left as they were, the newest by name, they kept a place among the KEEP that pruning
        spares, and the intact one the run resumed from was deleted first. Kept, not deleted:
        they go with the folder when the run completes."""
        for path in damaged:
            aside = path.with_name(f"damaged-{path.name}")
            n = 1
            while aside.exists():
                n += 1
                aside = path.with_name(f"damaged-{path.name}-{n}")
            with contextlib.suppress(OSError):  # still in the sequence: only pruning suffers
                path.rename(aside)
                log.warning("moved the unusable checkpoint %s aside to %s", path.name, aside.name)

    def newest(self) -> str | None:
        """The newest complete checkpoint's name: an attempt that changed it saved some progress."""
        complete = self._complete()
        return complete[-1].name if complete else None

    def any_saved(self) -> bool:
        """Whether a re-run has a checkpoint to resume from (or, if all are damaged, to refuse on)."""
        return bool(self._complete())

    def clear(self) -> None:
        shutil.rmtree(self.directory, ignore_errors=True)

    def _remove_torn_saves(self) -> None:
        # A save killed midway (SIGKILL at the end of a grace period, the OOM killer) leaves
        # its temporary folder, often a partial weights file of many MB; the run is claimed
        # by this process, so they are ours to clear.
        if self.directory.is_dir():
            for torn in self.directory.glob(".epoch-*"):
                if TORN_SAVE.fullmatch(torn.name) and torn.is_dir():
                    shutil.rmtree(torn, ignore_errors=True)

    def _complete(self) -> list[Path]:
        if not self.directory.is_dir():
            return []
        return sorted(p for p in self.directory.glob("epoch-*") if p.is_dir())


def _load_weights(model: keras.Model, path: Path, name: str) -> None:
    """model.load_weights, saying so where Keras leaves the optimizer's state out (it only warns):
    under fp16 a LossScaleOptimizer wraps SGD, so a checkpoint from an attempt of another
    precision (runtime.mixed_precision auto, requeued onto another kind of GPU) holds a state
    of another shape, and the momentum would start from zero unannounced."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model.load_weights(path)
    skipped = [w for w in caught if str(w.message).startswith("Skipping variable loading for optimizer")]
    if skipped:
        log.warning(
            "checkpoint %s: its optimizer state does not fit this attempt's optimizer (fp16's loss scaling wraps "
            "it, so the precision changed to or from fp16): the weights resume, SGD's momentum starts from zero",
            name,
        )
    for warning in caught:  # everything else as it would have been shown
        if warning not in skipped:
            warnings.warn_explicit(warning.message, warning.category, warning.filename, warning.lineno)


def _save_weights(model: keras.Model, path: Path) -> None:
    try:
        model.save_weights(path)
    except BaseException as e:
        # Keras closes its H5 file only on success, and HDF5 may keep it open to the end of the
        # process: its space would stay taken after its folder is removed (a full disk stays full,
        # so not even the failed run's manifest could be written) and h5py would crash at exit,
        # failing to flush it. Emptied, it holds no space, and the flush at close finds some.
        with contextlib.suppress(OSError):
            os.truncate(path, 0)
        traceback.clear_frames(e.__traceback__)
        gc.collect()
        raise
