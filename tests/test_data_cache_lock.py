"""One process fills the cache at a time (job/data/cache_lock.py): tasks that start together,
holders that fail, die, stall or are suspended, filesystems without locks, and the folders a
killed fill leaves behind."""

import errno
import fcntl
import logging
import os
import shutil
import threading
import time

import pytest
from cifar_files import BATCHES, SMALL, assert_loaded, expected_arrays, files_under, hold_cache_lock, offline

from job import preemption
from job.data import cache_lock, cifar10
from job.errors import DataError, InterruptedRun


def test_a_link_planted_as_the_cache_lock_makes_no_file_where_it_points(small_rows, small_tar, trusted, monkeypatch,
                                                                       tmp_path, caplog):  # fmt: skip
    # The cache is shared (a Kubernetes claim, a cluster's scratch): opening the lock with O_CREAT
    # through a teammate's link made an empty file wherever it pointed.
    trusted(small_tar)
    monkeypatch.setattr(cifar10, "fetch", lambda url, dest: shutil.copyfile(small_tar, dest))
    datasets = tmp_path / "cache" / "datasets"
    datasets.mkdir(parents=True)
    (datasets / cache_lock.CACHE_LOCK).symlink_to(tmp_path / "made-elsewhere")
    with caplog.at_level(logging.WARNING, logger="lsjob"):
        x_train, *_ = cifar10.load_cifar10(None, tmp_path / "cache")  # correct, only not shared
    assert len(x_train) and not (tmp_path / "made-elsewhere").exists()
    assert "going on without the lock" in caplog.text


def test_folders_left_by_a_killed_fill_are_deleted_once_stale(small_rows, small_tar, trusted, monkeypatch, tmp_path):
    # SIGKILL mid-download or mid-extraction: 170-180 MB each, never reused, until now kept for good.
    trusted(small_tar)
    datasets = tmp_path / "cache" / "datasets"
    stale = [datasets / ".download.k1ll3d", datasets / f".{BATCHES}.k1ll3d.partial"]
    live = datasets / ".download.l1v3"  # another process's, still writing
    for folder in [*stale, live]:
        folder.mkdir(parents=True)
        (folder / "part").write_bytes(b"x" * 100)
    hour_ago = time.time() - 3600
    for folder in stale:
        for path in (folder / "part", folder):
            os.utime(path, (hour_ago, hour_ago))
    monkeypatch.setattr(cifar10, "fetch", lambda url, dest: shutil.copyfile(small_tar, dest))
    cifar10.load_cifar10(None, tmp_path / "cache")
    assert sorted(p.name for p in datasets.iterdir()) == sorted([cifar10.ARCHIVE_NAME, BATCHES, live.name])


def test_a_fill_paused_for_minutes_keeps_its_folder(tmp_path):
    # Only a folder idle well past what a live fill goes without writing (a stall, a resume pause,
    # slow shared storage) is a dead task's: a task starting beside a live fill must not delete it.
    datasets = tmp_path / "datasets"
    stale = cache_lock.LEFTOVER_AGE_S + 60
    ages = {".download.p4us3d": 300, f".{BATCHES}.sl0w.partial": 300, ".download.k1ll3d": stale}
    for name, age in ages.items():
        (datasets / name).mkdir(parents=True)
        (datasets / name / "part").write_bytes(b"x" * 100)
        then = time.time() - age
        for path in (datasets / name / "part", datasets / name):
            os.utime(path, (then, then))
    cache_lock._clear_leftovers(datasets)
    assert sorted(p.name for p in datasets.iterdir()) == sorted([".download.p4us3d", f".{BATCHES}.sl0w.partial"])


def fetch_counting(small_tar, calls, delay=0.0):
    """A fetch that 'downloads' small_tar, slowly, and counts its calls."""

    def fetch(url, dest):
        calls.append(threading.current_thread().name)
        time.sleep(delay)
        shutil.copyfile(small_tar, dest)

    return fetch


def load_in_tasks(cache, count, apart_s=0.0):
    """load_cifar10 from `count` threads named task0, task1, ... started `apart_s` apart, as a
    sweep's tasks on one shared cache: (arrays by task, errors)."""
    results, errors = {}, []

    def task(i):
        try:
            results[i] = cifar10.load_cifar10(None, cache)
        except Exception as e:  # noqa: BLE001 - surfaced by the test
            errors.append(e)

    threads = [threading.Thread(target=task, args=(i,), name=f"task{i}") for i in range(count)]
    for t in threads:
        t.start()
        time.sleep(apart_s)
    for t in threads:
        t.join(60)
    return results, errors


