"""Backend setup (job/runtime.py): precision chosen per device, fp16 with loss scaling,
and data parallelism over several devices in one run (here: CPU devices split in two)."""

import importlib.util
import json
import logging
import os
import subprocess
import sys
import time
import types
from pathlib import Path

import numpy as np
import pytest
from conftest import ROOT, TINY

from job import runtime
from job.errors import SpecError
from job.spec import RuntimeSpec, load_spec

keras = pytest.importorskip("keras")


@pytest.fixture(autouse=True)
def float32_afterwards():
    yield
    keras.config.set_dtype_policy("float32")


@pytest.mark.parametrize(
    "accelerator, expected",
    [
        ((None, (0, 0)), ("off", "auto: cpu, float32")),
        (("gpu", (9, 0)), ("bf16", "auto: gpu compute capability 9.0")),  # H100/H200
        (("gpu", (8, 0)), ("bf16", "auto: gpu compute capability 8.0")),  # A100
        (("gpu", (7, 0)), ("fp16", "auto: gpu compute capability 7.0 has no bf16")),  # V100
        (("gpu", (6, 1)), ("off", "auto: gpu, float32")),
        (("tpu", (0, 0)), ("bf16", "auto: tpu")),
    ],
)
def test_auto_precision_is_chosen_per_device(monkeypatch, accelerator, expected):
    monkeypatch.setattr(runtime, "accelerator", lambda: accelerator)
    setup = runtime.configure(RuntimeSpec(mixed_precision="auto"), seed=0)
    assert (setup.precision, setup.precision_source) == expected
    policy = {"off": "float32", "bf16": "mixed_bfloat16", "fp16": "mixed_float16"}[expected[0]]
    assert keras.config.dtype_policy().name == policy


def test_an_explicit_precision_is_kept_and_this_cpu_gets_float32_from_auto():
    assert runtime.configure(RuntimeSpec(mixed_precision="bf16"), seed=0).precision == "bf16"
    assert keras.config.dtype_policy().name == "mixed_bfloat16"
    setup = runtime.configure(RuntimeSpec(mixed_precision="auto"), seed=0)
    assert (setup.precision, setup.replicas) == ("off", 1)


def test_fp16_trains_with_loss_scaling_and_the_schedule_reaches_the_real_optimizer(tiny_spec):
    from job.data import load_dataset, per_pixel_mean
    from job.train import compile_model, learning_rate

    # float16 is emulated on a CPU, and slow (over a second an image): 4 images, one step an epoch.
    spec = tiny_spec("runtime.mixed_precision=fp16", "train.epochs=4", "data.train_size=32")
    runtime.configure(spec.runtime, spec.train.seed)
    data = load_dataset(spec.data)
    model = compile_model(spec, per_pixel_mean(data.x_train), 10)
    assert isinstance(model.optimizer, keras.optimizers.LossScaleOptimizer)
    assert model.get_layer("softmax").compute_dtype == "float32"
    schedule = keras.callbacks.LearningRateScheduler(lambda epoch: learning_rate(epoch, spec.train))
    targets = np.eye(10, dtype="float32")[data.y_train[:4]]
    history = model.fit(data.x_train[:4], targets, batch_size=4, epochs=2, verbose=0, callbacks=[schedule])
    assert np.isfinite(history.history["loss"]).all()
    assert float(model.optimizer.inner_optimizer.learning_rate) == pytest.approx(learning_rate(1, spec.train))


def test_linear_lr_scaling_follows_the_global_batch():
    spec = load_spec(None, ["train.batch_size=512", "train.lr_scaling=linear"])
    assert spec.train.base_lr == pytest.approx(5e-3 * 8)
    assert load_spec(None, ["train.batch_size=512"]).train.base_lr == 5e-3  # none: as given


def test_replicas_the_spec_cannot_split_or_the_machine_lacks_are_refused():
    with pytest.raises(SpecError, match="train.batch_size: 64 does not split evenly across runtime.replicas 3"):
        load_spec(None, ["runtime.replicas=3"])
    with pytest.raises(SpecError, match="runtime.replicas"):
        load_spec(None, ["runtime.replicas=0"])
    if keras.backend.backend() == "torch":
        refusal = r"runtime.replicas is 4: data parallelism in one run needs the TensorFlow or JAX backend, not torch"
    else:
        refusal = r"runtime.replicas is 4 but this machine has 1 device\(s\)"
    with pytest.raises(SpecError, match=refusal):
        runtime.configure(RuntimeSpec(replicas=4), seed=0)
    assert runtime.configure(RuntimeSpec(replicas="all"), seed=0).replicas == 1  # one CPU device here


