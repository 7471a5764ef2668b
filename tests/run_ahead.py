"""A stop on JAX checkpoints within a few steps of where the device was, not an epoch later.

JAX queues steps without waiting for them; unchecked, the training loop ran a whole epoch
ahead of the device, and a SIGTERM, which checkpoints the last step queued, waited for all
of it (runtime.RunAheadLimit). Here the stop is asked for as the device finishes step 9 of
a 64-step epoch, from the callback thread that sees each step finish, as a SIGTERM
arriving just then would. Run as a script (tools/check_without_tensorflow.sh does, on JAX):

    KERAS_BACKEND=jax python tests/run_ahead.py

Exit status 0 when the checkpoint falls within RunAheadLimit's depth (and a thread's slack)
of step 9, and the limit never copied the model's state back from JAX's between steps; 1 with
what happened when not. TensorFlow waits for every step by itself.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

from job import preemption, runtime
from job import train as train_mod
from job.data import load_dataset
from job.errors import InterruptedRun
from job.spec import load_spec

STOP_AFTER = 9  # steps the device has finished when the stop comes
# The callback thread that asks may run a step or two after the device finished step 9, and the
# loop may then queue one more before it sees the request (seen here: 11 and 12; without the limit, 41).
SLACK = 3


class StopAsStepFinishes(train_mod.StopOnNonFiniteLoss):
    """Kept off the loop like the run's own batch-end check: called once the step is done."""

    def on_train_batch_end(self, batch, logs=None):
        super().on_train_batch_end(batch, logs)
        if batch + 1 >= STOP_AFTER:
            preemption._requested = preemption._requested or "SIGTERM"


def counting_state_syncs() -> list[int]:
    """Each time Keras's JAX trainer writes its state back into the model's variables (the
    step it was at): a callback that reads `self.model` at every step made it do so at every
    step, and the next step gather and purge it all again."""
    from keras.src.backend.jax.trainer import JAXTrainer

    syncs, real = [], JAXTrainer.jax_state_sync

    def sync(model):
        if getattr(model, "_jax_state", None) and not model._jax_state_synced:
            syncs.append(
                int(model._jax_state["optimizer_variables"][0]) if "optimizer_variables" in model._jax_state else -1
            )
        real(model)

    JAXTrainer.jax_state_sync = sync
    return syncs


def main() -> int:
    syncs = counting_state_syncs()
    with tempfile.TemporaryDirectory() as folder:
        spec = load_spec(
            None,
            ["data.source=synthetic", "data.train_size=1024", "data.test_size=32", "train.batch_size=16",
             "train.epochs=1", "runtime.deterministic=false", f"output.root={folder}"],
        )  # fmt: skip
        runtime.configure(spec.runtime, spec.train.seed)
        train_mod.StopOnNonFiniteLoss = StopAsStepFinishes
        try:
            train_mod.train(spec, load_dataset(spec.data), Path(folder))
        except InterruptedRun:
            pass
        else:
            print("run_ahead: the run ended without acting on the stop", file=sys.stderr)
            return 1
        saved = sorted(p.name for p in (Path(folder) / "checkpoints").iterdir())
    limit = STOP_AFTER + runtime.RunAheadLimit().depth + SLACK
    steps = [int(name.rsplit("-", 1)[1]) for name in saved if "-step-" in name]
    if not steps or max(steps) > limit:
        print(f"run_ahead: stopped at {saved}, asked after step {STOP_AFTER}: more than {limit} steps in "
              "(the loop ran ahead of the device)", file=sys.stderr)  # fmt: skip
        return 1
    # Once, for the stop's checkpoint: not at every step, as before the limit read `_model`.
    if len(syncs) > 1:
        print(f"run_ahead: the model's state was copied back from JAX's {len(syncs)} times in {max(steps)} "
              f"steps (at steps {syncs}): a per-step callback reads `self.model`", file=sys.stderr)  # fmt: skip
        return 1
    print(f"run_ahead: asked after step {STOP_AFTER} of 64, checkpointed at step {max(steps)}; the state was copied "
          f"back into the model {len(syncs)} time(s)")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
