"""Where CIFAR-10 comes from (job/data/cifar10.py): data.path, Keras's cache, or a download into
it; the archive checked and safely extracted; and every broken or hostile copy as users meet it,
through lsjob run."""

import errno
import hashlib
import logging
import os
import pickle
import shutil
import tarfile
from pathlib import Path

import numpy as np
import pytest
from cifar_files import (
    BATCHES,
    BROKEN,
    SMALL,
    Shell,
    assert_loaded,
    copy_batches,
    expected_arrays,
    files_under,
    hold_cache_lock,
    make_tar,
    offline,
    sha256,
    write_pickle,
)

from job.data import CLASS_NAMES, batch_files, cache_lock, cifar10
from job.errors import DataError, NoSpaceError, StorageError


def test_asking_for_every_image_by_size_is_not_refused(small_rows, cifar_sample, small_batches):
    # data.train_size: 50000 on the full set; only more than there is is refused.
    from job.data import load_dataset
    from job.spec import DataSpec

    data = load_dataset(DataSpec(path=small_batches, train_size=5 * SMALL, test_size=SMALL))
    assert_loaded((data.x_train, data.y_train, data.x_test, data.y_test), expected_arrays(cifar_sample, SMALL))


def test_archive_is_extracted_into_the_cache_then_reused(
    small_rows, cifar_sample, small_tar, trusted, monkeypatch, tmp_path
):
    trusted(small_tar)
    cache = tmp_path / "cache"
    expected = expected_arrays(cifar_sample, SMALL)
    assert_loaded(cifar10.load_cifar10(small_tar, cache), expected)
    datasets = cache / "datasets"
    assert sorted(p.name for p in datasets.iterdir()) == [BATCHES]  # no staging folder left behind
    assert (datasets / BATCHES / "data_batch_5").is_file()

    def no_extraction(*args):
        raise AssertionError("extracted again")

    monkeypatch.setattr(cifar10, "safe_extract", no_extraction)
    assert_loaded(cifar10.load_cifar10(small_tar, cache), expected)
    # Reused without the cache lock: a holder stalled on it (a lost node's) keeps no reader waiting.
    holder = hold_cache_lock(datasets)
    monkeypatch.setattr(cache_lock.time, "sleep", lambda s: pytest.fail("waited for the cache lock"))
    try:
        assert_loaded(cifar10.load_cifar10(small_tar, cache), expected)
    finally:
        os.close(holder)


def test_wrong_checksum_is_refused_before_extraction(small_rows, small_tar, tmp_path):
    with pytest.raises(DataError) as err:
        cifar10.load_cifar10(small_tar, tmp_path / "cache")
    message = str(err.value)
    assert sha256(small_tar) in message and cifar10.CIFAR10_SHA256 in message and str(small_tar) in message
    assert files_under(tmp_path) == []


