"""The Dataset both sources make: the holdout it sets aside and the recipe's per-pixel mean."""

import tracemalloc

import numpy as np
import pytest

from job.data import Dataset, per_pixel_mean
from job.errors import SpecError


def _dataset(train: int = 10, test: int = 4) -> Dataset:
    rng = np.random.default_rng(0)
    return Dataset(
        rng.integers(0, 256, (train, 32, 32, 3), dtype=np.uint8),
        (np.arange(train) % 10).astype(np.uint8),
        rng.integers(0, 256, (test, 32, 32, 3), dtype=np.uint8),
        (np.arange(test) % 10).astype(np.uint8),
        "test data",
    )


def test_the_holdout_is_the_last_training_images_with_their_own_labels_and_never_trained_on():
    """Temperature scaling is fitted on these: images paired with the wrong labels, or also
    trained on, would fit it to nonsense or to memorised answers."""
    data = _dataset()
    rest, x_holdout, y_holdout = data.split_holdout(3)
    assert np.array_equal(x_holdout, data.x_train[-3:]) and np.array_equal(y_holdout, data.y_train[-3:])
    assert np.array_equal(rest.x_train, data.x_train[:7]) and np.array_equal(rest.y_train, data.y_train[:7])
    assert rest.x_test is data.x_test and "last 3 train held out" in rest.description
    with pytest.raises(SpecError, match="eval.holdout_size is 10 but there are only 10 training images"):
        data.split_holdout(10)


def test_the_mean_image_is_per_pixel_exact_for_bright_images_without_a_float_copy_of_them():
    """Each pixel and channel its own mean (the recipe's; not one per channel), summed without
    overflow however bright the images, and without the float copy of the set that would take
    600 MB more for CIFAR-10's 50,000 images."""
    x = np.full((2000, 32, 32, 3), 250, dtype=np.uint8)
    x[:, :16] = 5  # the top half dark: a per-channel mean would blur the two halves together
    x[::4, 0, 0, 0] = 255
    tracemalloc.start()
    try:
        mean = per_pixel_mean(x)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < x.nbytes  # a float64 copy would be 8 times x
    assert mean.dtype == np.float32 and mean.shape == (32, 32, 3)
    assert mean[0, 0, 0] == pytest.approx((500 * 255 + 1500 * 5) / 2000) and mean[31, 31, 2] == 250
    assert mean[0, 0, 1] == 5 and mean[16, 0, 0] == 250


def test_head_keeps_each_image_with_its_own_label():
    # data.train_size/test_size: a prefix of images, and of their labels.
    full = _dataset(20, 12)
    part = full.head(10, 5)
    for name, n in (("x_train", 10), ("y_train", 10), ("x_test", 5), ("y_test", 5)):
        np.testing.assert_array_equal(getattr(part, name), getattr(full, name)[:n])


def test_labels_that_do_not_match_the_images_are_refused():
    full = _dataset()
    with pytest.raises(ValueError, match=r"labels \(3,\) do not match images \(4, 32, 32, 3\)"):
        Dataset(full.x_train, full.y_train, full.x_test, full.y_test[:3], "test data")


def test_a_synthetic_test_set_is_cifars_size_unless_the_spec_says_otherwise():
    from job.data import load_dataset
    from job.spec import TEST_IMAGES, DataSpec

    data = load_dataset(DataSpec(source="synthetic", train_size=10))
    assert len(data.x_train) == 10 and len(data.x_test) == len(data.y_test) == TEST_IMAGES == 10_000
