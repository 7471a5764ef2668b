"""A synthetic CIFAR-shaped stand-in: learnable, deterministic, offline.

Each class is a textured object on a cluttered background. An object has three
attributes (colour palette, silhouette, texture), five values each, and every
value is shared by exactly two classes, so no single attribute names the class:
the model has to combine colour with shape or texture, much as on real images.
Per-image jitter (position, size, texture period and phase, colours, contrast,
brightness, pixel noise) keeps it from being trivial. Every attribute is
mirror-symmetric, so the recipe's horizontal flips never turn one class into
another.

Images are made in fixed-size chunks, each from its own generator seeded by
(seed, split, chunk index): the test set never shares a stream with the train
set, the first k images do not depend on how many were asked for, and the only
float32 arrays are a chunk's, one chunk per worker thread.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor

import numpy as np

NUM_CLASSES = 10
SIZE = 32
# Big enough that numpy's per-call overhead is lost in the array work, small
# enough that a chunk's float32 planes are a few MB; a multiple of NUM_CLASSES
# so that every chunk is balanced.
CHUNK = 500
_PER_CLASS = CHUNK // NUM_CLASSES
_TRAIN, _TEST = 0, 1
_WORKERS = min(4, os.cpu_count() or 1)
_SQRT2 = np.float32(np.sqrt(2.0))

# Two colours per palette: the texture blends between them.
_PALETTES = np.array(
    [
        [[0.85, 0.15, 0.10], [0.95, 0.75, 0.20]],  # red / yellow
        [[0.10, 0.35, 0.85], [0.60, 0.85, 0.95]],  # blue / pale cyan
        [[0.15, 0.60, 0.15], [0.70, 0.90, 0.30]],  # green / lime
        [[0.55, 0.15, 0.70], [0.95, 0.55, 0.80]],  # purple / pink
        [[0.35, 0.22, 0.10], [0.90, 0.90, 0.85]],  # brown / off-white
    ],
    dtype=np.float32,
)

# Signed distance (negative inside, in pixels) from |dx|, |dy|, the radius r and
# the object's size s.
_SILHOUETTES = (
    lambda ax, ay, r, s: r - s,  # disk
    lambda ax, ay, r, s: np.maximum(ax, ay) - 0.85 * s,  # square
    lambda ax, ay, r, s: np.abs(r - 0.7 * s) - 0.3 * s,  # ring
    lambda ax, ay, r, s: (ax + ay) / _SQRT2 - 0.8 * s,  # diamond
    lambda ax, ay, r, s: np.maximum(np.minimum(ax, ay) - 0.4 * s, np.maximum(ax, ay) - s),  # cross
)

# A wave in [-1, 1] from dx, dy, r, the angular frequency k and the phase p.
# dy comes multiplied by a random sign, which only changes which way diagonal
# stripes lean: mirror images belong to the same class.
_TEXTURES = (
    lambda dx, dy, r, k, p: np.cos(k * dy + p),  # horizontal stripes
    lambda dx, dy, r, k, p: np.cos(k * dx + p),  # vertical stripes
    lambda dx, dy, r, k, p: np.cos(k / _SQRT2 * (dx + dy) + p),  # diagonal stripes
    lambda dx, dy, r, k, p: np.cos(k * dx + p) * np.cos(k * dy + p),  # checks
    lambda dx, dy, r, k, p: np.cos(k * r + p),  # concentric rings
)

# Class c: palette c % 5; silhouette and texture shifted in the second half so
# two classes share at most one attribute.
_CLASS_PALETTE = [c % 5 for c in range(NUM_CLASSES)]
_CLASS_SILHOUETTE = [(c + c // 5) % 5 for c in range(NUM_CLASSES)]
_CLASS_TEXTURE = [(c + 2 * (c // 5)) % 5 for c in range(NUM_CLASSES)]


def make_synthetic(train_size: int, test_size: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """x_train uint8 (train_size,32,32,3), y_train uint8, x_test, y_test: deterministic for a seed."""
    for name, size in (("train_size", train_size), ("test_size", test_size)):
        if isinstance(size, bool) or not isinstance(size, (int, np.integer)) or size < 1:
            raise ValueError(f"{name} must be an integer >= 1, got {size!r}")
    x_train, y_train = _split(train_size, seed, _TRAIN)
    x_test, y_test = _split(test_size, seed, _TEST)
    return x_train, y_train, x_test, y_test


def _split(size: int, seed: int, split_id: int) -> tuple[np.ndarray, np.ndarray]:
    x = np.empty((size, SIZE, SIZE, 3), dtype=np.uint8)
    y = np.empty(size, dtype=np.uint8)

    def fill(index: int) -> None:
        # The whole chunk is always drawn, so a prefix never depends on `size`.
        images, labels = _chunk(np.random.default_rng([seed, split_id, index]))
        start = index * CHUNK
        stop = min(start + CHUNK, size)
        x[start:stop] = images[: stop - start]
        y[start:stop] = labels[: stop - start]

    # Chunks are independent and numpy releases the GIL in its array loops, so
    # threads share the work; each chunk has its own generator, so the result
    # does not depend on which thread drew it.
    with ThreadPoolExecutor(max_workers=_WORKERS) as pool:
        list(pool.map(fill, range(-(-size // CHUNK))))
    return x, y


def _chunk(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """CHUNK images with shuffled labels.

    They are drawn sorted by class, so each class renders its silhouette and
    texture on a contiguous slice, and only then moved to their shuffled places.
    """
    labels = _balanced_labels(rng)
    sorted_images = _render_sorted(rng)
    images = np.empty_like(sorted_images)
    images[np.argsort(labels, kind="stable")] = sorted_images
    return images, labels


def _balanced_labels(rng: np.random.Generator) -> np.ndarray:
    # Every run of ten is a permutation of the classes: any prefix is balanced to within one.
    blocks = np.tile(np.arange(NUM_CLASSES, dtype=np.uint8), (CHUNK // NUM_CLASSES, 1))
    return rng.permuted(blocks, axis=1).reshape(-1)


def _render_sorted(rng: np.random.Generator) -> np.ndarray:
    # Planar (3, CHUNK, 32, 32) while in float: per-image colours then broadcast
    # over whole 32x32 planes, far faster than over a trailing axis of 3.
    mask, blend = _object_maps(rng)
    colour_a, colour_b = _colours(rng)
    image = _background(rng)
    # Composite in place: image += mask * (object - image).
    obj = colour_a + (colour_b - colour_a) * blend
    obj -= image
    obj *= mask
    image += obj
    return _finish(image, rng)


def _object_maps(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Per image, a soft silhouette mask and a texture blend weight, both in [0, 1]."""
    centre = rng.uniform(10.0, 22.0, size=(2, CHUNK, 1, 1)).astype(np.float32)
    grid = np.arange(SIZE, dtype=np.float32) + 0.5
    dy = grid[None, :, None] - centre[0]  # (CHUNK, 32, 1): broadcasting keeps the 1-D parts small
    dx = grid[None, None, :] - centre[1]  # (CHUNK, 1, 32)
    r = np.sqrt(dx * dx + dy * dy)
    size = rng.uniform(6.5, 10.5, size=(CHUNK, 1, 1)).astype(np.float32)
    # Period and phase vary per image, so a class average is flat and only a
    # model that sees local structure can use the texture.
    k = (2 * np.pi / rng.uniform(3.5, 7.0, size=(CHUNK, 1, 1))).astype(np.float32)
    phase = rng.uniform(0.0, 2 * np.pi, size=(CHUNK, 1, 1)).astype(np.float32)
    lean = rng.choice(np.array([-1.0, 1.0], dtype=np.float32), size=(CHUNK, 1, 1))

    mask = np.empty((CHUNK, SIZE, SIZE), dtype=np.float32)
    blend = np.empty_like(mask)
    for c in range(NUM_CLASSES):
        s = slice(c * _PER_CLASS, (c + 1) * _PER_CLASS)
        distance = _SILHOUETTES[_CLASS_SILHOUETTE[c]](np.abs(dx[s]), np.abs(dy[s]), r[s], size[s])
        mask[s] = np.clip(0.5 - distance, 0.0, 1.0)  # a one-pixel soft edge
        blend[s] = _TEXTURES[_CLASS_TEXTURE[c]](dx[s], dy[s] * lean[s], r[s], k[s], phase[s])
    blend *= 0.5
    blend += 0.5
    return mask, blend