def test_several_steps_per_call_on_pytorch_are_refused_before_anything_is_set_up(monkeypatch):
    # Keras refuses it only when it builds the first step, after the run directory exists.
    monkeypatch.setattr(runtime.keras.backend, "backend", lambda: "torch")
    # A machine with TensorFlow and without JAX: only the backend it has is suggested.
    real_find_spec, installed = importlib.util.find_spec, {"tensorflow": True, "jax": False}

    def find_spec(name, *args):
        if name in installed:
            return object() if installed[name] else None
        return real_find_spec(name, *args)

    monkeypatch.setattr(importlib.util, "find_spec", find_spec)
    with pytest.raises(SpecError, match="steps_per_execution is 2, but Keras's PyTorch backend runs one step") as err:
        runtime.configure(RuntimeSpec(steps_per_execution=2), seed=0)
    assert str(err.value).endswith(", or use the TensorFlow backend (KERAS_BACKEND=tensorflow)")


@pytest.mark.parametrize("jit_compile", [True, "auto", False])
def test_torch_compile_asked_for_on_pytorch_is_warned_of(monkeypatch, caplog, jit_compile):
    # It runs, some twenty times slower than eager: worth a line in the log, not a refusal.
    monkeypatch.setattr(runtime.keras.backend, "backend", lambda: "torch")
    monkeypatch.setattr(runtime, "_set_up_replicas", lambda replicas: ["cpu"])  # no torch devices here
    with caplog.at_level(logging.WARNING, logger="lsjob"):
        runtime.configure(RuntimeSpec(jit_compile=jit_compile), seed=0)
    warned = [r.getMessage() for r in caplog.records if "torch.compile" in r.getMessage()]
    if jit_compile is True:
        assert len(warned) == 1 and "about 20 times slower than eager" in warned[0]
        assert "leave it auto (eager on PyTorch)" in warned[0]
    else:
        assert warned == []


@pytest.mark.skipif(keras.backend.backend() != "tensorflow", reason="tests the TensorFlow backend")
def test_deterministic_turns_on_tensorflows_op_determinism_and_only_when_asked(monkeypatch):
    # What runtime.deterministic promises: on a GPU, reductions in a fixed order (run-to-run equality).
    import tensorflow as tf

    calls = []
    monkeypatch.setattr(tf.config.experimental, "enable_op_determinism", lambda: calls.append(1))
    runtime.configure(RuntimeSpec(deterministic=False), seed=0)
    assert calls == []
    runtime.configure(RuntimeSpec(deterministic=True), seed=0)
    assert calls == [1]


@pytest.mark.parametrize(
    "platform, flags, warned",
    [("gpu", "", True), ("gpu", "--xla_gpu_deterministic_ops=true", False), ("cpu", "", False)],
)
def test_deterministic_on_a_jax_gpu_without_xlas_flag_says_it_is_not(monkeypatch, caplog, platform, flags, warned):
    # The flag is read as JAX's backend starts, before lsjob can set it: a warning, not a silent no.

    monkeypatch.setattr(runtime.keras.backend, "backend", lambda: "jax")
    monkeypatch.setitem(sys.modules, "jax", types.SimpleNamespace(default_backend=lambda: platform))
    monkeypatch.setenv("XLA_FLAGS", flags)
    with caplog.at_level("WARNING", logger="lsjob"):
        runtime._enable_determinism()
    assert ("XLA_FLAGS=--xla_gpu_deterministic_ops=true set before lsjob starts" in caplog.text) == warned


def test_advice_to_switch_backends_names_only_those_installed(monkeypatch):
    # The GPU machine has JAX and PyTorch and no TensorFlow: "use TensorFlow" there would only fail.
    import importlib.util

    installed = {"jax", "torch"}
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: object() if name in installed else None)
    assert runtime.or_use("jax", "tensorflow") == ", or use the JAX backend (KERAS_BACKEND=jax)"
    assert runtime.or_use("tensorflow") == ""
    installed.add("tensorflow")
    assert runtime.or_use("jax", "tensorflow") == (
        ", or use the JAX or TensorFlow backend (KERAS_BACKEND=jax or KERAS_BACKEND=tensorflow)"
    )


def test_replicas_this_machine_lacks_fail_the_run_before_anything_is_written(tiny_spec):
    from job import run

    spec = tiny_spec("runtime.replicas=4")
    with pytest.raises(SpecError, match="runtime.replicas is 4"):
        run.execute(spec)
    assert not spec.run_dir.exists()


