"""Atomic writes: results get the permissions of the user's umask, not mkstemp's private 0600."""

import stat

import pytest

from job import atomic


@pytest.mark.parametrize("umask,mode", [(0o022, 0o644), (0o002, 0o664), (0o077, 0o600)])
def test_written_files_take_the_usual_permissions_for_the_umask(umask, mode, monkeypatch, tmp_path):
    # A group sharing a results folder, or a web page serving it, must be able to read what a run wrote.
    monkeypatch.setattr(atomic, "_UMASK", umask)
    atomic.write_text(tmp_path / "spec.yaml", "a: 1\n")
    atomic.write_json(tmp_path / "manifest.json", {"a": 1})
    for name in ("spec.yaml", "manifest.json"):
        assert stat.S_IMODE((tmp_path / name).stat().st_mode) == mode, name
