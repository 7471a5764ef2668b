"""`lsjob bench`: the speed of a spec's real training step, on synthetic data.

Same model, loss, optimizer, augmentation, precision, batch and input path as
`lsjob run` (train.compile_model and a model.fit on uint8 arrays through runtime.feed,
like train.train), but no validation, checkpoints or results directory: only the
steps. The first fit call is compilation plus warm-up and is reported apart;
the timed call's per-step times are the gaps between the moments steps finish on
the device. The clock reads them off the training loop, so JAX and torch queue
steps ahead as they do in a run: a clock that waited on each step would add the
host's per-step work to the device's instead of overlapping the two.
"""

from __future__ import annotations

import logging
import resource
import statistics
import time
from pathlib import Path

import keras
import numpy as np

from job import runtime, smoothing
from job.data import CLASS_NAMES, SYNTHETIC_SEED, per_pixel_mean
from job.data.synthetic import make_synthetic
from job.errors import SpecError
from job.spec import SYNTHETIC_MAX_IMAGES, TRAIN_IMAGES, Spec
from job.train import check_batch_splits, compile_model

log = logging.getLogger("lsjob")


class _StepClock(keras.callbacks.Callback):
    """When each execution of steps finished, by its last step's index."""

    # Keras then calls it from worker threads, after reading the step's logs back from the
    # device (which waits for the step), while the loop goes on. TensorFlow's Keras is not
    # thread-safe and reads every step's logs in the loop itself, with or without a clock.
    async_safe = True

    def __init__(self):
        super().__init__()
        self.finished: dict[int, float] = {}

    def on_train_batch_end(self, batch, logs=None):
        float((logs or {}).get("loss", 0.0))  # read back already; if ever not, this waits for it
        self.finished[batch] = time.perf_counter()

    def ends(self) -> list[float]:
        return [self.finished[batch] for batch in sorted(self.finished)]  # threads may finish out of order


