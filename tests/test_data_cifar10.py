"""The CIFAR-10 loader, fed files written in the official format from real CIFAR-10 pixels.

The official batches were pickled by Python 2 (protocol 2): strings are Python 2
`str` opcodes, numpy's reconstructor is named numpy.core.multiarray._reconstruct.
Py2Pickler writes exactly that, so these files need the same globals the real ones
do and nothing more. Most tests shrink ROWS_PER_BATCH to 1,000 (the 5,000-image
sample makes five distinct train batches); one runs at the official counts.
"""

import errno
import fcntl
import hashlib
import io
import logging
import os
import pickle
import shutil
import struct
import tarfile
import threading
import time
import urllib.error
from pathlib import Path

import numpy as np
import pytest

from job import preemption
from job.data import CLASS_NAMES, batch_files, cache_lock, cifar10, download
from job.errors import DataError, InterruptedRun, NoSpaceError, StorageError

SMALL = 1000
RECONSTRUCT = np.empty(0, dtype=np.uint8).__reduce__()[0]
BATCHES = batch_files.BATCHES_DIR


class Py2Pickler(pickle._Pickler):
    """Protocol 2 as Python 2 wrote it: byte and text strings as `str`, numpy 1 global names."""

    dispatch = pickle._Pickler.dispatch.copy()
    reconstruct_module = "numpy.core.multiarray"

    def save_py2_str(self, obj):
        raw = obj.encode("latin-1") if isinstance(obj, str) else obj
        if len(raw) < 256:
            self.write(pickle.SHORT_BINSTRING + bytes([len(raw)]) + raw)
        else:
            self.write(pickle.BINSTRING + struct.pack("<i", len(raw)) + raw)
        self.memoize(obj)

    dispatch[bytes] = save_py2_str
    dispatch[str] = save_py2_str

    def save_global(self, obj, name=None):
        if obj is RECONSTRUCT:
            self.write(pickle.GLOBAL + f"{self.reconstruct_module}\n_reconstruct\n".encode())
            self.memoize(obj)
        else:
            super().save_global(obj, name)


def write_pickle(path, obj, reconstruct_module="numpy.core.multiarray"):
    with open(path, "wb") as f:
        pickler = Py2Pickler(f, protocol=2)
        pickler.reconstruct_module = reconstruct_module
        pickler.dump(obj)


def batch_dict(images, labels, batch_label):
    return {
        b"data": np.ascontiguousarray(images.transpose(0, 3, 1, 2).reshape(len(images), -1)),  # CHW rows
        b"labels": [int(v) for v in labels],
        b"batch_label": batch_label.encode(),
        b"filenames": [f"image_{i:05d}.png".encode() for i in range(len(images))],
    }


def expected_arrays(sample, rows):
    """What a loader must return for batches written by write_batches(sample, rows)."""
    train = np.arange(5 * rows) % len(sample["x_train"])
    test = np.arange(rows) % len(sample["x_test"])
    return sample["x_train"][train], sample["y_train"][train], sample["x_test"][test], sample["y_test"][test]


def write_batches(root, sample, rows=SMALL, reconstruct_module="numpy.core.multiarray"):
    """An official-format cifar-10-batches-py/ in `root`: the sample tiled to `rows` rows a batch."""
    x_train, y_train, x_test, y_test = expected_arrays(sample, rows)
    batches = root / BATCHES
    batches.mkdir(parents=True)
    for i in range(5):
        part = slice(i * rows, (i + 1) * rows)
        write_pickle(
            batches / f"data_batch_{i + 1}",
            batch_dict(x_train[part], y_train[part], f"training batch {i + 1} of 5"),
            reconstruct_module,
        )
    write_pickle(batches / "test_batch", batch_dict(x_test, y_test, "testing batch 1 of 1"), reconstruct_module)
    meta = {b"num_cases_per_batch": rows, b"label_names": [n.encode() for n in CLASS_NAMES], b"num_vis": 3072}
    write_pickle(batches / "batches.meta", meta, reconstruct_module)
    return batches


def make_tar(path, batches=None, evil=()):
    """A tar.gz with `evil` (TarInfo, bytes) members first, then the `batches` folder."""
    path.parent.mkdir(parents=True, exist_ok=True)
    # Level 0: real gzip framing without the CPU cost.
    with tarfile.open(path, "w:gz", compresslevel=0) as tar:
        for info, data in evil:
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
        if batches is not None:
            tar.add(batches, arcname=BATCHES)
    return path