# TensorFlow's devices are fixed once it starts: a fresh process splits the CPU in two.
# What TensorFlow alone does (logical CPU devices, its compile-cache answer); the JAX check
# (tools/check_without_tensorflow.sh) has its own.
TENSORFLOW_ONLY = pytest.mark.skipif(keras.backend.backend() != "tensorflow", reason="tests the TensorFlow backend")
TWO_CPUS = """
import sys
import tensorflow as tf
cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
from job.cli import main
sys.argv = ["lsjob", *sys.argv[1:]]
main()
"""


@pytest.mark.slow
@TENSORFLOW_ONLY
def test_replicas_run_on_the_first_devices_asked_for_and_one_replica_on_one(monkeypatch):
    # On a machine of three GPUs, runtime.replicas 1 is one device and 2 the first
    # two (another task may use the third); more than it has says how to fix it.
    import tensorflow as tf

    gpus = ["/device:GPU:0", "/device:GPU:1", "/device:GPU:2"]
    mirrored = []
    monkeypatch.setattr(runtime, "_strategy", None)  # restored afterwards: later tests see one device
    monkeypatch.setattr(runtime, "replica_candidates", lambda: gpus)
    monkeypatch.setattr(
        tf.distribute, "MirroredStrategy",
        lambda chosen: mirrored.append(chosen) or types.SimpleNamespace(num_replicas_in_sync=len(chosen)),
    )  # fmt: skip
    setup = runtime.configure(RuntimeSpec(replicas=1), seed=0)
    assert (setup.replicas, setup.replica_devices, mirrored) == (1, gpus[:1], [])
    setup = runtime.configure(RuntimeSpec(replicas=2), seed=0)
    assert (setup.replicas, setup.replica_devices, mirrored) == (2, gpus[:2], [gpus[:2]])
    with pytest.raises(SpecError, match=r"this machine has 3 device\(s\) .*; lower runtime.replicas or use 'all'$"):
        runtime.configure(RuntimeSpec(replicas=4), seed=0)


