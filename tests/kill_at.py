"""Run `lsjob` and SIGKILL it at one named point: how tests crash a run where it hurts most.

    python tests/kill_at.py POINT run SPEC [options...]

SIGKILL cannot be caught, so whatever the run leaves behind is what a node failure,
an OOM kill or a scheduler's hard kill would leave.
"""

import os
import signal
import sys


def die() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def install(point: str) -> None:
    import keras

    from job import report, train
    from job.checkpoint import Checkpoints

    if point == "mid-epoch":  # after the 3rd step of the 2nd epoch this process trains
        steps = {"n": 0}
        original_batch_begin = train.EpochRecorder.on_train_batch_begin

        def on_train_batch_begin(self, batch, logs=None):
            if steps["n"] == self.params["steps"] + 3:
                die()
            steps["n"] += 1
            original_batch_begin(self, batch, logs)

        train.EpochRecorder.on_train_batch_begin = on_train_batch_begin
    elif point in ("after-checkpoint", "after-step-checkpoint"):  # any checkpoint / a mid-epoch one
        original_save = Checkpoints.save

        def save(self, model, epochs_done, history, mid_epoch=None):
            original_save(self, model, epochs_done, history, mid_epoch)
            if point == "after-checkpoint" or mid_epoch is not None:
                die()

        Checkpoints.save = save
    elif point == "final-evaluation":  # predict runs only for the final test-set probabilities
        keras.Model.predict = lambda self, *args, **kwargs: die()
    elif point == "report":  # after the first report files, before the rest and metrics.json
        report.write_reliability_diagram = lambda *args, **kwargs: die()
    elif point == "model-save":
        original_model_save = keras.Model.save

        def model_save(self, filepath, *args, **kwargs):
            original_model_save(self, filepath, *args, **kwargs)
            with open(filepath, "r+b") as f:  # as if killed before the write had finished
                f.truncate(1000)
            die()

        keras.Model.save = model_save
    else:
        raise SystemExit(f"kill_at.py: unknown point {point!r}")


if __name__ == "__main__":
    install(sys.argv[1])
    from job.cli import main

    sys.argv = ["lsjob", *sys.argv[2:]]
    main()
