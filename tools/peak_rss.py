"""Peak host memory of a run on the full-size (50,000 + 10,000) synthetic set.

    /usr/bin/time -v python tools/peak_rss.py [--steps 20]

Everything a real run holds is there: the generated uint8 set, the mean image, the
training targets, the model and optimizer, validation and prediction on all 10,000
test images. Only the epoch is cut to --steps batches so it finishes on a CPU.
"""

import argparse
import resource
import tempfile
from pathlib import Path

from job import runtime, train
from job.data import load_dataset
from job.spec import load_spec


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=20)
    args = parser.parse_args()
    spec = load_spec(None, ["data.source=synthetic", "train.epochs=1"])
    runtime.configure(spec.runtime, spec.train.seed)
    data = load_dataset(spec.data)
    full_order = train.epoch_order
    # A short epoch; all else as in a run.
    train.epoch_order = lambda *a: full_order(*a)[: args.steps * spec.train.batch_size]
    with tempfile.TemporaryDirectory() as run_dir:
        train.train(spec, data, Path(run_dir))
    peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"train {data.x_train.shape} test {data.x_test.shape}: peak RSS {peak_mib:.0f} MiB")


if __name__ == "__main__":
    main()
