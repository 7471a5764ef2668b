"""MiniGoogLeNet, as in the tutorial, with the recipe's preprocessing built in.

The model takes uint8 images. Per-pixel mean subtraction and augmentation
(random 10% shifts with nearest fill, horizontal flips: job/augment.py) are its
first layers, so they run on the device, are active in training only, and travel
with model.keras. Everything model.keras names is registered on importing this module
(the augmentation layer in job/augment.py, which it imports): `import job.model` before
keras.saving.load_model.
"""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import keras
import numpy as np
from keras import layers, ops

from job import atomic, runtime
from job.augment import RandomShiftFlip
from job.calibration import PROB_EPSILON
from job.spec import AugmentSpec


def conv_module(x, filters: int, kernel: int, strides: int = 1, padding: str = "same"):
    x = layers.Conv2D(filters, kernel, strides=strides, padding=padding)(x)
    x = layers.BatchNormalization()(x)
    return layers.Activation("relu")(x)


def inception_module(x, filters_1x1: int, filters_3x3: int):
    return layers.concatenate([conv_module(x, filters_1x1, 1), conv_module(x, filters_3x3, 3)])


def downsample_module(x, filters: int):
    conv = conv_module(x, filters, 3, strides=2, padding="valid")
    pool = layers.MaxPooling2D(3, strides=2)(x)
    return layers.concatenate([conv, pool])


def preprocessing(x, mean_image: np.ndarray, augment: AugmentSpec, seed: int):
    # float32 whatever the compute policy: bf16 would round the mean-subtracted pixels.
    x = layers.Normalization(
        axis=(1, 2, 3), mean=mean_image, variance=np.ones_like(mean_image), dtype="float32", name="mean_subtract"
    )(layers.Rescaling(1.0, dtype="float32", name="to_float")(x))
    if augment.shift > 0 or augment.horizontal_flip:
        x = RandomShiftFlip(augment.shift, augment.horizontal_flip, augment.fill_mode, seed=seed, name="augment")(x)
    return x


def build_model(mean_image: np.ndarray, augment: AugmentSpec, seed: int, num_classes: int = 10) -> keras.Model:
    inputs = keras.Input((32, 32, 3), dtype="uint8", name="image")
    x = preprocessing(inputs, mean_image, augment, seed)
    x = conv_module(x, 96, 3)
    x = inception_module(x, 32, 32)
    x = inception_module(x, 32, 48)
    x = downsample_module(x, 80)
    x = inception_module(x, 112, 48)
    x = inception_module(x, 96, 64)
    x = inception_module(x, 80, 80)
    x = inception_module(x, 48, 96)
    x = downsample_module(x, 96)
    x = inception_module(x, 176, 160)
    x = inception_module(x, 176, 160)
    x = layers.AveragePooling2D(7)(x)
    x = ReplicaDropout(0.5, seed=seed + 2, name="dropout")(x)
    x = layers.Flatten()(x)
    x = layers.Dense(num_classes)(x)
    # Softmax in float32 under mixed precision, so probabilities and the loss keep their range.
    outputs = layers.Activation("softmax", dtype="float32", name="softmax")(x)
    return keras.Model(inputs, outputs, name="minigooglenet")


@keras.saving.register_keras_serializable(package="lsjob")
class ReplicaDropout(layers.Dropout):
    """keras.layers.Dropout whose masks differ from replica to replica under TensorFlow's
    MirroredStrategy (see runtime.uniform_per_replica); elsewhere it is Keras's own."""

    def call(self, inputs, training=False):
        if not training or not self.rate or not runtime.mirrored():
            return super().call(inputs, training=training)
        shape = ops.shape(inputs)
        if self.noise_shape is not None:  # a mask over these axes, broadcast over the others
            shape = tuple(shape[i] if size is None else size for i, size in enumerate(self.noise_shape))
        keep = runtime.uniform_per_replica(shape, self.seed_generator) >= self.rate
        return ops.where(keep, inputs / (1.0 - self.rate), ops.zeros_like(inputs))


def synchronize_batch_norm(model: keras.Model, synchronized: bool) -> None:
    """Share BatchNormalization's batch statistics across replicas while training, or stop: a
    saved model that says so loads on TensorFlow alone. Under TensorFlow's MirroredStrategy
    each replica keeps its own moving statistics, updated from its own slice of the batch: they
    drift apart, the model saved (replica 0's) is not the one that predicted, and a resume starts
    every replica from replica 0's. Synchronised, every replica normalises with the global
    batch's statistics, as one GPU would (runtime.mirrored says when)."""
    for layer in model.layers:
        if isinstance(layer, layers.BatchNormalization):
            layer.synchronized = synchronized


def save_model(model: keras.Model, path: Path) -> None:
    """Write the trained model to `path` (model.keras) so that it loads on any backend."""
    synchronize_batch_norm(model, False)  # training is over; a synchronized one loads on TensorFlow alone
    with atomic.atomic_path(path, suffix=".keras") as tmp:
        model.save(tmp)
        _name_public_optimizers(tmp)


def _name_public_optimizers(path: Path) -> None:
    """On PyTorch, Keras trains with its own subclass of each optimizer, and model.save names
    that subclass's module (keras.src.backend.torch.optimizers), which no other backend loads.
    Renamed to keras.optimizers, the class every backend has, the file loads anywhere with its
    optimizer state: both classes keep the same variables. A file written on another backend
    already names it and is left as it is."""
    with zipfile.ZipFile(path) as archive:
        config = json.loads(archive.read("config.json"))
        if not _rename_backend_optimizers(config.get("compile_config")):
            return
        entries = [(info, archive.read(info)) for info in archive.infolist()]
    with zipfile.ZipFile(path, "w") as archive:
        for info, data in entries:
            archive.writestr(info, json.dumps(config).encode() if info.filename == "config.json" else data)


def _rename_backend_optimizers(node) -> bool:
    """Point every backend-specific optimizer class in a serialized config at keras.optimizers
    (LossScaleOptimizer nests one); whether any was."""
    renamed = False
    if isinstance(node, dict):
        module, name = node.get("module"), node.get("class_name")
        public = getattr(keras.optimizers, name, None) if isinstance(name, str) else None
        backend_specific = isinstance(module, str) and module.startswith("keras.src.backend.")
        if backend_specific and isinstance(public, type) and issubclass(public, keras.optimizers.Optimizer):
            node["module"] = "keras.optimizers"
            renamed = True
        for value in node.values():
            renamed |= _rename_backend_optimizers(value)
    elif isinstance(node, list):
        for value in node:
            renamed |= _rename_backend_optimizers(value)
    return renamed


def validation_nll() -> keras.metrics.Metric:
    """The `nll` metric (logged as val_nll): cross-entropy against the hard labels, with
    probabilities clipped at calibration.PROB_EPSILON as the reports clip them. Unclipped,
    TensorFlow reaches past the softmax to its logits and counts a confident miss in full
    (1e21 after a divergence) while JAX and PyTorch cap it at -log(1e-7) = 16.1: clipped,
    it is one number on every backend, and the reports' test NLL of the same model."""
    return keras.metrics.MeanMetricWrapper(clipped_cross_entropy, name="nll")


@keras.saving.register_keras_serializable(package="lsjob")
def clipped_cross_entropy(y_true, y_pred):
    clipped = keras.ops.clip(y_pred, PROB_EPSILON, 1.0 - PROB_EPSILON)
    return keras.losses.categorical_crossentropy(y_true, clipped)
