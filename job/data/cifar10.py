"""CIFAR-10 into memory: from data.path, from Keras's cache, or downloaded into that cache once.

Everything here is untrusted input: the archive is checked against the published
sha256 before any member is touched, and members are extracted by our own code
(regular files and directories only, never outside the staging directory). The cache
is filled by one process at a time (cache_lock.py), over a download that survives a
flaky network (download.py), and the batches are parsed without running code (batch_files.py).
Every failure a user can meet is a DataError that says what was expected; the original
exception stays as its __cause__ for debugging.
"""

from __future__ import annotations

import contextlib
import gzip
import logging
import os
import shutil
import tarfile
import tempfile
import time
import zlib
from pathlib import Path, PurePosixPath

import numpy as np

from job import preemption
from job.atomic import fsync_dir, sha256_file
from job.data import cache_lock
from job.data.batch_files import BATCH_FILES, BATCHES_DIR, find_batches, read_batch_dir, unreadable
from job.data.download import fetch
from job.errors import NO_SPACE_ERRNOS, DataError, JobError, NoSpaceError, storage_fault

log = logging.getLogger("lsjob")

CIFAR10_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
CIFAR10_SHA256 = "6d958be074577803d12ecdefd02955f39262c83c16fe9348329d7fe0b5c001ce"
ARCHIVE_NAME = "cifar-10-python.tar.gz"

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
# What a fill of the cache needs there: the archive and its extraction.
CACHE_NEEDS = "about 350 MB (the 170 MB archive and its 180 MB extraction)"


def load_cifar10(path: Path | None, cache_dir: Path | None) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """x_train uint8 (50000,32,32,3), y_train uint8 (50000,), x_test uint8 (10000,32,32,3), y_test uint8 (10000,)"""
    datasets = datasets_dir(cache_dir)
    try:
        return _load(None if path is None else Path(path).expanduser(), datasets)
    except OSError as e:  # a folder it may not enter, a file it may not read, a full or failing disk
        where = e.filename or datasets
        if e.errno in NO_SPACE_ERRNOS:
            raise _no_space(datasets, e) from e
        raise storage_fault(where, e) or unreadable(where, e) from e


def _load(path: Path | None, datasets: Path):
    if path is None:
        return _load_from_cache(datasets)
    if path.is_dir():
        batches = find_batches(path, complete=False)
        if batches is None:
            hint = f"; it holds {ARCHIVE_NAME}: set data.path to that file" if (path / ARCHIVE_NAME).is_file() else ""
            raise DataError(
                f"data.path {path} holds no CIFAR-10 batches: expected {', '.join(BATCH_FILES)} "
                f"in it or in its {BATCHES_DIR}/ subdirectory{hint}"
            )
        return read_batch_dir(batches)
    if path.is_file():
        verify_sha256(path)
        batches = _cached_batches(datasets)  # extracted already: read without waiting for the lock
        if batches is not None:
            return _read_cached(batches)
        with cache_lock.held(datasets):
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


# ---------------------------------------------------------------------------- the cache


def _cached_batches(datasets: Path) -> Path | None:
    for name in KERAS_EXTRACTED:
        # Only a complete set counts: an extraction Keras was killed in the middle of is skipped.
        batches = find_batches(datasets / name, complete=True)
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
    with cache_lock.held(datasets) as lock:
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
            # Suspended (Slurm's PreemptMode=SUSPEND) for longer than cache_lock.LEFTOVER_AGE_S, this process
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


def download_archive(datasets: Path, rejected: list[Path] = ()) -> Path:
    """Fetch the official archive into `datasets`; DataError when it cannot be had.

    It downloads into a private folder, and the archive is moved to datasets/ only once its
    digest checks out. A download killed half-way, or two tasks filling a cold shared cache
    at once, can then never leave or see a partial archive under the real name. `rejected`:
    archives found in the cache whose digest is wrong, named in the error when the download fails.
    """
    try:
        datasets.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=cache_lock.DOWNLOAD_PREFIX, dir=datasets))
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
        prefix, suffix = cache_lock.EXTRACTION_PREFIX, cache_lock.EXTRACTION_SUFFIX
        return Path(tempfile.mkdtemp(prefix=prefix, suffix=suffix, dir=datasets))
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
    if dest.is_dir() and find_batches(dest, complete=True) is None:
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
        if find_batches(dest, complete=True) is None:
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
