"""Label smoothing: the tutorial's example, and the two methods agreeing exactly."""

import numpy as np
import pytest

from job import smoothing
from job.spec import SmoothingSpec

keras = pytest.importorskip("keras")


def test_smooth_labels_reproduces_the_tutorial_example():
    # The tutorial prints [0. 0. 0. 0. 0. 0. 1. 0. 0. 0.] -> [0.01 ... 0.91 ...] for a frog.
    before = smoothing.one_hot(np.array([6]), 10)
    after = smoothing.smooth_labels(before, 0.1)
    np.testing.assert_array_equal(before[0], [0, 0, 0, 0, 0, 0, 1, 0, 0, 0])
    np.testing.assert_allclose(after[0], [0.01] * 6 + [0.91] + [0.01] * 3, atol=1e-7)
    assert after.dtype == np.float32
    np.testing.assert_allclose(after.sum(axis=1), 1.0, atol=1e-6)


def test_describe_shows_one_label_before_and_after_and_says_what_each_method_does():
    labels = np.array([6, 2, 0])  # the first training label, before and after: the same frog
    text = smoothing.describe(labels, 10, SmoothingSpec(method="labels", factor=0.1))
    assert text == (
        "smoothing labels (f=0.1): [0. 0. 0. 0. 0. 0. 1. 0. 0. 0.] -> "
        "[0.01 0.01 0.01 0.01 0.01 0.01 0.91 0.01 0.01 0.01]"
    )
    assert smoothing.describe(labels, 10, SmoothingSpec(method="loss", factor=0.2)) == (
        "smoothing in the loss (f=0.2); labels stay hard: [0. 0. 0. 0. 0. 0. 1. 0. 0. 0.]"
    )
    assert smoothing.describe(labels, 10, SmoothingSpec(method="none")) == (
        "no label smoothing; labels: [0. 0. 0. 0. 0. 0. 1. 0. 0. 0.]"
    )


@pytest.mark.parametrize("method", ["labels", "loss", "none"])
def test_training_targets_are_float32_whatever_the_method(method):
    # What the model is fitted on, and (hard) what it validates on: float32 as the model's outputs,
    # under every method alike, not float64 for the two that leave them hard.
    targets = smoothing.training_targets(np.array([0, 3, 9]), 10, SmoothingSpec(method=method, factor=0.1))
    assert targets.dtype == np.float32
    assert smoothing.one_hot(np.array([1]), 10).dtype == np.float32


def test_training_targets_per_method():
    labels = np.array([0, 3, 9])
    hard = smoothing.one_hot(labels, 10)
    np.testing.assert_array_equal(smoothing.training_targets(labels, 10, SmoothingSpec(method="loss")), hard)
    np.testing.assert_array_equal(smoothing.training_targets(labels, 10, SmoothingSpec(method="none")), hard)
    smoothed = smoothing.training_targets(labels, 10, SmoothingSpec(method="labels", factor=0.2))
    np.testing.assert_allclose(smoothed, hard * 0.8 + 0.02)


def test_only_method_loss_smooths_inside_the_loss():
    assert smoothing.training_loss(SmoothingSpec(method="loss", factor=0.3)).label_smoothing == 0.3
    assert smoothing.training_loss(SmoothingSpec(method="labels", factor=0.3)).label_smoothing == 0.0
    assert smoothing.training_loss(SmoothingSpec(method="none", factor=0.3)).label_smoothing == 0.0


@pytest.mark.skipif(keras.backend.backend() != "tensorflow", reason="takes the gradients with TensorFlow")
@pytest.mark.parametrize("factor", [0.0, 0.1, 0.25])
def test_both_methods_give_the_same_loss_and_gradients(factor):
    import tensorflow as tf

    rng = np.random.default_rng(0)
    logits = tf.constant(rng.normal(size=(32, 10)) * 3, dtype=tf.float64)
    labels = rng.integers(0, 10, size=32)

    def loss_and_grad(method):
        spec = SmoothingSpec(method=method, factor=factor)
        targets = tf.constant(smoothing.training_targets(labels, 10, spec), dtype=tf.float64)
        with tf.GradientTape() as tape:
            tape.watch(logits)
            loss = smoothing.training_loss(spec)(targets, tf.nn.softmax(logits))
        return float(loss), tape.gradient(loss, logits).numpy()

    loss_labels, grad_labels = loss_and_grad("labels")
    loss_loss, grad_loss = loss_and_grad("loss")
    assert abs(loss_labels - loss_loss) < 1e-6
    np.testing.assert_allclose(grad_labels, grad_loss, atol=1e-6)
    if factor:  # and smoothing really changes the objective
        loss_none, _ = loss_and_grad("none")
        assert abs(loss_none - loss_labels) > 1e-3
