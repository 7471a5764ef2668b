"""CIFAR-10 from the official python archive: checksummed, safely extracted, parsed without running code.

Everything here is untrusted input: the archive is checked against the published
sha256 before any member is touched, members are extracted by our own code
(regular files and directories only, never outside the staging directory), and
the batches are Python pickles read by an unpickler that can build nothing but
numpy arrays. Every failure a user can meet is a DataError that says what was
expected; the original exception stays as its __cause__ for debugging.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import gzip
import http.client
import logging
import os
import pickle
import shutil
import tarfile
import tempfile
import time
import urllib.error
import urllib.request
import zlib
from pathlib import Path, PurePosixPath

import numpy as np

from job import preemption
from job.atomic import fsync_dir, sha256_file
from job.data import CLASS_NAMES
from job.errors import NO_SPACE_ERRNOS, DataError, JobError, NoSpaceError, storage_fault

log = logging.getLogger("lsjob")

CIFAR10_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
CIFAR10_SHA256 = "6d958be074577803d12ecdefd02955f39262c83c16fe9348329d7fe0b5c001ce"
ARCHIVE_NAME = "cifar-10-python.tar.gz"
BATCHES_DIR = "cifar-10-batches-py"
TRAIN_BATCHES = tuple(f"data_batch_{i}" for i in range(1, 6))
TEST_BATCH = "test_batch"
META_FILE = "batches.meta"
ROWS_PER_BATCH = 10000
SIDE, CHANNELS = 32, 3
ROW_BYTES = SIDE * SIDE * CHANNELS
NUM_CLASSES = len(CLASS_NAMES)

# What keras.datasets.cifar10.load_data() and get_file() leave under datasets/: Keras 3.15
# extracts into cifar-10-batches-py-target/ (archive beside it: ..._archive), earlier Keras 3
# releases into cifar-10-batches-py/ (..._archive), get_file(fname="x.tar.gz", extract=True)
# into x_extracted/, and Keras 2 untarred cifar-10-batches-py.tar.gz in place. An extraction
# folder holds the batches directly or in cifar-10-batches-py/.
KERAS_EXTRACTED = (
    BATCHES_DIR,
    "cifar-10-batches-py-target",
    "cifar-10-batches-py_extracted",
    "cifar-10-python_extracted",
)
KERAS_ARCHIVES = (
    ARCHIVE_NAME,
    "cifar-10-batches-py-target_archive",
    "cifar-10-batches-py_archive",
    "cifar-10-batches-py.tar.gz",
)

_CHUNK = 1 << 20  # bytes per read when hashing or copying an archive
# Held while one process fills the cache (download, extraction): the tasks of a sweep that
# start together on a cold shared cache wait for it instead of each fetching 170 MB.
CACHE_LOCK = ".cifar-10.lock"
# Written into the lock file by a holder whose download failed, before it deletes the file: the
# processes that waited on it read it through their own descriptor and fail at once. Trying
# again each, they failed after the same timeout one after another (task n of a sweep after n
# minutes, on compute nodes whose firewall drops the connection). A later start tries itself.
FAILED_MARK = b"lsjob: the download failed: "
LOCK_POLL_S = 1.0
# No byte for this long and a download is given up (exit 3): a server that stops answering
# would otherwise hold every task of a sweep, waiting on the cache lock, until its time limit.
DOWNLOAD_STALL_S = 60.0
DOWNLOAD_LOG_S = 30.0
DOWNLOAD_RESUMES = 5
DOWNLOAD_RESUME_PAUSE_S = 2.0  # before the first resume; doubled before each next one
# What a fill of the cache needs there: the archive and its extraction.
CACHE_NEEDS = "about 350 MB (the 170 MB archive and its 180 MB extraction)"
# A download or extraction folder in which nothing changed for this long was left by a
# process that died (a live download writes every second, or gives up within a minute).
LEFTOVER_AGE_S = 600.0


def load_cifar10(path: Path | None, cache_dir: Path | None) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """x_train uint8 (50000,32,32,3), y_train uint8 (50000,), x_test uint8 (10000,32,32,3), y_test uint8 (10000,)"""
    datasets = datasets_dir(cache_dir)
    try:
        return _load(None if path is None else Path(path).expanduser(), datasets)
    except OSError as e:  # a folder it may not enter, a file it may not read, a full or failing disk
        where = e.filename or datasets
        if e.errno in NO_SPACE_ERRNOS:
            raise _no_space(datasets, e) from e
        raise storage_fault(where, e) or _unreadable(where, e) from e


def _unreadable(path, error: OSError) -> DataError:
    denied = error.errno in (errno.EACCES, errno.EPERM)
    fix = "make it readable" if denied else "check the storage"
    return DataError(
        f"cannot read {path} ({error.strerror or error}) as user {os.getuid()}; {fix}, or point data.path "
        "or data.cache_dir elsewhere"
    )


def _load(path: Path | None, datasets: Path):
    if path is None:
        return _load_from_cache(datasets)
    if path.is_dir():
        batches = _find_batches(path, complete=False)
        if batches is None:
            hint = f"; it holds {ARCHIVE_NAME}: set data.path to that file" if (path / ARCHIVE_NAME).is_file() else ""
            raise DataError(
                f"data.path {path} holds no CIFAR-10 batches: expected {', '.join(_batch_files())} "
                f"in it or in its {BATCHES_DIR}/ subdirectory{hint}"
            )
        return read_batch_dir(batches)
    if path.is_file():
        verify_sha256(path)
        batches = _cached_batches(datasets)  # extracted already: read without waiting for the lock
        if batches is not None:
            return _read_cached(batches)
        with _cache_lock(datasets):
            return _load_archive(path, datasets)
    raise DataError(
        f"data.path {path} does not exist; expected the official {ARCHIVE_NAME} "
        f"or an extracted {BATCHES_DIR}/ directory (or the directory holding it)"
    )


def datasets_dir(cache_dir: Path | None) -> Path:
    """The `datasets` folder of the cache; unset, Keras's own: $KERAS_HOME, else ~/.keras."""
    if cache_dir is None:
        cache_dir = keras_home()
    return Path(cache_dir).expanduser() / "datasets"


