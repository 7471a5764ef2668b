"""One process at a time fills the dataset cache: the tasks of a sweep that start together on a
cold shared cache wait for the one downloading instead of each fetching 170 MB.

The lock survives what clusters do to a batch job: a holder killed (the kernel drops its
flock), a holder whose download failed (its waiters fail with it at once), a holder on a node
that went down or a suspended one (gone around once it has written nothing for a while), and
filesystems without locks (each process goes on alone). It also clears the download and
extraction folders that killed processes left behind.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import logging
import os
import shutil
import tempfile
import time
from pathlib import Path

from job import preemption
from job.data.batch_files import BATCHES_DIR
from job.errors import DataError

log = logging.getLogger("lsjob")

CACHE_LOCK = ".cifar-10.lock"
# How the folders a fill works in are named (cifar10 makes them): a holder's progress is
# watched in them (_fill_activity), and those a dead process left are deleted (_clear_leftovers).
DOWNLOAD_PREFIX = ".download."
EXTRACTION_PREFIX, EXTRACTION_SUFFIX = f".{BATCHES_DIR}.", ".partial"
# Written into the lock file by a holder whose download failed, before it deletes the file: the
# processes that waited on it read it through their own descriptor and fail at once. Trying
# again each, they failed after the same timeout one after another (task n of a sweep after n
# minutes, on compute nodes whose firewall drops the connection). A later start tries itself.
FAILED_MARK = b"lsjob: the download failed: "
LOCK_POLL_S = 1.0
# A download or extraction folder in which nothing changed for this long was left by a
# process that died (a live download writes every second, or gives up within a minute).
LEFTOVER_AGE_S = 600.0


@contextlib.contextmanager
def held(datasets: Path):
    """One process at a time fills the cache; the others wait, then find its work done.

    A flock on datasets/.cifar-10.lock, so the kernel drops it when its holder dies; the
    holder deletes the file as it lets go, so the cache holds nothing of it afterwards.
    Where no lock can be had (a cache that cannot be written, a filesystem without locks)
    each process goes on alone: correct, only not shared. A holder that stopped writing is
    gone around (_LockWait). A stop (SIGTERM) while waiting stops the run at once.
    """
    lock = datasets / CACHE_LOCK
    went_around = False
    try:
        datasets.mkdir(parents=True, exist_ok=True)
        fd, went_around = _acquire(lock)
    except OSError as e:  # cifar10.download_archive says what is wrong with the folder, if it comes to that
        log.warning("cannot lock the dataset cache %s (%s); going on without the lock", datasets, e)
        fd = None
    if not went_around:  # a holder gone around may be suspended, its folders still in use
        _clear_leftovers(datasets)
    try:
        yield _Held(fd)
    finally:
        if fd is not None:
            with contextlib.suppress(OSError):
                if _names(lock, fd):  # not a newer holder's file, where this one was gone around meanwhile
                    os.unlink(lock)  # still held: a process waiting on this file will see it gone and retry
            os.close(fd)  # closing drops the flock


class _Held:
    """The cache lock, as its holder sees it."""

    def __init__(self, fd: int | None):
        self.fd = fd

    def download_failed(self, message: str) -> None:
        """Leave the reason for the processes waiting on this lock file (see FAILED_MARK)."""
        if self.fd is not None:
            with contextlib.suppress(OSError):  # they then try for themselves, as before
                os.pwrite(self.fd, FAILED_MARK + message.encode(), 0)


def _failure_left_in(fd: int) -> str | None:
    """The reason a holder of this lock file gave for its failed download, if it gave one."""
    try:
        text = os.pread(fd, 4096, 0)
    except OSError:  # NFS: a file its holder deleted can be stale here; this process tries itself
        return None
    return text[len(FAILED_MARK) :].decode("utf-8", "replace") if text.startswith(FAILED_MARK) else None


def _fill_activity(datasets: Path) -> list[tuple[str, int, int]]:
    """Name, mtime and size of everything in the download and extraction folders: a live fill
    changes them every second or so (a download that stalls gives up within a minute)."""
    seen = []
    for folder in _fill_folders(datasets):
        for path in [folder, *folder.rglob("*")]:
            with contextlib.suppress(OSError):  # gone meanwhile: the next look sees that
                stat = path.lstat()
                seen.append((str(path), stat.st_mtime_ns, stat.st_size))
    return sorted(seen)


def _fill_folders(datasets: Path) -> list[Path]:
    try:
        return [*datasets.glob(f"{DOWNLOAD_PREFIX}*"), *datasets.glob(f"{EXTRACTION_PREFIX}*{EXTRACTION_SUFFIX}")]
    except OSError:
        return []


def _clear_leftovers(datasets: Path) -> None:
    """Delete the download and extraction folders of processes that died (SIGKILL) in them:
    170-180 MB each, never reused. One still in use is always younger than LEFTOVER_AGE_S."""
    try:
        # "Now" by the storage's clock, which set the folders' times, not this node's.
        with tempfile.NamedTemporaryFile(prefix=".clock.", dir=datasets) as probe:
            now = os.fstat(probe.fileno()).st_mtime
        leftovers = _fill_folders(datasets)
    except OSError:
        return  # a cache this process cannot write: not its to clean
    for folder in leftovers:
        try:
            newest = max(p.lstat().st_mtime for p in [folder, *folder.rglob("*")])
        except OSError:
            continue  # gone meanwhile, or not ours to look into
        if now - newest > LEFTOVER_AGE_S:
            shutil.rmtree(folder, ignore_errors=True)
            if not folder.exists():
                log.info("deleted %s, left by a process that died filling the cache", folder)


def _acquire(lock: Path) -> tuple[int | None, bool]:
    """An open descriptor of `lock`, flocked (None where the filesystem has no locks), and
    whether a holder that stopped writing was gone around (see _LockWait)."""
    wait = _LockWait(lock)
    while True:
        fd = os.open(lock, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o666)  # a planted link: no file made there
        try:
            held = wait.take(fd)
        except OSError as e:  # e.g. ENOLCK on an NFS mount without a lock manager
            with contextlib.suppress(OSError):
                if _names(lock, fd):  # ours, not a file another process made meanwhile
                    os.unlink(lock)
            os.close(fd)
            log.warning("cannot lock the dataset cache %s (%s); going on without the lock", lock.parent, e)
            return None, False
        except BaseException:
            os.close(fd)
            raise
        if held is None:  # a stalled holder's lock file that this process may not remove
            os.close(fd)
            log.warning("cannot remove %s; going on without the lock", lock)
            return None, True
        # Locked; but if the holder before us deleted the file as it let go, this lock is on
        # a name no one else will open: start again on the file now there. Likewise when the
        # file was replaced while this process waited.
        if held and _names(lock, fd):
            return fd, wait.went_around
        failure = _failure_left_in(fd)
        os.close(fd)
        if failure is not None:
            raise DataError(f"the download of the process this one waited for failed: {failure}")


class _LockWait:
    """Waiting for the cache lock on one file after another, saying so once.

    A holder that writes nothing to the cache for LEFTOVER_AGE_S has stalled: it died on a node
    that went down (a shared filesystem can keep its lock: NFSv3 until the node starts again)
    or it is suspended. Waiting on, every task of a sweep would sit until its time limit, so its
    lock file is removed and the lock taken on a new one: the tasks waiting on the old file move
    to the new one, and none waits on it again. A fill beside a suspended one is safe: neither
    shows a partial file under a final name, and the suspended one, its folders deleted meanwhile
    as a dead process's, reads the cache the other filled (cifar10._load_from_cache).
    """

    def __init__(self, lock: Path):
        self.lock = lock
        self.went_around = False
        self._said = False
        self._activity: list | None = None
        self._changed = time.monotonic()

    def take(self, fd: int) -> bool | None:
        """True once `fd` is locked; False once the lock file is another (or gone), so that the
        caller opens the one there now; None for a stalled holder whose file cannot be removed."""
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return True
            except BlockingIOError:
                pass
            except OSError as e:
                if e.errno != errno.ESTALE:
                    raise
                # NFSv3: the holder removed the file as it let go, and the server deleted it under this
                # handle. Not a filesystem without locks: wait on the file there now, as for any replaced one.
                self._activity, self._changed = None, time.monotonic()
                return False
            if not self._said:
                log.info("another process is filling the CIFAR-10 cache %s; waiting for it", self.lock.parent)
                self._said = True
            preemption.check()
            if not _names(self.lock, fd):
                self._activity, self._changed = None, time.monotonic()  # a new holder gets its own time
                return False
            if (seen := _fill_activity(self.lock.parent)) != self._activity:
                self._activity, self._changed = seen, time.monotonic()
            elif time.monotonic() - self._changed > LEFTOVER_AGE_S:
                return self._go_around(fd)
            time.sleep(LOCK_POLL_S)

    def _go_around(self, fd: int) -> bool | None:
        self._activity, self._changed = None, time.monotonic()
        if not _names(self.lock, fd):  # another waiter went around it just now: wait on its new file
            return False
        log.warning(
            "the CIFAR-10 cache %s is locked, but nothing has been written to it for %d s: its holder died on a "
            "node that went down, leaving its lock on the file server, or it is suspended; going around it",
            self.lock.parent, LEFTOVER_AGE_S,
        )  # fmt: skip
        self.went_around = True
        try:
            os.unlink(self.lock)
        except FileNotFoundError:
            pass
        except OSError:
            return None
        return False


def _names(lock: Path, fd: int) -> bool:
    """Whether the path `lock` names the file open as `fd`; not where the file is gone, or its
    handle stale (NFSv3: deleted on the server under it)."""
    try:
        return os.stat(lock).st_ino == os.fstat(fd).st_ino
    except OSError as e:
        if e.errno in (errno.ENOENT, errno.ESTALE):
            return False
        raise
