"""Backend setup: seeds, determinism, precision and device facts.

The only module that may touch a specific backend; everything else speaks Keras 3,
so KERAS_BACKEND=jax or torch runs the same job.
"""

from __future__ import annotations

import platform

import keras

from job.spec import RuntimeSpec


def configure(runtime: RuntimeSpec, seed: int) -> None:
    # Seeds Python, NumPy and the backend: weight init and dropout follow train.seed.
    keras.utils.set_random_seed(seed)
    keras.config.set_dtype_policy(
        {"off": "float32", "bf16": "mixed_bfloat16", "fp16": "mixed_float16"}[runtime.mixed_precision]
    )
    if runtime.deterministic:
        _enable_determinism()


def _enable_determinism() -> None:
    backend = keras.backend.backend()
    if backend == "tensorflow":
        import tensorflow as tf

        tf.config.experimental.enable_op_determinism()
    elif backend == "torch":
        import torch

        torch.use_deterministic_algorithms(True, warn_only=True)
    # JAX is deterministic on CPU; on GPU XLA_FLAGS=--xla_gpu_deterministic_ops=true must be set before start-up.


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