def keras_home() -> Path:
    """Keras's own cache folder: $KERAS_HOME, else ~/.keras (/tmp/.keras where home is read-only),
    so a copy that keras.datasets downloaded is found here."""
    if os.environ.get("KERAS_HOME"):
        return Path(os.environ["KERAS_HOME"]).expanduser()
    home = Path.home()
    return (home if os.access(home, os.W_OK) else Path("/tmp")) / ".keras"


def _batch_files() -> tuple[str, ...]:
    return (*TRAIN_BATCHES, TEST_BATCH)


def _find_batches(directory: Path, complete: bool) -> Path | None:
    """`directory` or its cifar-10-batches-py/ if it holds batch files (all of them, if `complete`)."""
    present = all if complete else any
    for candidate in (directory, directory / BATCHES_DIR):
        if present((candidate / name).is_file() for name in _batch_files()):
            return candidate
    return None


# ---------------------------------------------------------------------------- the cache


def _cached_batches(datasets: Path) -> Path | None:
    for name in KERAS_EXTRACTED:
        # Only a complete set counts: an extraction Keras was killed in the middle of is skipped.
        batches = _find_batches(datasets / name, complete=True)
        if batches is not None:
            return batches
    return None


def _read_cached(batches: Path):
    try:
        return read_batch_dir(batches)
    except DataError as e:
        if isinstance(e.__cause__, OSError):  # unreadable (another user's cache?), not damaged
            raise
        raise DataError(f"{e}; the cached copy in {batches} is damaged: delete it to fetch CIFAR-10 again") from e


