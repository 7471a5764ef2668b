"""Backend setup: seeds, determinism, precision, devices and data parallelism.

The only module that imports a backend (tensorflow, jax, torch) itself; everything else
speaks Keras 3, asking keras.backend.backend() where a backend behaves differently, so
KERAS_BACKEND=jax or torch runs the same job.
"""

from __future__ import annotations

import contextlib
import importlib.util
import logging
import os
import platform
import subprocess
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

import keras

from job import atomic
from job.data.cifar10 import keras_home
from job.errors import SpecError
from job.spec import RuntimeSpec

# A compile-cache entry is written in seconds; a temporary this old was left by a killed process.
ABANDONED_CACHE_WRITE_S = 3600
JAX_ENTRY_SUFFIX = "-cache"  # how JAX names an entry: <key>-cache (jax._src.lru_cache._CACHE_SUFFIX)
POLICY = {"off": "float32", "bf16": "mixed_bfloat16", "fp16": "mixed_float16"}


@dataclass(frozen=True)
class Setup:
    """What `configure` chose: recorded in the manifest and the bench JSON."""

    precision: str  # off, bf16 or fp16: runtime.mixed_precision, with auto resolved for this device
    precision_source: str  # "spec" or "auto: <why>"
    replicas: int
    replica_devices: list[str]
    compile_cache: str | None  # the folder compiled programs are kept in; None: compiled afresh
    compile_cache_source: str  # "spec", "auto: <where from>" or why there is none

    def describe(self) -> dict:
        return asdict(self)


_strategy = None  # the TensorFlow backend's MirroredStrategy when replicas > 1
log = logging.getLogger("lsjob")


def configure(runtime: RuntimeSpec, seed: int) -> Setup:
    if runtime.steps_per_execution > 1 and keras.backend.backend() == "torch":
        # Keras refuses it only when the first step is built, after the run directory is made.
        raise SpecError(
            f"runtime.steps_per_execution is {runtime.steps_per_execution}, but Keras's PyTorch backend runs "
            f"one step per call; set runtime.steps_per_execution: 1{or_use('jax', 'tensorflow')}"
        )
    if runtime.jit_compile is True and keras.backend.backend() == "torch":
        log.warning(
            "runtime.jit_compile: true on the PyTorch backend is Keras's torch.compile path, which on this "
            "model recompiles Keras's own layer code up to torch's recompile limit: a step ran about 20 "
            "times slower than eager (3.4 s against 0.16 s at batch 8, torch 2.13, 2-core CPU); leave it auto "
            "(eager on PyTorch)%s",
            or_use("jax"),
        )
    # Before the seed: set_random_seed already compiles on JAX.
    cache, cache_source = _set_up_compile_cache(runtime.compile_cache)
    # Seeds Python, NumPy and the backend: weight init and dropout follow train.seed.
    keras.utils.set_random_seed(seed)
    precision, source = _precision(runtime.mixed_precision)
    keras.config.set_dtype_policy(POLICY[precision])
    if runtime.deterministic:
        _enable_determinism()
    replica_devices = _set_up_replicas(runtime.replicas)
    return Setup(precision, source, len(replica_devices), replica_devices, cache, cache_source)


BACKEND_NAMES = {"jax": "JAX", "tensorflow": "TensorFlow", "torch": "PyTorch"}


def or_use(*backends: str) -> str:
    """', or use the JAX backend (KERAS_BACKEND=jax)' for those of `backends` installed here:
    on a machine without TensorFlow (our GPU machine has JAX and PyTorch alone) advice to switch
    to it would only fail."""
    here = [b for b in backends if importlib.util.find_spec(b) is not None]
    if not here:
        return ""
    named = " or ".join(BACKEND_NAMES[b] for b in here)
    settings = " or ".join(f"KERAS_BACKEND={b}" for b in here)
    return f", or use the {named} backend ({settings})"


def replica_count() -> int:
    """Replicas set up by the last `configure`: 1 unless runtime.replicas asked for more."""
    if _strategy is not None:
        return _strategy.num_replicas_in_sync
    distribution = keras.distribution.distribution() if keras.backend.backend() == "jax" else None
    return len(distribution.device_mesh.devices.flatten()) if distribution is not None else 1


