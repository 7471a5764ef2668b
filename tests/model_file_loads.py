"""A finished run's model.keras, loaded on whatever backend this process runs, must predict what
the run predicted and bring its optimizer state. On PyTorch, model.save names Keras's own
torch subclass of SGD, which no other backend imports (model.save_model renames it):
tools/check_without_tensorflow.sh trains on PyTorch, then runs this under JAX.

    KERAS_BACKEND=jax python tests/model_file_loads.py RESULTS/RUN

Exit status 0 when the file loads compiled, with an SGD that has taken every step of the run,
and its predictions of the run's test images match predictions.npz; 1 (with the figures) when not.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import keras
import numpy as np

import job.model  # noqa: F401  (registers the model's own layers for loading)
from job import runtime
from job.data import load_dataset
from job.report import load_predictions
from job.spec import load_spec
from job.train import steps_per_epoch

# float32 sums in another order, on another backend: measured 3.3e-7 from PyTorch to JAX.
TOLERANCE = 1e-4


def main(run: Path) -> int:
    manifest = json.loads((run / "manifest.json").read_text())
    spec = load_spec(run / "spec.yaml")
    model = keras.saving.load_model(run / "model.keras")  # compiled: the optimizer's class must import here
    optimizer = model.optimizer
    inner = optimizer.inner_optimizer if isinstance(optimizer, keras.optimizers.LossScaleOptimizer) else optimizer
    steps = int(keras.ops.convert_to_numpy(inner.iterations))
    data = load_dataset(spec.data)
    if spec.eval.temperature_scaling:  # as the run split it
        data, _, _ = data.split_holdout(spec.eval.holdout_size)
    expected_steps = manifest["epochs_done"] * steps_per_epoch(len(data.x_train), spec.train.batch_size)
    probs = model.predict(**runtime.feed(data.x_test, batch_size=spec.train.eval_batch_size), verbose=0)
    saved = load_predictions(run).test_probs
    gap = float(np.abs(probs - saved).max())
    print(
        f"model_file_loads: {manifest['backend']} -> {keras.backend.backend()}: {type(inner).__name__} at step "
        f"{steps} of {expected_steps}; predictions differ by at most {gap:.1e} (allowed {TOLERANCE:.0e})"
    )
    return 0 if isinstance(inner, keras.optimizers.SGD) and steps == expected_steps and gap <= TOLERANCE else 1


if __name__ == "__main__":
    sys.exit(main(Path(sys.argv[1])))
