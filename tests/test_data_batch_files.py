"""The pickled batches (job/data/batch_files.py): read byte-exact, and a hostile or malformed
batch refused before any code runs, naming the file and what was expected."""

import pickle

import numpy as np
import pytest
from cifar_files import BROKEN, SMALL, Shell, assert_loaded, copy_batches, expected_arrays, write_batches, write_pickle

from job.data import CLASS_NAMES, batch_files, cifar10
from job.errors import DataError


@pytest.mark.parametrize("spelling", ["numpy.core.multiarray", "numpy._core.multiarray"])
def test_extracted_dir_round_trips_byte_exact(spelling, small_rows, cifar_sample, tmp_path):
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


def test_the_pickles_need_only_numpy_globals(small_batches):
    """The test files reference what the official ones do, so the allow-list is exercised for real."""
    import pickletools

    ops = pickletools.genops((small_batches / "data_batch_1").read_bytes())
    globals_ = {arg for op, arg, _ in ops if op.name == "GLOBAL"}
    assert globals_ == {"numpy.core.multiarray _reconstruct", "numpy ndarray", "numpy dtype"}


@pytest.mark.parametrize("where", ["whole file", "inside the dict"])
def test_malicious_pickle_runs_no_code(where, small_rows, small_batches, tmp_path):
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


@pytest.mark.parametrize("kind", BROKEN)
def test_malformed_batch(kind, small_rows, small_batches, tmp_path):
    batches = copy_batches(small_batches, tmp_path)
    batch = pickle.loads((batches / "data_batch_3").read_bytes(), encoding="bytes")
    write_pickle(batches / "data_batch_3", BROKEN[kind](batch))
    with pytest.raises(DataError, match="data_batch_3"):
        cifar10.load_cifar10(batches, None)


def test_truncated_batch_file(small_rows, small_batches, tmp_path):
    batches = copy_batches(small_batches, tmp_path)
    data = (batches / "test_batch").read_bytes()
    (batches / "test_batch").write_bytes(data[: len(data) // 2])
    with pytest.raises(DataError, match="test_batch") as err:
        cifar10.load_cifar10(batches, None)
    assert err.value.__cause__ is not None


def test_missing_batch_file(small_rows, small_batches, tmp_path):
    batches = copy_batches(small_batches, tmp_path)
    (batches / "data_batch_4").unlink()
    with pytest.raises(DataError, match="missing .*data_batch_4"):
        cifar10.load_cifar10(batches, None)


def test_wrong_label_names_in_meta(small_rows, small_batches, tmp_path):
    batches = copy_batches(small_batches, tmp_path)
    write_pickle(batches / "batches.meta", {b"label_names": [n.encode() for n in reversed(CLASS_NAMES)]})
    with pytest.raises(DataError, match="label_names"):
        cifar10.load_cifar10(batches, None)
