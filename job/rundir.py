"""The run directory `<root>/<run>/`: who owns it, what state it is in, its manifest.

A run directory is claimed with an exclusive lock held for the life of the
process (flock: the kernel drops it when the process dies, so a crashed task
never blocks its own resubmission). Its `manifest.json` says whether the run is
running, completed, failed or interrupted, and which spec it belongs to.
"""

from __future__ import annotations

import datetime as dt
import errno
import fcntl
import json
import logging
import os
import re
import shutil
import socket
from pathlib import Path

from job import atomic
from job.errors import RunBusyError, SpecError, storage_fault

log = logging.getLogger("lsjob")
LOCK = ".lock"
MANIFEST = "manifest.json"
# What a claimed run directory may hold before its manifest is written: a kill
# mid-write also leaves job.atomic's temporary file of spec.yaml or manifest.json.
PRE_MANIFEST = {LOCK, "run.log", "spec.yaml"}
PRE_MANIFEST_TMP = re.compile(r"\.(spec\.yaml|manifest\.json)\.[^/]+\.tmp")
ATOMIC_TMP = re.compile(r"\..+\.[^./]+\.tmp(\.[A-Za-z0-9]+)?")  # job.atomic: .<name>.<random>.tmp<suffix>
STAGING_TMP = re.compile(re.escape(atomic.STAGING_PREFIX) + r"[^./]+\.tmp")


def now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")


def check_writable(root: Path, create: bool = True) -> None:
    """Fail before training, not after 70 epochs, when results cannot be written. With
    create=False nothing is made: the nearest existing folder must let the root be created."""
    if not create:
        existing = next((p for p in [root, *root.absolute().parents] if p.exists()), Path("/"))
        if not existing.is_dir():
            raise SpecError(
                f"cannot create the results root {root}: {existing} is not a directory; "
                "set output.root to a writable directory"
            )
        if not os.access(existing, os.W_OK | os.X_OK):
            where = "" if existing == root else f" ({existing} cannot hold it)"
            raise SpecError(f"the results root {root} is not writable{where}; set output.root to a writable directory")
        return
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise storage_fault(root, e) or SpecError(
            f"cannot create the results root {root}: {e.strerror}; set output.root to a writable directory"
        ) from None
    if not os.access(root, os.W_OK | os.X_OK):
        raise SpecError(f"the results root {root} is not writable; set output.root to a writable directory")


class RunDir:
    def __init__(self, path: Path):
        self.path = Path(path)
        self._lock_fd: int | None = None

    @property
    def manifest_path(self) -> Path:
        return self.path / MANIFEST

    def claim(self) -> None:
        """Take the run's lock, or raise RunBusyError naming the process that holds it."""
        check_writable(self.path.parent)
        if self.path.is_dir() and self.is_foreign():
            raise SpecError(
                f"{self.path} exists and is not an lsjob run directory; refusing to write into it. "
                "Choose another output.run or output.root"
            )
        self.path.mkdir(exist_ok=True)
        self.lock()

    def lock(self) -> None:
        """Take the lock of an existing run directory (claim's last step; `lsjob report`
        takes it alone: rewriting a run's reports needs only that folder)."""
        fd = os.open(self.path / LOCK, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 512, 0).decode(errors="replace").strip() or "another process"
            os.close(fd)
            raise RunBusyError(
                f"{self.path} is in use by {holder}; a second task for the same run must not write into it. "
                "Wait for it to finish, or stop it first."
            ) from None
        except OSError as e:
            if e.errno not in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL):
                raise
            log.warning("%s: this filesystem does not support locks; duplicate tasks are not detected", self.path)
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid {os.getpid()} on {socket.gethostname()} since {now()}\n".encode(), 0)
        self._lock_fd = fd
        self._remove_torn_writes()

    def _remove_torn_writes(self) -> None:
        # job.atomic's temporary files of a process killed mid-write; ours alone to clear,
        # since we hold the lock. The files they were replacing are untouched.
        for leftover in self.path.glob(".*.tmp*"):
            if STAGING_TMP.fullmatch(leftover.name) and leftover.is_dir() and not leftover.is_symlink():
                shutil.rmtree(leftover, ignore_errors=True)  # atomic.file_set's, of a report set
            elif ATOMIC_TMP.fullmatch(leftover.name) and leftover.is_file():
                leftover.unlink(missing_ok=True)

    def release(self) -> None:
        if self._lock_fd is not None:
            os.close(self._lock_fd)  # closing drops the flock
            self._lock_fd = None

    def read_manifest(self, advice: str = "move it away or pass --force to start the run afresh") -> dict | None:
        """The manifest; None when there is none. A damaged one is a SpecError ending in `advice`."""
        try:
            manifest = json.loads(self.manifest_path.read_text())
        except (FileNotFoundError, NotADirectoryError):  # no run there (a file in the path: no root either)
            return None
        except (OSError, ValueError) as e:
            fault = storage_fault(self.manifest_path, e) if isinstance(e, OSError) else None
            raise fault or SpecError(
                f"{self.manifest_path} is unreadable ({e}); the run directory is damaged: {advice}"
            ) from None
        if not isinstance(manifest, dict):
            raise SpecError(
                f"{self.manifest_path} holds a JSON {type(manifest).__name__}, not an object; "
                f"the run directory is damaged: {advice}"
            )
        return manifest

    def write_manifest(self, manifest: dict) -> None:
        atomic.write_json(self.manifest_path, manifest)

    def is_foreign(self) -> bool:
        """A non-empty directory that lsjob did not create: never write into it."""
        names = {p.name for p in self.path.iterdir() if not PRE_MANIFEST_TMP.fullmatch(p.name)}
        return MANIFEST not in names and not names <= PRE_MANIFEST

    def wipe(self) -> None:
        """--force: discard everything of an earlier run, keeping our lock. The spec and then the
        manifest go last: killed midway, the folder still reads as a run of ours, which --force
        can finish discarding, rather than as a foreign folder no command will write into."""
        last = ("spec.yaml", MANIFEST)
        for p in sorted(self.path.iterdir(), key=lambda p: last.index(p.name) + 1 if p.name in last else 0):
            if p.name == LOCK:
                continue
            if p.is_dir() and not p.is_symlink():
                shutil.rmtree(p)
            else:
                p.unlink()