def test_truncated_archive(small_rows, small_tar, trusted, tmp_path):
    cut = tmp_path / cifar10.ARCHIVE_NAME
    data = small_tar.read_bytes()
    cut.write_bytes(data[: len(data) // 2])
    trusted(cut)
    cache = tmp_path / "cache"
    with pytest.raises(DataError, match="truncated or corrupt") as err:
        cifar10.load_cifar10(cut, cache)
    assert err.value.__cause__ is not None
    assert files_under(cache) == ["datasets"]  # the partial extraction is gone, nothing looks complete


@pytest.mark.parametrize("checksum_matches", [False, True])
def test_garbage_file(checksum_matches, small_rows, trusted, tmp_path):
    garbage = tmp_path / "garbage.tar.gz"
    garbage.write_bytes(np.random.default_rng(0).bytes(100_000))
    if checksum_matches:
        trusted(garbage)
    with pytest.raises(DataError, match="truncated or corrupt" if checksum_matches else "sha256"):
        cifar10.load_cifar10(garbage, tmp_path / "cache")
    assert not (tmp_path / "cache" / "datasets" / BATCHES).exists()


def test_invalid_batch_inside_archive_is_never_published(small_rows, small_batches, trusted, tmp_path):
    batches = copy_batches(small_batches, tmp_path)
    bad = pickle.loads((batches / "test_batch").read_bytes(), encoding="bytes")
    bad[b"labels"][0] = 10
    write_pickle(batches / "test_batch", bad)
    tar = make_tar(tmp_path / cifar10.ARCHIVE_NAME, batches)
    trusted(tar)
    with pytest.raises(DataError, match="test_batch"):
        cifar10.load_cifar10(tar, tmp_path / "cache")
    assert files_under(tmp_path / "cache") == ["datasets"]


def member(name, kind=tarfile.REGTYPE, linkname="", data=b"pwned"):
    info = tarfile.TarInfo(name)
    info.type = kind
    info.linkname = linkname
    info.size = len(data) if kind == tarfile.REGTYPE else 0
    return info, data if kind == tarfile.REGTYPE else None


HOSTILE = {
    "dotdot": lambda out: member("../evil"),
    "dotdot inside": lambda out: member(f"{BATCHES}/../../../evil"),
    "absolute": lambda out: member(str(out / "evil")),
    "symlink": lambda out: member(f"{BATCHES}/evil", tarfile.SYMTYPE, linkname=str(out / "evil")),
    "hardlink": lambda out: member(f"{BATCHES}/evil", tarfile.LNKTYPE, linkname=f"{BATCHES}/data_batch_1"),
    "fifo": lambda out: member(f"{BATCHES}/evil", tarfile.FIFOTYPE),
    "device": lambda out: member(f"{BATCHES}/evil", tarfile.CHRTYPE),
    "outside the folder": lambda out: member("elsewhere/evil"),
}


@pytest.mark.parametrize("kind", HOSTILE)
def test_hostile_archive_members_are_refused(kind, small_rows, small_batches, trusted, tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    tar = make_tar(tmp_path / "archive" / cifar10.ARCHIVE_NAME, small_batches, [HOSTILE[kind](outside)])
    with tarfile.open(tar) as check:  # tarfile wrote the name as given
        assert check.getnames()[0] == HOSTILE[kind](outside)[0].name
    trusted(tar)
    cache = tmp_path / "deep" / "cache"
    with pytest.raises(DataError, match="refused"):
        cifar10.load_cifar10(tar, cache)
    assert not [p for p in tmp_path.rglob("*evil*")]
    assert files_under(cache) == ["datasets"]


def test_unwritable_cache_extracts_to_a_temporary_folder(small_rows, cifar_sample, small_tar, trusted, tmp_path):
    trusted(small_tar)
    blocker = tmp_path / "a-file"
    blocker.write_text("")  # a cache under a file can never be created, even by root
    assert_loaded(cifar10.load_cifar10(small_tar, blocker / "cache"), expected_arrays(cifar_sample, SMALL))


def test_path_that_does_not_exist(tmp_path):
    with pytest.raises(DataError, match=f"does not exist; expected the official {cifar10.ARCHIVE_NAME}"):
        cifar10.load_cifar10(tmp_path / "nowhere", None)


def test_directory_without_batches(tmp_path):
    (tmp_path / "notes.txt").write_text("not CIFAR-10")
    with pytest.raises(DataError, match=f"holds no CIFAR-10 batches: expected data_batch_1.*{BATCHES}"):
        cifar10.load_cifar10(tmp_path, None)


def test_download_failure_says_where_to_put_the_file(monkeypatch, tmp_path):
    calls = []
    monkeypatch.setattr(cifar10, "fetch", lambda url, dest: calls.append((url, dest)) or offline(url, dest))
    cache = tmp_path / "cache"
    with pytest.raises(DataError) as err:
        cifar10.load_cifar10(None, cache)
    message = str(err.value)
    assert f"could not download CIFAR-10 from {cifar10.CIFAR10_URL}" in message
    assert "Temporary failure in name resolution" in message
    assert "data.path" in message and str(cache / "datasets" / cifar10.ARCHIVE_NAME) in message
    ((url, dest),) = calls
    assert url == cifar10.CIFAR10_URL and dest.name == cifar10.ARCHIVE_NAME
    assert dest.parent.name.startswith(".download.") and dest.parent.parent == cache / "datasets"  # private
    assert files_under(cache) == ["datasets"]  # and it is gone after the failure


def test_a_download_of_the_wrong_file_is_said_to_be_one(monkeypatch, tmp_path):
    # A proxy's "503" page served with status 200: the message named the private copy, deleted
    # by then, and advised data.path, which the user never set, without the way to fix it.
    page = b"<html><body>503 Service Unavailable</body></html>"
    monkeypatch.setattr(cifar10, "fetch", lambda url, dest: dest.write_bytes(page))
    with pytest.raises(DataError) as err:
        cifar10.load_cifar10(None, tmp_path)
    message = str(err.value)
    assert message.startswith(
        f"could not download CIFAR-10 from {cifar10.CIFAR10_URL} (what it sent, {len(page)} bytes"
    )
    assert f"its sha256 is {hashlib.sha256(page).hexdigest()}, expected {cifar10.CIFAR10_SHA256}" in message
    assert f"download {cifar10.ARCHIVE_NAME} yourself and set data.path to it, or put it at" in message
    assert ".download." not in message and err.value.exit_code == 3
    assert files_under(tmp_path) == ["datasets"]  # nothing of it kept


def test_a_wrong_archive_in_the_cache_is_named_when_the_download_fails(monkeypatch, tmp_path):
    # The README's offline route with a copy cut short: "put it at <the place it already is>" misleads.
    monkeypatch.setattr(cifar10, "fetch", offline)
    archive = tmp_path / "datasets" / cifar10.ARCHIVE_NAME
    archive.parent.mkdir()
    archive.write_bytes(b"the first megabyte of a copy")
    with pytest.raises(DataError) as err:
        cifar10.load_cifar10(None, tmp_path)
    assert f"replace {archive} with it: that copy is not the official archive (its sha256 differs" in str(err.value)
    assert archive.read_bytes() == b"the first megabyte of a copy"  # the user's file is theirs to replace


def test_real_download_failure_under_keras_home(monkeypatch, tmp_path):
    # Nothing listens on the discard port, so the real fetch fails at once, online or not.
    monkeypatch.setattr(cifar10, "CIFAR10_URL", "http://127.0.0.1:9/cifar-10-python.tar.gz")
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "keras-home"))
    with pytest.raises(DataError, match="could not download") as err:
        cifar10.load_cifar10(None, None)
    assert str(tmp_path / "keras-home" / "datasets" / cifar10.ARCHIVE_NAME) in str(err.value)
    assert files_under(tmp_path / "keras-home") == ["datasets"]  # no partial download left


@pytest.mark.parametrize(
    "code, error, exit_code", [(errno.ESTALE, StorageError, 1), (errno.EDQUOT, NoSpaceError, 6),
                               (errno.EACCES, DataError, 3)]
)  # fmt: skip
def test_what_fails_while_the_cache_is_searched_gets_its_own_exit_code(code, error, exit_code, monkeypatch, tmp_path):
    def fail(*args, **kwargs):
        raise OSError(code, os.strerror(code), str(tmp_path / "cache" / "datasets"))

    monkeypatch.setattr(cifar10, "_cached_batches", fail)
    with pytest.raises(error) as err:
        cifar10.load_cifar10(None, tmp_path / "cache")
    assert type(err.value) is error and err.value.exit_code == exit_code


def test_an_inode_quota_when_the_download_folder_is_made_is_exit_6(monkeypatch, tmp_path):
    def quota(*args, **kwargs):
        raise OSError(errno.EDQUOT, "Disk quota exceeded")

    monkeypatch.setattr(cifar10.tempfile, "mkdtemp", quota)
    with pytest.raises(NoSpaceError, match="Disk quota exceeded"):
        cifar10.load_cifar10(None, tmp_path / "cache")


@pytest.mark.parametrize("stage", ["folder", "extraction"])
def test_a_failing_cache_disk_while_filling_it_is_a_storage_fault(
    stage, small_rows, small_tar, trusted, monkeypatch, tmp_path
):
    # Exit 1 ("run again once the storage is healthy"), not 3, which blames the data.
    trusted(small_tar)

    def failing(*args, **kwargs):
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(cifar10, "fetch", lambda url, dest: shutil.copyfile(small_tar, dest))
    if stage == "folder":
        monkeypatch.setattr(cifar10.tempfile, "mkdtemp", failing)
    else:
        monkeypatch.setattr(cifar10, "_write_member", failing)
    with pytest.raises(StorageError, match="Input/output error .the storage failed, not the spec") as err:
        cifar10.load_cifar10(None, tmp_path / "cache")
    assert err.value.exit_code == 1


@pytest.mark.parametrize("stage", ["download", "extraction"])
def test_a_full_disk_while_filling_the_cache_says_so_with_exit_6(stage, small_rows, small_tar, trusted, monkeypatch,
                                                                 tmp_path):  # fmt: skip
    trusted(small_tar)

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    if stage == "download":
        monkeypatch.setattr(cifar10, "fetch", full)
    else:
        monkeypatch.setattr(cifar10, "fetch", lambda url, dest: shutil.copyfile(small_tar, dest))
        monkeypatch.setattr(cifar10, "_write_member", full)
    with pytest.raises(NoSpaceError, match="ran out of space filling the dataset cache") as err:
        cifar10.load_cifar10(None, tmp_path / "cache")
    assert err.value.exit_code == 6 and "350 MB" in str(err.value)


def test_a_damaged_cache_says_to_delete_it(small_rows, small_batches, no_download, tmp_path):
    batches = shutil.copytree(small_batches, tmp_path / "cache" / "datasets" / BATCHES)
    data = (batches / "data_batch_3").read_bytes()
    (batches / "data_batch_3").write_bytes(data[: len(data) // 2])
    with pytest.raises(DataError, match="data_batch_3") as err:
        cifar10.load_cifar10(None, tmp_path / "cache")
    assert f"the cached copy in {batches} is damaged: delete it to fetch CIFAR-10 again" in str(err.value)


def test_a_cache_that_cannot_be_read_is_named_not_called_damaged(small_rows, small_batches, no_download, monkeypatch,
                                                                 tmp_path):  # fmt: skip
    # Files another user made 0600 in a shared cache: "damaged: delete it" would have them delete good data.
    cache = tmp_path / "cache"
    shutil.copytree(small_batches, cache / "datasets" / BATCHES)
    real_open = open

    def denied(path, *args, **kwargs):
        if Path(path).name == "data_batch_2":
            raise PermissionError(errno.EACCES, "Permission denied", str(path))
        return real_open(path, *args, **kwargs)

    monkeypatch.setattr(batch_files, "open", denied, raising=False)
    with pytest.raises(DataError) as err:
        cifar10.load_cifar10(None, cache)
    assert f"cannot read {cache / 'datasets' / BATCHES / 'data_batch_2'} (Permission denied)" in str(err.value)
    assert "make it readable" in str(err.value) and "damaged" not in str(err.value)


def test_a_folder_it_may_not_enter_is_a_data_error_not_a_traceback(monkeypatch, tmp_path):
    def denied(directory, complete):
        raise PermissionError(errno.EACCES, "Permission denied", str(directory))

    monkeypatch.setattr(cifar10, "find_batches", denied)
    (tmp_path / "data").mkdir()
    with pytest.raises(DataError, match=f"cannot read {tmp_path / 'data'} \\(Permission denied\\)") as err:
        cifar10.load_cifar10(tmp_path / "data", tmp_path / "cache")
    assert err.value.exit_code == 3


def test_a_data_path_folder_holding_the_archive_points_at_it(tmp_path):
    (tmp_path / cifar10.ARCHIVE_NAME).write_bytes(b"")
    with pytest.raises(DataError, match=f"it holds {cifar10.ARCHIVE_NAME}: set data.path to that file"):
        cifar10.load_cifar10(tmp_path, tmp_path / "cache")


def test_download_then_extract(small_rows, cifar_sample, small_tar, trusted, monkeypatch, tmp_path):
    trusted(small_tar)

    monkeypatch.setattr(cifar10, "fetch", lambda url, dest: shutil.copyfile(small_tar, dest))
    cache = tmp_path / "cache"
    assert_loaded(cifar10.load_cifar10(None, cache), expected_arrays(cifar_sample, SMALL))
    assert sorted(p.name for p in (cache / "datasets").iterdir()) == sorted([cifar10.ARCHIVE_NAME, BATCHES])


@pytest.mark.parametrize("damage", ["truncate", "garbage"])
def test_a_download_killed_or_corrupted_midway_never_takes_the_real_name(
    damage, small_rows, small_tar, trusted, monkeypatch, tmp_path
):
    trusted(small_tar)
    seen = []

    def broken_fetch(url, dest):
        # What a transfer cut short, or two writers interleaving, leaves behind.
        data = small_tar.read_bytes()
        dest.write_bytes(data[: len(data) // 2] if damage == "truncate" else b"x" * 1000)
        seen.append(dest)

    monkeypatch.setattr(cifar10, "fetch", broken_fetch)
    cache = tmp_path / "cache"
    with pytest.raises(DataError):
        cifar10.load_cifar10(None, cache)
    assert Path(seen[0]).parent.parent == cache / "datasets"
    assert files_under(cache / "datasets") == []  # nothing under the real name, no staging left


@pytest.mark.parametrize(
    "layout",
    [
        f"cifar-10-batches-py-target/{BATCHES}",  # keras.datasets.cifar10 of Keras 3.15
        f"{BATCHES}/{BATCHES}",  # earlier Keras 3
        f"cifar-10-batches-py_extracted/{BATCHES}",
        BATCHES,  # Keras 2, and this loader's own extraction
    ],
)
def test_cache_populated_like_keras(layout, small_rows, cifar_sample, small_batches, no_download, tmp_path):
    cache = tmp_path / "cache"
    shutil.copytree(small_batches, cache / "datasets" / layout)
    assert_loaded(cifar10.load_cifar10(None, cache), expected_arrays(cifar_sample, SMALL))


def test_keras_home_cache_is_the_default(small_rows, cifar_sample, small_batches, no_download, monkeypatch, tmp_path):
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "keras-home"))
    shutil.copytree(small_batches, tmp_path / "keras-home" / "datasets" / BATCHES)
    assert_loaded(cifar10.load_cifar10(None, None), expected_arrays(cifar_sample, SMALL))


def test_incomplete_cached_folder_is_not_used(small_rows, small_batches, monkeypatch, tmp_path):
    cache = tmp_path / "cache"
    partial = shutil.copytree(small_batches, cache / "datasets" / f"cifar-10-batches-py-target/{BATCHES}")
    (partial / "test_batch").unlink()  # Keras was killed mid-extraction
    monkeypatch.setattr(cifar10, "fetch", offline)
    with pytest.raises(DataError, match="could not download"):
        cifar10.load_cifar10(None, cache)


@pytest.mark.parametrize("name", [cifar10.ARCHIVE_NAME, "cifar-10-batches-py-target_archive"])
def test_archive_in_cache_is_used(name, small_rows, cifar_sample, small_tar, trusted, no_download, tmp_path):
    trusted(small_tar)
    cache = tmp_path / "cache"
    (cache / "datasets").mkdir(parents=True)
    shutil.copyfile(small_tar, cache / "datasets" / name)
    assert_loaded(cifar10.load_cifar10(None, cache), expected_arrays(cifar_sample, SMALL))
    assert (cache / "datasets" / BATCHES / "test_batch").is_file()


def test_partial_download_in_cache_is_not_trusted(small_rows, small_tar, trusted, monkeypatch, tmp_path):
    trusted(small_tar)
    cache = tmp_path / "cache"
    (cache / "datasets").mkdir(parents=True)
    data = small_tar.read_bytes()
    (cache / "datasets" / cifar10.ARCHIVE_NAME).write_bytes(data[: len(data) // 2])
    monkeypatch.setattr(cifar10, "fetch", offline)
    with pytest.raises(DataError, match="could not download"):
        cifar10.load_cifar10(None, cache)
    assert not (cache / "datasets" / BATCHES).exists()


def test_leftover_staging_folder_is_not_a_cache(small_rows, small_batches, monkeypatch, tmp_path):
    cache = tmp_path / "cache"
    # What a process killed between extraction and rename leaves behind.
    shutil.copytree(small_batches, cache / "datasets" / f".{BATCHES}.k1ll3d.partial" / BATCHES)
    monkeypatch.setattr(cifar10, "fetch", offline)
    with pytest.raises(DataError, match="could not download"):
        cifar10.load_cifar10(None, cache)


def test_an_incomplete_folder_under_the_final_name_is_moved_aside_once(
    small_rows, cifar_sample, small_batches, small_tar, trusted, no_download, monkeypatch, caplog, tmp_path
):
    # What an interrupted Keras 2 load_data() leaves: some batches under the final name.
    trusted(small_tar)
    datasets = tmp_path / "cache" / "datasets"
    (datasets / BATCHES).mkdir(parents=True)
    shutil.copyfile(small_batches / "data_batch_1", datasets / BATCHES / "data_batch_1")
    shutil.copyfile(small_tar, datasets / cifar10.ARCHIVE_NAME)
    expected = expected_arrays(cifar_sample, SMALL)
    with caplog.at_level(logging.WARNING, logger="lsjob"):
        assert_loaded(cifar10.load_cifar10(None, tmp_path / "cache"), expected)
    (aside,) = datasets.glob(f"{BATCHES}.incomplete-*")
    assert [p.name for p in aside.iterdir()] == ["data_batch_1"]  # kept, not deleted
    assert f"moved {datasets / BATCHES} aside to {aside}" in caplog.text
    assert (datasets / BATCHES / "test_batch").is_file()

    def no_extraction(*args):
        raise AssertionError("extracted again")

    monkeypatch.setattr(cifar10, "safe_extract", no_extraction)  # the next run reads the cache
    assert_loaded(cifar10.load_cifar10(None, tmp_path / "cache"), expected)


def broken_copies(small_batches, workdir):
    """Every broken or hostile CIFAR-10 copy above, built afresh: (name, data.path, the
    archive to trust as official or None)."""

    def batches_with(name, change):
        folder = shutil.copytree(small_batches, workdir / name.replace(" ", "-") / BATCHES)
        change(folder)
        return folder

    def rewrite(folder, file, transform):
        write_pickle(folder / file, transform(pickle.loads((folder / file).read_bytes(), encoding="bytes")))

    marker = workdir / "pwned"
    for kind, transform in BROKEN.items():
        yield kind, batches_with(kind, lambda f, t=transform: rewrite(f, "data_batch_3", t)), None
    payload = Shell(f"touch {marker}")
    yield "malicious pickle", batches_with("pickle", lambda f: write_pickle(f / "data_batch_2", payload)), None
    yield (
        "pickle with a payload inside",
        batches_with("inside", lambda f: rewrite(f, "data_batch_2", lambda b: {**b, b"labels": payload})),
        None,
    )
    yield (
        "truncated batch",
        batches_with("truncated", lambda f: (f / "test_batch").write_bytes((f / "test_batch").read_bytes()[:5000])),
        None,
    )
    yield "missing batch", batches_with("missing", lambda f: (f / "data_batch_4").unlink()), None
    yield (
        "reordered label names",
        batches_with(
            "meta",
            lambda f: write_pickle(f / "batches.meta", {b"label_names": [n.encode() for n in reversed(CLASS_NAMES)]}),
        ),
        None,
    )
    empty = workdir / "empty"
    empty.mkdir()
    (empty / "notes.txt").write_text("not CIFAR-10")
    yield "folder without batches", empty, None
    yield "path that does not exist", workdir / "nowhere.tar.gz", None
    for kind, evil in HOSTILE.items():
        tar = make_tar(workdir / "tars" / kind.replace(" ", "-") / cifar10.ARCHIVE_NAME, small_batches,
                       [evil(workdir / "outside")])  # fmt: skip
        yield f"archive member: {kind}", tar, tar
    garbage = workdir / "garbage" / cifar10.ARCHIVE_NAME
    garbage.parent.mkdir()
    garbage.write_bytes(os.urandom(4096))
    yield "garbage archive", garbage, garbage
    yield "archive of the wrong checksum", make_tar(workdir / "unofficial" / cifar10.ARCHIVE_NAME, small_batches), None


def test_every_broken_or_hostile_copy_through_lsjob_run_exits_3_and_writes_nothing(
    small_rows, small_batches, monkeypatch, capsys, tmp_path
):
    import sys

    from job import cli

    (tmp_path / "outside").mkdir()
    copies = list(broken_copies(small_batches, tmp_path))
    assert len(copies) >= 10 + 20
    results, cache = tmp_path / "results", tmp_path / "cache"
    for name, path, official in copies:
        monkeypatch.setattr(cifar10, "CIFAR10_SHA256", sha256(official) if official else cifar10.CIFAR10_SHA256)
        sets = [f"data.path={path}", f"data.cache_dir={cache}", f"output.root={results}", "output.run=corpus"]
        monkeypatch.setattr(sys, "argv", ["lsjob", "run", "/dev/null", *[a for s in sets for a in ("--set", s)]])
        with pytest.raises(SystemExit) as exited:
            cli.main()
        out, err = capsys.readouterr()
        assert exited.value.code == DataError.exit_code, (name, err)
        assert err.splitlines()[-1].startswith("lsjob: error: ") and "Traceback" not in err + out, (name, err)
        assert not results.exists(), name  # no run directory for data that never loaded
        assert not (tmp_path / "pwned").exists() and not list((tmp_path / "outside").iterdir()), name
        assert not cache.exists() or not [p for p in cache.rglob("*") if p.is_file()], (name, files_under(cache))