def test_tasks_starting_together_on_a_cold_cache_download_once(
    small_rows, cifar_sample, small_tar, trusted, monkeypatch, tmp_path
):
    # A sweep's tasks start at once on one shared cache: the first fetches, the others wait for it.
    trusted(small_tar)
    monkeypatch.setattr(cache_lock, "LOCK_POLL_S", 0.05)
    calls = []
    monkeypatch.setattr(cifar10, "fetch", fetch_counting(small_tar, calls, delay=0.5))
    cache = tmp_path / "cache"
    results, errors = load_in_tasks(cache, 3)
    assert not errors and len(results) == 3
    assert len(calls) == 1, calls
    for arrays in results.values():
        assert_loaded(arrays, expected_arrays(cifar_sample, SMALL))
    # The lock is gone with its holder: the cache holds the archive and its extraction alone.
    assert sorted(p.name for p in (cache / "datasets").iterdir()) == sorted([cifar10.ARCHIVE_NAME, BATCHES])


def test_tasks_waiting_on_a_download_that_fails_fail_with_it_and_a_later_start_tries_again(monkeypatch, tmp_path):
    # Compute nodes whose firewall drops the connection: each waiter tried again after the holder
    # gave up, and task n of a sweep failed after n download timeouts, holding its GPU meanwhile.
    monkeypatch.setattr(cache_lock, "LOCK_POLL_S", 0.05)
    calls = []

    def fetch(url, dest):
        calls.append(threading.current_thread().name)
        time.sleep(1.0)  # the timeout, while the others start waiting
        offline(url, dest)

    monkeypatch.setattr(cifar10, "fetch", fetch)
    cache = tmp_path / "cache"
    results, errors = load_in_tasks(cache, 3, apart_s=0.1)
    assert results == {} and len(errors) == 3 and calls == ["task0"]
    first, *waiters = sorted((str(e) for e in errors), key=lambda m: m.startswith("the download of the process"))
    assert first.startswith(f"could not download CIFAR-10 from {cifar10.CIFAR10_URL} (")
    for message in waiters:
        assert message == f"the download of the process this one waited for failed: {first}"
    assert all(e.exit_code == 3 for e in errors)
    assert files_under(cache) == ["datasets"]  # the reason went with the lock file: nothing left
    with pytest.raises(DataError, match="could not download CIFAR-10 from"):
        cifar10.load_cifar10(None, cache)  # no one waited: this one tries for itself
    assert len(calls) == 2


def test_an_extraction_that_fails_after_a_good_download_does_not_fail_the_waiters(
    small_rows, cifar_sample, small_tar, trusted, monkeypatch, tmp_path
):
    # Only the download's own failure is passed on to the tasks waiting on the lock: an archive
    # verified and in the cache is theirs to extract, not "the download ... failed".
    trusted(small_tar)
    monkeypatch.setattr(cache_lock, "LOCK_POLL_S", 0.05)
    calls = []
    monkeypatch.setattr(cifar10, "fetch", fetch_counting(small_tar, calls, delay=0.5))
    real_extract, failed = cifar10.safe_extract, []

    def safe_extract(archive, dest):
        if not failed:  # the holder's extraction, once
            failed.append(threading.current_thread().name)
            raise DataError(f"could not extract {archive} into {dest}: Input/output error")
        return real_extract(archive, dest)

    monkeypatch.setattr(cifar10, "safe_extract", safe_extract)
    results, errors = load_in_tasks(tmp_path / "cache", 3, apart_s=0.1)
    assert len(calls) == 1 and len(errors) == 1 and str(errors[0]).startswith("could not extract")
    assert len(results) == 2
    for arrays in results.values():
        assert_loaded(arrays, expected_arrays(cifar_sample, SMALL))


@pytest.mark.parametrize("stage", ["download", "extraction"])
def test_a_suspended_fill_whose_folder_was_cleared_reads_the_cache_another_filled(
    small_rows, cifar_sample, small_tar, trusted, monkeypatch, caplog, tmp_path, stage
):
    # Suspended past LEFTOVER_AGE_S, a holder is gone around and its folder deleted as a dead
    # process's by a later one; resumed, it failed with exit 3 (never retried) beside a full cache.
    trusted(small_tar)
    datasets = tmp_path / "cache" / "datasets"

    def gone_around_meanwhile(folder):
        shutil.rmtree(folder)
        cifar10.safe_extract(small_tar, datasets)  # what the process that went around published

    def fetch(url, dest):
        shutil.copyfile(small_tar, dest)
        if stage == "download":
            gone_around_meanwhile(dest.parent)

    real_read = cifar10.read_batch_dir

    def read_batch_dir(batches):  # suspended once its extraction is written, before it is read
        if stage == "extraction" and batches.parent.name.endswith(".partial"):
            gone_around_meanwhile(batches.parent)
        return real_read(batches)

    monkeypatch.setattr(cifar10, "fetch", fetch)
    monkeypatch.setattr(cifar10, "read_batch_dir", read_batch_dir)
    with caplog.at_level(logging.WARNING, logger="lsjob"):
        arrays = cifar10.load_cifar10(None, tmp_path / "cache")
    assert_loaded(arrays, expected_arrays(cifar_sample, SMALL))
    assert "but another filled it meanwhile" in caplog.text


