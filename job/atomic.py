"""Atomic file writes: a reader (or a crash) never sees a half-written file.

Each write goes to a temporary file in the same directory, is fsynced, then
renamed over the target; os.replace is atomic on POSIX within one filesystem.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import re
import shutil
import stat
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

# mkstemp creates 0600 files; results should get the usual permissions for the umask.
_UMASK = os.umask(0)
os.umask(_UMASK)
STAGING_PREFIX = ".staging."
# file_set's staging folder, as mkdtemp names it (8 random characters: a user's own .staging.old.tmp
# folder is never taken for one and deleted).
STAGING_TMP = re.compile(re.escape(STAGING_PREFIX) + r"[a-z0-9_]{8}\.tmp")
# atomic_path's and write_once's temporary files, as mkstemp names them: .<name>.<8 random>.tmp<suffix>.
# The 8 random characters keep a user's own hidden file (.notes.old.tmp) out.
WRITE_TMP = re.compile(r"\..+\.[a-z0-9_]{8}\.tmp(\.[A-Za-z0-9]+)?")


def temporary_folder(prefix: str, directory: Path) -> Path:
    """A new folder in `directory`, to be renamed into place once filled. mkdtemp makes it 0700,
    which would stay with it: a team's shared results folder could not be read or resumed by the
    others. It gets the umask's permissions instead, keeping the setgid bit a group folder gives."""
    folder = Path(tempfile.mkdtemp(prefix=prefix, dir=directory))
    os.chmod(folder, (0o777 & ~_UMASK) | (folder.stat().st_mode & stat.S_ISGID))
    return folder


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, suffix: str = "") -> Iterator[Path]:
    """Yield a temporary path beside `path`; on success it replaces `path`.

    `suffix` keeps an extension that writers insist on (Keras wants `.keras`,
    matplotlib infers the format from it).
    """
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=f".tmp{suffix}", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    os.chmod(tmp_path, 0o666 & ~_UMASK)
    try:
        yield tmp_path
        with open(tmp_path, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp_path, path)
    finally:
        tmp_path.unlink(missing_ok=True)
    fsync_dir(path.parent)


class FileSet:
    """Files written into a staging folder, to replace their namesakes together."""

    def __init__(self, staging: Path):
        self.staging = staging
        self.names: list[str] = []

    def path(self, name: str) -> Path:
        """Where to write `name`; files are put in place in the order first asked for."""
        if name not in self.names:
            self.names.append(name)
        return self.staging / name


@contextlib.contextmanager
def file_set(folder: str | os.PathLike) -> Iterator[FileSet]:
    """Write several files as one set: on success each replaces its namesake in `folder`;
    on any failure (a full disk halfway through) none does and the old set stays whole.
    One atomic write per file would leave old and new files mixed, describing different
    results. The renames themselves need no space, so once every file is written the set
    goes in place. A hidden `.staging.*.tmp` folder is left only by a killed process
    (clear_abandoned_staging, or a run's own start, removes it later)."""
    folder = Path(folder)
    staging = Path(tempfile.mkdtemp(prefix=STAGING_PREFIX, suffix=".tmp", dir=folder))
    try:
        files = FileSet(staging)
        yield files
        for name in files.names:
            with open(staging / name, "rb+") as f:
                os.fsync(f.fileno())
            # The one thing a rename can meet that a write did not: refused before the first goes in.
            if (folder / name).is_dir() and not (folder / name).is_symlink():
                raise IsADirectoryError(
                    errno.EISDIR, "a folder stands where this file goes; move it away", str(folder / name)
                )
        for name in files.names:
            os.replace(staging / name, folder / name)
        fsync_dir(folder)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def fsync_dir(directory: str | os.PathLike) -> None:
    """Persist a rename: the directory entry must reach the disk too."""
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_bytes(path: str | os.PathLike, data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def write_once(path: Path, data: bytes) -> None:
    """Create `path` holding `data`, whole, unless it exists: a file other processes may be
    reading is never replaced (on NFS, one replaced under a reader on another node fails its
    read). Where two processes write it at once, the first to finish stands. On a filesystem
    without hard links (some FUSE and SMB mounts) it is renamed into place instead, and one
    written by another process in the instant between the check and the rename is replaced."""
    if path.exists():
        return
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_UMASK)
        try:
            os.link(tmp, path)  # fails where the name exists, as no rename can
        except FileExistsError:
            pass
        except OSError as e:
            if e.errno not in (errno.EPERM, errno.EOPNOTSUPP, errno.ENOSYS):
                raise
            if not path.exists():
                os.replace(tmp, path)
    finally:
        with contextlib.suppress(OSError):  # gone, or a handle gone stale: never the caller's failure
            os.unlink(tmp)


def clear_torn(folder: Path) -> int:
    """Delete every temporary file and staging folder this module's writes left in `folder`,
    whatever their age: for a folder whose lock the caller holds (a run directory), where no
    other process can be writing. Returns how many. The files they were replacing are untouched."""
    return _clear_abandoned(folder, None, WRITE_TMP, Path.is_file, Path.unlink) + _clear_abandoned(
        folder, None, STAGING_TMP, Path.is_dir, shutil.rmtree
    )


def clear_abandoned_writes(folder: Path, older_than_s: float, suffix: str) -> int:
    """Delete write_once's temporaries of files named `*<suffix>` in `folder` untouched for
    `older_than_s`; returns how many. The suffix keeps other tools' like-named files out."""
    name = re.compile(r"\..+" + re.escape(suffix) + r"\.[a-z0-9_]{8}\.tmp")
    return _clear_abandoned(folder, older_than_s, name, Path.is_file, Path.unlink)


def clear_abandoned_staging(folder: Path, older_than_s: float) -> int:
    """Delete file_set's staging folders in `folder` untouched for `older_than_s`; returns how many."""
    return _clear_abandoned(folder, older_than_s, STAGING_TMP, Path.is_dir, shutil.rmtree)


def _clear_abandoned(folder: Path, older_than_s: float | None, name: re.Pattern, is_kind, remove) -> int:
    """What processes killed mid-write left. Where others may be writing in the folder right now,
    only what is far older than any write takes goes (`older_than_s`; None: whatever its age), and
    anywhere only what bears the name this module gives: other tools' hidden files are theirs."""
    cleared = 0
    cutoff = None if older_than_s is None else time.time() - older_than_s
    for leftover in folder.glob(".*.tmp*"):
        with contextlib.suppress(OSError):  # gone already (another process cleared it), or not ours to delete
            if name.fullmatch(leftover.name) and not leftover.is_symlink() and is_kind(leftover):
                if cutoff is None or leftover.lstat().st_mtime < cutoff:
                    remove(leftover)
                    cleared += 1
    return cleared


def write_text(path: str | os.PathLike, text: str) -> None:
    write_bytes(path, text.encode("utf-8"))


def write_json(path: str | os.PathLike, obj) -> None:
    write_text(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    """Hex sha256 of a file, read in chunks: how written files are verified later."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def save_png(fig, path: Path) -> None:
    """A matplotlib figure written as PNG, atomically: a reader never sees half an image."""
    with atomic_path(path, suffix=".png") as tmp:
        fig.savefig(tmp, format="png", dpi=100)