def _load_from_cache(datasets: Path):
    batches = _cached_batches(datasets)
    if batches is not None:
        return _read_cached(batches)
    with _cache_lock(datasets) as lock:
        batches = _cached_batches(datasets)  # filled while this process waited for the lock
        if batches is not None:
            return _read_cached(batches)
        rejected = []
        for name in KERAS_ARCHIVES:
            archive = datasets / name
            # A download killed midway leaves a short file under the final name; its digest tells.
            if archive.is_file():
                if sha256_of(archive) == CIFAR10_SHA256:
                    return _load_archive(archive, datasets)
                log.warning("%s is not the official %s (its sha256 differs: cut short?); fetching it again",
                            archive, ARCHIVE_NAME)  # fmt: skip
                rejected.append(archive)
        archive = None
        try:
            archive = download_archive(datasets, rejected)
            return _load_archive(archive, datasets)
        except (DataError, FileNotFoundError) as e:
            # Suspended (Slurm's PreemptMode=SUSPEND) for longer than LEFTOVER_AGE_S, this process
            # was gone around, and its download or extraction folder deleted as a dead process's
            # by a later one; the process that went around has filled the cache meanwhile.
            batches = _cached_batches(datasets)
            if batches is None:
                if archive is None and isinstance(e, DataError):  # the download's own failure: waiters' too
                    lock.download_failed(str(e))
                raise
            log.warning("this process's fill of the CIFAR-10 cache failed, but another filled it meanwhile; "
                        "reading %s", batches)  # fmt: skip
            return _read_cached(batches)


@contextlib.contextmanager
def _cache_lock(datasets: Path):
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
    except OSError as e:  # download_archive says what is wrong with the folder, if it comes to that
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
        return [*datasets.glob(".download.*"), *datasets.glob(f".{BATCHES_DIR}.*.partial")]
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
    as a dead process's, reads the cache the other filled (_load_from_cache).
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


def download_archive(datasets: Path, rejected: list[Path] = ()) -> Path:
    """Fetch the official archive into `datasets`; DataError when it cannot be had.

    It downloads into a private folder, and the archive is moved to datasets/ only once its
    digest checks out. A download killed half-way, or two tasks filling a cold shared cache
    at once, can then never leave or see a partial archive under the real name. `rejected`:
    archives found in the cache whose digest is wrong, named in the error when the download fails.
    """
    try:
        datasets.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=".download.", dir=datasets))
    except OSError as e:
        if e.errno in NO_SPACE_ERRNOS:  # an inode quota, often
            raise _no_space(datasets, e) from e
        raise storage_fault(datasets, e) or DataError(
            f"cannot write to the dataset cache {datasets} ({e.strerror}); set data.cache_dir to a writable "
            f"folder, or download {ARCHIVE_NAME} yourself and set data.path to it"
        ) from None
    log.info("downloading CIFAR-10 from %s into %s", CIFAR10_URL, datasets)
    try:
        fetched = staging / ARCHIVE_NAME
        fetch(CIFAR10_URL, fetched)
        if (digest := sha256_of(fetched)) != CIFAR10_SHA256:
            # Said as a download's failure: verify_sha256's names the private copy, gone by now, and data.path.
            raise ValueError(
                f"what it sent, {fetched.stat().st_size:,} bytes, is not the official archive: its sha256 is {digest}, "
                f"expected {CIFAR10_SHA256} (a proxy's or portal's page, or another file)"
            )
        os.replace(fetched, datasets / ARCHIVE_NAME)
    except JobError:  # a stop request
        raise
    except Exception as e:
        preemption.check()  # a SIGTERM during a stall ends as the timeout does: a stop, not a failure
        if isinstance(e, OSError) and e.errno in NO_SPACE_ERRNOS:
            raise _no_space(datasets, e) from e
        if rejected:
            bad = ", ".join(str(p) for p in rejected)
            where = f"replace {bad} with it: that copy is not the official archive (its sha256 differs; cut short?)"
        else:
            where = f"put it at {datasets / ARCHIVE_NAME}"
        raise DataError(
            f"could not download CIFAR-10 from {CIFAR10_URL} ({e}); download {ARCHIVE_NAME} yourself "
            f"and set data.path to it, or {where}"
        ) from e
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return datasets / ARCHIVE_NAME


