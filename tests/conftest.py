import os
from pathlib import Path

import numpy as np
import pytest

# The real CIFAR-10 sample lives beside the project, never inside it.
ROOT = Path(__file__).resolve().parents[1]
SAMPLE = ROOT.parent / "shared" / "data" / "cifar10-sample.npz"

# Official-format CIFAR-10 files and their fixtures, for the test_data_* files.
pytest_plugins = ["cifar_files"]


@pytest.fixture(scope="session")
def cifar_sample():
    """Real CIFAR-10 pixels: 5,000 train (data_batch_1) and 1,000 test, official order."""
    if not SAMPLE.is_file():
        message = f"real CIFAR-10 sample not found at {SAMPLE} (CI provides ../shared/data)"
        if os.environ.get("LSJOB_REQUIRE_SAMPLE"):
            pytest.fail(message)  # CI must not pass by skipping them
        pytest.skip(message)
    with np.load(SAMPLE) as f:
        return {k: f[k] for k in ("x_train", "y_train", "x_test", "y_test")}


TINY = [
    "data.source=synthetic",
    "data.train_size=128",
    "data.test_size=32",
    "train.batch_size=16",
    "train.epochs=2",
    "runtime.deterministic=true",
]


@pytest.fixture
def tiny_spec(tmp_path):
    """A spec that trains in seconds: 8 steps an epoch on synthetic data, results under tmp_path."""
    from job.spec import load_spec

    def make(*overrides):
        return load_spec(None, [*TINY, f"output.root={tmp_path / 'results'}", "output.run=tiny", *overrides])

    return make
