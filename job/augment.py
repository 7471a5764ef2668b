"""The recipe's augmentation as a layer: random shifts (up to a fraction of the image,
bilinear, with the tutorial's fill modes) and horizontal flips, per image.

Why not keras.layers.RandomTranslation + RandomFlip: they resample through a general
affine transform (a gather per output pixel). On the JAX backend that made the first
training step compile in 37 s instead of 11 s and every batch-64 step 45% slower on
this CPU; a gather is no friend of a GPU either. A shift is separable, so here it is
two small matrix products per image: out = Wy @ image @ Wx^T, where row o of Wy holds
the bilinear weights of source row o - dy (with the fill mode deciding what lies
beyond the edge). A flip is Wx's rows reversed. With the tutorial's fill_mode
"nearest" (and with "reflect"), the same distribution of outputs as its
ImageDataGenerator(width_shift_range, height_shift_range, horizontal_flip, fill_mode):
tests/test_augment.py checks it against that generator (Keras's legacy copy) on real
pixels, given the same draws. "constant" and "wrap" follow
scipy's grid-constant and grid-wrap, where ImageDataGenerator's scipy modes differ:
"constant" in a one-pixel border at fractional shifts, "wrap" in the whole strip wrapped
in (scipy's "wrap" repeats the image with a period of n - 1 pixels, one short of the
image). keras.ops only, so every backend runs it.
"""

from __future__ import annotations

import typing

import keras
from keras import ops

from job import runtime
from job.spec import FillMode

FILL_MODES = typing.get_args(FillMode)


def source_index(index, n: int, fill_mode: str):
    """Map integer source indices (any range) into [0, n) the way `fill_mode` extends the
    image; under `constant` an index outside is left outside, and so gets no weight."""
    if fill_mode == "nearest":  # a a a | a b c d | d d d
        return ops.clip(index, 0, n - 1)
    if fill_mode == "wrap":  # b c d | a b c d | a b c
        return ops.mod(index, n)
    if fill_mode == "reflect":  # c b a | a b c d | d c b (about the outer edge)
        folded = ops.mod(index, 2 * n)
        return ops.where(folded >= n, 2 * n - 1 - folded, folded)
    return index  # constant: zeros outside


def interpolation_matrices(shift, n: int, fill_mode: str):
    """(batch, n, n) matrices M with (M @ v)[o] = v sampled at o - shift, bilinearly."""
    source = ops.arange(n, dtype="float32")[None, :] - shift[:, None]  # (batch, n)
    below = ops.floor(source)
    weight_above = source - below
    columns = ops.arange(n, dtype="int32")
    matrix = 0.0
    for index, weight in ((below, 1.0 - weight_above), (below + 1.0, weight_above)):
        index = source_index(ops.cast(index, "int32"), n, fill_mode)
        # A comparison, not ops.one_hot: an index outside [0, n) must give a zero row on every backend.
        one_hot = ops.cast(ops.equal(index[:, :, None], columns[None, None, :]), "float32")
        matrix = matrix + one_hot * weight[:, :, None]
    return matrix


@keras.saving.register_keras_serializable(package="lsjob")
class RandomShiftFlip(keras.layers.Layer):
    """Training only: shift each image by a uniform random fraction in [-shift, shift] of
    its height and width, then flip it left-right with probability 1/2 (if `flip`)."""

    def __init__(self, shift: float, flip: bool, fill_mode: str = "nearest", seed: int | None = None, **kwargs):
        kwargs.setdefault("dtype", "float32")  # resampling in bf16 would blur the pixels
        super().__init__(**kwargs)
        if fill_mode not in FILL_MODES:
            raise ValueError(f"fill_mode must be one of {FILL_MODES}, got {fill_mode!r}")
        self.shift, self.flip, self.fill_mode, self.seed = float(shift), bool(flip), fill_mode, seed
        self.seed_generator = keras.random.SeedGenerator(seed)

    def call(self, images, training=None):
        if not training or (self.shift == 0 and not self.flip):
            return images
        batch = ops.shape(images)[0]
        height, width = images.shape[1], images.shape[2]
        # One draw for the three: on PyTorch each draw reads its seed back from the GPU, a sync
        # that stops eager steps from queueing ahead.
        u = runtime.uniform_per_replica((3, batch), self.seed_generator)
        dy = (2.0 * u[0] - 1.0) * self.shift * height
        dx = (2.0 * u[1] - 1.0) * self.shift * width
        rows = interpolation_matrices(dy, height, self.fill_mode)
        cols = interpolation_matrices(dx, width, self.fill_mode)
        if self.flip:
            cols = ops.where((u[2] < 0.5)[:, None, None], ops.flip(cols, axis=1), cols)
        images = ops.cast(images, "float32")
        shifted_rows = ops.einsum("byi,bixc->byxc", rows, images)
        return ops.einsum("byjc,bxj->byxc", shifted_rows, cols)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return {**super().get_config(), "shift": self.shift, "flip": self.flip, "fill_mode": self.fill_mode,
                "seed": self.seed}  # fmt: skip
