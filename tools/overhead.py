"""Throughput of `lsjob run` and `lsjob bench` against a bare `model.fit` of the same model and data.

    python tools/overhead.py [--train-size 2560] [--test-size 512] [--epochs 3] [--repeats 2]

All sides run in fresh processes, alternating, on the same synthetic data, model, loss,
optimizer and batch, under whatever KERAS_BACKEND is set. Three bare fits:

- "bare fit": what a user would write: one `fit` call for all epochs on the numpy
  arrays, Keras's own shuffling and input pipeline, validating on the test set.
- "bare fit, lsjob's input": one `fit` call per epoch through runtime.feed, lsjob's
  input path, validating too: what lsjob's callbacks, history and checkpoints add to it.
- "bare fit, training only": one `fit` call, no validation: for `lsjob bench`.

An epoch's time runs from the end of the one before to its own end, so everything in
between counts: for `lsjob run` the next fit call's set-up, validation, history.csv and
the checkpoint (the gaps between run.log's epoch lines, written after the checkpoint).
Epoch 1 (tracing) is left out; the figure is the median. `lsjob bench` reports the median
step after warm-up, so it is set against the bare training-only fit's median step, timed
by the bench's own clock.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from gpu_check_table import epoch_ends  # tools/, beside this script: run.log's epoch lines, read once

BARE = {
    "bare fit": [],
    "bare fit, lsjob's input": ["--lsjob-input"],
    "bare fit, training only": ["--train-only"],
}


def bare(args) -> None:
    """One bare side, in this process: prints its epoch times and median step as JSON."""
    import keras

    from job import runtime, smoothing
    from job.bench import _StepClock
    from job.data import load_dataset, per_pixel_mean
    from job.spec import load_spec
    from job.train import compile_model

    spec = load_spec(None, _overrides(args))
    runtime.configure(spec.runtime, spec.train.seed)
    data = load_dataset(spec.data)
    model = compile_model(spec, per_pixel_mean(data.x_train), data.num_classes)
    ends = []

    class EpochEnds(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            ends.append(time.perf_counter())

    batch, eval_batch = spec.train.batch_size, spec.train.eval_batch_size
    steps = len(data.x_train) // batch * batch  # lsjob drops the partial batch
    x, y = data.x_train[:steps], smoothing.training_targets(data.y_train[:steps], data.num_classes, spec.smoothing)
    x_test, y_test = data.x_test, smoothing.one_hot(data.y_test, data.num_classes)
    clock = _StepClock()
    callbacks = [EpochEnds(), clock]
    if args.lsjob_input:
        validation = runtime.validation_feed(x_test, y_test, batch_size=eval_batch)
        for epoch in range(spec.train.epochs):
            model.fit(**runtime.feed(x, y, batch_size=batch), shuffle=False, initial_epoch=epoch, epochs=epoch + 1,
                      callbacks=callbacks, verbose=0, **validation)  # fmt: skip
    else:
        validation = {"validation_data": (x_test, y_test), "validation_batch_size": eval_batch}
        validation = {} if args.train_only else validation
        model.fit(x, y, batch_size=batch, epochs=spec.train.epochs, callbacks=callbacks, verbose=0, **validation)
    # The bench's clock keeps the steps of one epoch (it indexes them by step): the last one's.
    print(json.dumps({"epochs": _gaps(ends), "step_s": statistics.median(_gaps(clock.ends()))}))


def _gaps(ends: list[float]) -> list[float]:
    """Durations from the moments things ended: for epochs, the first (tracing) has none."""
    return [b - a for a, b in zip(ends, ends[1:])]


def _overrides(args) -> list[str]:
    return [
        "data.source=synthetic",
        f"data.train_size={args.train_size}",
        f"data.test_size={args.test_size}",
        f"train.epochs={args.epochs}",
        f"train.batch_size={args.batch_size}",
    ]


def _sets(args) -> list[str]:
    return [word for s in _overrides(args) for word in ("--set", s)]


def lsjob_epochs(args, root: Path, i: int) -> list[float]:
    cmd = [sys.executable, "-m", "job", "run", "/dev/null", *_sets(args),
           "--set", f"output.root={root}", "--set", f"output.run=r{i}"]  # fmt: skip
    subprocess.run(cmd, check=True, capture_output=True)
    ends = epoch_ends(root / f"r{i}" / "run.log")  # each logged once the epoch's checkpoint is written
    assert len(ends) == args.epochs, f"{len(ends)} epoch lines in run.log, expected {args.epochs}"
    return _gaps(ends)


def bare_result(flags: list[str]) -> dict:
    cmd = [sys.executable, __file__, "--bare", *sys.argv[1:], *flags]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def bench_step_s(args) -> float:
    """`lsjob bench`'s median step, over an epoch's worth of steps after a warm-up."""
    cmd = [sys.executable, "-m", "job", "bench", "/dev/null", *_sets(args),
           "--steps", str(args.train_size // args.batch_size), "--warmup", "5"]  # fmt: skip
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    return json.loads(out)["step_ms_median"] / 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--train-size", type=int, default=2560)
    parser.add_argument("--test-size", type=int, default=512)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--bare", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--lsjob-input", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--train-only", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.bare:
        return bare(args)

    images = args.train_size // args.batch_size * args.batch_size
    epochs = {"lsjob run": [], **{name: [] for name in BARE}}
    steps = {"lsjob bench": [], "bare fit, training only": []}
    with tempfile.TemporaryDirectory() as root:
        for i in range(args.repeats):
            epochs["lsjob run"] += lsjob_epochs(args, Path(root), i)
            for name, flags in BARE.items():
                result = bare_result(flags)
                epochs[name] += result["epochs"]
                if name in steps:
                    steps[name].append(result["step_s"])
            steps["lsjob bench"].append(bench_step_s(args))
            print(f"repeat {i + 1}/{args.repeats}: epochs " + ", ".join(f"{k} {v[-1]:.2f}s" for k, v in epochs.items())
                  + "; steps " + ", ".join(f"{k} {1000 * v[-1]:.0f}ms" for k, v in steps.items()))  # fmt: skip
    rates = {k: images / statistics.median(v) for k, v in epochs.items()}
    for k, v in epochs.items():
        print(f"{k:24s} median epoch {statistics.median(v):7.2f}s (min {min(v):.2f}, max {max(v):.2f})  "
              f"{rates[k]:7.1f} images/s  (samples: {len(v)})")  # fmt: skip
    step_rates = {k: args.batch_size / statistics.median(v) for k, v in steps.items()}
    for k, v in steps.items():
        print(f"{k:24s} median step {1000 * statistics.median(v):7.1f}ms  {step_rates[k]:7.1f} images/s")
    print(f"lsjob run / bare fit throughput: {rates['lsjob run'] / rates['bare fit']:.3f}")
    print(f"lsjob run / bare fit, lsjob's input throughput: {rates['lsjob run'] / rates[list(BARE)[1]]:.3f}")
    print(f"lsjob bench / bare fit (training only), median step: "
          f"{step_rates['lsjob bench'] / step_rates['bare fit, training only']:.3f}")  # fmt: skip


if __name__ == "__main__":
    main()