def test_an_archive_given_as_data_path_is_extracted_under_the_cache_lock(small_rows, small_tar, trusted, monkeypatch,
                                                                         tmp_path):  # fmt: skip
    # Else every task of a sweep extracts the 180 MB into the shared cache at once.
    trusted(small_tar)
    holder = hold_cache_lock(tmp_path / "cache" / "datasets")  # another task, extracting

    class Waited(Exception):
        pass

    def sleep(seconds):
        raise Waited

    monkeypatch.setattr(cache_lock.time, "sleep", sleep)
    try:
        with pytest.raises(Waited):
            cifar10.load_cifar10(small_tar, tmp_path / "cache")
    finally:
        os.close(holder)


def stalled_cache(small_tar, trusted, monkeypatch, tmp_path, stall_s, delay=0.0):
    """A cold cache in tmp_path/cache whose lock a holder keeps and never writes under, as a node
    lost mid-fill leaves it on the file server; a waiter gives up after `stall_s` of no writes,
    and a fetch (taking `delay`) is counted: (datasets, the holder's descriptor, the fetches)."""
    trusted(small_tar)
    monkeypatch.setattr(cache_lock, "LOCK_POLL_S", 0.01)
    monkeypatch.setattr(cache_lock, "LEFTOVER_AGE_S", stall_s)
    calls = []
    monkeypatch.setattr(cifar10, "fetch", fetch_counting(small_tar, calls, delay))
    datasets = tmp_path / "cache" / "datasets"
    return datasets, hold_cache_lock(datasets), calls


def test_a_waiting_task_goes_on_once_the_lock_is_let_go(
    small_rows, cifar_sample, small_tar, trusted, monkeypatch, caplog, tmp_path
):
    trusted(small_tar)
    monkeypatch.setattr(cache_lock, "LOCK_POLL_S", 0.05)
    calls = []
    monkeypatch.setattr(cifar10, "fetch", fetch_counting(small_tar, calls))
    datasets = tmp_path / "cache" / "datasets"
    holder = hold_cache_lock(datasets)  # a holder that dies leaving nothing in the cache
    result = []
    waiter = threading.Thread(target=lambda: result.append(cifar10.load_cifar10(None, tmp_path / "cache")))
    with caplog.at_level(logging.INFO, logger="lsjob"):
        waiter.start()
        deadline = time.monotonic() + 30
        while "waiting for it" not in caplog.text and time.monotonic() < deadline:
            time.sleep(0.02)
        assert "another process is filling the CIFAR-10 cache" in caplog.text
        assert calls == []  # waits rather than fetching beside the holder
        os.close(holder)  # the kernel lets go of a flock when its process dies, as here
        waiter.join(60)
    assert len(calls) == 1
    assert_loaded(result[0], expected_arrays(cifar_sample, SMALL))


def test_a_lock_whose_holder_writes_nothing_for_long_is_gone_around(
    small_rows, cifar_sample, small_tar, trusted, monkeypatch, caplog, tmp_path
):
    # A node that went down mid-fill can leave its lock on a shared filesystem (NFSv3: until it
    # starts again): every task of a sweep used to wait on it until its time limit.
    datasets, holder, calls = stalled_cache(small_tar, trusted, monkeypatch, tmp_path, stall_s=0.3)
    dead = datasets / ".download.k3j_2x"  # what the holder was writing when its node went down
    dead.mkdir()
    (dead / cifar10.ARCHIVE_NAME).write_bytes(b"the first bytes")
    for path in (dead / cifar10.ARCHIVE_NAME, dead):
        os.utime(path, (time.time() - 3600,) * 2)  # an hour ago
    result = []
    waiter = threading.Thread(target=lambda: result.append(cifar10.load_cifar10(None, tmp_path / "cache")))
    try:
        with caplog.at_level(logging.INFO, logger="lsjob"):
            waiter.start()
            waiter.join(60)
            assert not waiter.is_alive(), "still waiting on a lock whose holder writes nothing"
    finally:
        os.close(holder)  # lets a waiter that did not give up go on
        waiter.join(60)
    assert "nothing has been written to it for 0 s" in caplog.text and "going around it" in caplog.text
    assert len(calls) == 1
    assert_loaded(result[0], expected_arrays(cifar_sample, SMALL))
    assert dead.exists()  # a suspended holder's would still be in use
    assert not (datasets / cache_lock.CACHE_LOCK).exists()  # the stale lock file is gone: no task waits on it again


