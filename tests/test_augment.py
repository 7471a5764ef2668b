"""The shift-and-flip augmentation (job/augment.py): the same resampling as Keras's
affine transform, shifts uniform within the spec's fraction, flips half the time."""

import numpy as np
import pytest

keras = pytest.importorskip("keras")
from keras import ops  # noqa: E402

from job.augment import RandomShiftFlip, interpolation_matrices  # noqa: E402

RNG = np.random.default_rng(0)
IMAGES = RNG.normal(size=(6, 32, 32, 3)).astype("float32")


def shift(images, dy, dx, fill_mode):
    rows = interpolation_matrices(ops.convert_to_tensor(np.float32(dy)), 32, fill_mode)
    cols = interpolation_matrices(ops.convert_to_tensor(np.float32(dx)), 32, fill_mode)
    return ops.convert_to_numpy(ops.einsum("byjc,bxj->byxc", ops.einsum("byi,bixc->byxc", rows, images), cols))


# TensorFlow's "wrap" is not periodic at the seam (its coordinate folding uses n - 1);
# ours is, like JAX's and scipy's grid-wrap, and is checked against np.roll below.
MODES = ["nearest", "reflect", "constant"] + (["wrap"] if keras.backend.backend() != "tensorflow" else [])


@pytest.mark.parametrize("fill_mode", MODES)
def test_sub_pixel_shifts_resample_exactly_as_keras_affine_transform(fill_mode):
    dy, dx = RNG.uniform(-3.2, 3.2, 6), RNG.uniform(-3.2, 3.2, 6)
    dy[0], dx[0] = 2.0, -1.0  # whole pixels too
    # affine_transform maps output (x, y) to input (x - dx, y - dy).
    transform = np.zeros((6, 8), np.float32)
    transform[:, [0, 4]] = 1.0
    transform[:, 2], transform[:, 5] = -dx, -dy
    expected = ops.convert_to_numpy(
        ops.image.affine_transform(IMAGES, transform, interpolation="bilinear", fill_mode=fill_mode, fill_value=0.0)
    )
    np.testing.assert_allclose(shift(IMAGES, dy, dx, fill_mode), expected, atol=1e-5)


def test_whole_pixel_shifts_fill_as_their_mode_says():
    image = IMAGES[:1]
    down_right = shift(image, [2.0], [3.0], "nearest")[0]
    np.testing.assert_array_equal(down_right[2:, 3:], image[0, :-2, :-3])
    np.testing.assert_array_equal(down_right[:2, 3:], np.repeat(image[0, :1, :-3], 2, axis=0))  # edge row repeated
    np.testing.assert_allclose(shift(image, [2.0], [3.0], "wrap")[0], np.roll(image[0], (2, 3), axis=(0, 1)), atol=1e-6)
    constant = shift(image, [-2.0], [0.0], "constant")[0]
    np.testing.assert_array_equal(constant[-2:], 0.0)
    np.testing.assert_allclose(constant[:-2], image[0, 2:], atol=1e-6)
    reflect = shift(image, [0.0], [2.0], "reflect")[0]
    np.testing.assert_allclose(reflect[:, :2], image[0, :, 1::-1], atol=1e-6)  # b a | a b c ...