def bench(spec: Spec, steps: int = 50, warmup: int = 10) -> dict:
    """Time `steps` training steps after `warmup` ones; returns the figures `lsjob bench` prints."""
    batch = spec.train.batch_size
    per_call = spec.runtime.steps_per_execution
    # Whole executions only: a partial one would be a second, differently shaped compiled call.
    steps = max(steps // per_call, 2) * per_call
    warmup = max(warmup // per_call, 1) * per_call
    images = batch * max(steps, warmup)
    if images > SYNTHETIC_MAX_IMAGES:  # made in memory first, as a run's synthetic set is
        raise SpecError(
            f"--steps {steps} and --warmup {warmup} at batch {batch} take {images:,} synthetic images, more than "
            f"the {SYNTHETIC_MAX_IMAGES:,} a bench makes: lower --steps or --warmup (a few hundred steps time a "
            "step well)"
        )
    setup = runtime.configure(spec.runtime, spec.train.seed)
    check_batch_splits(spec)  # with replicas: all, only the machine tells; refused as `lsjob run` does
    # Entries cached before, and written during, the model's build and warm-up; with the programs
    # loaded (compile_cache_hits) and none written, the compile time below is a load time.
    cached_at_start = _cache_entries(setup.compile_cache)
    # Progress on stderr: a bench killed at a time limit shows which stage it had reached.
    log.info("bench: %s on %s, batch %d, precision %s; building the model", keras.backend.backend(),
             ", ".join(runtime.devices()), batch, setup.precision)  # fmt: skip
    x, y, _, _ = make_synthetic(images, 1, seed=SYNTHETIC_SEED)
    targets = smoothing.training_targets(y, len(CLASS_NAMES), spec.smoothing)
    # The programs loaded from the compile cache rather than compiled: the model's build and warm-up.
    with runtime.compile_cache_hits() as hits:
        with runtime.replica_scope():
            model = compile_model(spec, per_pixel_mean(x), len(CLASS_NAMES))
        log.info("bench: compiling the training step and %d warm-up steps", warmup)
        first_call_s, _ = _fit(model, x, targets, batch, warmup)
    cached_after_warmup = _cache_entries(setup.compile_cache)
    log.info("bench: compiled and warmed up in %.1f s; timing %d steps", first_call_s, steps)
    total_s, ends = _fit(model, x, targets, batch, steps)
    # One callback per execution of steps_per_execution steps.
    step_s = [b - a for a, b in zip(ends, ends[1:])]
    step_s = [s / per_call for s in step_s[1:]] or [total_s / steps]  # the first gap includes fit's set-up
    steady = statistics.median(step_s)
    return {
        "backend": keras.backend.backend(),
        "devices": runtime.devices(),
        "precision": setup.precision,
        "precision_source": setup.precision_source,
        "replicas": setup.replicas,
        "compile_cache": setup.compile_cache,
        "compile_cache_source": setup.compile_cache_source,
        "compile_cache_entries_at_start": cached_at_start,
        "compile_cache_entries_written": None if cached_at_start is None else cached_after_warmup - cached_at_start,
        "compile_cache_hits": None if cached_at_start is None else hits["hits"],  # programs loaded, not compiled
        "jit_compile": model.jit_compile,  # what the backend made of the spec's value (auto: on where it can)
        "jit_compile_spec": spec.runtime.jit_compile,
        "steps_per_execution": per_call,
        "batch_size": batch,
        "steps_timed": steps,
        "step_samples": len(step_s),  # the step times the median and p90 are of
        "images_per_s": batch / steady,
        "images_per_s_overall": steps * batch / total_s,
        "step_ms_median": 1000 * steady,
        "step_ms_p90": 1000 * float(np.percentile(step_s, 90)),
        "compile_and_warmup_s": first_call_s,
        "epoch_s_estimate": TRAIN_IMAGES // batch * steady,  # a CIFAR-10 epoch's full batches
        "host_peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "device_peak_mb": runtime.device_peak_memory_mb(),
        "versions": runtime.versions(),
        "git_commit": runtime.git_commit(),
    }


def _fit(model: keras.Model, x, targets, batch: int, n: int) -> tuple[float, list[float]]:
    """One fit call of `n` steps: its wall time, and its start and each execution's end."""
    clock = _StepClock()
    started = time.perf_counter()
    fed = runtime.feed(x[: n * batch], targets[: n * batch], batch_size=batch)
    # As in a run, the loop kept two executions ahead of the device at most.
    model.fit(**fed, shuffle=False, epochs=1, verbose=0, callbacks=[runtime.RunAheadLimit(), clock])
    return time.perf_counter() - started, [started, *clock.ends()]


def _cache_entries(folder: str | None) -> int | None:
    # Hidden files are no entries: another task's entry being written, JAX's lock file.
    return sum(not p.name.startswith(".") for p in Path(folder).iterdir()) if folder else None


def table(result: dict) -> str:
    rows = [
        ("backend", result["backend"]),
        ("device", ", ".join(result["devices"])),
        ("precision", result["precision"] + _chosen_how(result)),
        ("replicas", str(result["replicas"])),
        ("jit_compile", f"{result['jit_compile']} (spec: {result['jit_compile_spec']})"),
        ("batch size", str(result["batch_size"])),
        ("images/s (median step)", f"{result['images_per_s']:,.0f}"),
        ("step ms, median / p90", f"{result['step_ms_median']:.2f} / {result['step_ms_p90']:.2f}{_samples(result)}"),
        ("compile + warm-up s", f"{result['compile_and_warmup_s']:.1f}"),
        ("compile cache", _cache_how(result)),
        ("CIFAR-10 epoch (50k), s", f"{result['epoch_s_estimate']:.1f}"),
        ("host peak MB", f"{result['host_peak_mb']:,.0f}"),
        ("device peak MB", "n/a" if result["device_peak_mb"] is None else f"{result['device_peak_mb']:,.0f}"),
    ]
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"{k.ljust(width)}  {v}" for k, v in rows)


def _samples(result: dict) -> str:
    # Why --steps 3 gives 2 step times: the timed call's first execution carries fit's set-up.
    n, per_call = result.get("step_samples"), result.get("steps_per_execution", 1)
    if n is None:
        return ""
    if per_call == 1:
        return f" (of {n} of the {result['steps_timed']} steps: the first, with fit's set-up, left out)"
    return f" (of {n} executions of {per_call} steps, per step: the first, with fit's set-up, left out)"


def _cache_how(result: dict) -> str:
    # A warm cache makes the compile time a load time: say which one was timed.
    folder, source = result["compile_cache"], result["compile_cache_source"]
    if not folder:
        return source
    written, hits = result["compile_cache_entries_written"], result.get("compile_cache_hits")
    # Nothing written need not mean loaded: JAX keeps no program that compiled quickly.
    made = "compiled" if written or hits == 0 else "loaded"
    at_start = result["compile_cache_entries_at_start"]
    loads = "" if hits is None else f", {hits} program(s) loaded"
    return f"{folder}, {at_start} entries at start{loads}, {written} written ({made}) ({source})"


def _chosen_how(result: dict) -> str:
    source = result["precision_source"]
    return "" if source == "spec" else f" ({source})"