def fetch(url: str, dest: Path) -> None:
    """Stream `url` into the new file `dest`, checking for a stop request (SIGTERM) between
    chunks. Ours, not Keras's get_file: that has no timeout (a stalled server hangs every task
    waiting on the cache lock), cannot be stopped before it ends, resumes nothing, and draws a
    progress bar into batch logs.

    Once bytes have arrived, a connection that breaks off, stalls or is refused is resumed where
    the file stops (an HTTP Range request), up to DOWNLOAD_RESUMES times, a pause growing between
    them: 170 MB over a long path often loses one. A server that sends nothing at all fails the
    download at once, so waiting tasks are not held.
    """
    with open(dest, "xb") as out:
        validator = None
        for resume in range(DOWNLOAD_RESUMES + 1):
            try:
                _receive(url, out, validator)
                return
            except _Dropped as dropped:
                if not out.tell() or resume == DOWNLOAD_RESUMES:
                    raise dropped.error from None
                validator = dropped.validator
                pause = DOWNLOAD_RESUME_PAUSE_S * 2**resume
                log.warning("the download broke off at %.0f MB (%s); resuming it there in %.0f s",
                            out.tell() / 1e6, dropped.error, pause)  # fmt: skip
                _pause(pause)


def _pause(seconds: float) -> None:
    """Sleep, but stop at once when a stop (SIGTERM) is asked for."""
    until = time.monotonic() + seconds
    while (left := until - time.monotonic()) > 0:
        preemption.check()
        time.sleep(min(left, 0.5))
    preemption.check()


class _Dropped(Exception):
    """The connection failed; the bytes written so far stand."""

    def __init__(self, error: Exception, validator: str | None):
        super().__init__(str(error))
        self.error, self.validator = error, validator


def _receive(url: str, out, validator: str | None) -> None:
    """One request, appended to `out` from where it ends. Only the network's failures become
    _Dropped; the file's own (a full disk) end the download as they are."""
    offset = out.tell()
    headers = {}
    if offset:
        headers["Range"] = f"bytes={offset}-"
        if validator:  # the same file, or the server sends it whole (200) rather than splice two versions
            headers["If-Range"] = validator
    try:
        response = urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=DOWNLOAD_STALL_S)
    except urllib.error.HTTPError as e:
        # Nothing left to send: the connection broke just after the last byte.
        if offset and e.code == 416 and e.headers.get("Content-Range", "") == f"bytes */{offset}":
            return
        raise _Dropped(e, validator) from e
    except (OSError, http.client.HTTPException) as e:
        raise _Dropped(e, validator) from e
    with response:
        if offset and response.status != 206:  # Range ignored, or the file changed: it comes whole
            out.seek(0)
            out.truncate()
            offset, validator = 0, None
        elif offset and not response.headers.get("Content-Range", "").startswith(f"bytes {offset}-"):
            error = OSError(f"the server resumed at {response.headers.get('Content-Range')!r}, not at byte {offset}")
            raise _Dropped(error, validator)
        # The first response's, or a whole file's anew: a later resume must continue this one.
        validator = validator or response.headers.get("ETag") or response.headers.get("Last-Modified")
        length = int(response.headers.get("Content-Length") or 0)
        size = offset + length if length else 0
        reported = time.monotonic()
        while True:
            try:
                # read1: what has arrived, up to 64 KB; read() would wait for all 64 KB on a slow link.
                chunk = response.read1(1 << 16)
            except (OSError, http.client.HTTPException) as e:
                raise _Dropped(e, validator) from e
            if not chunk:
                break
            out.write(chunk)
            preemption.check()
            if time.monotonic() - reported >= DOWNLOAD_LOG_S:
                reported = time.monotonic()
                log.info("downloaded %.0f of %s MB", out.tell() / 1e6, f"{size / 1e6:.0f}" if size else "?")
    if size and out.tell() != size:
        raise _Dropped(OSError(f"the connection closed after {out.tell()} of {size} bytes"), validator)