def _colours(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Each image's two palette colours (3, CHUNK, 1, 1), nudged, and at random which is which."""
    palette = np.repeat(np.array(_CLASS_PALETTE), _PER_CLASS)
    pair = _PALETTES[palette] + rng.normal(0.0, 0.08, size=(CHUNK, 2, 3)).astype(np.float32)
    swap = rng.random(CHUNK) < 0.5
    pair[swap] = pair[swap, ::-1]
    # Contiguous, or numpy lays out everything computed from them channel-last.
    planar = np.ascontiguousarray(pair.transpose(1, 2, 0))[..., None, None]
    return planar[0], planar[1]


def _background(rng: np.random.Generator, blobs: int = 3) -> np.ndarray:
    """Class-independent clutter (3, CHUNK, 32, 32): a muted vertical gradient plus a few soft blobs.

    Every term is separable, a row profile times a column profile times a
    colour, so their sum is one batched matmul.
    """
    grid = np.arange(SIZE, dtype=np.float32) + 0.5
    top, bottom = _muted(rng, (2, CHUNK))
    t = np.broadcast_to(grid / SIZE, (CHUNK, 1, SIZE))
    flat = np.ones((CHUNK, 1, SIZE), dtype=np.float32)

    centre = rng.uniform(0.0, SIZE, size=(2, CHUNK, blobs, 1)).astype(np.float32)
    width = rng.uniform(3.0, 8.0, size=(CHUNK, blobs, 1)).astype(np.float32)
    blob_rows = np.exp(-0.5 * ((grid - centre[0]) / width) ** 2)
    blob_cols = np.exp(-0.5 * ((grid - centre[1]) / width) ** 2)
    blob_colours = 0.6 * (_muted(rng, (CHUNK, blobs)) - 0.5 * (top + bottom)[:, None])

    # Term j of image n: rows[n, j, y] * colours[n, j, channel] * cols[n, j, x].
    rows = np.concatenate([1.0 - t, t, blob_rows], axis=1)
    cols = np.concatenate([flat, flat, blob_cols], axis=1)
    colours = np.concatenate([top[:, None], bottom[:, None], blob_colours], axis=1)
    left = rows.transpose(0, 2, 1)[None] * colours.transpose(2, 0, 1)[:, :, None, :]
    # C order in, C order out: a planar result the composite can stream through.
    return np.ascontiguousarray(left) @ cols


def _muted(rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
    # Greyish colours, so the background rarely looks like any palette.
    grey = rng.uniform(0.15, 0.85, size=(*shape, 1))
    tint = rng.normal(0.0, 0.08, size=(*shape, 3))
    return (grey + tint).astype(np.float32)


def _finish(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Contrast, brightness and pixel noise, then quantised to uint8 (CHUNK, 32, 32, 3)."""
    contrast = rng.uniform(0.6, 1.2, size=(CHUNK, 1, 1)).astype(np.float32)
    brightness = rng.uniform(-0.15, 0.15, size=(CHUNK, 1, 1)).astype(np.float32)
    # (image - 0.5) * contrast + 0.5 + brightness, in 0-255; +0.5 so truncation
    # rounds, -20 to centre the noise below.
    image *= 255.0 * contrast
    image += 255.0 * (0.5 - 0.5 * contrast + brightness) + 0.5 - 20.0
    # Uniform noise of 0-40 levels from raw random bytes: as grainy as Gaussian
    # noise, and several times cheaper to draw.
    grain = np.frombuffer(rng.bytes(image.size), dtype=np.uint8).reshape(image.shape)
    image += grain * np.float32(40.0 / 255.0)
    np.clip(image, 0.0, 255.0, out=image)
    return np.moveaxis(image, 0, -1).astype(np.uint8, order="C")