def test_shifts_are_uniform_within_the_fraction_and_flips_happen_half_the_time():
    # A horizontal ramp (value = column) reads back each image's shift and flip exactly:
    # away from the edges, out[x] = x - dx, or (31 - x) - dx when flipped.
    n = 2000
    ramp = np.tile(np.arange(32, dtype=np.float32)[None, None, :, None], (n, 32, 1, 1))
    layer = RandomShiftFlip(0.1, flip=True, fill_mode="nearest", seed=3)
    out = ops.convert_to_numpy(layer(ramp, training=True))
    at_8, at_9 = out[:, 16, 8, 0], out[:, 16, 9, 0]
    flipped = at_9 < at_8
    dx = np.where(flipped, (31 - 8) - at_8, 8 - at_8)
    assert 0.45 < flipped.mean() < 0.55
    assert np.abs(dx).max() <= 3.2 + 1e-4  # 10% of 32 pixels
    assert dx.min() < -2.9 and dx.max() > 2.9 and abs(dx.mean()) < 0.15
    # Uniform: each quarter of [-3.2, 3.2] holds about a quarter of the shifts.
    quarters = np.histogram(dx, bins=4, range=(-3.2, 3.2))[0] / n
    np.testing.assert_allclose(quarters, 0.25, atol=0.04)
    # Vertical shifts likewise, and independent of the horizontal ones (one shared draw would
    # move every image along the diagonal): channel 0 a horizontal ramp, channel 1 a vertical one.
    both = np.concatenate([ramp[..., :1], np.swapaxes(ramp, 1, 2)[..., :1]], axis=-1)
    moved = ops.convert_to_numpy(RandomShiftFlip(0.1, flip=False, seed=4)(both, training=True))
    dx, dy = 8 - moved[:, 8, 8, 0], 8 - moved[:, 8, 8, 1]
    assert np.abs(dy).max() <= 3.2 + 1e-4 and dy.min() < -2.9 and dy.max() > 2.9 and abs(dy.mean()) < 0.15
    np.testing.assert_allclose(np.histogram(dy, bins=4, range=(-3.2, 3.2))[0] / n, 0.25, atol=0.04)
    assert abs(np.corrcoef(dx, dy)[0, 1]) < 0.1


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # the legacy code calls scipy.ndimage.interpolation
def test_shifts_and_flips_are_the_tutorials_image_data_generator(cifar_sample, monkeypatch):
    # The tutorial's ImageDataGenerator(width_shift_range=0.1, height_shift_range=0.1,
    # horizontal_flip=True, fill_mode="nearest"), on mean-subtracted real images, given the same draws.
    legacy = pytest.importorskip("keras.src.legacy.preprocessing.image", reason="Keras no longer ships it")
    from job import runtime

    x = cifar_sample["x_train"][:64].astype("float64")
    images = (x - x.mean(axis=0)).astype("float32")
    generator = legacy.ImageDataGenerator(
        width_shift_range=0.1, height_shift_range=0.1, horizontal_flip=True, fill_mode="nearest"
    )
    np.random.seed(0)  # the generator draws from numpy's global state
    draws = [generator.get_random_transform(images.shape[1:]) for _ in images]
    expected = np.stack([generator.apply_transform(image, d) for image, d in zip(images, draws)])
    tx, ty = (np.array([d[k] for d in draws]) for k in ("tx", "ty"))
    assert np.abs(tx).max() <= 3.2 and not np.allclose(tx, np.round(tx))  # sub-pixel shifts, as ours
    # Its ty moves the content up by ty pixels and its tx left by tx (tx is drawn from height_shift_range:
    # the legacy code swaps the axes), where ours moves it down by dy and right by dx.
    u = np.stack([(1 - ty / 3.2) / 2, (1 - tx / 3.2) / 2, np.where([d["flip_horizontal"] for d in draws], 0.25, 0.75)])
    monkeypatch.setattr(runtime, "uniform_per_replica", lambda shape, seed: ops.convert_to_tensor(u, "float32"))
    out = ops.convert_to_numpy(RandomShiftFlip(0.1, flip=True, fill_mode="nearest", seed=0)(images, training=True))
    np.testing.assert_allclose(out, expected, atol=2e-3)  # pixels of -150 to 150, float32


def test_inference_is_the_identity_and_a_seed_repeats_itself():
    x = IMAGES
    np.testing.assert_array_equal(ops.convert_to_numpy(RandomShiftFlip(0.1, True, seed=1)(x)), x)
    a = ops.convert_to_numpy(RandomShiftFlip(0.1, True, seed=1)(x, training=True))
    b = ops.convert_to_numpy(RandomShiftFlip(0.1, True, seed=1)(x, training=True))
    c = ops.convert_to_numpy(RandomShiftFlip(0.1, True, seed=2)(x, training=True))
    np.testing.assert_array_equal(a, b)
    assert not np.allclose(a, c)
    # Its random stream is a seed_generator_state variable: what train.EpochSeeds re-seeds each epoch.
    assert [v.name for v in RandomShiftFlip(0.1, True, seed=1).variables] == ["seed_generator_state"]


def test_the_config_keeps_every_setting():
    # What model.keras reloads: a reflect or constant fill read back as nearest would be another model.
    layer = RandomShiftFlip(0.2, False, fill_mode="reflect", seed=5)
    again = RandomShiftFlip.from_config(layer.get_config())
    assert (again.shift, again.flip, again.fill_mode, again.seed) == (0.2, False, "reflect", 5)


def test_a_bad_fill_mode_is_refused():
    with pytest.raises(ValueError, match="fill_mode"):
        RandomShiftFlip(0.1, True, fill_mode="mirror")


def test_the_default_fill_is_the_tutorials_nearest():
    # A layer built without naming a fill mode (the docstring's and the tutorial's default).
    layer = RandomShiftFlip(0.1, flip=False, seed=0)
    assert layer.fill_mode == "nearest" and layer.get_config()["fill_mode"] == "nearest"


def test_each_shift_is_a_fraction_of_its_own_side_on_a_non_square_image():
    # 8 rows by 32 columns, a vertical ramp (value = row): dy is at most 0.25 * 8 = 2 pixels.
    n = 500
    ramp = np.tile(np.arange(8, dtype=np.float32)[None, :, None, None], (n, 1, 32, 1))
    out = ops.convert_to_numpy(RandomShiftFlip(0.25, flip=False, seed=1)(ramp, training=True))
    dy = 4 - out[:, 4, 16, 0]
    assert np.abs(dy).max() <= 2.0 + 1e-4 and dy.min() < -1.8 and dy.max() > 1.8
