"""The `lsjob` command as users and schedulers run it: in a subprocess, logs in a pipe."""

import json
import signal
import subprocess
import sys
import time

import pytest
from conftest import ROOT, TINY

from job.errors import EXIT_INTERRUPTED


def lsjob(*args, **kwargs):
    return subprocess.run([sys.executable, "-m", "job", *args], capture_output=True, text=True, **kwargs)


@pytest.mark.slow
def test_smoke_spec_end_to_end(tmp_path):
    proc = lsjob("run", str(ROOT / "specs" / "smoke.yaml"), "--set", f"output.root={tmp_path}")
    assert proc.returncode == 0, proc.stderr
    run_dir = tmp_path / "smoke"
    for name in ("spec.yaml", "manifest.json", "history.csv", "metrics.json", "classification_report.txt",
                 "training.png", "confusion_matrix.png", "model.keras", "run.log"):  # fmt: skip
        assert (run_dir / name).stat().st_size > 0, name
    manifest = json.loads((run_dir / "manifest.json").read_text())
    assert manifest["status"] == "completed"
    # Not a terminal: one line per epoch, no progress bar noise.
    epoch_lines = [line for line in proc.stderr.splitlines() if "val_nll" in line]
    assert [line.split()[1:3] for line in epoch_lines] == [["epoch", "1/2"], ["epoch", "2/2"]]
    assert "\x08" not in proc.stdout and "━" not in proc.stdout
    assert "0.91" in proc.stderr  # the tutorial's smoothed-label example
    # The synthetic task is learnable: well above 10% chance after two short epochs.
    assert manifest["test_accuracy"] > 0.2  # 256 test images: chance is 0.10 +- 0.02

    again = lsjob("run", str(ROOT / "specs" / "smoke.yaml"), "--set", f"output.root={tmp_path}")
    assert again.returncode == 0 and "already complete" in again.stdout


def _args(tmp_path, run):
    sets = [*TINY, f"output.root={tmp_path}", f"output.run={run}"]
    return ["run", "/dev/null", *[a for s in sets for a in ("--set", s)]]


def test_sigterm_checkpoints_exits_75_and_the_same_command_resumes_exactly(tmp_path):
    """Preempted mid-run, then re-run: the same history and metrics as a run never interrupted.

    With runtime.deterministic the two runs are separate processes, so this also shows
    that two deterministic CPU runs agree exactly.
    """
    proc = subprocess.Popen(
        [sys.executable, "-m", "job", *_args(tmp_path, "preempted")],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    first_checkpoint = tmp_path / "preempted" / "checkpoints" / "epoch-0001"
    deadline = time.monotonic() + 300
    while not first_checkpoint.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.2)
    assert first_checkpoint.exists(), proc.communicate()[1]
    proc.send_signal(signal.SIGTERM)  # what Slurm and Kubernetes send before killing
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == EXIT_INTERRUPTED, err
    assert "Traceback" not in err and "resume" in err
    manifest = json.loads((tmp_path / "preempted" / "manifest.json").read_text())
    assert manifest["status"] == "interrupted" and "SIGTERM" in manifest["reason"]

    resumed = lsjob(*_args(tmp_path, "preempted"))
    assert resumed.returncode == 0, resumed.stderr
    assert "resuming after epoch" in resumed.stderr
    straight = lsjob(*_args(tmp_path, "straight"))
    assert straight.returncode == 0, straight.stderr

    def history(run):
        rows = (tmp_path / run / "history.csv").read_text().splitlines()
        return [row.rsplit(",", 1)[0] for row in rows]  # all but the wall-clock seconds

    assert len(history("preempted")) == 3  # header and two epochs
    assert history("preempted") == history("straight")
    metrics = [json.loads((tmp_path / run / "metrics.json").read_text()) for run in ("preempted", "straight")]
    assert metrics[0] == metrics[1]  # test NLL to the last bit: identical final weights
    manifest = json.loads((tmp_path / "preempted" / "manifest.json").read_text())
    assert [a["status"] for a in manifest["attempts"]] == ["interrupted", "completed"]


def test_bad_input_exit_codes_and_no_traceback(tmp_path):
    missing = lsjob("run", str(tmp_path / "nope.yaml"))
    assert missing.returncode == 2 and "does not exist" in missing.stderr
    bad_set = lsjob("validate", "/dev/null", "--set", "train.epochs")
    assert bad_set.returncode == 2 and "dotted.key=value" in bad_set.stderr
    for proc in (missing, bad_set):
        assert "Traceback" not in proc.stderr


def test_data_problem_exit_code(tmp_path):
    proc = lsjob(
        "run", "/dev/null", "--set", f"data.path={tmp_path / 'missing.tar.gz'}", "--set", f"output.root={tmp_path}"
    )
    assert proc.returncode == 3, proc.stderr
    assert "Traceback" not in proc.stderr and "missing.tar.gz" in proc.stderr


def test_help_lists_the_commands():
    proc = lsjob("--help")
    assert proc.returncode == 0
    for command in ("run", "validate", "show", "schema"):
        assert command in proc.stdout
