"""Official-format CIFAR-10 files for the data tests, written from real CIFAR-10 pixels.

The official batches were pickled by Python 2 (protocol 2): strings are Python 2
`str` opcodes, numpy's reconstructor is named numpy.core.multiarray._reconstruct.
Py2Pickler writes exactly that, so these files need the same globals the real ones
do and nothing more. Most tests shrink ROWS_PER_BATCH to 1,000 (the `small_rows` fixture: the
5,000-image sample makes five distinct train batches); one runs at the official counts.
Loaded as a pytest plugin (conftest.py), so its fixtures serve every test_data_* file.
"""

import fcntl
import hashlib
import io
import os
import pickle
import shutil
import struct
import tarfile
import urllib.error

import numpy as np
import pytest

from job.data import CLASS_NAMES, batch_files, cache_lock, cifar10

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
def small_rows(monkeypatch):
    monkeypatch.setattr(batch_files, "ROWS_PER_BATCH", SMALL)


@pytest.fixture(scope="module")
def small_batches(cifar_sample, tmp_path_factory):
    """Official-format batches at 1,000 rows each; copy before changing them."""
    return write_batches(tmp_path_factory.mktemp("small_rows"), cifar_sample)


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


def offline(url, dest):
    raise urllib.error.URLError(OSError(-3, "Temporary failure in name resolution"))


def hold_cache_lock(datasets):
    datasets.mkdir(parents=True, exist_ok=True)
    fd = os.open(datasets / cache_lock.CACHE_LOCK, os.O_RDWR | os.O_CREAT)
    fcntl.flock(fd, fcntl.LOCK_EX)
    return fd


class Shell:
    def __init__(self, command):
        self.command = command

    def __reduce__(self):
        return os.system, (self.command,)


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