def mirrored() -> bool:
    """Whether TensorFlow's MirroredStrategy runs more than one replica, each the model on its
    own slice of the batch: BatchNormalization must then share batch statistics
    (model.synchronize_batch_norm) and random layers draw per replica (uniform_per_replica).
    JAX's DataParallel runs the model on the global batch, and needs neither."""
    return _strategy is not None and _strategy.num_replicas_in_sync > 1


def uniform_per_replica(shape, seed_generator):
    """keras.random.uniform(shape), drawn afresh on every replica. Under TensorFlow's
    MirroredStrategy each replica runs the model on its own slice of the batch, and every
    replica's copy of a seed generator holds the same state: drawn as usual, image j of each
    replica got the same shift, flip and dropout mask. So each takes its own row of one draw
    for all. JAX's DataParallel runs the model on the global batch, one draw for all already."""
    context = _replica_context() if mirrored() else None
    if context is None:  # one device, or called across replicas (a notebook): as Keras draws
        return keras.random.uniform(shape, seed=seed_generator)
    replica = context.replica_id_in_sync_group
    draws = keras.random.uniform((_strategy.num_replicas_in_sync, *shape), seed=seed_generator)
    return keras.ops.take(draws, replica, axis=0)


def _replica_context():
    import tensorflow as tf  # only under MirroredStrategy: TensorFlow may be absent elsewhere

    return tf.distribute.get_replica_context()


def replica_scope():
    """Where the model, its optimizer and their checkpointed state must be created: under
    TensorFlow's MirroredStrategy its variables are mirrored on every replica. JAX's
    DataParallel is global (keras.distribution), so there it is nothing."""
    return _strategy.scope() if _strategy is not None else contextlib.nullcontext()


class RunAheadLimit(keras.callbacks.Callback):
    """Keeps the training loop at most `depth` executions of steps ahead of the device (JAX).

    JAX returns from a step as soon as it is queued, and with every callback off the loop
    (none waits for a step) nothing holds the loop back: on a 2-core CPU it queued a whole
    epoch within a second. A stop checkpoints the last step queued, so it waited for all of
    them: 26 s after a SIGTERM, or to the epoch's end, where TensorFlow, which reads each
    step's loss back, stopped in 2 s. With two in flight the host still prepares the next
    step while the device runs one (`lsjob bench` times the step with this limit, as a run
    has it). A no-op on TensorFlow and PyTorch.
    """

    async_safe = True  # nothing at a batch's end: Keras may keep those calls off the loop

    def __init__(self, depth: int = 2):
        super().__init__()
        self.depth = depth
        self.in_flight: list = []
        self._mark = None

    def on_epoch_begin(self, epoch, logs=None):
        self.in_flight = []  # the last epoch ended with every step done

    def on_train_batch_begin(self, batch, logs=None):
        if keras.backend.backend() != "jax":
            return
        # Keras's JAX trainer keeps the last step's output state here for callbacks; read before
        # the next step takes it (its buffers are donated to that step). Through `_model`: reading
        # `self.model` on JAX writes every variable of the state back into the model
        # (Callback.model calls jax_state_sync), and the next step then gathers and purges them
        # all again, on the host at every step: what Keras's trainer warns "would be a big
        # performance bottleneck".
        state = getattr(self._model, "_jax_state", None) or {}
        optimizer_variables = state.get("optimizer_variables") or []
        if not optimizer_variables:
            return  # a fit's first step, or a Keras without it: nothing to wait on
        if self._mark is None:
            import jax

            # Compiled once: a call is a few µs of dispatch, where jnp.copy's Python layers took
            # 30 µs each, every step.
            self._mark = jax.jit(lambda counter: counter + 0)
        # A copy of the step counter: ready once that step is, and never donated.
        self.in_flight.append(self._mark(optimizer_variables[0]))
        while len(self.in_flight) > self.depth:
            self.in_flight.pop(0).block_until_ready()


