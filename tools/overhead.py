"""Throughput of `lsjob run` and `lsjob bench` against a bare `model.fit` of the same model and data.

    python tools/overhead.py [--train-size 1280] [--test-size 256] [--epochs 3] [--repeats 2]

All sides run in fresh processes, alternating, on the same synthetic data, model,
loss, optimizer and batch; the bare side is a plain `fit` on numpy arrays with Keras's
own shuffling and no callbacks. Epoch 1 (tracing) is left out; the figure is the median
of the remaining epochs' wall times. `lsjob run` is compared with bare epochs that
validate on the test set as it does; `lsjob bench` (its median step, timed after
warm-up) with bare epochs that only train.
"""

from __future__ import annotations

import argparse
import csv
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def bare(args) -> None:
    import keras

    from job import runtime, smoothing
    from job.data import load_dataset, per_pixel_mean
    from job.spec import load_spec
    from job.train import compile_model

    spec = load_spec(None, _overrides(args))
    runtime.configure(spec.runtime, spec.train.seed)
    data = load_dataset(spec.data)
    model = compile_model(spec, per_pixel_mean(data.x_train), data.num_classes)
    seconds = []

    class Timer(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            self.t = time.perf_counter()

        def on_epoch_end(self, epoch, logs=None):
            seconds.append(time.perf_counter() - self.t)

    steps = len(data.x_train) // spec.train.batch_size * spec.train.batch_size  # lsjob drops the partial batch
    validation = {"validation_data": (data.x_test, smoothing.one_hot(data.y_test, data.num_classes)),
                  "validation_batch_size": spec.train.eval_batch_size}  # fmt: skip
    model.fit(
        data.x_train[:steps],
        smoothing.training_targets(data.y_train[:steps], data.num_classes, spec.smoothing),
        batch_size=spec.train.batch_size,
        epochs=spec.train.epochs,
        callbacks=[Timer()],
        verbose=0,
        **(validation if not args.train_only else {}),
    )
    print(json.dumps(seconds))


def _overrides(args) -> list[str]:
    return [
        "data.source=synthetic",
        f"data.train_size={args.train_size}",
        f"data.test_size={args.test_size}",
        f"train.epochs={args.epochs}",
        f"train.batch_size={args.batch_size}",
    ]


def lsjob_epochs(args, root: Path, i: int) -> list[float]:
    sets = [*_overrides(args), f"output.root={root}", f"output.run=r{i}"]
    cmd = [sys.executable, "-m", "job", "run", "/dev/null", *[x for s in sets for x in ("--set", s)]]
    subprocess.run(cmd, check=True, capture_output=True)
    with open(root / f"r{i}" / "history.csv") as f:
        return [float(row["seconds"]) for row in csv.DictReader(f)]


def bare_epochs(args, train_only: bool = False) -> list[float]:
    cmd = [sys.executable, __file__, "--bare", *sys.argv[1:], *(["--train-only"] if train_only else [])]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def bench_step_s(args) -> float:
    """`lsjob bench`'s median step, over an epoch's worth of steps after a warm-up."""
    steps = args.train_size // args.batch_size
    sets = [*_overrides(args)]
    cmd = [sys.executable, "-m", "job", "bench", "/dev/null", *[x for s in sets for x in ("--set", s)],
           "--steps", str(steps), "--warmup", "5"]  # fmt: skip
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    return json.loads(out)["step_ms_median"] / 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--train-size", type=int, default=1280)
    parser.add_argument("--test-size", type=int, default=256)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--bare", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--train-only", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.bare:
        return bare(args)

    images = args.train_size // args.batch_size * args.batch_size
    times = {"lsjob run": [], "bare fit": [], "lsjob bench": [], "bare fit, training only": []}
    with tempfile.TemporaryDirectory() as root:
        for i in range(args.repeats):
            times["lsjob run"] += lsjob_epochs(args, Path(root), i)[1:]
            times["bare fit"] += bare_epochs(args)[1:]
            times["lsjob bench"].append(bench_step_s(args) * (images // args.batch_size))  # as an epoch
            times["bare fit, training only"] += bare_epochs(args, train_only=True)[1:]
            print(f"repeat {i + 1}/{args.repeats}: " + ", ".join(f"{k} {v[-1]:.2f}s" for k, v in times.items()))
    rates = {k: images / statistics.median(v) for k, v in times.items()}
    for k, v in times.items():
        print(f"{k:24s} median epoch {statistics.median(v):7.2f}s  {rates[k]:7.1f} images/s  (samples: {len(v)})")
    print(f"lsjob run / bare fit throughput: {rates['lsjob run'] / rates['bare fit']:.3f}")
    print(f"lsjob bench / bare fit (training only) throughput: "
          f"{rates['lsjob bench'] / rates['bare fit, training only']:.3f}")  # fmt: skip


if __name__ == "__main__":
    main()