def sha256(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


def assert_loaded(arrays, expected):
    names = ("x_train", "y_train", "x_test", "y_test")
    for name, got, want in zip(names, arrays, expected):
        assert got.dtype == np.uint8, name
        assert got.shape == want.shape, name
        assert got.flags.c_contiguous, name
        assert np.array_equal(got, want), name


def files_under(root):
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


@pytest.fixture
def small(monkeypatch):
    monkeypatch.setattr(batch_files, "ROWS_PER_BATCH", SMALL)


@pytest.fixture(scope="module")
def small_batches(cifar_sample, tmp_path_factory):
    """Official-format batches at 1,000 rows each; copy before changing them."""
    return write_batches(tmp_path_factory.mktemp("small"), cifar_sample)


@pytest.fixture(scope="module")
def small_tar(small_batches, tmp_path_factory):
    return make_tar(tmp_path_factory.mktemp("tar") / cifar10.ARCHIVE_NAME, small_batches)


@pytest.fixture
def trusted(monkeypatch):
    """Make the loader accept a test archive as the official one."""
    return lambda path: monkeypatch.setattr(cifar10, "CIFAR10_SHA256", sha256(path))


@pytest.fixture
def no_download(monkeypatch):
    def refuse(datasets):
        raise AssertionError(f"downloaded into {datasets}")

    monkeypatch.setattr(cifar10, "download_archive", refuse)


def copy_batches(small_batches, tmp_path):
    return shutil.copytree(small_batches, tmp_path / "copy" / BATCHES)


# ---------------------------------------------------------------------------- extracted folders


@pytest.mark.parametrize("spelling", ["numpy.core.multiarray", "numpy._core.multiarray"])
def test_extracted_dir_round_trips_byte_exact(spelling, small, cifar_sample, tmp_path):
    batches = write_batches(tmp_path, cifar_sample, reconstruct_module=spelling)
    expected = expected_arrays(cifar_sample, SMALL)
    # Five distinct train batches: the loaded set is exactly the sample, in order.
    assert np.array_equal(expected[0], cifar_sample["x_train"])
    assert_loaded(cifar10.load_cifar10(batches, tmp_path / "cache"), expected)
    assert_loaded(cifar10.load_cifar10(tmp_path, tmp_path / "cache"), expected)  # the parent folder
    assert not (tmp_path / "cache").exists()  # a folder is read where it is


def test_official_counts(cifar_sample, tmp_path):
    assert batch_files.ROWS_PER_BATCH == 10000
    batches = write_batches(tmp_path, cifar_sample, rows=10000)
    x_train, y_train, x_test, y_test = cifar10.load_cifar10(batches, None)
    assert x_train.shape == (50000, 32, 32, 3) and y_train.shape == (50000,)
    assert x_test.shape == (10000, 32, 32, 3) and y_test.shape == (10000,)
    assert {a.dtype for a in (x_train, y_train, x_test, y_test)} == {np.dtype(np.uint8)}
    assert y_train[:10].tolist() == [6, 9, 9, 4, 1, 1, 2, 7, 8, 3]
    assert y_test[:10].tolist() == [3, 8, 8, 0, 6, 6, 1, 6, 3, 1]
    for i in (0, 1, 4999):
        assert x_train[i].tobytes() == cifar_sample["x_train"][i].tobytes()
    assert_loaded((x_train, y_train, x_test, y_test), expected_arrays(cifar_sample, 10000))


def test_asking_for_every_image_by_size_is_not_refused(small, cifar_sample, small_batches):
    # data.train_size: 50000 on the full set; only more than there is is refused.
    from job.data import load_dataset
    from job.spec import DataSpec

    data = load_dataset(DataSpec(path=small_batches, train_size=5 * SMALL, test_size=SMALL))
    assert_loaded((data.x_train, data.y_train, data.x_test, data.y_test), expected_arrays(cifar_sample, SMALL))


def test_the_pickles_need_only_numpy_globals(small_batches):
    """The test files reference what the official ones do, so the allow-list is exercised for real."""
    import pickletools

    ops = pickletools.genops((small_batches / "data_batch_1").read_bytes())
    globals_ = {arg for op, arg, _ in ops if op.name == "GLOBAL"}
    assert globals_ == {"numpy.core.multiarray _reconstruct", "numpy ndarray", "numpy dtype"}


# ---------------------------------------------------------------------------- the archive


def test_archive_is_extracted_into_the_cache_then_reused(
    small, cifar_sample, small_tar, trusted, monkeypatch, tmp_path
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


def test_wrong_checksum_is_refused_before_extraction(small, small_tar, tmp_path):
    with pytest.raises(DataError) as err:
        cifar10.load_cifar10(small_tar, tmp_path / "cache")
    message = str(err.value)
    assert sha256(small_tar) in message and cifar10.CIFAR10_SHA256 in message and str(small_tar) in message
    assert files_under(tmp_path) == []


def test_truncated_archive(small, small_tar, trusted, tmp_path):
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
def test_garbage_file(checksum_matches, small, trusted, tmp_path):
    garbage = tmp_path / "garbage.tar.gz"
    garbage.write_bytes(np.random.default_rng(0).bytes(100_000))
    if checksum_matches:
        trusted(garbage)
    with pytest.raises(DataError, match="truncated or corrupt" if checksum_matches else "sha256"):
        cifar10.load_cifar10(garbage, tmp_path / "cache")
    assert not (tmp_path / "cache" / "datasets" / BATCHES).exists()


def test_invalid_batch_inside_archive_is_never_published(small, small_batches, trusted, tmp_path):
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
def test_hostile_archive_members_are_refused(kind, small, small_batches, trusted, tmp_path):
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


def test_unwritable_cache_extracts_to_a_temporary_folder(small, cifar_sample, small_tar, trusted, tmp_path):
    trusted(small_tar)
    blocker = tmp_path / "a-file"
    blocker.write_text("")  # a cache under a file can never be created, even by root
    assert_loaded(cifar10.load_cifar10(small_tar, blocker / "cache"), expected_arrays(cifar_sample, SMALL))


# ---------------------------------------------------------------------------- the batches


class Shell:
    def __init__(self, command):
        self.command = command

    def __reduce__(self):
        return os.system, (self.command,)


@pytest.mark.parametrize("where", ["whole file", "inside the dict"])
def test_malicious_pickle_runs_no_code(where, small, small_batches, tmp_path):
    batches = copy_batches(small_batches, tmp_path)
    marker = tmp_path / "pwned"
    payload = Shell(f"touch {marker}")
    if where == "inside the dict":
        payload = {**pickle.loads((batches / "data_batch_2").read_bytes(), encoding="bytes"), b"labels": payload}
    write_pickle(batches / "data_batch_2", payload)
    evil = (batches / "data_batch_2").read_bytes()
    with pytest.raises(DataError, match="data_batch_2") as err:
        cifar10.load_cifar10(batches, tmp_path / "cache")
    assert "system" in str(err.value)
    assert not marker.exists()
    # The payload is live: a plain unpickler would have run it.
    pickle.loads(evil, encoding="bytes")
    assert marker.exists()


def set_data(value):
    return lambda batch: {**batch, b"data": value(batch[b"data"])}


def set_labels(value):
    return lambda batch: {**batch, b"labels": value(batch[b"labels"])}


BROKEN = {
    "too few rows": set_data(lambda d: d[:-1]),
    "row too short": set_data(lambda d: d[:, :-1]),
    "flat data": set_data(lambda d: d.reshape(-1)),
    "float data": set_data(lambda d: d.astype(np.float32)),
    "int16 data": set_data(lambda d: d.astype(np.int16)),
    "data not an array": set_data(lambda d: d.tolist()[:3]),
    "label 10": set_labels(lambda y: [10] + y[1:]),
    "label -1": set_labels(lambda y: y[:-1] + [-1]),
    "float labels": set_labels(lambda y: [float(v) for v in y]),
    "too few labels": set_labels(lambda y: y[:-1]),
    "too many labels": set_labels(lambda y: y + [0]),
    "labels not a list": set_labels(lambda y: b"\x01" * len(y)),
    "no labels": lambda batch: {k: v for k, v in batch.items() if k != b"labels"},
    "not a dict": lambda batch: list(batch.items()),
}


@pytest.mark.parametrize("kind", BROKEN)
def test_malformed_batch(kind, small, small_batches, tmp_path):
    batches = copy_batches(small_batches, tmp_path)
    batch = pickle.loads((batches / "data_batch_3").read_bytes(), encoding="bytes")
    write_pickle(batches / "data_batch_3", BROKEN[kind](batch))
    with pytest.raises(DataError, match="data_batch_3"):
        cifar10.load_cifar10(batches, None)


def test_truncated_batch_file(small, small_batches, tmp_path):
    batches = copy_batches(small_batches, tmp_path)
    data = (batches / "test_batch").read_bytes()
    (batches / "test_batch").write_bytes(data[: len(data) // 2])
    with pytest.raises(DataError, match="test_batch") as err:
        cifar10.load_cifar10(batches, None)
    assert err.value.__cause__ is not None


def test_missing_batch_file(small, small_batches, tmp_path):
    batches = copy_batches(small_batches, tmp_path)
    (batches / "data_batch_4").unlink()
    with pytest.raises(DataError, match="missing .*data_batch_4"):
        cifar10.load_cifar10(batches, None)


def test_wrong_label_names_in_meta(small, small_batches, tmp_path):
    batches = copy_batches(small_batches, tmp_path)
    write_pickle(batches / "batches.meta", {b"label_names": [n.encode() for n in reversed(CLASS_NAMES)]})
    with pytest.raises(DataError, match="label_names"):
        cifar10.load_cifar10(batches, None)


# ---------------------------------------------------------------------------- data.path mistakes


def test_path_that_does_not_exist(tmp_path):
    with pytest.raises(DataError, match=f"does not exist; expected the official {cifar10.ARCHIVE_NAME}"):
        cifar10.load_cifar10(tmp_path / "nowhere", None)


def test_directory_without_batches(tmp_path):
    (tmp_path / "notes.txt").write_text("not CIFAR-10")
    with pytest.raises(DataError, match=f"holds no CIFAR-10 batches: expected data_batch_1.*{BATCHES}"):
        cifar10.load_cifar10(tmp_path, None)


# ---------------------------------------------------------------------------- the cache and the download


def offline(url, dest):
    raise urllib.error.URLError(OSError(-3, "Temporary failure in name resolution"))


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


@pytest.fixture
def server(monkeypatch):
    """A local HTTP server for the real fetch: serve(body, ...) -> its URL.
    `declared`: the Content-Length sent (a connection cut short sends more than it gives);
    `stall`: after the body, send nothing more and keep the connection, as a server that stops answering;
    `cuts`: how many bytes each response gives before the connection drops, one entry per request
    (then whole); `refusals`: a status for each request to answer instead (0: answer it);
    `ranges`: answer Range requests (206) as a static file server does, else send it whole (200),
    `skew` bytes before where it was asked (a broken server); `etags`: the ETag of each response,
    to see If-Range at work.
    serve.requests: the Range and If-Range headers of every request."""
    import http.server

    release = threading.Event()
    handlers = []
    requests = []

    def serve(body: bytes, declared=None, stall=False, cuts=(), ranges=False, skew=0, etags=(), refusals=()) -> str:
        cuts, etags, refusals = list(cuts), list(etags), list(refusals)

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self):
                asked, if_range = self.headers.get("Range"), self.headers.get("If-Range")
                requests.append((asked, if_range))
                refusal = refusals.pop(0) if refusals else None
                if refusal:  # this request refused with that status (then answered as usual)
                    self.send_response(refusal)
                    if refusal == 416:
                        self.send_header("Content-Range", f"bytes */{len(body)}")
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                etag = etags.pop(0) if etags else None
                start = 0
                if ranges and asked and (if_range is None or if_range == etag):
                    start = int(asked.removeprefix("bytes=").removesuffix("-")) - skew
                    self.send_response(206)
                    self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
                else:
                    self.send_response(200)
                if etag:
                    self.send_header("ETag", etag)
                self.send_header("Content-Length", str((len(body) if declared is None else declared) - start))
                self.send_header("Connection", "close")
                self.end_headers()
                part = body[start:]
                self.wfile.write(part[: cuts.pop(0)] if cuts else part)
                if stall:
                    self.wfile.flush()
                    release.wait(30)
                self.close_connection = True

            def log_message(self, *args):
                pass

        httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=httpd.serve_forever, daemon=True).start()
        handlers.append(httpd)
        return f"http://127.0.0.1:{httpd.server_address[1]}/{cifar10.ARCHIVE_NAME}"

    serve.requests = requests
    monkeypatch.setattr(download, "DOWNLOAD_RESUME_PAUSE_S", 0.0)
    yield serve
    release.set()
    for httpd in handlers:
        httpd.shutdown()
        httpd.server_close()


def test_a_real_download_over_http_is_verified_extracted_and_cached(
    small, cifar_sample, small_tar, trusted, server, monkeypatch, tmp_path
):
    trusted(small_tar)
    monkeypatch.setattr(cifar10, "CIFAR10_URL", server(small_tar.read_bytes()))
    cache = tmp_path / "cache"
    assert_loaded(cifar10.load_cifar10(None, cache), expected_arrays(cifar_sample, SMALL))
    assert sorted(p.name for p in (cache / "datasets").iterdir()) == sorted([cifar10.ARCHIVE_NAME, BATCHES])


@pytest.mark.parametrize("failure", ["stall", "cut short"])
def test_a_server_that_stalls_or_cuts_the_download_short_fails_it_in_time(
    failure, small, small_tar, trusted, server, monkeypatch, tmp_path
):
    # Keras's get_file had no timeout: a stalled server held every task of a sweep until its time limit.
    trusted(small_tar)
    data = small_tar.read_bytes()
    url = server(b"", declared=len(data), stall=True) if failure == "stall" else server(data[:1000], declared=len(data))
    monkeypatch.setattr(cifar10, "CIFAR10_URL", url)
    monkeypatch.setattr(download, "DOWNLOAD_STALL_S", 0.5)
    started = time.monotonic()
    with pytest.raises(DataError, match="could not download") as err:
        cifar10.load_cifar10(None, tmp_path / "cache")
    assert time.monotonic() - started < 20
    assert ("timed out" if failure == "stall" else f"after 1000 of {len(data)} bytes") in str(err.value)
    assert files_under(tmp_path / "cache") == ["datasets"]
    # Sending nothing fails at once; bytes that keep breaking off are resumed a bounded number of times.
    assert len(server.requests) == (1 if failure == "stall" else 1 + download.DOWNLOAD_RESUMES)


def test_a_download_that_breaks_off_resumes_where_it_stopped(small, cifar_sample, small_tar, trusted, server,
                                                             monkeypatch, caplog, tmp_path):  # fmt: skip
    trusted(small_tar)
    data = small_tar.read_bytes()
    third = len(data) // 3
    monkeypatch.setattr(cifar10, "CIFAR10_URL", server(data, cuts=[third, third], ranges=True, etags=['"v1"'] * 3))
    cache = tmp_path / "cache"
    with caplog.at_level(logging.WARNING, logger="lsjob"):
        assert_loaded(cifar10.load_cifar10(None, cache), expected_arrays(cifar_sample, SMALL))
    assert server.requests == [(None, None), (f"bytes={third}-", '"v1"'), (f"bytes={2 * third}-", '"v1"')]
    assert sum("broke off" in r.getMessage() for r in caplog.records) == 2
    assert (cache / "datasets" / cifar10.ARCHIVE_NAME).read_bytes() == data


def test_the_pause_before_each_resume_doubles(small_tar, server, monkeypatch, tmp_path):
    # Retrying a struggling server at once, five times, would spend the resumes in seconds.
    data = small_tar.read_bytes()
    url = server(data, cuts=[1000] * (1 + download.DOWNLOAD_RESUMES), ranges=True)
    monkeypatch.setattr(download, "DOWNLOAD_RESUME_PAUSE_S", 2.0)
    pauses = []
    monkeypatch.setattr(download, "_pause", pauses.append)
    with pytest.raises(OSError, match=f"closed after 6000 of {len(data)} bytes"):  # the resumes spent
        cifar10.fetch(url, tmp_path / "archive")
    assert pauses == [2.0, 4.0, 8.0, 16.0, 32.0]
    assert (tmp_path / "archive").stat().st_size == 6000  # every piece kept, each resume starting where it stopped


def test_a_resume_refused_for_a_while_is_tried_again(small, cifar_sample, small_tar, trusted, server, monkeypatch,
                                                    tmp_path):  # fmt: skip
    # Most of the file is here: an outage at the resume (503) is waited out, not the end.
    trusted(small_tar)
    data = small_tar.read_bytes()
    monkeypatch.setattr(cifar10, "CIFAR10_URL", server(data, cuts=[1000], ranges=True, refusals=[0, 503, 503]))
    assert_loaded(cifar10.load_cifar10(None, tmp_path / "cache"), expected_arrays(cifar_sample, SMALL))
    assert [asked for asked, _ in server.requests] == [None, "bytes=1000-", "bytes=1000-", "bytes=1000-"]


def test_a_connection_lost_after_the_last_byte_is_a_whole_file(small, cifar_sample, small_tar, trusted, server,
                                                               monkeypatch, tmp_path):  # fmt: skip
    # The server says 416 (nothing left from there, `bytes */size`): the file is whole.
    trusted(small_tar)
    data = small_tar.read_bytes()
    url = server(data, declared=len(data) + 1, ranges=True, refusals=[0, 416])  # one byte short by its count
    monkeypatch.setattr(cifar10, "CIFAR10_URL", url)
    assert_loaded(cifar10.load_cifar10(None, tmp_path / "cache"), expected_arrays(cifar_sample, SMALL))
    assert [asked for asked, _ in server.requests] == [None, f"bytes={len(data)}-"]


def test_a_resume_after_a_new_file_continues_the_new_one(small, cifar_sample, small_tar, trusted, server,
                                                         monkeypatch, tmp_path):  # fmt: skip
    # The second answer is a new version, whole (its If-Range failed); the next resume must ask for
    # that one, or every later resume fails If-Range and starts over.
    trusted(small_tar)
    data = small_tar.read_bytes()
    url = server(data, cuts=[1000, 2000], ranges=True, etags=['"v1"', '"v2"', '"v2"'])
    monkeypatch.setattr(cifar10, "CIFAR10_URL", url)
    assert_loaded(cifar10.load_cifar10(None, tmp_path / "cache"), expected_arrays(cifar_sample, SMALL))
    assert server.requests == [(None, None), ("bytes=1000-", '"v1"'), ("bytes=2000-", '"v2"')]


@pytest.mark.parametrize("why", ["no ranges", "file changed"])
def test_a_resume_the_server_answers_whole_starts_the_file_over(why, small, cifar_sample, small_tar, trusted, server,
                                                                monkeypatch, tmp_path):  # fmt: skip
    # A server without Range support, or a file replaced meanwhile (If-Range fails), sends all of it:
    # appended, it would make an archive of two halves.
    trusted(small_tar)
    data = small_tar.read_bytes()
    changed = why == "file changed"
    url = server(data, cuts=[1000], ranges=changed, etags=['"v1"', '"v2"'] if changed else ())
    monkeypatch.setattr(cifar10, "CIFAR10_URL", url)
    cache = tmp_path / "cache"
    assert_loaded(cifar10.load_cifar10(None, cache), expected_arrays(cifar_sample, SMALL))
    assert server.requests == [(None, None), ("bytes=1000-", '"v1"' if changed else None)]
    assert (cache / "datasets" / cifar10.ARCHIVE_NAME).read_bytes() == data


def test_a_resume_from_the_wrong_byte_is_refused(small, small_tar, trusted, server, monkeypatch, tmp_path):
    trusted(small_tar)
    data = small_tar.read_bytes()
    monkeypatch.setattr(cifar10, "CIFAR10_URL", server(data, cuts=[1000], ranges=True, skew=1))
    with pytest.raises(DataError, match="resumed at 'bytes 999-.*not at byte 1000"):
        cifar10.load_cifar10(None, tmp_path / "cache")
    assert files_under(tmp_path / "cache") == ["datasets"]


def test_a_stop_during_the_download_stops_it_and_leaves_nothing(small, small_tar, trusted, server, monkeypatch,
                                                                 tmp_path):  # fmt: skip
    trusted(small_tar)
    monkeypatch.setattr(cifar10, "CIFAR10_URL", server(small_tar.read_bytes()))
    monkeypatch.setattr(preemption, "_requested", "SIGTERM")  # arrives as the first bytes do
    with pytest.raises(InterruptedRun, match="SIGTERM"):
        cifar10.load_cifar10(None, tmp_path / "cache")
    assert files_under(tmp_path / "cache") == ["datasets"]


@pytest.mark.parametrize("sent", [0, 1024])
def test_a_stop_during_a_stalled_or_slow_download_is_a_stop_at_once(sent, small, small_tar, trusted, server,
                                                                    monkeypatch, tmp_path):  # fmt: skip
    # SIGTERM while the server sends nothing (it ended as the timeout did: exit 3, never requeued),
    # or while a slow link has sent less than a read's worth (it waited for all 64 KB).
    trusted(small_tar)
    data = small_tar.read_bytes()
    monkeypatch.setattr(cifar10, "CIFAR10_URL", server(data[:sent], declared=len(data), stall=True))
    monkeypatch.setattr(download, "DOWNLOAD_STALL_S", 0.5 if sent == 0 else 20.0)
    monkeypatch.setattr(preemption, "_requested", "SIGTERM")
    started = time.monotonic()
    with pytest.raises(InterruptedRun, match="SIGTERM"):
        cifar10.load_cifar10(None, tmp_path / "cache")
    assert time.monotonic() - started < 10
    assert files_under(tmp_path / "cache") == ["datasets"]


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
    stage, small, small_tar, trusted, monkeypatch, tmp_path
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


def test_a_link_planted_as_the_cache_lock_makes_no_file_where_it_points(small, small_tar, trusted, monkeypatch,
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


@pytest.mark.parametrize("stage", ["download", "extraction"])
def test_a_full_disk_while_filling_the_cache_says_so_with_exit_6(stage, small, small_tar, trusted, monkeypatch,
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


def test_folders_left_by_a_killed_fill_are_deleted_once_stale(small, small_tar, trusted, monkeypatch, tmp_path):
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


def test_a_damaged_cache_says_to_delete_it(small, small_batches, no_download, tmp_path):
    batches = shutil.copytree(small_batches, tmp_path / "cache" / "datasets" / BATCHES)
    data = (batches / "data_batch_3").read_bytes()
    (batches / "data_batch_3").write_bytes(data[: len(data) // 2])
    with pytest.raises(DataError, match="data_batch_3") as err:
        cifar10.load_cifar10(None, tmp_path / "cache")
    assert f"the cached copy in {batches} is damaged: delete it to fetch CIFAR-10 again" in str(err.value)


def test_a_cache_that_cannot_be_read_is_named_not_called_damaged(small, small_batches, no_download, monkeypatch,
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


def test_download_then_extract(small, cifar_sample, small_tar, trusted, monkeypatch, tmp_path):
    trusted(small_tar)

    monkeypatch.setattr(cifar10, "fetch", lambda url, dest: shutil.copyfile(small_tar, dest))
    cache = tmp_path / "cache"
    assert_loaded(cifar10.load_cifar10(None, cache), expected_arrays(cifar_sample, SMALL))
    assert sorted(p.name for p in (cache / "datasets").iterdir()) == sorted([cifar10.ARCHIVE_NAME, BATCHES])


@pytest.mark.parametrize("damage", ["truncate", "garbage"])
def test_a_download_killed_or_corrupted_midway_never_takes_the_real_name(
    damage, small, small_tar, trusted, monkeypatch, tmp_path
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
def test_cache_populated_like_keras(layout, small, cifar_sample, small_batches, no_download, tmp_path):
    cache = tmp_path / "cache"
    shutil.copytree(small_batches, cache / "datasets" / layout)
    assert_loaded(cifar10.load_cifar10(None, cache), expected_arrays(cifar_sample, SMALL))


def test_keras_home_cache_is_the_default(small, cifar_sample, small_batches, no_download, monkeypatch, tmp_path):
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "keras-home"))
    shutil.copytree(small_batches, tmp_path / "keras-home" / "datasets" / BATCHES)
    assert_loaded(cifar10.load_cifar10(None, None), expected_arrays(cifar_sample, SMALL))


def test_incomplete_cached_folder_is_not_used(small, small_batches, monkeypatch, tmp_path):
    cache = tmp_path / "cache"
    partial = shutil.copytree(small_batches, cache / "datasets" / f"cifar-10-batches-py-target/{BATCHES}")
    (partial / "test_batch").unlink()  # Keras was killed mid-extraction
    monkeypatch.setattr(cifar10, "fetch", offline)
    with pytest.raises(DataError, match="could not download"):
        cifar10.load_cifar10(None, cache)


@pytest.mark.parametrize("name", [cifar10.ARCHIVE_NAME, "cifar-10-batches-py-target_archive"])
def test_archive_in_cache_is_used(name, small, cifar_sample, small_tar, trusted, no_download, tmp_path):
    trusted(small_tar)
    cache = tmp_path / "cache"
    (cache / "datasets").mkdir(parents=True)
    shutil.copyfile(small_tar, cache / "datasets" / name)
    assert_loaded(cifar10.load_cifar10(None, cache), expected_arrays(cifar_sample, SMALL))
    assert (cache / "datasets" / BATCHES / "test_batch").is_file()


def test_partial_download_in_cache_is_not_trusted(small, small_tar, trusted, monkeypatch, tmp_path):
    trusted(small_tar)
    cache = tmp_path / "cache"
    (cache / "datasets").mkdir(parents=True)
    data = small_tar.read_bytes()
    (cache / "datasets" / cifar10.ARCHIVE_NAME).write_bytes(data[: len(data) // 2])
    monkeypatch.setattr(cifar10, "fetch", offline)
    with pytest.raises(DataError, match="could not download"):
        cifar10.load_cifar10(None, cache)
    assert not (cache / "datasets" / BATCHES).exists()


def test_leftover_staging_folder_is_not_a_cache(small, small_batches, monkeypatch, tmp_path):
    cache = tmp_path / "cache"
    # What a process killed between extraction and rename leaves behind.
    shutil.copytree(small_batches, cache / "datasets" / f".{BATCHES}.k1ll3d.partial" / BATCHES)
    monkeypatch.setattr(cifar10, "fetch", offline)
    with pytest.raises(DataError, match="could not download"):
        cifar10.load_cifar10(None, cache)


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
    small, cifar_sample, small_tar, trusted, monkeypatch, tmp_path
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
    small, cifar_sample, small_tar, trusted, monkeypatch, tmp_path
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
    small, cifar_sample, small_tar, trusted, monkeypatch, caplog, tmp_path, stage
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


def hold_cache_lock(datasets):
    datasets.mkdir(parents=True, exist_ok=True)
    fd = os.open(datasets / cache_lock.CACHE_LOCK, os.O_RDWR | os.O_CREAT)
    fcntl.flock(fd, fcntl.LOCK_EX)
    return fd


def test_an_archive_given_as_data_path_is_extracted_under_the_cache_lock(small, small_tar, trusted, monkeypatch,
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
    small, cifar_sample, small_tar, trusted, monkeypatch, caplog, tmp_path
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
    small, cifar_sample, small_tar, trusted, monkeypatch, caplog, tmp_path
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
    small, cifar_sample, small_tar, trusted, monkeypatch, caplog, tmp_path
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
    small, cifar_sample, small_tar, trusted, monkeypatch, caplog, tmp_path
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
    with cache_lock.cache_lock(datasets):
        (datasets / cache_lock.CACHE_LOCK).unlink()  # gone around meanwhile: the file replaced
        (datasets / cache_lock.CACHE_LOCK).write_text("")
        newer = os.stat(datasets / cache_lock.CACHE_LOCK).st_ino
    assert os.stat(datasets / cache_lock.CACHE_LOCK).st_ino == newer


def test_a_stop_while_waiting_for_the_lock_stops_at_once(small, monkeypatch, tmp_path):
    monkeypatch.setattr(preemption, "_requested", "SIGTERM")
    monkeypatch.setattr(cifar10, "fetch", offline)
    datasets = tmp_path / "cache" / "datasets"
    holder = hold_cache_lock(datasets)
    try:
        with pytest.raises(InterruptedRun, match="SIGTERM"):
            cifar10.load_cifar10(None, tmp_path / "cache")
    finally:
        os.close(holder)


def test_a_filesystem_without_locks_still_loads(small, cifar_sample, small_tar, trusted, monkeypatch, caplog, tmp_path):
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
    small, cifar_sample, small_tar, trusted, monkeypatch, caplog, tmp_path
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


def test_an_incomplete_folder_under_the_final_name_is_moved_aside_once(
    small, cifar_sample, small_batches, small_tar, trusted, no_download, monkeypatch, caplog, tmp_path
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


# ---------------------------------------------------------------------------- the corpus, as users meet it


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
    small, small_batches, monkeypatch, capsys, tmp_path
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
