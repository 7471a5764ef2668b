"""The synthetic stand-in: deterministic, CIFAR-shaped, balanced, and learnable but not trivial."""

import numpy as np
import pytest

from job.data import Dataset, synthetic
from job.data.synthetic import CHUNK, make_synthetic


@pytest.fixture(scope="module")
def small():
    return make_synthetic(2000, 500, seed=0)


def test_same_seed_same_bytes(small):
    again = make_synthetic(2000, 500, seed=0)
    for a, b in zip(small, again):
        assert a.tobytes() == b.tobytes()


def test_threads_do_not_change_the_result(small, monkeypatch):
    monkeypatch.setattr(synthetic, "_WORKERS", 1)
    serial = make_synthetic(2000, 500, seed=0)
    for a, b in zip(small, serial):
        assert np.array_equal(a, b)


def test_different_seed_different_images(small):
    other = make_synthetic(2000, 500, seed=1)
    assert not np.array_equal(small[0], other[0])
    assert not np.array_equal(small[2], other[2])


def test_shapes_dtypes_and_the_dataset_contract(small):
    x_train, y_train, x_test, y_test = small
    assert x_train.shape == (2000, 32, 32, 3) and x_test.shape == (500, 32, 32, 3)
    assert y_train.shape == (2000,) and y_test.shape == (500,)
    assert {a.dtype for a in small} == {np.dtype(np.uint8)}
    Dataset(x_train, y_train, x_test, y_test, "synthetic")  # validates the contract


def test_labels_are_balanced_in_any_prefix(small):
    _, y_train, _, y_test = small
    for y in (y_train, y_test):
        assert set(np.unique(y)) == set(range(10))
        for n in (10, 37, 500, len(y)):
            counts = np.bincount(y[:n], minlength=10)
            assert counts.max() - counts.min() <= 1, (n, counts)


def test_images_use_the_full_range_and_vary(small):
    x_train = small[0]
    assert x_train.min() == 0 and x_train.max() == 255
    assert len(np.unique(x_train.reshape(len(x_train), -1), axis=0)) == len(x_train)


def test_test_images_are_not_train_images(small):
    x_train, _, x_test, _ = small
    train = {image.tobytes() for image in x_train}
    assert not any(image.tobytes() in train for image in x_test)


def test_a_prefix_does_not_depend_on_the_size():
    x_big, y_big, _, _ = make_synthetic(3 * CHUNK + 7, 50, seed=0)
    for size in (1, 100, CHUNK, CHUNK + 1):
        x, y, _, _ = make_synthetic(size, 50, seed=0)
        assert np.array_equal(x, x_big[:size]) and np.array_equal(y, y_big[:size])


def test_test_set_does_not_depend_on_the_train_size():
    a = make_synthetic(10, 300, seed=3)
    b = make_synthetic(1200, 300, seed=3)
    assert np.array_equal(a[2], b[2]) and np.array_equal(a[3], b[3])


@pytest.mark.parametrize("train_size, test_size", [(0, 10), (10, 0), (-5, 10), (10, 2.5), (True, 10)])
def test_rejects_bad_sizes(train_size, test_size):
    with pytest.raises(ValueError, match=r"_size must be an integer >= 1, got"):  # not numpy's own refusal
        make_synthetic(train_size, test_size, seed=0)


def _thumbnails(x: np.ndarray) -> np.ndarray:
    """8x8 colour thumbnails (4x4 block means), flattened, in [0, 1]."""
    return x.reshape(len(x), 8, 4, 8, 4, 3).mean(axis=(2, 4)).reshape(len(x), -1) / 255.0


def test_a_linear_model_learns_it_but_does_not_solve_it(small):
    """Class structure is real (a linear model on thumbnails beats chance by far),
    yet a linear model is nowhere near perfect: there is something left for a CNN."""
    discriminant = pytest.importorskip("sklearn.discriminant_analysis")
    x_train, y_train, x_test, y_test = small
    model = discriminant.LinearDiscriminantAnalysis().fit(_thumbnails(x_train), y_train)
    accuracy = model.score(_thumbnails(x_test), y_test)
    assert 0.5 <= accuracy < 0.9, accuracy


def test_no_single_pixel_gives_the_class_away(small):
    """The best any one pixel channel can do, each of 16 value bins voting for
    its most common training class, stays far from solving the task."""
    x_train, y_train, x_test, y_test = small
    train_bins = x_train.reshape(len(x_train), -1) // 16
    test_bins = x_test.reshape(len(x_test), -1) // 16
    pixel = np.arange(train_bins.shape[1])
    counts = np.zeros((len(pixel), 16, 10), dtype=np.int32)
    np.add.at(counts, (pixel, train_bins, y_train[:, None]), 1)
    votes = counts.argmax(axis=-1)
    accuracy = (votes[pixel, test_bins] == y_test[:, None]).mean(axis=0)
    assert accuracy.max() < 0.35, accuracy.max()


def test_full_size_generation():
    x_train, y_train, x_test, y_test = make_synthetic(50_000, 10_000, seed=0)
    assert x_train.shape == (50_000, 32, 32, 3) and x_test.shape == (10_000, 32, 32, 3)
    assert x_train.dtype == x_test.dtype == np.uint8
    assert np.array_equal(np.bincount(y_train), [5_000] * 10)
    assert np.array_equal(np.bincount(y_test), [1_000] * 10)


def test_a_prefix_says_how_evenly_it_holds_the_classes():
    # CIFAR-10's files are not sorted by class, but a prefix is not balanced either: say by how much.
    x = np.zeros((12, 32, 32, 3), np.uint8)
    y = np.array([0, 0, 0, 1, 2, 3, 4, 5, 6, 7, 8, 9], np.uint8)
    head = Dataset(x, y, x[:10], y[2:], "CIFAR-10 (cache)").head(6, None)
    assert head.description == "CIFAR-10 (cache), first 6 train (0 to 3 images a class)"
    assert len(head.x_train) == 6 and len(head.x_test) == 10