def _no_space(datasets: Path, error: OSError) -> NoSpaceError:
    return NoSpaceError(
        f"ran out of space filling the dataset cache {datasets} ({error.strerror or error}); CIFAR-10 needs "
        f"{CACHE_NEEDS} there: free space, or set data.cache_dir to a folder with room, and re-run"
    )


def _load_archive(archive: Path, datasets: Path):
    """Arrays from a verified archive, by way of the cache: reuse its extraction or make one.
    Call it holding the cache lock."""
    batches = _cached_batches(datasets)
    if batches is not None:
        return _read_cached(batches)
    staging = _make_staging(datasets)
    if staging is None:
        return _extract_to_temp(archive, datasets)
    log.info("extracting %s into %s", archive, datasets)
    try:
        batches = safe_extract(archive, staging)
        # Validated before the rename, so whatever is published is known good.
        arrays = read_batch_dir(batches)
        _publish(batches, datasets / BATCHES_DIR)
        return arrays
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _make_staging(datasets: Path) -> Path | None:
    """A fresh folder beside the published extraction (same filesystem, so the rename is atomic).

    Its name is not one the cache lookup knows: an extraction cut short never looks complete.
    None when the cache cannot be written.
    """
    try:
        datasets.mkdir(parents=True, exist_ok=True)
        return Path(tempfile.mkdtemp(prefix=f".{BATCHES_DIR}.", suffix=".partial", dir=datasets))
    except OSError:
        return None


def _extract_to_temp(archive: Path, datasets: Path):
    # Extract to a throwaway folder rather than stream from the tar: one extraction path to trust.
    log.info("cache %s is not writable; extracting CIFAR-10 to a temporary folder", datasets)
    try:
        tmp = tempfile.TemporaryDirectory(prefix="cifar-10-")
    except OSError as e:
        raise DataError(
            f"cannot extract {archive}: neither {datasets} nor the temporary folder is writable ({e}); "
            "set data.cache_dir to a writable folder"
        ) from e
    with tmp:
        return read_batch_dir(safe_extract(archive, Path(tmp.name)))


def _publish(batches: Path, dest: Path) -> None:
    # An incomplete folder under the final name (an extraction cut short by an older Keras)
    # would block the rename on every run: moved aside, never deleted, since it is not ours.
    if dest.is_dir() and _find_batches(dest, complete=True) is None:
        aside = dest.with_name(f"{dest.name}.incomplete-{time.strftime('%Y%m%dT%H%M%S')}-{os.getpid()}")
        with contextlib.suppress(OSError):
            os.rename(dest, aside)
            log.warning("moved %s aside to %s: an incomplete extraction, safe to delete", dest, aside)
    try:
        os.rename(batches, dest)
    except OSError as e:
        # Another process may have published first (where the cache could not be locked);
        # either way this run has its arrays, and a cache that could not be updated only
        # costs the next run an extraction.
        if _find_batches(dest, complete=True) is None:
            log.warning("could not put the extracted CIFAR-10 at %s (%s); it will be extracted again", dest, e)
        return
    try:
        fsync_dir(dest.parent)
    except OSError as e:  # the arrays are in hand; at worst a crash now costs the next run an extraction
        log.warning("could not sync %s after publishing CIFAR-10 there (%s)", dest.parent, e)


# ---------------------------------------------------------------------------- the archive


def sha256_of(path: Path) -> str:
    try:
        return sha256_file(path, _CHUNK)
    except OSError as e:
        raise DataError(f"cannot read {path}: {e}") from e


def verify_sha256(path: Path) -> None:
    actual = sha256_of(path)
    if actual != CIFAR10_SHA256:
        raise DataError(
            f"{path} is not the official {ARCHIVE_NAME}: its sha256 is {actual}, expected {CIFAR10_SHA256} "
            f"(a partial download, or another file?); data.path takes that archive "
            f"or an extracted {BATCHES_DIR}/ directory"
        )