def test_tasks_waiting_on_a_stalled_holder_go_around_it_one_at_a_time(
    small_rows, cifar_sample, small_tar, trusted, monkeypatch, caplog, tmp_path
):
    # The first to give up takes the lock on a new file; the others move to it and read its copy.
    datasets, holder, calls = stalled_cache(small_tar, trusted, monkeypatch, tmp_path, stall_s=1.0, delay=0.2)
    try:
        with caplog.at_level(logging.INFO, logger="lsjob"):
            # They start apart, as a sweep's tasks do, and give up apart.
            results, errors = load_in_tasks(tmp_path / "cache", 3, apart_s=0.3)
    finally:
        os.close(holder)
    assert not errors and len(results) == 3
    assert len(calls) == 1, calls
    assert caplog.text.count("going around it") == 1
    for arrays in results.values():
        assert_loaded(arrays, expected_arrays(cifar_sample, SMALL))


def test_a_holder_that_keeps_writing_is_waited_for_however_long_it_takes(
    small_rows, cifar_sample, small_tar, trusted, monkeypatch, caplog, tmp_path
):
    datasets, holder, calls = stalled_cache(small_tar, trusted, monkeypatch, tmp_path, stall_s=1.0)
    live = datasets / ".download.a8b_q0"
    live.mkdir()
    done = threading.Event()

    def download():  # a slow download: its file grows a little at a time
        with open(live / cifar10.ARCHIVE_NAME, "ab") as f:
            while not done.wait(0.02):
                f.write(b"x")
                f.flush()

    writer = threading.Thread(target=download)
    result = []
    waiter = threading.Thread(target=lambda: result.append(cifar10.load_cifar10(None, tmp_path / "cache")))
    writer.start()
    waiter.start()
    try:
        waiter.join(3.0)  # three times the wait for a holder that writes nothing
        assert waiter.is_alive() and calls == [] and "going on without the lock" not in caplog.text
    finally:
        done.set()
        writer.join(10)
        shutil.rmtree(live)  # the holder's fill ends: it moves its download away and lets go
        os.close(holder)
        waiter.join(60)
    assert len(calls) == 1
    assert_loaded(result[0], expected_arrays(cifar_sample, SMALL))


def test_a_lock_won_on_a_file_its_holder_deleted_is_taken_again_on_the_file_now_there(monkeypatch, tmp_path):
    # The holder unlinks the lock file as it lets go: a waiter left holding a lock on that orphan
    # would fill the cache beside a task that locked the new file.
    lock = tmp_path / cache_lock.CACHE_LOCK
    real_flock, calls = fcntl.flock, []

    def holder_lets_go_first(fd, op):
        calls.append(fd)
        if len(calls) == 1:
            lock.unlink()  # what the holder does before closing, while this waiter was blocked
            lock.touch()  # and a task starting then made the file anew
        return real_flock(fd, op)

    monkeypatch.setattr(cache_lock.fcntl, "flock", holder_lets_go_first)
    fd, went_around = cache_lock._acquire(lock)
    try:
        assert len(calls) == 2 and not went_around
        assert os.fstat(fd).st_ino == os.stat(lock).st_ino
    finally:
        os.close(fd)


def test_a_lock_file_deleted_under_a_waiters_handle_is_waited_on_anew(monkeypatch, caplog, tmp_path):
    # NFSv3: the holder deletes the file as it lets go, and the waiter's next try on its handle
    # fails with a stale handle. That is no filesystem without locks: every waiter went on alone.
    lock = tmp_path / cache_lock.CACHE_LOCK
    real_flock, calls = fcntl.flock, []

    def stale_once(fd, op):
        calls.append(fd)
        if len(calls) == 1:
            lock.unlink()
            lock.touch()  # the next task made the file anew
            raise OSError(errno.ESTALE, os.strerror(errno.ESTALE))
        return real_flock(fd, op)

    monkeypatch.setattr(cache_lock.fcntl, "flock", stale_once)
    with caplog.at_level(logging.INFO, logger="lsjob"):
        fd, went_around = cache_lock._acquire(lock)
    try:
        assert fd is not None and not went_around and len(calls) == 2
        assert os.fstat(fd).st_ino == os.stat(lock).st_ino
        assert "going on without the lock" not in caplog.text
    finally:
        os.close(fd)