@TENSORFLOW_ONLY
def test_two_replicas_train_one_run_with_the_global_batch_split_and_recorded(tmp_path):
    sets = [*TINY, f"output.root={tmp_path}", "output.run=mirrored", "runtime.replicas=2",
            "train.lr_scaling=linear", "runtime.deterministic=false"]  # fmt: skip
    proc = subprocess.run(
        [sys.executable, "-c", TWO_CPUS, "run", "/dev/null", *[a for s in sets for a in ("--set", s)]],
        capture_output=True, text=True, cwd=ROOT,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    manifest = json.loads((tmp_path / "mirrored" / "manifest.json").read_text())
    assert manifest["status"] == "completed"
    assert manifest["runtime"]["replicas"] == 2 and len(manifest["runtime"]["replica_devices"]) == 2
    assert manifest["runtime"]["global_batch"] == 16 and manifest["runtime"]["per_replica_batch"] == 8
    assert manifest["runtime"]["base_lr"] == pytest.approx(5e-3 * 16 / 64)
    history = (tmp_path / "mirrored" / "history.csv").read_text().splitlines()
    assert len(history) == 3 and float(history[1].split(",")[-2]) == pytest.approx(5e-3 / 4)
    # Every replica normalises with the same batch statistics (synchronized across replicas,
    # as on one GPU), so they keep one set of moving statistics: the model saved is the
    # model that made predictions.npz and the metrics, and it loads on any backend.
    check = (
        "import sys, numpy as np, keras, job.model\n"
        "from job.data import load_dataset\n"
        "from job.spec import load_spec\n"
        "run = sys.argv[1]\n"
        "spec = load_spec(run + '/spec.yaml')\n"
        "model = keras.saving.load_model(run + '/model.keras')\n"
        "assert not any(getattr(l, 'synchronized', False) for l in model.layers)\n"
        "probs = model.predict(load_dataset(spec.data).x_test, batch_size=spec.train.eval_batch_size, verbose=0)\n"
        "saved = np.load(run + '/predictions.npz')['test_probs']\n"
        "print(float(np.abs(probs - saved).max()))\n"
    )
    proc = subprocess.run([sys.executable, "-c", check, str(tmp_path / "mirrored")], capture_output=True, text=True,
                          cwd=ROOT)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert float(proc.stdout.split()[-1]) < 1e-5


@pytest.mark.slow
@TENSORFLOW_ONLY
def test_two_replicas_make_the_same_training_step_as_one():
    # tests/replica_step.py: one step of the compiled model from the same weights and batch, each
    # smoothing method; tools/check_without_tensorflow.sh runs it on JAX.
    proc = subprocess.run([sys.executable, str(ROOT / "tests" / "replica_step.py")], capture_output=True, text=True,
                          cwd=ROOT, timeout=600)  # fmt: skip
    verdicts = [line for line in proc.stdout.splitlines() if line.startswith("replica_step: tensorflow")]
    assert proc.returncode == 0, proc.stdout + proc.stderr[-3000:]
    steps = [line for line in verdicts if "the step of" in line]
    assert len(steps) == 4 and all(line.endswith(": the same") for line in steps), proc.stdout
    # Each replica draws its own shifts, flips and dropout masks: a batch on 2 GPUs is as random as on 1.
    assert "shifts and flips of 2 replicas: their own; their dropout masks: their own" in proc.stdout
    assert "dropout with a noise shape on 2 replicas: whole rows" in proc.stdout


@TENSORFLOW_ONLY
@pytest.mark.parametrize("command", [["run"], ["bench", "--steps", "2", "--warmup", "1"]])
def test_a_batch_that_all_the_replicas_cannot_split_is_refused_before_anything_is_made(tmp_path, command):
    # runtime.replicas: all -- only the machine says how many: checked after set-up, before the
    # run directory is claimed or the bench's step compiled (it was a traceback there).
    sets = [*TINY, f"output.root={tmp_path}", "output.run=odd", "runtime.replicas=all", "train.batch_size=15"]
    proc = subprocess.run(
        [sys.executable, "-c", TWO_CPUS, command[0], "/dev/null", *command[1:], *(f"--set={s}" for s in sets)],
        capture_output=True, text=True, cwd=ROOT,
    )  # fmt: skip
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "train.batch_size 15 does not split evenly across the 2 replicas" in proc.stderr
    assert "Traceback" not in proc.stderr and not (tmp_path / "odd").exists()


@TENSORFLOW_ONLY
def test_the_compile_cache_is_a_jax_feature_and_named_as_unused_elsewhere():
    setup = runtime.configure(RuntimeSpec(compile_cache="/nonexistent/never/created"), seed=0)
    assert (setup.compile_cache, setup.compile_cache_source) == (None, "not used on the tensorflow backend")


def test_the_compile_cache_folder_auto_follows_jax_then_keras_and_a_named_one_is_made(tmp_path, monkeypatch):
    monkeypatch.delenv("JAX_COMPILATION_CACHE_DIR", raising=False)
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "keras"))
    folder, source = runtime.compile_cache_folder("auto")
    assert folder == tmp_path / "keras" / "compile-cache" and folder.is_dir() and source.startswith("auto")
    monkeypatch.setenv("JAX_COMPILATION_CACHE_DIR", str(tmp_path / "jax"))
    assert runtime.compile_cache_folder("auto") == (tmp_path / "jax", "auto: $JAX_COMPILATION_CACHE_DIR")
    assert runtime.compile_cache_folder(str(tmp_path / "mine" / "cc")) == (tmp_path / "mine" / "cc", "spec")
    assert runtime.compile_cache_folder("off") == (None, "spec: off")
    monkeypatch.chdir(tmp_path)  # a relative folder is recorded where it is
    assert runtime.compile_cache_folder("rel/cc") == (tmp_path / "rel" / "cc", "spec")
    assert sorted(p.name for p in (tmp_path / "mine" / "cc").iterdir()) == []  # the write probe left nothing


def test_the_compile_cache_folder_is_cleared_of_what_killed_writers_left_long_ago(tmp_path, caplog, monkeypatch):
    monkeypatch.setattr(runtime, "ABANDONED_CACHE_WRITE_S", 60)
    for name, age in [
        (".jit_step-abc-cache.k9_x2m0q.tmp", 61),
        (".jit_step-def-cache.p3a8zz1w.tmp", 1),
        ("jit_step-abc-cache", 61),
        (".settings.json.download.tmp", 61),  # another tool's, in a folder the spec named
    ]:
        (tmp_path / name).write_bytes(b"")
        os.utime(tmp_path / name, (time.time() - age,) * 2)
    caplog.set_level("INFO", logger="lsjob")
    assert runtime.compile_cache_folder(str(tmp_path)) == (tmp_path, "spec")
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        ".jit_step-def-cache.p3a8zz1w.tmp",
        ".settings.json.download.tmp",
        "jit_step-abc-cache",
    ]
    assert "removed 1 temporary file(s) left by killed processes" in caplog.text


