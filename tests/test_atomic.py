"""Atomic writes: results get the permissions of the user's umask, not mkstemp's private 0600."""

import errno
import os
import stat
import subprocess
import sys

import pytest
from conftest import ROOT

from job import atomic


@pytest.mark.parametrize("umask,mode", [(0o022, 0o644), (0o002, 0o664), (0o077, 0o600)])
def test_written_files_take_the_usual_permissions_for_the_umask(umask, mode, monkeypatch, tmp_path):
    # A group sharing a results folder, or a web page serving it, must be able to read what a run wrote.
    monkeypatch.setattr(atomic, "_UMASK", umask)
    atomic.write_text(tmp_path / "spec.yaml", "a: 1\n")
    atomic.write_json(tmp_path / "manifest.json", {"a": 1})
    for name in ("spec.yaml", "manifest.json"):
        assert stat.S_IMODE((tmp_path / name).stat().st_mode) == mode, name


def test_write_once_creates_a_file_whole_with_the_umask_permissions(monkeypatch, tmp_path):
    monkeypatch.setattr(atomic, "_UMASK", 0o022)
    atomic.write_once(tmp_path / "entry-cache", b"compiled")
    assert (tmp_path / "entry-cache").read_bytes() == b"compiled"
    assert stat.S_IMODE((tmp_path / "entry-cache").stat().st_mode) == 0o644
    assert [p.name for p in tmp_path.iterdir()] == ["entry-cache"]  # nothing temporary left


def test_write_once_never_replaces_a_file_others_may_be_reading(monkeypatch, tmp_path):
    # Written by another process between this one's check and its write: its file stands, untouched.
    entry = tmp_path / "entry-cache"
    real_mkstemp = atomic.tempfile.mkstemp

    def first_writer_finishes_meanwhile(*args, **kwargs):
        entry.write_bytes(b"first")
        return real_mkstemp(*args, **kwargs)

    monkeypatch.setattr(atomic.tempfile, "mkstemp", first_writer_finishes_meanwhile)
    atomic.write_once(entry, b"second")
    assert entry.read_bytes() == b"first" and [p.name for p in tmp_path.iterdir()] == ["entry-cache"]


def test_write_once_falls_back_to_a_rename_without_hard_links(monkeypatch, tmp_path):
    def no_links(*args):
        raise PermissionError(1, "Operation not permitted")  # as some FUSE and SMB mounts answer

    monkeypatch.setattr(atomic.os, "link", no_links)
    atomic.write_once(tmp_path / "entry-cache", b"compiled")
    assert (tmp_path / "entry-cache").read_bytes() == b"compiled"
    assert [p.name for p in tmp_path.iterdir()] == ["entry-cache"]


def test_write_once_fails_on_a_full_disk_and_leaves_nothing(monkeypatch, tmp_path):
    # Only a filesystem without hard links falls back to a rename: a quota or I/O error is the caller's to see.
    def over_quota(*args):
        raise OSError(errno.EDQUOT, "Disk quota exceeded")

    monkeypatch.setattr(atomic.os, "link", over_quota)
    with pytest.raises(OSError, match="quota"):
        atomic.write_once(tmp_path / "entry-cache", b"compiled")
    assert list(tmp_path.iterdir()) == []


KILLED_WRITING = """
import os, signal, sys
from pathlib import Path
from job import atomic
os.link = lambda *args: os.kill(os.getpid(), signal.SIGKILL)  # killed between its write and its link
atomic.write_once(Path(sys.argv[1]) / "entry-cache", b"compiled")
"""


def test_what_a_killed_writer_left_is_cleared_once_old_and_nothing_else_is(tmp_path):
    for _ in range(2):
        proc = subprocess.run([sys.executable, "-c", KILLED_WRITING, str(tmp_path)], cwd=ROOT)
        assert proc.returncode == -9
    old, new = sorted(tmp_path.iterdir())
    hour_ago = old.stat().st_mtime - 3601
    os.utime(old, (hour_ago, hour_ago))
    # An entry, and others' files, one of them named as mkstemp names them.
    kept = [tmp_path / "entry-cache", tmp_path / ".lockfile", tmp_path / ".notes.tmp", tmp_path / ".notes.k9_x2m0q.tmp"]
    for path in kept:
        path.write_bytes(b"")
        os.utime(path, (hour_ago, hour_ago))
    kept.append(tmp_path / ".staging.x1y2z3q4.tmp")  # file_set's: clear_abandoned_staging's to clear
    kept[-1].mkdir()
    os.utime(kept[-1], (hour_ago, hour_ago))
    assert atomic.clear_abandoned_writes(tmp_path, older_than_s=3600, suffix="-cache") == 1
    assert sorted(tmp_path.iterdir()) == sorted([new, *kept])  # a write that may still be going on is left be


def test_a_users_own_staging_named_folder_is_never_cleared(tmp_path):
    # file_set's staging folders have mkdtemp's 8 random characters; a user's .staging.old.tmp,
    # however old, is theirs.
    ours, theirs = tmp_path / ".staging.x1y2z3q4.tmp", tmp_path / ".staging.old.tmp"
    hour_ago = os.stat(tmp_path).st_mtime - 3601
    for folder in (ours, theirs):
        folder.mkdir()
        (folder / "notes").write_text("keep")
        os.utime(folder, (hour_ago, hour_ago))
    assert atomic.clear_abandoned_staging(tmp_path, older_than_s=3600) == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == [".staging.old.tmp"]
    assert atomic.clear_torn(tmp_path) == 0 and (theirs / "notes").read_text() == "keep"


def test_every_write_is_fsynced_before_its_rename_and_the_folder_after(tmp_path, monkeypatch):
    # Else a crash can leave the final name on an empty or partial file, or lose the rename.
    synced, real_fsync = [], os.fsync

    def fsync(fd):
        synced.append(os.readlink(f"/proc/self/fd/{fd}"))
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    atomic.write_text(tmp_path / "a.json", "{}")
    assert [os.path.basename(p).startswith(".a.json.") for p in synced] == [True, False]
    assert synced[1] == str(tmp_path)  # the folder, which holds the rename
    synced.clear()
    with atomic.file_set(tmp_path) as files:
        files.path("b.txt").write_text("b")
    assert [os.path.basename(p) for p in synced] == ["b.txt", tmp_path.name]
    synced.clear()
    atomic.write_once(tmp_path / "c", b"c")
    assert len(synced) == 1 and os.path.basename(synced[0]).startswith(".c.")


def test_write_once_without_hard_links_keeps_a_file_written_meanwhile(tmp_path, monkeypatch):
    target = tmp_path / "entry"

    def no_links(src, dst):  # another process finishes its write between the check and the rename
        target.write_bytes(b"theirs")
        raise OSError(errno.EPERM, "no hard links here")

    monkeypatch.setattr(os, "link", no_links)
    atomic.write_once(target, b"ours")
    assert target.read_bytes() == b"theirs" and os.listdir(tmp_path) == ["entry"]


def test_a_link_named_like_a_temporary_file_is_not_cleared(tmp_path):
    (tmp_path / "notes").write_text("the user's")
    (tmp_path / ".notes.a8b_q0xz.tmp").symlink_to(tmp_path / "notes")
    assert atomic.clear_torn(tmp_path) == 0 and (tmp_path / ".notes.a8b_q0xz.tmp").is_symlink()