def feed(x, y=None, *, batch_size: int) -> dict:
    """Keyword arguments that hand in-memory arrays to model.fit, evaluate or predict, in
    order, `batch_size` at a time: on JAX and torch the arrays themselves, for Keras's own path.

    On TensorFlow, a tf.data pipeline with tf.data's autotuning off. Keras's own pipeline for
    arrays autotunes, and closing one of its iterators (every fit, evaluate and predict call:
    twice an epoch in a run) waits for the autotuner's thread to wake, which sleeps for up to
    tens of seconds. On this project's 2-core CPU (TensorFlow 2.21) a 20-step epoch took 12 s,
    plus 6 to 21 s idle in 2 or 3 epochs of 5; with the autotuner off, never. Nothing here
    needs autotuning: the batches are slices of arrays in memory, and two are kept ready ahead.
    """
    if keras.backend.backend() != "tensorflow":
        return {"x": x, "batch_size": batch_size, **({} if y is None else {"y": y})}
    import tensorflow as tf

    # A static batch shape where the batches are all whole, as Keras's own pipeline has: the
    # same compiled step, so the same numbers to the last bit.
    whole = len(x) % batch_size == 0
    batches = tf.data.Dataset.from_tensor_slices(x if y is None else (x, y)).batch(batch_size, drop_remainder=whole)
    batches = batches.prefetch(2)
    options = tf.data.Options()
    options.autotune.enabled = False
    # As Keras's own pipeline: replicas of a MirroredStrategy split each batch.
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
    return {"x": batches.with_options(options)}


def validation_feed(x, y, *, batch_size: int) -> dict:
    """`feed` for model.fit's validation_data (and validation_batch_size)."""
    fed = feed(x, y, batch_size=batch_size)
    if "batch_size" in fed:
        return {"validation_data": (fed["x"], fed["y"]), "validation_batch_size": batch_size}
    return {"validation_data": fed["x"]}


def _precision(asked: str) -> tuple[str, str]:
    if asked != "auto":
        return asked, "spec"
    kind, capability = accelerator()
    # bf16 needs no loss scaling and has float32's range; NVIDIA has it from Ampere (8.0) on.
    if kind == "tpu" or (kind == "gpu" and capability >= (8, 0)):
        where = f"gpu compute capability {capability[0]}.{capability[1]}" if kind == "gpu" else kind
        return "bf16", f"auto: {where}"
    if kind == "gpu" and capability >= (7, 0):  # Volta/Turing: fast fp16 tensor cores, no bf16
        return "fp16", f"auto: gpu compute capability {capability[0]}.{capability[1]} has no bf16"
    return "off", f"auto: {kind or 'cpu'}, float32"


def _set_up_compile_cache(asked: str) -> tuple[str | None, str]:
    backend = keras.backend.backend()
    if backend != "jax":
        # TensorFlow has a persistent XLA cache only behind an undocumented flag read at import.
        return None, f"not used on the {backend} backend"
    folder, source = compile_cache_folder(asked)
    folder = str(folder) if folder else None
    import jax
    from jax.experimental.compilation_cache import compilation_cache

    compilation_cache.reset_cache()  # JAX opens its cache once per process; some processes run several specs
    jax.config.update("jax_compilation_cache_dir", folder)
    if folder:
        _write_compiled_programs_whole()
    if folder and "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS" not in os.environ:
        # JAX keeps only programs that took a second to compile; the model's many small ones add up.
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)
    return folder, source


def _write_compiled_programs_whole() -> None:
    """Make JAX write each compile-cache entry beside its name and link it into place.

    JAX writes an entry in place (truncate, then write) after checking that its name is free.
    The tasks of a sweep share the folder and compile the same programs at once; on NFS each
    may still see the name free (lookups are cached) and write it too, and their bytes differ
    (each entry records its compile time): pages of both make an entry that no longer
    decompresses. JAX then warns and compiles afresh in every later process, and never
    rewrites it, since the name is taken. Written whole (atomic.write_once), a reader sees
    one writer's entry or none. JAX's own write is kept where it evicts (it locks then), and
    by a JAX whose cache has another shape.
    """
    try:
        from jax._src import lru_cache
    except ImportError:
        return
    cache = getattr(lru_cache, "LRUCache", None)
    suffix = getattr(lru_cache, "_CACHE_SUFFIX", None)
    if cache is None or not isinstance(suffix, str) or getattr(cache, "_lsjob_whole_writes", False):
        return
    jax_put = cache.put

    def put(self, key: str, value: bytes) -> None:
        if getattr(self, "eviction_enabled", True):
            return jax_put(self, key, value)
        atomic.write_once(Path(str(self.path)) / f"{key}{suffix}", value)  # compile_cache_folder: local

    cache.put = put
    cache._lsjob_whole_writes = True