def test_an_unwritable_compile_cache_fails_when_named_and_is_skipped_with_a_warning_when_automatic(
    tmp_path, monkeypatch, caplog
):
    (tmp_path / "a-file").write_text("")  # a folder cannot be made under a file, even by root
    blocked = tmp_path / "a-file" / "cache"
    named = r"runtime.compile_cache is .*a-file/cache .*give a folder you can write to, or off"
    with pytest.raises(SpecError, match=named):
        runtime.compile_cache_folder(str(blocked))
    monkeypatch.setenv("JAX_COMPILATION_CACHE_DIR", str(blocked))
    assert runtime.compile_cache_folder("auto") == (None, f"off: {blocked} is not writable")
    assert "compiling afresh" in caplog.text


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="/proc: a folder no one may write in, root included")
def test_a_compile_cache_folder_that_exists_but_takes_no_files_is_refused_when_named(monkeypatch, caplog):
    # An existing folder that cannot be written to (read-only mount, another user's): mkdir
    # succeeds there, and JAX would only warn at each write and compile afresh every time.
    with pytest.raises(SpecError, match="runtime.compile_cache is /proc but compiled programs cannot be kept there"):
        runtime.compile_cache_folder("/proc")
    monkeypatch.setenv("JAX_COMPILATION_CACHE_DIR", "/proc")
    assert runtime.compile_cache_folder("auto") == (None, f"off: {Path('/proc')} is not writable")
    assert "compiling afresh" in caplog.text


@pytest.mark.parametrize("size, batch", [(256, 64), (100, 32)])
def test_feed_hands_over_every_example_in_order_in_batches(size, batch):
    x = np.arange(size * 4, dtype=np.uint8).reshape(size, 2, 2, 1)
    y = np.eye(4, dtype=np.float32)[np.arange(size) % 4]
    fed = runtime.feed(x, y, batch_size=batch)
    if "batch_size" in fed:  # not TensorFlow: the arrays themselves, for Keras's own path
        assert fed["x"] is x and fed["y"] is y and fed["batch_size"] == batch
        return
    batches = [(bx.numpy(), by.numpy()) for bx, by in fed["x"]]
    assert [len(bx) for bx, _ in batches] == [batch] * (size // batch) + ([size % batch] if size % batch else [])
    np.testing.assert_array_equal(np.concatenate([bx for bx, _ in batches]), x)
    np.testing.assert_array_equal(np.concatenate([by for _, by in batches]), y)
    # Whole batches only: a static batch dimension, as Keras's own pipeline gives (the same compiled step).
    assert fed["x"].element_spec[0].shape[0] == (batch if size % batch == 0 else None)
    predict = runtime.feed(x, batch_size=batch)["x"]
    np.testing.assert_array_equal(np.concatenate([bx.numpy() for bx in predict]), x)


def test_the_tensorflow_feed_runs_without_tf_data_autotuning():
    # Keras's own pipeline autotunes, and closing each iterator (every fit, evaluate and predict
    # call) then waited up to tens of seconds for the autotuner's thread on a 2-core CPU.
    if keras.backend.backend() != "tensorflow":
        pytest.skip("only the TensorFlow backend feeds through tf.data")
    fed = runtime.feed(np.zeros((8, 2, 2, 1), np.uint8), np.zeros((8, 4), np.float32), batch_size=4)["x"]
    assert fed.options().autotune.enabled is False
    validation = runtime.validation_feed(np.zeros((8, 2, 2, 1), np.uint8), np.zeros((8, 4), np.float32), batch_size=4)
    assert list(validation) == ["validation_data"] and validation["validation_data"].options().autotune.enabled is False


def test_run_ahead_limit_marks_each_step_without_syncing_the_model_and_compiles_its_mark_once(monkeypatch):
    # On JAX, Callback.model writes every variable back into the model (jax_state_sync): at every
    # step, the host-side bottleneck Keras warns of. The mark is jitted once, not at every step.
    # A stand-in for jax: this test runs where JAX is not installed (tests/run_ahead.py runs JAX).

    import keras

    jitted, syncs, waited = [], [], []

    class Step:
        def __init__(self, n):
            self.n = n

        def block_until_ready(self):
            waited.append(self.n)

    def jit(fn):
        jitted.append(fn)
        return lambda counter: Step(counter)

    monkeypatch.setitem(sys.modules, "jax", types.SimpleNamespace(jit=jit))
    for module in (runtime.keras.backend, keras.src.backend):
        monkeypatch.setattr(module, "backend", lambda: "jax")
    model = types.SimpleNamespace(jax_state_sync=lambda: syncs.append(1), _jax_state=None)
    limit = runtime.RunAheadLimit(depth=2)
    limit.set_model(model)
    limit.on_epoch_begin(0)
    for step in range(5):
        model._jax_state = {"optimizer_variables": [step]}
        limit.on_train_batch_begin(step)
    assert syncs == [] and len(jitted) == 1
    assert waited == [0, 1, 2] and [s.n for s in limit.in_flight] == [3, 4]