def safe_extract(tar_path: Path, dest_dir: Path) -> Path:
    """Extract the archive's cifar-10-batches-py/ into `dest_dir`; return that folder.

    Any member that is not a regular file or directory, or whose name could land
    outside dest_dir/cifar-10-batches-py/, refuses the whole archive.
    """
    dest_dir = Path(dest_dir)
    try:
        with tarfile.open(tar_path, "r:gz") as tar:
            for member in tar:
                target = _member_target(member, dest_dir, tar_path)
                if member.isdir():
                    target.mkdir(parents=True, exist_ok=True)
                else:
                    _write_member(tar, member, target)
    except (tarfile.TarError, EOFError, zlib.error, gzip.BadGzipFile) as e:
        raise DataError(f"{tar_path} is not a readable {ARCHIVE_NAME} (truncated or corrupt: {e})") from e
    except OSError as e:
        if e.errno in NO_SPACE_ERRNOS:
            raise _no_space(dest_dir, e) from e
        # An I/O error or a stale handle is the cache's storage failing, not the data (exit 1, not 3).
        raise storage_fault(dest_dir, e) or DataError(f"could not extract {tar_path} into {dest_dir}: {e}") from e
    batches = dest_dir / BATCHES_DIR
    if not batches.is_dir():
        raise DataError(f"{tar_path} has no {BATCHES_DIR}/ folder")
    return batches


def _member_target(member: tarfile.TarInfo, dest_dir: Path, tar_path: Path) -> Path:
    def refuse(why: str) -> DataError:
        return DataError(f"{tar_path} is refused: member {member.name!r} {why}")

    if not (member.isreg() or member.isdir()):
        raise refuse("is not a regular file or directory (a link or device)")
    name = PurePosixPath(member.name)
    if name.is_absolute():
        raise refuse("has an absolute path")
    if ".." in name.parts:
        raise refuse("climbs out with '..'")
    if not name.parts or name.parts[0] != BATCHES_DIR:
        raise refuse(f"lies outside {BATCHES_DIR}/")
    target = dest_dir.joinpath(*name.parts)
    # Names alone decide safety since nothing we create is a link; this only guards that reasoning.
    if not target.resolve().is_relative_to(dest_dir.resolve()):
        raise refuse("resolves outside the extraction folder")
    if member.isreg() and target.exists():
        raise refuse("appears twice")
    return target


def _write_member(tar: tarfile.TarFile, member: tarfile.TarInfo, target: Path) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    source = tar.extractfile(member)
    with open(target, "xb") as out:
        shutil.copyfileobj(source, out, _CHUNK)
        # Durable before the folder is renamed into place, or a crash could publish empty files.
        out.flush()
        os.fsync(out.fileno())


# ---------------------------------------------------------------------------- the batches


def _numpy_reconstruct():
    # Whatever numpy calls it today; pickles name it numpy.core (numpy 1) or numpy._core (numpy 2).
    return np.empty(0, dtype=np.uint8).__reduce__()[0]


# The only globals the official batches reference: an ndarray and its dtype. Nothing
# else can be called while loading, so a hostile pickle fails before any code runs.
_ALLOWED_GLOBALS = {
    ("numpy.core.multiarray", "_reconstruct"): _numpy_reconstruct(),
    ("numpy._core.multiarray", "_reconstruct"): _numpy_reconstruct(),
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
}


class RestrictedUnpickler(pickle.Unpickler):
    """Unpickles plain data and uint8-style numpy arrays; refuses every other global."""

    def find_class(self, module: str, name: str):
        try:
            return _ALLOWED_GLOBALS[(module, name)]
        except KeyError:
            raise pickle.UnpicklingError(f"refusing to load global {module}.{name}") from None


