"""MiniGoogLeNet as the tutorial builds it, with the recipe's preprocessing inside."""

import json
import zipfile
from collections import Counter

import numpy as np
import pytest

from job.model import (
    _name_public_optimizers,
    _rename_backend_optimizers,
    build_model,
    save_model,
    synchronize_batch_norm,
)
from job.spec import AugmentSpec

keras = pytest.importorskip("keras")


@pytest.fixture(scope="module")
def model():
    return build_model(np.full((32, 32, 3), 100.0, np.float32), AugmentSpec(), seed=1)


def test_parameter_count_matches_the_tutorial(model):
    assert model.count_params() == 1_656_250


def test_the_head_is_the_tutorials_7x7_average_pooling_then_dropout_of_a_half(model):
    # Neither changes the parameter count, which the test above checks.
    head = [type(layer).__name__ for layer in model.layers[-5:]]
    assert head == ["AveragePooling2D", "ReplicaDropout", "Flatten", "Dense", "Activation"]
    assert tuple(model.layers[-5].pool_size) == (7, 7) and model.get_layer("dropout").rate == 0.5


def test_replica_dropout_drops_the_rate_only_in_training_scales_what_it_keeps_and_follows_noise_shape(monkeypatch):
    # Its own path, taken under MirroredStrategy alone: inference must see the activations training did.
    from job import runtime
    from job.model import ReplicaDropout

    monkeypatch.setattr(runtime, "mirrored", lambda: True)
    monkeypatch.setattr(runtime, "uniform_per_replica", lambda shape, seed: keras.random.uniform(shape, seed=seed))
    x = np.ones((256, 64), np.float32)
    # Inference: the identity, as Keras's dropout.
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(ReplicaDropout(0.5, seed=1)(x, training=False)), x)
    # rate is the fraction dropped (not kept), and what is kept is scaled by 1 / (1 - rate).
    out = keras.ops.convert_to_numpy(ReplicaDropout(0.25, seed=1)(x, training=True))
    assert abs((out == 0).mean() - 0.25) < 0.02
    np.testing.assert_allclose(out[out != 0], 1 / 0.75, rtol=1e-6)
    # noise_shape (None, 1): one decision per row, broadcast along it.
    rows = keras.ops.convert_to_numpy(ReplicaDropout(0.5, noise_shape=(None, 1), seed=1)(x, training=True))
    assert all(len(set(row.tolist())) == 1 for row in rows) and 0.3 < (rows[:, 0] == 0).mean() < 0.7


def test_takes_uint8_and_outputs_probabilities(model):
    x = np.random.default_rng(0).integers(0, 256, (4, 32, 32, 3), dtype=np.uint8)
    probs = keras.ops.convert_to_numpy(model(x))
    assert probs.shape == (4, 10) and probs.dtype == np.float32
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-5)


def test_mean_subtraction_is_per_pixel():
    mean = np.random.default_rng(0).uniform(0, 255, (32, 32, 3)).astype(np.float32)
    model = build_model(mean, AugmentSpec(), seed=1)
    head = keras.Model(model.input, model.get_layer("mean_subtract").output)
    x = np.random.default_rng(1).integers(0, 256, (2, 32, 32, 3), dtype=np.uint8)
    np.testing.assert_allclose(keras.ops.convert_to_numpy(head(x)), x.astype(np.float32) - mean, atol=1e-4)


def test_augmentation_only_in_training(model):
    x = np.random.default_rng(0).integers(0, 256, (8, 32, 32, 3), dtype=np.uint8)
    augmented = keras.Model(model.input, model.get_layer("augment").output)
    mean_subtracted = keras.Model(model.input, model.get_layer("mean_subtract").output)
    plain = keras.ops.convert_to_numpy(mean_subtracted(x))
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(augmented(x, training=False)), plain)
    assert not np.allclose(keras.ops.convert_to_numpy(augmented(x, training=True)), plain)