@contextlib.contextmanager
def compile_cache_hits():
    """Counts the programs JAX loads from its compile cache inside the block ({"hits": n}; 0 on
    other backends). Counting the folder's entries cannot tell a load from a compile that JAX
    chose not to keep (under its minimum compile time, say): both write nothing."""
    counts = {"hits": 0}
    if keras.backend.backend() != "jax":
        yield counts
        return
    import jax.monitoring

    def listen(event: str, **kwargs) -> None:
        if event == "/jax/compilation_cache/cache_hits":
            counts["hits"] += 1

    jax.monitoring.register_event_listener(listen)
    try:
        yield counts
    finally:
        jax.monitoring.unregister_event_listener(listen)


def compile_cache_folder(asked: str) -> tuple[Path | None, str]:
    """The folder runtime.compile_cache names, created, and how it was chosen; None when off,
    or when the automatic choice cannot be written to (a warning: the run goes on uncached)."""
    if asked == "off":
        return None, "spec: off"
    if asked == "auto":
        from_env = os.environ.get("JAX_COMPILATION_CACHE_DIR")
        folder = Path(from_env).expanduser() if from_env else keras_home() / "compile-cache"
        source = "auto: $JAX_COMPILATION_CACHE_DIR" if from_env else "auto: compile-cache/ in Keras's cache folder"
    else:
        folder, source = Path(asked).expanduser(), "spec"
    folder = folder.absolute()  # the manifest says where, whatever the working directory was
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=folder):  # JAX itself would fail on each write, and only warn
            pass
    except OSError as e:
        if asked != "auto":
            raise SpecError(
                f"runtime.compile_cache is {asked} but compiled programs cannot be kept there "
                f"({e.strerror or e}); give a folder you can write to, or off"
            ) from e
        log.warning("compile cache %s is not writable (%s); compiling afresh (runtime.compile_cache "
                    "can name another folder)", folder, e.strerror or e)  # fmt: skip
        return None, f"off: {folder} is not writable"
    if cleared := atomic.clear_abandoned_writes(folder, ABANDONED_CACHE_WRITE_S, JAX_ENTRY_SUFFIX):
        log.info("compile cache %s: removed %d temporary file(s) left by killed processes", folder, cleared)
    return folder, source


def accelerator() -> tuple[str | None, tuple[int, int]]:
    """('gpu' or 'tpu' or None, compute capability) of the first accelerator."""
    backend = keras.backend.backend()
    try:
        if backend == "tensorflow":
            import tensorflow as tf

            gpus = tf.config.list_physical_devices("GPU")
            if gpus:
                details = tf.config.experimental.get_device_details(gpus[0])
                return "gpu", tuple(details.get("compute_capability", (0, 0)))
        elif backend == "jax":
            import jax

            device = jax.devices()[0]
            if device.platform == "tpu":
                return "tpu", (0, 0)
            if device.platform == "gpu":
                major, _, minor = str(getattr(device, "compute_capability", "0.0")).partition(".")
                return "gpu", (int(major), int(minor or 0))
        elif backend == "torch":
            import torch

            if torch.cuda.is_available():
                return "gpu", tuple(torch.cuda.get_device_capability(0))
    except (RuntimeError, ValueError, KeyError):
        pass
    return None, (0, 0)