def _unpickle(path: Path):
    try:
        f = open(path, "rb")  # apart: a file that cannot be opened is unreadable, not damaged
    except OSError as e:
        raise _unreadable(path, e) from e
    try:
        with f:
            # The batches were pickled by Python 2: its strings are bytes here, as they were there.
            return RestrictedUnpickler(f, encoding="bytes").load()
    except Exception as e:
        raise DataError(f"{path} is not a valid CIFAR-10 batch file: {type(e).__name__}: {e}") from e


def read_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """One batch file: images uint8 (ROWS_PER_BATCH, 32, 32, 3) HWC, labels uint8 (ROWS_PER_BATCH,)."""
    batch = _unpickle(path)
    if not isinstance(batch, dict) or b"data" not in batch or b"labels" not in batch:
        raise DataError(f"{path} is not a CIFAR-10 batch: expected a dict with b'data' and b'labels'")
    data = batch[b"data"]
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.shape != (ROWS_PER_BATCH, ROW_BYTES):
        got = f"{data.dtype} {data.shape}" if isinstance(data, np.ndarray) else type(data).__name__
        raise DataError(f"{path}: data must be a uint8 array ({ROWS_PER_BATCH}, {ROW_BYTES}), got {got}")
    labels = _labels(batch[b"labels"], path)
    # Rows are stored channel-major (1024 red, 1024 green, 1024 blue); the project wants HWC.
    images = np.ascontiguousarray(data.reshape(-1, CHANNELS, SIDE, SIDE).transpose(0, 2, 3, 1))
    return images, labels


def _labels(raw, path: Path) -> np.ndarray:
    if not isinstance(raw, (list, np.ndarray)):
        raise DataError(f"{path}: labels must be a list of ints, got {type(raw).__name__}")
    try:
        labels = np.asarray(raw)
    except (ValueError, TypeError, OverflowError) as e:
        raise DataError(f"{path}: labels are not a flat list of ints ({e})") from e
    if labels.shape != (ROWS_PER_BATCH,) or not np.issubdtype(labels.dtype, np.integer):
        raise DataError(f"{path}: expected {ROWS_PER_BATCH} integer labels, got {labels.dtype} {labels.shape}")
    if labels.min() < 0 or labels.max() >= NUM_CLASSES:
        raise DataError(f"{path}: labels must lie in 0..{NUM_CLASSES - 1}, found {labels.min()}..{labels.max()}")
    return labels.astype(np.uint8)


def _check_meta(path: Path) -> None:
    """batches.meta, where present, must list CIFAR-10's classes in the project's label order."""
    if not path.is_file():
        return
    meta = _unpickle(path)
    names = meta.get(b"label_names") if isinstance(meta, dict) else None
    if isinstance(names, list) and all(isinstance(n, bytes) for n in names):
        # Python 2 pickled them as byte strings.
        names = [n.decode("latin-1") for n in names]
    if not isinstance(names, list) or names != list(CLASS_NAMES):
        raise DataError(f"{path}: label_names are {names!r}, expected CIFAR-10's {list(CLASS_NAMES)}")


def read_batch_dir(directory: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The arrays from an extracted cifar-10-batches-py/ folder."""
    directory = Path(directory)
    missing = [name for name in _batch_files() if not (directory / name).is_file()]
    if missing:
        raise DataError(f"{directory} is missing the CIFAR-10 batch file(s) {', '.join(missing)}")
    _check_meta(directory / META_FILE)
    # Filled batch by batch: only one batch's parse is alive beside the final arrays.
    rows = ROWS_PER_BATCH
    x_train = np.empty((len(TRAIN_BATCHES) * rows, SIDE, SIDE, CHANNELS), dtype=np.uint8)
    y_train = np.empty((len(TRAIN_BATCHES) * rows,), dtype=np.uint8)
    for i, name in enumerate(TRAIN_BATCHES):
        x_train[i * rows : (i + 1) * rows], y_train[i * rows : (i + 1) * rows] = read_batch(directory / name)
    x_test, y_test = read_batch(directory / TEST_BATCH)
    return x_train, y_train, x_test, y_test