def test_a_stale_handle_seen_while_checking_the_lock_file_is_waited_on_anew(monkeypatch, caplog, tmp_path):
    lock = tmp_path / cache_lock.CACHE_LOCK
    holder = os.open(lock, os.O_RDWR | os.O_CREAT)
    fcntl.flock(holder, fcntl.LOCK_EX)
    real_fstat, stale = os.fstat, []

    def stale_once(fd):
        if not stale and fd != holder:
            stale.append(fd)
            os.unlink(lock)  # the holder let go: the file deleted on the server under the waiter's handle
            os.close(holder)
            lock.touch()
            raise OSError(errno.ESTALE, os.strerror(errno.ESTALE))
        return real_fstat(fd)

    monkeypatch.setattr(cache_lock, "LOCK_POLL_S", 0.01)
    monkeypatch.setattr(cache_lock.os, "fstat", stale_once)
    with caplog.at_level(logging.INFO, logger="lsjob"):
        fd, _ = cache_lock._acquire(lock)
    try:
        assert fd is not None and stale and "going on without the lock" not in caplog.text
    finally:
        os.close(fd)


def test_a_holder_gone_around_leaves_the_newer_holders_lock_file_alone(monkeypatch, tmp_path):
    # Resumed after a suspension, it must not delete the lock file that the task that went
    # around it holds: a third task would then fill beside that one.
    datasets = tmp_path / "datasets"
    with cache_lock.held(datasets):
        (datasets / cache_lock.CACHE_LOCK).unlink()  # gone around meanwhile: the file replaced
        (datasets / cache_lock.CACHE_LOCK).write_text("")
        newer = os.stat(datasets / cache_lock.CACHE_LOCK).st_ino
    assert os.stat(datasets / cache_lock.CACHE_LOCK).st_ino == newer


def test_a_stop_while_waiting_for_the_lock_stops_at_once(small_rows, monkeypatch, tmp_path):
    monkeypatch.setattr(preemption, "_requested", "SIGTERM")
    monkeypatch.setattr(cifar10, "fetch", offline)
    datasets = tmp_path / "cache" / "datasets"
    holder = hold_cache_lock(datasets)
    try:
        with pytest.raises(InterruptedRun, match="SIGTERM"):
            cifar10.load_cifar10(None, tmp_path / "cache")
    finally:
        os.close(holder)


def test_a_filesystem_without_locks_still_loads(
    small_rows, cifar_sample, small_tar, trusted, monkeypatch, caplog, tmp_path
):
    trusted(small_tar)

    def no_locks(fd, operation):
        raise OSError(errno.ENOLCK, "No locks available")

    monkeypatch.setattr(cache_lock.fcntl, "flock", no_locks)
    calls = []
    monkeypatch.setattr(cifar10, "fetch", fetch_counting(small_tar, calls))
    cache = tmp_path / "cache"
    with caplog.at_level(logging.WARNING, logger="lsjob"):
        assert_loaded(cifar10.load_cifar10(None, cache), expected_arrays(cifar_sample, SMALL))
    assert "cannot lock the dataset cache" in caplog.text and "No locks available" in caplog.text
    assert sorted(p.name for p in (cache / "datasets").iterdir()) == sorted([cifar10.ARCHIVE_NAME, BATCHES])


def test_a_lock_file_it_cannot_open_is_a_warning_and_the_load_goes_on(
    small_rows, cifar_sample, small_tar, trusted, monkeypatch, caplog, tmp_path
):
    # Another user's .cifar-10.lock (0644) in a shared cache: going on unlocked was silent.
    trusted(small_tar)

    def not_ours(lock):
        raise PermissionError(errno.EACCES, "Permission denied", str(lock))

    monkeypatch.setattr(cache_lock, "_acquire", not_ours)
    monkeypatch.setattr(cifar10, "fetch", lambda url, dest: shutil.copyfile(small_tar, dest))
    with caplog.at_level(logging.WARNING, logger="lsjob"):
        assert_loaded(cifar10.load_cifar10(None, tmp_path / "cache"), expected_arrays(cifar_sample, SMALL))
    assert "cannot lock the dataset cache" in caplog.text and "Permission denied" in caplog.text