def test_augmentation_follows_the_spec():
    layers = build_model(np.zeros((32, 32, 3), np.float32), AugmentSpec(), seed=1).layers
    augment = next(layer for layer in layers if layer.name == "augment")
    assert (augment.shift, augment.flip, augment.fill_mode) == (0.1, True, "nearest")
    assert augment.compute_dtype == "float32"
    bare = build_model(np.zeros((32, 32, 3), np.float32), AugmentSpec(shift=0, horizontal_flip=False), seed=1)
    assert "augment" not in {layer.name for layer in bare.layers}
    flip_only = build_model(np.zeros((32, 32, 3), np.float32), AugmentSpec(shift=0), seed=1).get_layer("augment")
    assert (flip_only.shift, flip_only.flip) == (0.0, True)


def test_softmax_stays_float32_under_mixed_precision():
    keras.config.set_dtype_policy("mixed_bfloat16")
    try:
        model = build_model(np.zeros((32, 32, 3), np.float32), AugmentSpec(), seed=1)
    finally:
        keras.config.set_dtype_policy("float32")
    assert model.get_layer("softmax").compute_dtype == "float32"
    assert model.get_layer("mean_subtract").compute_dtype == "float32"
    assert model.get_layer("augment").compute_dtype == "float32"
    assert model.layers[-3].compute_dtype == "bfloat16"  # the dense layer computes in bf16


def test_validation_nll_counts_a_confident_miss_as_the_reports_do():
    # Unclipped, TensorFlow's cross-entropy reads the softmax's logits and counts these
    # misses at 200 each; the reports (from the saved probabilities) and JAX say 16.1.
    from job.calibration import nll
    from job.model import validation_nll

    logits = keras.Input((10,))
    softmax = keras.Model(logits, keras.layers.Activation("softmax")(logits))
    softmax.compile(loss="categorical_crossentropy", metrics=[validation_nll()])
    x = np.zeros((4, 10), np.float32)
    x[:, 0] = 200.0  # every image confidently class 0
    y = np.array([0, 1, 2, 0])
    logged = softmax.evaluate(x, np.eye(10, dtype=np.float32)[y], verbose=0, return_dict=True)["nll"]
    assert logged == pytest.approx(nll(softmax.predict(x, verbose=0), y), rel=1e-5)
    assert logged == pytest.approx(-np.log(1e-7) / 2, rel=1e-5)


# What model.save names on PyTorch, where Keras trains with its own subclass of each optimizer.
TORCH_SGD = "keras.src.backend.torch.optimizers.torch_sgd"


@pytest.mark.parametrize("loss_scaling", [False, True])
def test_a_model_keras_written_on_pytorch_loads_here_with_its_optimizer_state(tmp_path, loss_scaling):
    # Written here, then named as PyTorch names it: the file save_model leaves on PyTorch.
    net = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
    optimizer = keras.optimizers.SGD(0.1, momentum=0.9)
    net.compile(optimizer=keras.optimizers.LossScaleOptimizer(optimizer) if loss_scaling else optimizer, loss="mse")
    net.fit(np.ones((4, 3)), np.zeros((4, 2)), verbose=0)
    path = tmp_path / "model.keras"
    net.save(path)
    as_on_torch = _config(path)
    sgd = as_on_torch["compile_config"]["optimizer"]
    sgd = sgd["config"]["inner_optimizer"] if loss_scaling else sgd
    # On PyTorch itself the file already names it so.
    assert sgd["module"] in ("keras.optimizers", TORCH_SGD) and sgd["class_name"] == "SGD"
    sgd["module"] = TORCH_SGD
    _write_config(path, as_on_torch)

    _name_public_optimizers(path)

    config = _config(path)
    assert TORCH_SGD not in json.dumps(config)
    loaded = keras.saving.load_model(path)  # by default, compiled: the optimizer's class must import here
    assert isinstance(loaded.optimizer, keras.optimizers.LossScaleOptimizer if loss_scaling else keras.optimizers.SGD)
    assert len(loaded.optimizer.variables) == len(net.optimizer.variables)
    for before, after in zip(net.optimizer.variables, loaded.optimizer.variables):
        np.testing.assert_array_equal(keras.ops.convert_to_numpy(after), keras.ops.convert_to_numpy(before))
    assert any(
        np.abs(keras.ops.convert_to_numpy(v)).sum() > 0 for v in loaded.optimizer.variables if "momentum" in v.path
    )


