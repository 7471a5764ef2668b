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
set, the first k images do not depend on how many were asked for, and only one
chunk is ever held as float32.
"""

from __future__ import annotations

import numpy as np

NUM_CLASSES = 10
SIZE = 32
CHUNK = 1000  # a multiple of NUM_CLASSES, so every chunk stays balanced
_TRAIN, _TEST = 0, 1

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

# Class c: palette c % 5; silhouette and texture shifted in the second half so
# two classes share at most one attribute.
_CLASS_PALETTE = np.array([c % 5 for c in range(NUM_CLASSES)])
_CLASS_SHAPE = np.array([(c + c // 5) % 5 for c in range(NUM_CLASSES)])
_CLASS_TEXTURE = np.array([(c + 2 * (c // 5)) % 5 for c in range(NUM_CLASSES)])


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
    for index, start in enumerate(range(0, size, CHUNK)):
        # The whole chunk is always drawn, so a prefix never depends on `size`.
        rng = np.random.default_rng([seed, split_id, index])
        images, labels = _chunk(rng)
        stop = min(start + CHUNK, size)
        x[start:stop] = images[: stop - start]
        y[start:stop] = labels[: stop - start]
    return x, y


def _chunk(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    labels = _balanced_labels(rng, CHUNK)
    yy, xx = np.mgrid[0:SIZE, 0:SIZE].astype(np.float32) + 0.5
    centre = rng.uniform(10.0, 22.0, size=(CHUNK, 2)).astype(np.float32)
    dy = yy - centre[:, 0, None, None]
    dx = xx - centre[:, 1, None, None]

    mask = _silhouette(_CLASS_SHAPE[labels], dx, dy, rng)
    blend = _texture(_CLASS_TEXTURE[labels], dx, dy, rng)
    colour_a, colour_b = _colours(_CLASS_PALETTE[labels], rng)
    obj = colour_a[:, None, None] + (colour_b - colour_a)[:, None, None] * blend[..., None]

    image = _background(rng, yy, xx)
    image += (obj - image) * mask[..., None]
    return _finish(image, rng), labels.astype(np.uint8)


def _balanced_labels(rng: np.random.Generator, n: int) -> np.ndarray:
    # Every run of ten is a permutation of the classes: any prefix is balanced to within one.
    blocks = np.tile(np.arange(NUM_CLASSES), (n // NUM_CLASSES, 1))
    return rng.permuted(blocks, axis=1).reshape(-1)


def _silhouette(shape: np.ndarray, dx: np.ndarray, dy: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A soft-edged mask in [0, 1]: disk, square, ring, diamond or cross."""
    radius = rng.uniform(6.5, 10.5, size=len(shape)).astype(np.float32)[:, None, None]
    ax, ay = np.abs(dx), np.abs(dy)
    r = np.hypot(dx, dy)
    arm = np.maximum(np.minimum(ax, ay) - 0.4 * radius, np.maximum(ax, ay) - radius)
    # Signed distances (negative inside) of each silhouette, in pixels.
    distance = np.stack(
        [
            r - radius,
            np.maximum(ax, ay) - 0.85 * radius,
            np.abs(r - 0.7 * radius) - 0.3 * radius,
            (ax + ay) / np.float32(np.sqrt(2.0)) - 0.8 * radius,
            arm,
        ]
    )
    chosen = np.take_along_axis(distance, shape[None, :, None, None], axis=0)[0]
    return np.clip(0.5 - chosen, 0.0, 1.0)


def _texture(texture: np.ndarray, dx: np.ndarray, dy: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A blend weight in [0, 1]: horizontal, vertical or diagonal stripes, checks or rings.

    The period and phase vary per image, so an average over a class is flat and
    only a model that sees local structure can use the texture.
    """
    n = len(texture)
    k = (2 * np.pi / rng.uniform(3.5, 7.0, size=n)).astype(np.float32)[:, None, None]
    phase = rng.uniform(0.0, 2 * np.pi, size=n).astype(np.float32)[:, None, None]
    # Diagonal stripes lean either way at random: mirror images are the same class.
    lean = rng.choice(np.array([-1.0, 1.0], dtype=np.float32), size=n)[:, None, None]
    wave = np.stack(
        [
            np.cos(k * dy + phase),
            np.cos(k * dx + phase),
            np.cos(k * (dx + lean * dy) / np.float32(np.sqrt(2.0)) + phase),
            np.cos(k * dx + phase) * np.cos(k * dy + phase),
            np.cos(k * np.hypot(dx, dy) + phase),
        ]
    )
    chosen = np.take_along_axis(wave, texture[None, :, None, None], axis=0)[0]
    return 0.5 + 0.5 * chosen


def _colours(palette: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """The palette's two colours, each nudged per image and at random which is which."""
    pair = _PALETTES[palette] + rng.normal(0.0, 0.08, size=(len(palette), 2, 3)).astype(np.float32)
    swap = rng.random(len(palette)) < 0.5
    pair[swap] = pair[swap, ::-1]
    return pair[:, 0], pair[:, 1]


def _background(rng: np.random.Generator, yy: np.ndarray, xx: np.ndarray) -> np.ndarray:
    """Class-independent clutter: a muted gradient plus a few faint blobs."""
    n = CHUNK
    top = _muted(rng, n)[:, None, None]
    bottom = _muted(rng, n)[:, None, None]
    t = (yy / SIZE)[None, ..., None]
    image = top + (bottom - top) * t
    for _ in range(3):
        cy, cx = (rng.uniform(0.0, SIZE, size=(2, n)).astype(np.float32)[..., None, None])
        width = rng.uniform(3.0, 8.0, size=n).astype(np.float32)[:, None, None]
        blob = np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * width**2))
        image += blob[..., None] * (_muted(rng, n)[:, None, None] - image) * 0.6
    return image


def _muted(rng: np.random.Generator, n: int) -> np.ndarray:
    # Greyish colours, so the background rarely looks like any palette.
    grey = rng.uniform(0.15, 0.85, size=(n, 1))
    tint = rng.normal(0.0, 0.08, size=(n, 3))
    return (grey + tint).astype(np.float32)


def _finish(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    n = len(image)
    contrast = rng.uniform(0.6, 1.2, size=n).astype(np.float32)[:, None, None, None]
    brightness = rng.uniform(-0.15, 0.15, size=n).astype(np.float32)[:, None, None, None]
    image = (image - 0.5) * contrast + 0.5 + brightness
    image += np.float32(0.05) * rng.standard_normal(image.shape, dtype=np.float32)
    return np.clip(np.rint(image * 255.0), 0, 255).astype(np.uint8)
