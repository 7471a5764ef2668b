"""The CIFAR-10 python batches: pickles read by an unpickler that can build nothing but numpy arrays.

The batch files are untrusted input (an archive from the network, a folder a user points
at): a hostile pickle fails before any code runs, and a malformed batch is a DataError that
names the file and what was expected.
"""

from __future__ import annotations

import errno
import os
import pickle
from pathlib import Path

import numpy as np

from job.data import CLASS_NAMES
from job.errors import DataError

BATCHES_DIR = "cifar-10-batches-py"  # the archive's folder, and where Keras extracts it
TRAIN_BATCHES = tuple(f"data_batch_{i}" for i in range(1, 6))
TEST_BATCH = "test_batch"
BATCH_FILES = (*TRAIN_BATCHES, TEST_BATCH)
META_FILE = "batches.meta"
ROWS_PER_BATCH = 10000
SIDE, CHANNELS = 32, 3
ROW_BYTES = SIDE * SIDE * CHANNELS
NUM_CLASSES = len(CLASS_NAMES)


def unreadable(path, error: OSError) -> DataError:
    denied = error.errno in (errno.EACCES, errno.EPERM)
    fix = "make it readable" if denied else "check the storage"
    return DataError(
        f"cannot read {path} ({error.strerror or error}) as user {os.getuid()}; {fix}, or point data.path "
        "or data.cache_dir elsewhere"
    )


def find_batches(directory: Path, complete: bool) -> Path | None:
    """`directory` or its cifar-10-batches-py/ if it holds batch files (all of them, if `complete`)."""
    present = all if complete else any
    for candidate in (directory, directory / BATCHES_DIR):
        if present((candidate / name).is_file() for name in BATCH_FILES):
            return candidate
    return None


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
        raise unreadable(path, e) from e
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
    missing = [name for name in BATCH_FILES if not (directory / name).is_file()]
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