def test_save_model_leaves_a_file_that_names_public_classes_as_it_is(tmp_path, model):
    path = tmp_path / "model.keras"
    model.compile(optimizer=keras.optimizers.SGD(0.1, momentum=0.9), loss="categorical_crossentropy")
    # Built, as training leaves it: an unbuilt optimizer's 2 saved variables do not load into 80.
    model.optimizer.build(model.trainable_variables)
    save_model(model, path)
    entries = _entries(path)
    _name_public_optimizers(path)
    assert _entries(path) == entries  # not rewritten
    assert keras.saving.load_model(path).count_params() == model.count_params()


def _entries(path):
    with zipfile.ZipFile(path) as archive:
        return [(info.filename, info.compress_type, archive.read(info)) for info in archive.infolist()]


def _config(path):
    with zipfile.ZipFile(path) as archive:
        return json.loads(archive.read("config.json"))


def _write_config(path, config):
    entries = _entries(path)
    with zipfile.ZipFile(path, "w") as archive:
        for name, compression, data in entries:
            archive.writestr(name, json.dumps(config) if name == "config.json" else data, compress_type=compression)


def test_the_layers_are_the_tutorials(model):
    # The parameter count cannot see activations, pooling kinds or batch-norm settings.
    kinds = Counter(type(layer).__name__ for layer in model.layers)
    # A conv module each: 1 first, 2 in each of 8 inception modules, 1 in each of 2 downsample modules.
    assert kinds["Conv2D"] == kinds["BatchNormalization"] == 19
    assert kinds["MaxPooling2D"] == 2 and kinds["AveragePooling2D"] == 1  # downsample pools by max; the head by average
    activations = [layer.get_config()["activation"] for layer in model.layers if type(layer).__name__ == "Activation"]
    assert activations == ["relu"] * 19 + ["softmax"]
    for layer in model.layers:
        if isinstance(layer, keras.layers.BatchNormalization):  # Keras's defaults, as the tutorial has them
            assert (layer.momentum, layer.epsilon) == (0.99, 1e-3)


@pytest.mark.parametrize("fill_mode", ["reflect", "constant"])
def test_the_specs_fill_mode_reaches_the_augmentation(fill_mode):
    augment = build_model(np.zeros((32, 32, 3), np.float32), AugmentSpec(fill_mode=fill_mode), seed=1).get_layer(
        "augment"
    )
    assert augment.fill_mode == fill_mode


def test_synchronize_batch_norm_switches_every_batch_norm_and_save_model_saves_it_off(tmp_path):
    net = build_model(np.zeros((32, 32, 3), np.float32), AugmentSpec(), seed=1)
    norms = [layer for layer in net.layers if isinstance(layer, keras.layers.BatchNormalization)]
    synchronize_batch_norm(net, True)
    assert norms and all(layer.synchronized for layer in norms)
    # A synchronized model.keras would load on TensorFlow alone: saved, it is not.
    path = tmp_path / "model.keras"
    save_model(net, path)
    with zipfile.ZipFile(path) as archive:
        config = json.loads(archive.read("config.json"))
    saved = [layer["config"] for layer in config["config"]["layers"] if layer["class_name"] == "BatchNormalization"]
    assert len(saved) == len(norms) and not any(c.get("synchronized") for c in saved)
    synchronize_batch_norm(net, False)
    assert not any(layer.synchronized for layer in norms)


def test_an_optimizer_from_outside_keras_is_never_renamed():
    # Only Keras's backend-specific subclasses become keras.optimizers: a user's own class that
    # shares a name with one keeps its module.
    config = {"optimizer": {"module": "mylab.optimizers", "class_name": "SGD", "config": {}}}
    assert not _rename_backend_optimizers(config)
    assert config["optimizer"]["module"] == "mylab.optimizers"