def _set_up_replicas(replicas: int | str) -> list[str]:
    global _strategy
    _strategy = None
    available = replica_candidates()
    wanted = len(available) if replicas == "all" else replicas
    if keras.backend.backend() == "jax":
        keras.distribution.set_distribution(None)  # one configure per run, some processes run several
    if wanted == 1:
        return available[:1]
    backend = keras.backend.backend()
    if backend not in ("tensorflow", "jax"):
        raise SpecError(
            f"runtime.replicas is {replicas}: data parallelism in one run needs the TensorFlow or JAX backend, "
            f"not {backend}; set runtime.replicas: 1, or run one task per GPU (Slurm array, Indexed Job)"
        )
    if wanted > len(available):
        raise SpecError(
            f"runtime.replicas is {replicas} but this machine has {len(available)} device(s) for it "
            f"({', '.join(available)}); lower runtime.replicas or use 'all'"
        )
    chosen = available[:wanted]
    if backend == "tensorflow":
        import tensorflow as tf

        _strategy = tf.distribute.MirroredStrategy(chosen)
    else:
        import jax

        devices = [d for d in jax.devices() if str(d) in chosen]
        keras.distribution.set_distribution(keras.distribution.DataParallel(devices=devices))
    return chosen


def replica_candidates() -> list[str]:
    """The devices replicas may run on: the GPUs (or TPUs), else the CPU devices, so that
    tests can split a CPU into several (TensorFlow logical devices, XLA's host device count)."""
    backend = keras.backend.backend()
    if backend == "tensorflow":
        import tensorflow as tf

        return [d.name for d in tf.config.list_logical_devices("GPU")] or [
            d.name for d in tf.config.list_logical_devices("CPU")
        ]
    if backend == "jax":
        import jax

        return [str(d) for d in jax.devices()]
    return devices()[:1]


def _enable_determinism() -> None:
    backend = keras.backend.backend()
    if backend == "tensorflow":
        import tensorflow as tf

        tf.config.experimental.enable_op_determinism()
    elif backend == "torch":
        import torch

        torch.use_deterministic_algorithms(True, warn_only=True)
    elif backend == "jax":
        import jax

        # JAX is deterministic on a CPU; on a GPU only with this flag, read as its backend starts,
        # before anything here runs: said, not silently left off.
        if jax.default_backend() == "gpu" and "--xla_gpu_deterministic_ops=true" not in os.environ.get("XLA_FLAGS", ""):
            log.warning(
                "runtime.deterministic: JAX on a GPU is deterministic only with "
                "XLA_FLAGS=--xla_gpu_deterministic_ops=true set before lsjob starts; this run is not"
            )


def devices() -> list[str]:
    backend = keras.backend.backend()
    if backend == "tensorflow":
        import tensorflow as tf

        return [d.name for d in tf.config.list_logical_devices()]
    if backend == "jax":
        import jax

        return [str(d) for d in jax.devices()]
    if backend == "torch":
        import torch

        return [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())] or ["cpu"]
    return ["unknown"]


def device_peak_memory_mb() -> float | None:
    """Peak accelerator memory of this process so far; None on a CPU or where the backend cannot tell."""
    backend = keras.backend.backend()
    try:
        if backend == "tensorflow":
            import tensorflow as tf

            gpus = tf.config.list_logical_devices("GPU")
            return tf.config.experimental.get_memory_info(gpus[0].name)["peak"] / 2**20 if gpus else None
        if backend == "jax":
            import jax

            stats = jax.devices()[0].memory_stats()
            return stats["peak_bytes_in_use"] / 2**20 if stats else None
        if backend == "torch":
            import torch

            return torch.cuda.max_memory_allocated() / 2**20 if torch.cuda.is_available() else None
    except (KeyError, RuntimeError, ValueError):  # a device without memory statistics
        return None
    return None


def versions() -> dict[str, str]:
    import job

    found = {"lsjob": job.__version__, "python": platform.python_version(), "keras": keras.__version__}
    backend = keras.backend.backend()
    module = {"tensorflow": "tensorflow", "jax": "jax", "torch": "torch"}.get(backend)
    if module:
        found[module] = __import__(module).__version__
    return found


def git_commit() -> str | None:
    """The commit of the lsjob source, when it runs from its own checkout."""
    source = Path(__file__).resolve().parent.parent
    try:
        out = subprocess.run(
            ["git", "rev-parse", "--show-toplevel", "HEAD"], cwd=source, capture_output=True, text=True, timeout=5
        )
    except (OSError, subprocess.SubprocessError):
        return None
    lines = out.stdout.split()
    # An installed copy may sit inside some unrelated repository: only trust our own.
    if out.returncode != 0 or len(lines) != 2 or Path(lines[0]).resolve() != source:
        return None
    return lines[1]
