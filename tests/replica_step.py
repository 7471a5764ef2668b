"""One training step of the job's compiled model on 1 replica and on 2, from the same weights
and batch: 2 replicas must make the same update (a gradient summed twice, or batch statistics
taken per replica, would not). Run as a script on a CPU split in two, on any backend:

    python tests/replica_step.py                      # TensorFlow: two logical CPU devices
    XLA_FLAGS=--xla_force_host_platform_device_count=2 KERAS_BACKEND=jax python tests/replica_step.py

tests/test_runtime.py runs it on TensorFlow, tools/check_without_tensorflow.sh on JAX.
Exit status 0 when every smoothing method's updates agree (and, on TensorFlow, each replica
draws its own augmentation and dropout), 1 (with the figures) when not.
"""

from __future__ import annotations

import os
import sys

import numpy as np

if os.environ.get("KERAS_BACKEND", "tensorflow") == "tensorflow":
    # TensorFlow fixes its devices when it first uses one: split the CPU before Keras loads.
    import tensorflow as tf

    tf.config.set_logical_device_configuration(
        tf.config.list_physical_devices("CPU")[0], [tf.config.LogicalDeviceConfiguration()] * 2
    )

import keras  # noqa: E402

from job import runtime, smoothing  # noqa: E402
from job.data import per_pixel_mean  # noqa: E402
from job.spec import load_spec  # noqa: E402
from job.train import compile_model  # noqa: E402

BATCH = 16
# The largest relative difference of a step allowed. Random images at initialisation make a
# float32 step whose rounding alone moves it by about 1e-3: one replica given the same batch in
# another order (the same update in exact arithmetic) differed by 2.1e-3 on TensorFlow 2.21,
# 1.2e-3 on JAX 0.10.2 and 4.9e-3 on JAX 0.11.2 (measured); 2 replicas against 1 by 5.5e-4,
# 1.2e-3 and 4.9e-3. Errors measured against these: a gradient summed over the replicas, not
# averaged, 1.0; per-replica batch statistics, 0.6 for the weights and 1e-2 for the moving
# statistics. 5e-2 sits ten times from both.
TOLERANCE = {"weights": 5e-2, "moving statistics": 1e-4}


def one_step(method: str, replicas: int, x: np.ndarray, labels: np.ndarray) -> dict[str, tuple[list, list]]:
    """For the trainable weights and for the moving statistics: their values before and after."""
    spec = load_spec(
        None,
        [f"smoothing.method={method}", f"runtime.replicas={replicas}", f"train.batch_size={BATCH}",
         "augment.shift=0.0", "augment.horizontal_flip=false", "runtime.deterministic=false"],
    )  # fmt: skip
    runtime.configure(spec.runtime, spec.train.seed)
    with runtime.replica_scope():
        model = compile_model(spec, per_pixel_mean(x), 10)
    # Dropout draws its masks per replica: no two layouts could compare with it on.
    for layer in model.layers:
        if isinstance(layer, keras.layers.Dropout):
            layer.rate = 0.0
    # Every convolution feeds a batch normalization, so its bias has no gradient, only noise.
    noise = {id(layer.bias) for layer in model.layers if isinstance(layer, keras.layers.Conv2D)}
    # Apart: the moving statistics' step is far larger and would hide the weights'.
    groups = {
        "weights": [v for v in model.trainable_weights if id(v) not in noise],
        "moving statistics": model.non_trainable_weights,
    }
    before = {name: [keras.ops.convert_to_numpy(v) for v in group] for name, group in groups.items()}
    targets = smoothing.training_targets(labels, 10, spec.smoothing)
    model.fit(**runtime.feed(x, targets, batch_size=BATCH), shuffle=False, epochs=1, verbose=0)
    return {name: (before[name], [keras.ops.convert_to_numpy(v) for v in group]) for name, group in groups.items()}


def replicas_draw_their_own() -> bool:
    """TensorFlow: whether the augmentation and dropout of 2 replicas, each given the same
    images, draw their own shifts, flips and masks. Every replica holds the same seed state, so
    drawn as one device draws, image j of each replica got the same ones. (JAX's DataParallel
    runs the layers on the global batch: there is nothing to compare.)"""
    import tensorflow as tf

    from job.augment import RandomShiftFlip
    from job.model import ReplicaDropout

    spec = load_spec(None, ["runtime.replicas=2"])
    runtime.configure(spec.runtime, spec.train.seed)
    with runtime.replica_scope():
        strategy = tf.distribute.get_strategy()
        augment, dropout = RandomShiftFlip(0.1, True, seed=1), ReplicaDropout(0.5, seed=2)
        rows = ReplicaDropout(0.5, noise_shape=(None, 1), seed=3)  # a mask per row, as Keras's
    # A ramp across the columns: any two shifts or flips tell apart.
    ramp = np.broadcast_to(np.arange(32, dtype="float32")[None, None, :, None], (4, 32, 32, 3))

    @tf.function
    def draw():
        return strategy.run(lambda: (augment(ramp, training=True), dropout(tf.ones((4, 64)), training=True),
                                     rows(tf.ones((4, 64)), training=True)))  # fmt: skip

    shifted, masked, by_row = (strategy.experimental_local_results(out) for out in draw())
    own = [not np.array_equal(*(keras.ops.convert_to_numpy(a) for a in pair)) for pair in (shifted, masked)]
    print(f"replica_step: tensorflow, the shifts and flips of 2 replicas: {'their own' if own[0] else 'THE SAME'}; "
          f"their dropout masks: {'their own' if own[1] else 'THE SAME'}")  # fmt: skip
    whole_rows = all(len(set(row)) == 1 for replica in by_row for row in keras.ops.convert_to_numpy(replica))
    shape_kept = "whole rows" if whole_rows else "MIXED"
    print(f"replica_step: tensorflow, dropout with a noise shape on 2 replicas: {shape_kept}")
    with runtime.replica_scope():  # across the replicas, outside a step (a notebook): as one device draws
        augment(ramp, training=True)
    return all(own) and whole_rows


def main() -> int:
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (BATCH, 32, 32, 3), dtype=np.uint8)
    labels = rng.integers(0, 10, BATCH)
    failed = False
    for method in ("labels", "loss"):
        one, two = one_step(method, 1, x, labels), one_step(method, 2, x, labels)
        for group, (one_before, one_after) in one.items():
            two_before, two_after = two[group]
            if not all(np.array_equal(a, b) for a, b in zip(one_before, two_before)):
                print(f"replica_step: {method}: the {group} of the two models started from different values")
                failed = True
                continue
            step_one = np.concatenate([(a - b).ravel() for a, b in zip(one_after, one_before)])
            step_two = np.concatenate([(a - b).ravel() for a, b in zip(two_after, two_before)])
            gap = float(np.linalg.norm(step_one - step_two) / np.linalg.norm(step_one))
            same = gap < TOLERANCE[group]  # NaN (a step that diverged, or none at all) is not the same
            verdict = "the same" if same else "DIFFERENT"
            print(f"replica_step: {keras.backend.backend()}, smoothing.method {method}, the step of the {group}: "
                  f"2 replicas vs 1 differ by {gap:.2e} (relative): {verdict}")  # fmt: skip
            failed |= not same
    if keras.backend.backend() == "tensorflow":
        failed |= not replicas_draw_their_own()
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
