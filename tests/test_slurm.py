"""The Slurm path: slurm/*.sbatch and slurm/submit.sh.

The first tests run the scripts with stand-ins for lsjob, sbatch and scontrol on PATH: the
signal forwarding, the exit codes and the requeue decision, in seconds, without Slurm.
The slow ones submit real jobs to a private one-node cluster (tests/slurm_cluster.py):
they are skipped where Slurm and munge are not installed, and fail instead when
LSJOB_REQUIRE_SLURM is set (CI installs them and must not pass by skipping).
"""

from __future__ import annotations

import csv
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path

import pytest
from slurm_cluster import SlurmCluster, missing_binaries, slurm_cluster

from job.spec import load_spec

ROOT = Path(__file__).resolve().parents[1]
SLURM = ROOT / "slurm"
SWEEP_SPEC = ROOT / "specs" / "smoke-sweep.yaml"
SMOKE_SPEC = ROOT / "specs" / "smoke.yaml"
# Slurm's options for these tests: the node has no GPU, and 1 CPU a task lets the jobs run side by side.
SMALL = ["--gres=none", "--cpus-per-task=1", "--mem=1G"]
REQUEUED = "show job -o 41\nrequeue Incomplete 41\n"  # the stand-in scontrol's calls: a job still running, requeued
# A real lsjob, the one running these tests, for the jobs (sbatch passes PATH on to them).
BIN = str(Path(sys.executable).parent)


def _body(script: Path) -> str:
    text = script.read_text()
    return text[text.index("\nset -euo pipefail\n") :]


def test_sbatch_scripts_share_their_body():
    assert _body(SLURM / "train.sbatch") == _body(SLURM / "sweep.sbatch")


def _directives(script: Path) -> dict[str, str]:
    """The #SBATCH options, as sbatch reads them: only from the comment block before the first command."""
    options = {}
    for line in script.read_text().splitlines()[1:]:
        if line and not line.startswith("#"):
            break
        if line.startswith("#SBATCH "):
            key, _, value = line.removeprefix("#SBATCH ").partition("=")
            options[key] = value
    return options


@pytest.mark.parametrize("script, log", [("train.sbatch", "logs/%x_%j.out"), ("sweep.sbatch", "logs/%x_%A_%a.out")])
def test_sbatch_asks_for_a_gpu_a_requeue_and_a_signal_before_the_time_limit(script, log):
    options = _directives(SLURM / script)
    assert options["--gres"] == "gpu:1"
    assert "--requeue" in options and options["--open-mode"] == "append"
    assert options["--output"] == log
    # B: the batch shell gets TERM (it forwards it to lsjob), early enough to finish a step.
    signal_spec = re.fullmatch(r"B:TERM@(\d+)", options["--signal"])
    assert signal_spec and int(signal_spec[1]) >= 120
    hours, minutes, seconds = map(int, options["--time"].split(":"))
    assert hours * 3600 + minutes * 60 + seconds > int(signal_spec[1])


# --- the scripts outside Slurm, with stand-ins ------------------------------------


def _stub(directory: Path, name: str, body: str) -> None:
    path = directory / name
    path.write_text("#!/usr/bin/env bash\n" + body)
    path.chmod(0o755)


@pytest.fixture
def stubs(tmp_path):
    """A bin/ directory put first on PATH, and the env to run the scripts in; stubs log their argv."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    _stub(bin_dir, "scontrol", f'echo "$*" >> {tmp_path}/scontrol.calls\n[[ $1 != show ]] || echo JobState=RUNNING\n')
    env = {
        **os.environ,
        "PATH": f"{bin_dir}:{os.environ['PATH']}",
        "SLURM_JOB_ID": "41",
        "SLURM_SUBMIT_DIR": str(tmp_path),
    }
    for var in (
        "LSJOB_RESULTS",
        "LSJOB_CMD",
        "LSJOB_OUTPUT_ROOT",
        "LSJOB_VENV",
        "LSJOB_THROTTLE",
        "LSJOB_SLURM_ONE_RUN",
        "SLURM_RESTART_COUNT",
    ):
        env.pop(var, None)
    return bin_dir, env


@pytest.mark.parametrize("code", [0, 3, 5, 75])
def test_sbatch_passes_exit_codes_through_and_requeues_on_75(tmp_path, stubs, code):
    bin_dir, env = stubs
    _stub(bin_dir, "lsjob", f'echo "$*" > {tmp_path}/lsjob.args\nexit {code}\n')
    proc = subprocess.run(
        ["bash", SLURM / "train.sbatch", "spec.yaml", "--set", "train.seed=1"],
        cwd=tmp_path, env={**env, "LSJOB_RESULTS": "out"}, capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert proc.returncode == code, proc.stderr
    assert (tmp_path / "lsjob.args").read_text().split() == [
        "run", "spec.yaml", "--set", f"output.root='{tmp_path}/out'", "--set", "train.seed=1",
    ]  # fmt: skip
    calls = tmp_path / "scontrol.calls"
    assert (calls.read_text() if calls.exists() else "") == (REQUEUED if code == 75 else "")


@pytest.mark.parametrize("job_id", ["41", "44"])  # the task holding the array's own id, and another
def test_an_array_task_requeues_and_signals_only_itself(tmp_path, stubs, job_id):
    bin_dir, env = stubs
    _stub(bin_dir, "scancel", f'echo "$*" >> {tmp_path}/scancel.calls\n')
    _stub(bin_dir, "srun", 'trap "" TERM\nwhile [[ ! -e stop ]]; do sleep 0.1; done\nexit 75\n')
    env = {**env, "SLURM_JOB_ID": job_id, "SLURM_ARRAY_JOB_ID": "41", "SLURM_ARRAY_TASK_ID": "3",
           "LSJOB_RESULTS": "out", "LSJOB_CMD": "srun lsjob"}  # fmt: skip
    proc = subprocess.Popen(["bash", SLURM / "sweep.sbatch", "spec.yaml"], cwd=tmp_path, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)  # fmt: skip
    time.sleep(1.5)
    proc.send_signal(signal.SIGTERM)  # what --signal=B:TERM sends
    time.sleep(1.5)
    (tmp_path / "stop").touch()
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 75, err
    # To scontrol and scancel, 41 alone is every task of array 41: finished ones went back too.
    assert (tmp_path / "scancel.calls").read_text() == "--signal=TERM 41_3\n"
    assert (tmp_path / "scontrol.calls").read_text() == "show job -o 41_3\nrequeue Incomplete 41_3\n"
    assert "requeued job 41_3" in out


@pytest.mark.parametrize("script", ["train.sbatch", "sweep.sbatch"])
def test_sbatch_tells_lsjob_that_the_job_is_this_runs_alone(tmp_path, stubs, script):
    # So lsjob's stall guard may count every restart of the job, those that left no record too.
    bin_dir, env = stubs
    _stub(bin_dir, "lsjob", f'echo "$LSJOB_SLURM_ONE_RUN" > {tmp_path}/one_run\n')
    subprocess.run(["bash", SLURM / script, "spec.yaml"], cwd=tmp_path, env=env, check=True)
    assert (tmp_path / "one_run").read_text() == "1\n"


def test_sbatch_without_results_env_keeps_the_specs_output_root(tmp_path, stubs):
    bin_dir, env = stubs
    _stub(bin_dir, "lsjob", f'echo "$*" > {tmp_path}/lsjob.args\n')
    subprocess.run(["bash", SLURM / "sweep.sbatch", "spec.yaml"], cwd=tmp_path, env=env, check=True)
    assert (tmp_path / "lsjob.args").read_text().split() == ["run", "spec.yaml"]


@pytest.mark.parametrize("script", ["train.sbatch", "sweep.sbatch"])
def test_sbatch_set_up_wrong_is_refused_in_one_line_with_exit_2(tmp_path, stubs, script):
    bin_dir, env = stubs
    # No spec: bash's ${1:?} said so with exit 1, a failure schedulers and people read as a bug.
    proc = subprocess.run(["bash", SLURM / script], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert proc.returncode == 2 and "lsjob: usage: sbatch" in proc.stderr
    # No lsjob on the node, LSJOB_VENV and LSJOB_CMD unset: exit 127, "lsjob: command not found" alone.
    env = {**env, "PATH": f"{bin_dir}:/usr/bin:/bin"}
    proc = subprocess.run(["bash", SLURM / script, "s.yaml"], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert proc.returncode == 2, proc.stderr
    assert "'lsjob' is not a command on" in proc.stderr and "set LSJOB_VENV to the virtual" in proc.stderr


def _stub_lsjob_that_checkpoints_on_term(bin_dir: Path, tmp_path: Path) -> None:
    # Like lsjob: the first TERM asks for a stop at the end of the step (here 2 s), exit 75.
    _stub(
        bin_dir,
        "lsjob",
        f"trap 'echo TERM >> {tmp_path}/signals' TERM\n"
        f"touch {tmp_path}/started\n"
        f"while [[ ! -s {tmp_path}/signals ]]; do sleep 0.1; done\n"
        "sleep 2\nexit 75\n",
    )


def _wait_until_started(script: subprocess.Popen, tmp_path: Path) -> None:
    """Until the stand-in lsjob has touched `started`."""
    deadline = time.monotonic() + 30
    while not (tmp_path / "started").exists():
        assert time.monotonic() < deadline and script.poll() is None, "stand-in lsjob never started"
        time.sleep(0.1)


def test_sbatch_forwards_term_once_and_waits_for_the_real_exit_code(tmp_path, stubs):
    bin_dir, env = stubs
    _stub_lsjob_that_checkpoints_on_term(bin_dir, tmp_path)
    script = subprocess.Popen(["bash", SLURM / "train.sbatch", "spec.yaml"], cwd=tmp_path, env=env)
    _wait_until_started(script, tmp_path)
    script.send_signal(signal.SIGTERM)  # what --signal=B:TERM and `scancel --batch` do
    assert script.wait(timeout=30) == 75
    assert (tmp_path / "signals").read_text() == "TERM\n"
    assert (tmp_path / "scontrol.calls").read_text() == REQUEUED


def test_sbatch_waits_for_lsjob_when_term_reaches_every_process(tmp_path, stubs):
    # A plain scancel, the hard time limit and most preemption signal the whole job, the
    # script's own children too: it must still wait for lsjob's step and, on its 75, ask for a
    # requeue, which Slurm grants only to a job still running (preempted, not cancelled).
    bin_dir, env = stubs
    _stub_lsjob_that_checkpoints_on_term(bin_dir, tmp_path)
    script = subprocess.Popen(["bash", SLURM / "train.sbatch", "spec.yaml"], cwd=tmp_path, env=env,
                              start_new_session=True)  # fmt: skip
    _wait_until_started(script, tmp_path)
    time.sleep(0.3)  # into the script's `sleep`
    os.killpg(script.pid, signal.SIGTERM)
    assert script.wait(timeout=30) == 75
    assert (tmp_path / "scontrol.calls").read_text() == REQUEUED


@pytest.mark.parametrize("state, said, calls", [
    ("COMPLETING", "not requeued: job 41 is COMPLETING (cancelled, or ended by Slurm); submitting it again resumes "
     "its run", ["show"]),  # a plain scancel: COMPLETING while the batch script runs
    ("PENDING", "Slurm has requeued job 41 already; it resumes its run", ["show"]),  # PreemptMode=REQUEUE
    ("TIMEOUT", "not requeued: job 41 is TIMEOUT", ["show"]),
    ("RUNNING", "job 41 could not be requeued; submitting it again resumes its run", ["show", "requeue"]),
    ("", "job 41 could not be requeued", ["show", "requeue"]),  # the controller did not answer
])  # fmt: skip
def test_sbatch_says_why_a_job_it_did_not_requeue_was_not(tmp_path, stubs, state, said, calls):
    bin_dir, env = stubs
    show = f"echo 'JobId=41 JobName=lsjob JobState={state} Reason=None'" if state else "exit 1"
    _stub(bin_dir, "scontrol", f'echo "$1" >> {tmp_path}/scontrol.calls\n[[ $1 == show ]] || exit 1\n{show}\n')
    _stub(bin_dir, "lsjob", "exit 75\n")
    proc = subprocess.run(["bash", SLURM / "train.sbatch", "spec.yaml"], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=20, check=False)  # fmt: skip
    assert proc.returncode == 75 and f"lsjob: {said}" in proc.stderr, proc
    assert (tmp_path / "scontrol.calls").read_text().split() == calls
    assert "requeued job" not in proc.stdout


def test_sbatch_stopped_before_lsjob_starts_still_requeues(tmp_path, stubs):
    # TERM in the script's first moments (here from the venv's activate, sourced before lsjob
    # starts): the trap must already be there, or bash dies of it and nothing requeues.
    bin_dir, env = stubs
    venv = tmp_path / "venv"
    (venv / "bin").mkdir(parents=True)
    (venv / "bin" / "activate").write_text("kill -TERM $$\n")
    # Like Python before lsjob installs its handler: TERM kills it.
    _stub(bin_dir, "lsjob", f"touch {tmp_path}/started\nexec sleep 30\n")
    proc = subprocess.run(
        ["bash", SLURM / "train.sbatch", "spec.yaml"],
        cwd=tmp_path, env={**env, "LSJOB_VENV": str(venv)}, capture_output=True, text=True, timeout=20, check=False,
    )  # fmt: skip
    assert proc.returncode == 75, proc
    assert "killed by the TERM passed on before it could act on it" in proc.stdout
    assert (tmp_path / "scontrol.calls").read_text() == REQUEUED


def test_sbatch_requeues_when_term_kills_lsjob_before_its_handler(tmp_path, stubs):
    bin_dir, env = stubs
    _stub(bin_dir, "lsjob", f"touch {tmp_path}/started\nexec sleep 30\n")  # no handler yet: TERM kills it
    script = subprocess.Popen(["bash", SLURM / "sweep.sbatch", "spec.yaml"], cwd=tmp_path, env=env)
    _wait_until_started(script, tmp_path)
    script.send_signal(signal.SIGTERM)
    assert script.wait(timeout=30) == 75
    assert (tmp_path / "scontrol.calls").read_text() == REQUEUED


def test_sbatch_survives_term_inside_a_command_substitution(tmp_path, stubs):
    # Slurm's TERM while the script runs a $(...): with a second $(...) in the same command,
    # bash 5.2 misparsed the rest of it and exited 2, as if the spec were bad.
    bin_dir, env = stubs
    realpath = shutil.which("realpath")
    _stub(bin_dir, "realpath", f'kill -TERM $PPID\nsleep 0.2\nexec {realpath} "$@"\n')
    _stub(bin_dir, "lsjob", "exec sleep 30\n")
    proc = subprocess.run(["bash", SLURM / "sweep.sbatch", "spec.yaml"], cwd=tmp_path,
                          env={**env, "LSJOB_RESULTS": "out"}, capture_output=True, text=True, timeout=20,
                          check=False)  # fmt: skip
    assert proc.returncode == 75, proc
    assert (tmp_path / "scontrol.calls").read_text() == REQUEUED


def test_sbatch_keeps_the_exit_code_of_an_lsjob_that_ends_as_term_arrives(tmp_path, stubs):
    # The TERM and lsjob's exit at once: a trap-shortened `wait` lost that status (143 for 0).
    # lsjob's own handler takes the TERM passed on (trap ''): without one, a script slow to exit
    # after its kill would be killed by it (143, requeued) and the test fail now and then.
    bin_dir, env = stubs
    _stub(bin_dir, "lsjob", "trap '' TERM\nkill -TERM $PPID\nexit 0\n")
    for _ in range(3):
        proc = subprocess.run(["bash", SLURM / "train.sbatch", "spec.yaml"], cwd=tmp_path, env=env,
                              capture_output=True, text=True, timeout=20, check=False)  # fmt: skip
        assert proc.returncode == 0, proc
    assert not (tmp_path / "scontrol.calls").exists()


def test_sbatch_does_not_requeue_a_term_it_was_not_asked_to_pass_on(tmp_path, stubs):
    # lsjob killed by a TERM sent to it alone (not a stop asked of the job): a failure, as it is.
    bin_dir, env = stubs
    _stub(bin_dir, "lsjob", "kill -TERM $$\nsleep 5\n")
    proc = subprocess.run(["bash", SLURM / "train.sbatch", "spec.yaml"], cwd=tmp_path, env=env, timeout=20, check=False)
    assert proc.returncode == 143
    assert not (tmp_path / "scontrol.calls").exists()


def test_sbatch_container_command_binds_results_at_slash_results(tmp_path, stubs):
    bin_dir, env = stubs
    _stub(bin_dir, "apptainer", f'printf "%s\\n" "$@" > {tmp_path}/apptainer.args\n')
    env = {
        **env,
        "LSJOB_RESULTS": str(tmp_path / "my results"),
        "LSJOB_OUTPUT_ROOT": "/results",
        "LSJOB_CMD": 'apptainer exec --nv --bind "$LSJOB_RESULTS":/results /images/lsjob.sif lsjob',
    }
    subprocess.run(["bash", SLURM / "train.sbatch", "spec.yaml"], cwd=tmp_path, env=env, check=True)
    assert (tmp_path / "apptainer.args").read_text().splitlines() == [
        "exec", "--nv", "--bind", f"{tmp_path}/my results:/results", "/images/lsjob.sif",
        "lsjob", "run", "spec.yaml", "--set", "output.root='/results'",
    ]  # fmt: skip
    assert (tmp_path / "my results").is_dir()


def test_an_output_root_without_results_is_refused_before_lsjob_starts_or_anything_is_queued(tmp_path, stubs):
    # Alone, LSJOB_OUTPUT_ROOT would be ignored and the runs would land under the spec's output.root.
    bin_dir, env = stubs
    _stub(bin_dir, "lsjob", f"touch {tmp_path}/lsjob.called\necho 3\n")
    _stub(bin_dir, "sbatch", f"touch {tmp_path}/sbatch.called\n")
    env = {**env, "LSJOB_OUTPUT_ROOT": "/results"}
    for command in (["bash", SLURM / "train.sbatch", "s.yaml"], [SLURM / "submit.sh", "s.yaml"]):
        proc = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, check=False)
        assert proc.returncode == 2 and "LSJOB_OUTPUT_ROOT=/results is set but LSJOB_RESULTS is not" in proc.stderr
    assert not (tmp_path / "lsjob.called").exists() and not (tmp_path / "sbatch.called").exists()
    assert not (tmp_path / "scontrol.calls").exists()


def test_sbatch_passes_a_results_root_that_yaml_would_misread_quoted(tmp_path, stubs):
    # --set values are YAML: unquoted, " #1" would be a comment and the results would land in "runs".
    bin_dir, env = stubs
    _stub(bin_dir, "lsjob", f'printf "%s\\n" "$@" > {tmp_path}/lsjob.args\n')
    results = tmp_path / "runs #1: it's"
    env = {**env, "LSJOB_RESULTS": str(results)}
    subprocess.run(["bash", SLURM / "train.sbatch", "spec.yaml"], cwd=tmp_path, env=env, check=True)
    override = (tmp_path / "lsjob.args").read_text().splitlines()[3]
    assert load_spec(None, [override]).output.root == results
    assert results.is_dir()


def test_submit_sizes_the_array_from_the_sweep_and_the_tasks_read_the_spec_it_counted(tmp_path, stubs):
    bin_dir, env = stubs
    (tmp_path / "s.yaml").write_text("sweep:\n  smoothing.factor: [0.1, 0.2, 0.3]\n")
    _stub(bin_dir, "lsjob", '[[ "$*" == "sweep count s.yaml" ]] && echo 3\n')
    _stub(bin_dir, "sbatch", f'echo "$*" > {tmp_path}/sbatch.args\necho "77;cluster"\n')
    proc = subprocess.run(
        [SLURM / "submit.sh", "s.yaml", "--gres=none"],
        cwd=tmp_path, env={**env, "LSJOB_THROTTLE": "2"}, capture_output=True, text=True, check=True,
    )  # fmt: skip
    assert proc.stdout == "77\n"
    *options, script, copy = (tmp_path / "sbatch.args").read_text().split()
    assert options == ["--parsable", "--array=0-2%2", "--gres=none"] and script == str(SLURM / "sweep.sbatch")
    # A read-only copy in logs/: editing s.yaml while the tasks wait or requeue cannot shift their points.
    copy = Path(copy)
    assert copy.parent == tmp_path / "logs" and re.fullmatch(r"s\.\w{6}\.yaml", copy.name)
    assert copy.read_text() == (tmp_path / "s.yaml").read_text() and copy.stat().st_mode & 0o222 == 0
    assert f"the tasks read logs/{copy.name}); logs: logs/lsjob-sweep_77_<index>.out" in proc.stderr


def test_submit_finds_its_scripts_with_cdpath_set(tmp_path, stubs):
    # cd prints the folder it found through CDPATH: captured with it, the path had two lines.
    bin_dir, env = stubs
    (tmp_path / "s.yaml").write_text("sweep:\n  smoothing.factor: [0.1, 0.2]\n")
    (tmp_path / "repo").symlink_to(ROOT)
    _stub(bin_dir, "lsjob", '[[ "$*" == "sweep count s.yaml" ]] && echo 2\n')
    _stub(bin_dir, "sbatch", f'echo "$*" > {tmp_path}/sbatch.args\necho "77;cluster"\n')
    proc = subprocess.run(["bash", "repo/slurm/submit.sh", "s.yaml"], cwd=tmp_path, env={**env, "CDPATH": "."},
                          capture_output=True, text=True)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    *_, script, _copy = (tmp_path / "sbatch.args").read_text().split(" ")
    assert script == f"{tmp_path}/repo/slurm/sweep.sbatch"


@pytest.mark.parametrize("chdir", [["-D", "work"], ["--chdir=work"], ["-Dwork"], ["--chdir", "TMP/work"]])
def test_submit_makes_the_log_folders_in_the_jobs_working_directory(tmp_path, stubs, chdir):
    # Slurm opens --output=logs/... in the job's working directory (-D), and does not create it:
    # made under the submit directory instead, every task failed without a log.
    bin_dir, env = stubs
    (tmp_path / "s.yaml").write_text("sweep:\n  smoothing.factor: [0.1, 0.2]\n")
    _stub(bin_dir, "lsjob", '[[ "$*" == "sweep count s.yaml" ]] && echo 2\n')
    _stub(bin_dir, "sbatch", 'echo "77;cluster"\n')
    options = [option.replace("TMP", str(tmp_path)) for option in chdir] + ["--error=err/%A.txt"]
    proc = subprocess.run([SLURM / "submit.sh", "s.yaml", *options], cwd=tmp_path, env=env, capture_output=True,
                          text=True)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "work" / "logs").is_dir() and (tmp_path / "work" / "err").is_dir()
    assert not (tmp_path / "err").exists()
    # The spec's copy too: a container there (Pyxis) mounts the job's working directory alone.
    assert len(list((tmp_path / "work" / "logs").glob("s.*.yaml"))) == 1 and not (tmp_path / "logs").exists()
    assert "logs: as your --output/--error/--job-name say" in proc.stderr


def test_submit_with_chdir_keeps_an_absolute_log_path_and_says_where_the_logs_go(tmp_path, stubs):
    bin_dir, env = stubs
    (tmp_path / "s.yaml").write_text("sweep:\n  smoothing.factor: [0.1, 0.2]\n")
    _stub(bin_dir, "lsjob", '[[ "$*" == "sweep count s.yaml" ]] && echo 2\n')
    _stub(bin_dir, "sbatch", 'echo "77;cluster"\n')
    proc = subprocess.run([SLURM / "submit.sh", "s.yaml", "-D", "work", f"--output={tmp_path}/abs/%A_%a.out"],
                          cwd=tmp_path, env=env, capture_output=True, text=True)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "abs").is_dir()  # an absolute path is not under the job's working directory
    assert not (tmp_path / "work" / str(tmp_path).lstrip("/")).exists()
    # No --output: the logs are under -D's folder, and the closing line says so.
    proc = subprocess.run([SLURM / "submit.sh", "s.yaml", "-D", "work"], cwd=tmp_path, env=env, capture_output=True,
                          text=True)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert "logs: work/logs/lsjob-sweep_77_<index>.out" in proc.stderr


def test_submit_passes_lsjob_options_to_every_task_and_counts_with_them(tmp_path, stubs):
    bin_dir, env = stubs
    # The count sees the tasks' overrides, so an override they would refuse stops the submission.
    _stub(bin_dir, "lsjob", '[[ "$*" == "sweep count s.yaml --set train.seed=7 --set=train.epochs=3" ]] && echo 6\n')
    _stub(bin_dir, "sbatch", f'printf "%s\\n" "$@" > {tmp_path}/sbatch.args\necho 78\n')
    (tmp_path / "s.yaml").write_text("sweep:\n  train.seed: [1, 2]\n")
    proc = subprocess.run(
        [SLURM / "submit.sh", "s.yaml", "--partition=gpu", "--output=out/sweeps/%A_%a.log", "-e", "err/%A.err",
         "--", "--set", "train.seed=7", "--set=train.epochs=3", "--force"],
        cwd=tmp_path, env=env, capture_output=True, text=True,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == "78\n"
    args = (tmp_path / "sbatch.args").read_text().splitlines()
    assert args[:4] == ["--parsable", "--array=0-5", "--partition=gpu", "--output=out/sweeps/%A_%a.log"]
    assert args[4:7] == ["-e", "err/%A.err", str(SLURM / "sweep.sbatch")] and args[7].startswith(f"{tmp_path}/logs/s.")
    assert args[8:] == ["--set", "train.seed=7", "--set=train.epochs=3", "--force"]
    # Slurm makes no folder for a log: a task that cannot open its log fails without a word.
    assert (tmp_path / "out" / "sweeps").is_dir() and (tmp_path / "err").is_dir()
    assert "logs: as your --output/--error/--job-name say" in proc.stderr


@pytest.mark.parametrize(
    "after, message",
    [
        (["--index", "3"], "--index after -- would reach every task, and each would train the same point"),
        (["--index-offset=2"], "--index-offset=2 after -- would reach every task"),
        (["--forse"], "'--forse' after -- is not an option of lsjob run that every task can take"),
    ],
)
def test_submit_refuses_lsjob_options_that_every_task_cannot_take(tmp_path, stubs, after, message):
    # --index reached every task: all trained one point (the first; the others found it taken, exit 5).
    bin_dir, env = stubs
    _stub(bin_dir, "lsjob", "echo 3\n")
    _stub(bin_dir, "sbatch", f"touch {tmp_path}/sbatch.called\n")
    (tmp_path / "s.yaml").write_text("sweep:\n  train.seed: [1, 2, 3]\n")
    proc = subprocess.run([SLURM / "submit.sh", "s.yaml", "--", "--force", *after], cwd=tmp_path, env=env,
                          capture_output=True, text=True)  # fmt: skip
    assert proc.returncode == 2 and message in proc.stderr and "nothing submitted" in proc.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bin", "s.yaml"]  # no logs/, no copy, no sbatch


def test_submit_refuses_a_log_folder_named_by_job_id(tmp_path, stubs):
    # Slurm makes no folders, and out/%A/ cannot be made before the job has its id: every task failed unlogged.
    bin_dir, env = stubs
    _stub(bin_dir, "lsjob", "echo 3\n")
    _stub(bin_dir, "sbatch", f"touch {tmp_path}/sbatch.called\n")
    (tmp_path / "s.yaml").write_text("sweep:\n  train.seed: [1, 2, 3]\n")
    proc = subprocess.run([SLURM / "submit.sh", "s.yaml", "--output=out/%A/x_%a.out"], cwd=tmp_path, env=env,
                          capture_output=True, text=True)  # fmt: skip
    assert proc.returncode == 2 and "holds a % pattern" in proc.stderr and "nothing submitted" in proc.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bin", "s.yaml"]


def test_submit_with_the_users_own_array_passes_it_alone_and_says_so(tmp_path, stubs):
    bin_dir, env = stubs
    _stub_array_limit(bin_dir, tmp_path, 1001)
    proc = subprocess.run([SLURM / "submit.sh", "s.yaml", "--array=1,3"], cwd=tmp_path, env=env,
                          capture_output=True, text=True)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    args = (tmp_path / "calls" / "1").read_text().splitlines()
    assert [a for a in args if a.startswith("--array")] == ["--array=1,3"]
    assert "array job 101, the points your --array names, of the 5 of s.yaml" in proc.stderr
    # LSJOB_THROTTLE would limit the array that yours replaces: said, not quietly dropped.
    proc = subprocess.run([SLURM / "submit.sh", "s.yaml", "--array=1,3"], cwd=tmp_path,
                          env={**env, "LSJOB_THROTTLE": "2"}, capture_output=True, text=True)  # fmt: skip
    assert proc.returncode == 2 and "end yours with %2 instead" in proc.stderr
    assert not (tmp_path / "calls" / "2").exists()


def _stub_array_limit(
    bin_dir: Path, tmp_path: Path, max_array_size: int, refuse_call: int = 0, points: int = 5
) -> None:
    """s.yaml, a sweep of `points` that lsjob counts; scontrol reports `max_array_size`; sbatch logs
    each call's argv and answers ids 101, 102, ... (refusing its `refuse_call`th call, 1-based);
    scancel logs what it cancels."""
    (tmp_path / "s.yaml").write_text(f"sweep:\n  train.seed: {list(range(1, points + 1))}\n")
    _stub(bin_dir, "lsjob", f"echo {points}\n")
    _stub(bin_dir, "scontrol", f'[[ "$*" == "show config" ]] && echo "MaxArraySize            = {max_array_size}"\n')
    _stub(
        bin_dir,
        "sbatch",
        f"n=$(($(ls {tmp_path}/calls 2>/dev/null | wc -l) + 1))\n"
        f'mkdir -p {tmp_path}/calls && printf "%s\\n" "$@" > {tmp_path}/calls/$n\n'
        f'(( n == {refuse_call} )) && {{ echo "sbatch: error: QOSMaxSubmitJobPerUserLimit" >&2; exit 1; }}\n'
        'echo "$((100 + n));cluster"\n',
    )
    _stub(bin_dir, "scancel", f'echo "$*" >> {tmp_path}/scancel.args\n')


def test_submit_splits_a_sweep_larger_than_max_array_size_into_arrays_that_cover_every_point(tmp_path, stubs):
    bin_dir, env = stubs
    _stub_array_limit(bin_dir, tmp_path, 2)
    proc = subprocess.run(
        [SLURM / "submit.sh", "s.yaml", "--partition=gpu", "--", "--force"],
        cwd=tmp_path, env={**env, "LSJOB_THROTTLE": "2"}, capture_output=True, text=True,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == "101\n102\n103\n"
    calls = [(tmp_path / "calls" / str(n)).read_text().splitlines() for n in (1, 2, 3)]
    snapshot = calls[0][4]
    # Task i of array k trains point 2k + i; each array waits for the one before (the throttle holds in all).
    assert calls[0] == ["--parsable", "--array=0-1%2", "--partition=gpu", str(SLURM / "sweep.sbatch"), snapshot,
                        "--force"]  # fmt: skip
    assert calls[1] == ["--parsable", "--array=0-1%2", "--partition=gpu", "--dependency=afterany:101",
                        str(SLURM / "sweep.sbatch"), snapshot, "--index-offset", "2", "--force"]  # fmt: skip
    assert calls[2] == ["--parsable", "--array=0-0%2", "--partition=gpu", "--dependency=afterany:102",
                        str(SLURM / "sweep.sbatch"), snapshot, "--index-offset", "4", "--force"]  # fmt: skip
    arrays = "101: points 0..1, 102: points 2..3, 103: point 4"
    assert f"3 array jobs (at most 2 tasks an array here), 5 points of s.yaml: {arrays}" in proc.stderr
    assert not (tmp_path / "scancel.args").exists()


def test_submit_without_a_throttle_queues_the_arrays_side_by_side(tmp_path, stubs):
    bin_dir, env = stubs
    _stub_array_limit(bin_dir, tmp_path, 3)
    subprocess.run([SLURM / "submit.sh", "s.yaml"], cwd=tmp_path, env=env, capture_output=True, check=True)
    calls = [(tmp_path / "calls" / str(n)).read_text().splitlines() for n in (1, 2)]
    assert calls[0][:2] == ["--parsable", "--array=0-2"] and "--index-offset" not in calls[0]
    assert calls[1][:3] == ["--parsable", "--array=0-1", str(SLURM / "sweep.sbatch")]
    assert calls[1][4:] == ["--index-offset", "3"]


def test_submit_cancels_the_queued_arrays_when_sbatch_refuses_a_later_one(tmp_path, stubs):
    bin_dir, env = stubs
    _stub_array_limit(bin_dir, tmp_path, 2, refuse_call=3)
    proc = subprocess.run([SLURM / "submit.sh", "s.yaml"], cwd=tmp_path, env=env, capture_output=True, text=True)
    # All or nothing: a sweep half queued would look whole to whoever resubmits it.
    assert proc.returncode == 1 and proc.stdout == ""
    assert (tmp_path / "scancel.args").read_text() == "101 102\n"
    assert "QOSMaxSubmitJobPerUserLimit" in proc.stderr
    assert "sbatch refused point 4; the arrays already queued (101 102) are cancelled" in proc.stderr
    assert list((tmp_path / "logs").iterdir()) == []  # the spec's copy goes too


def test_submit_keeps_the_specs_copy_for_arrays_it_could_not_cancel(tmp_path, stubs):
    bin_dir, env = stubs
    _stub_array_limit(bin_dir, tmp_path, 2, refuse_call=2)
    _stub(bin_dir, "scancel", 'echo "scancel: error: Unable to contact slurm controller" >&2\nexit 1\n')
    proc = subprocess.run([SLURM / "submit.sh", "s.yaml"], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert proc.returncode == 1
    assert "the arrays already queued (101) could not be cancelled: scancel 101" in proc.stderr
    # Array 101 may yet run, and its tasks read this copy.
    copy = Path((tmp_path / "calls" / "1").read_text().split()[3])
    assert list((tmp_path / "logs").iterdir()) == [copy] and copy.read_text() == (tmp_path / "s.yaml").read_text()


def test_submit_refuses_a_cluster_without_job_arrays(tmp_path, stubs):
    bin_dir, env = stubs
    _stub_array_limit(bin_dir, tmp_path, 0)
    proc = subprocess.run(
        [SLURM / "submit.sh", "s.yaml"], cwd=tmp_path, env=env, capture_output=True, text=True, check=False
    )
    assert proc.returncode == 2
    advice = f"run each point with sbatch {SLURM}/train.sbatch s.yaml --index I, I in 0..4; nothing submitted"
    assert f"takes no array jobs (MaxArraySize = 0); {advice}" in proc.stderr
    assert not (tmp_path / "calls").exists() and list((tmp_path / "logs").iterdir()) == []


@pytest.mark.parametrize("points, arrays", [(2, ["--array=0-1"]), (3, ["--array=0-1", "--array=0-0"])])
def test_submit_splits_only_past_max_array_size(tmp_path, stubs, points, arrays):
    bin_dir, env = stubs
    _stub_array_limit(bin_dir, tmp_path, 2, points=points)
    subprocess.run([SLURM / "submit.sh", "s.yaml"], cwd=tmp_path, env=env, capture_output=True, check=True)
    calls = sorted((tmp_path / "calls").iterdir(), key=lambda p: int(p.name))
    assert [c.read_text().splitlines()[1] for c in calls] == arrays


@pytest.mark.parametrize("scontrol", ["exit 1\n", "sleep 0\n", "echo 'Configuration data as of now'\n"])
def test_submit_goes_on_as_one_array_when_it_cannot_read_max_array_size(tmp_path, stubs, scontrol):
    # A controller that refuses `show config`, or an scontrol that prints something else: one array
    # as before, and sbatch says if the cluster takes none so large.
    bin_dir, env = stubs
    _stub_array_limit(bin_dir, tmp_path, 2)
    _stub(bin_dir, "scontrol", scontrol)
    proc = subprocess.run([SLURM / "submit.sh", "s.yaml"], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert proc.returncode == 0 and proc.stdout == "101\n", proc.stderr
    assert (tmp_path / "calls" / "1").read_text().splitlines()[1] == "--array=0-4"


def test_submit_sizes_the_arrays_by_max_array_tasks_where_lower(tmp_path, stubs):
    bin_dir, env = stubs
    _stub_array_limit(bin_dir, tmp_path, 2)
    _stub(
        bin_dir,
        "scontrol",
        'echo "MaxArraySize            = 1001"\n'
        'echo "SchedulerParameters     = bf_continue,max_array_tasks=2,kill_invalid_depend"\n',
    )
    subprocess.run([SLURM / "submit.sh", "s.yaml"], cwd=tmp_path, env=env, capture_output=True, check=True)
    calls = [(tmp_path / "calls" / str(n)).read_text().splitlines()[1] for n in (1, 2, 3)]
    assert calls == ["--array=0-1", "--array=0-1", "--array=0-0"]  # 5 points, 2 tasks an array at most


@pytest.mark.parametrize("given", [["--dependency=afterok:7"], ["-d", "afterok:7"], ["-dafterok:7"]])
def test_submit_keeps_the_users_dependency_on_every_chained_array(tmp_path, stubs, given):
    # sbatch keeps the last --dependency: alone, afterany on the array before would let a later array
    # run where the first was cancelled because the user's dependency failed (kill_invalid_depend).
    bin_dir, env = stubs
    _stub_array_limit(bin_dir, tmp_path, 2)
    subprocess.run([SLURM / "submit.sh", "s.yaml", *given], cwd=tmp_path, env={**env, "LSJOB_THROTTLE": "2"},
                   capture_output=True, check=True)  # fmt: skip
    assert "--dependency=afterany:101,afterok:7" in (tmp_path / "calls" / "2").read_text().splitlines()


@pytest.mark.parametrize(
    "given, env_add, message",
    [
        (["--array=1"], {}, "your --array would apply to each of the arrays"),
        (["--dependency=afterok:7?afterok:8"], {"LSJOB_THROTTLE": "2"}, "cannot be joined with the afterany"),
        ([], {"LSJOB_THROTTLE": "0"}, "LSJOB_THROTTLE=0 is not a number of tasks"),
    ],
)
def test_submit_refuses_what_it_cannot_split_before_queuing_anything(tmp_path, stubs, given, env_add, message):
    bin_dir, env = stubs
    _stub_array_limit(bin_dir, tmp_path, 2)
    proc = subprocess.run([SLURM / "submit.sh", "s.yaml", *given], cwd=tmp_path, env={**env, **env_add},
                          capture_output=True, text=True)  # fmt: skip
    assert proc.returncode == 2 and message in proc.stderr and not (tmp_path / "calls").exists()


def test_submit_reads_the_limit_of_cancels_on_and_pins_the_cluster_given_with_M(tmp_path, stubs):
    bin_dir, env = stubs
    _stub_array_limit(bin_dir, tmp_path, 2, refuse_call=3)
    _stub(
        bin_dir,
        "scontrol",
        f'echo "$*" >> {tmp_path}/scontrol.calls\n'
        '[[ "$*" == "-M gpu2 show config" ]] && echo "MaxArraySize            = 2"\n',
    )
    proc = subprocess.run([SLURM / "submit.sh", "s.yaml", "-M", "gpu2"], cwd=tmp_path, env=env,
                          capture_output=True, text=True)  # fmt: skip
    assert proc.returncode == 1
    assert (tmp_path / "calls" / "2").read_text().splitlines()[4:6] == ["-M", "cluster"]
    assert (tmp_path / "scancel.args").read_text() == "-M cluster 101 102\n"


def test_submit_cancels_what_it_queued_when_interrupted(tmp_path, stubs):
    bin_dir, env = stubs
    _stub_array_limit(bin_dir, tmp_path, 2)
    # Slow, so that the hang-up comes while the second sbatch runs: the trap waits for it.
    sbatch = (bin_dir / "sbatch").read_text().removeprefix("#!/usr/bin/env bash\n")
    _stub(bin_dir, "sbatch", sbatch.replace('echo "$((100', 'sleep 0.5\necho "$((100'))
    proc = subprocess.Popen([SLURM / "submit.sh", "s.yaml"], cwd=tmp_path, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)  # fmt: skip
    while not (tmp_path / "calls" / "2").exists():
        time.sleep(0.05)
    proc.send_signal(signal.SIGHUP)
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 130 and out == "", err
    assert (tmp_path / "scancel.args").read_text() == "101 102\n"
    assert "interrupted; the arrays already queued (101 102) are cancelled; nothing submitted" in err
    assert list((tmp_path / "logs").iterdir()) == []


def test_submit_refuses_when_the_count_fails(tmp_path, stubs):
    bin_dir, env = stubs
    _stub(bin_dir, "lsjob", 'echo "lsjob: error: spec file s.yaml does not exist" >&2\nexit 2\n')
    _stub(bin_dir, "sbatch", f"touch {tmp_path}/sbatch.called\n")
    proc = subprocess.run(
        [SLURM / "submit.sh", "s.yaml"], cwd=tmp_path, env=env, capture_output=True, text=True, check=False
    )
    assert proc.returncode == 2
    assert "cannot count the points of s.yaml" in proc.stderr
    assert not (tmp_path / "sbatch.called").exists()
    assert list((tmp_path / "logs").iterdir()) == []  # no copy of a spec that was not submitted


# --- a real Slurm -------------------------------------------------------------------


@pytest.fixture(scope="module")
def cluster():
    problem = None
    if missing := missing_binaries():
        problem = (
            f"Slurm/munge not installed ({', '.join(missing)} missing; "
            "apt-get install slurmctld slurmd slurm-client munge)"
        )
    elif os.geteuid() != 0:
        problem = "the private Slurm cluster needs root (slurmd launches the jobs)"
    if problem:
        if os.environ.get("LSJOB_REQUIRE_SLURM"):
            pytest.fail(problem)  # CI must not pass by skipping them
        pytest.skip(problem)
    with slurm_cluster() as c:
        yield c


def _job_env(tmp_path: Path) -> dict[str, str]:
    return {"PATH": f"{BIN}:{os.environ['PATH']}", "LSJOB_RESULTS": str(tmp_path / "results")}


def _history_rows(path: Path) -> list[dict]:
    try:
        with path.open() as f:
            return list(csv.DictReader(f))
    except FileNotFoundError:
        return []


@pytest.mark.slow
def test_sweep_array_runs_every_point(cluster: SlurmCluster, tmp_path):
    env = _job_env(tmp_path)
    # `lsjob sweep count` loads no ML stack, but a loaded 2-core box can still take its time.
    count = int(cluster.run("lsjob", "sweep", "count", str(SWEEP_SPEC), env=env, timeout=600))
    # The cluster's MaxArraySize is 2: the 3 points go in as arrays of 2 and 1; the throttle makes
    # the second wait for the first, even past a --dependency of the user's own (on an ended job).
    first = cluster.sbatch("--wrap=true", *SMALL, cwd=tmp_path)
    cluster.wait_gone(first, timeout=120)
    out = cluster.run(str(SLURM / "submit.sh"), str(SWEEP_SPEC), *SMALL, f"--dependency=afterany:{first}",
                      cwd=tmp_path, env={**env, "LSJOB_THROTTLE": "2"}, timeout=600)  # fmt: skip
    arrays = out.split()
    assert count == 3 and len(arrays) == 2 and all(a.isdigit() for a in arrays), out
    # Asked while the first array trains (a minute or more), before Slurm clears a met dependency.
    assert f"afterany:{arrays[0]}" in cluster.job(arrays[1])["Dependency"]

    for array_id in arrays:
        cluster.wait_gone(array_id, timeout=20 * 60)

    manifests = sorted((tmp_path / "results").glob("*/manifest.json"))
    assert len(manifests) == count, [str(m) for m in manifests]
    for manifest in manifests:
        assert json.loads(manifest.read_text())["status"] == "completed", manifest
    run_of_point = {json.loads(m.read_text())["sweep"]["index"]: m.parent for m in manifests}
    tasks = [(arrays[0], 0, 0), (arrays[0], 1, 1), (arrays[1], 0, 2)]  # array, task, point
    for array_id, task, point in tasks:
        job = cluster.job(f"{array_id}_{task}")
        assert (job["JobState"], job["ExitCode"]) == ("COMPLETED", "0:0"), job
        log = (tmp_path / "logs" / f"lsjob-sweep_{array_id}_{task}.out").read_text()
        assert f"task {task} restart 0" in log, log
        assert f"run {run_of_point[point]}: attempt 1 of sweep point {point}\n" in log, log
    ended = max(datetime.fromisoformat(cluster.job(f"{arrays[0]}_{t}")["EndTime"]) for t in (0, 1))
    assert datetime.fromisoformat(cluster.job(f"{arrays[1]}_0")["StartTime"]) >= ended


@pytest.mark.slow
def test_interrupted_job_is_requeued_and_resumes(cluster: SlurmCluster, tmp_path):
    (tmp_path / "logs").mkdir()
    # Six short epochs (4 steps each): the signal lands after the first and well before the last.
    overrides = [
        "train.epochs=6", "data.train_size=64", "data.test_size=32", "train.batch_size=16",
        "output.run=requeue",
    ]  # fmt: skip
    sets = [arg for o in overrides for arg in ("--set", o)]
    job_id = cluster.sbatch(*SMALL, str(SLURM / "train.sbatch"), str(SMOKE_SPEC), *sets, cwd=tmp_path,
                            env=_job_env(tmp_path))  # fmt: skip
    run_dir = tmp_path / "results" / "requeue"
    log = tmp_path / "logs" / f"lsjob_{job_id}.out"

    def first_epoch_done():
        assert cluster.queued(job_id), f"job {job_id} ended before its first epoch:\n{_read(log)}"
        return len(_history_rows(run_dir / "history.csv")) >= 1

    cluster.wait_for(first_epoch_done, 10 * 60, "the first epoch's checkpoint")
    # What the time limit's --signal=B:TERM@300 sends: TERM to the batch shell alone.
    cluster.run("scancel", "--batch", "--signal=TERM", job_id)
    cluster.wait_gone(job_id, timeout=15 * 60)

    job = cluster.job(job_id)
    assert (job["JobState"], job["Restarts"], job["ExitCode"]) == ("COMPLETED", "1", "0:0"), job
    manifest = json.loads((run_dir / "manifest.json").read_text())
    assert manifest["status"] == "completed", manifest
    first, second = manifest["attempts"]
    assert first["status"] == "interrupted" and second["status"] == "completed", manifest["attempts"]
    assert datetime.fromisoformat(second["started"]) > datetime.fromisoformat(first["ended"])
    assert [row["epoch"] for row in _history_rows(run_dir / "history.csv")] == ["1", "2", "3", "4", "5", "6"]
    text = log.read_text()
    assert "restart 0" in text and "requeued job" in text and "restart 1" in text, text
    # From the step the signal stopped it at (checkpointed then), or the epoch end just before.
    resumed = r"resuming (after epoch [1-5] of 6|epoch [2-6] of 6 at step [1-3]) from"
    assert re.search(resumed, (run_dir / "run.log").read_text())


@pytest.mark.slow
def test_a_plain_scancel_ends_the_job_for_good(cluster: SlurmCluster, tmp_path):
    """scancel signals every process, and lsjob stops with 75, checkpointed: the job must stay
    cancelled. scontrol requeues finished jobs too, and so a run could not be stopped."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    _stub(bin_dir, "lsjob", f"touch {tmp_path}/started\ntrap 'exit 75' TERM\nwhile true; do sleep 0.2; done\n")
    (tmp_path / "logs").mkdir()
    env = {"PATH": f"{bin_dir}:{os.environ['PATH']}"}
    job_id = cluster.sbatch(*SMALL, str(SLURM / "train.sbatch"), "spec.yaml", cwd=tmp_path, env=env)
    cluster.wait_for(lambda: (tmp_path / "started").exists(), 120, "the stand-in lsjob to start")
    cluster.run("scancel", job_id)
    cluster.wait_gone(job_id, timeout=180)  # requeued, it would come back after cred_expire and never end

    job = cluster.job(job_id)
    assert (job["JobState"], job["Restarts"]) == ("CANCELLED", "0"), job
    log = (tmp_path / "logs" / f"lsjob_{job_id}.out").read_text()
    assert f"lsjob: not requeued: job {job_id} is COMPLETING (cancelled, or ended by Slurm)" in log, log


@pytest.mark.slow
def test_time_limit_signal_requeues_array_tasks(cluster: SlurmCluster, tmp_path):
    """--signal=B:TERM@N before the time limit, then each task requeues itself by its own id.

    A stand-in lsjob keeps this to scheduling: the first attempt of each task waits for the
    signal and exits 75, the second exits 0 (the real resume is the test above).
    """
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    _stub(
        bin_dir,
        "lsjob",
        'mark="$LSJOB_RESULTS/attempts.$SLURM_ARRAY_TASK_ID"\n'
        'echo x >> "$mark"\n'
        '[[ $(wc -l < "$mark") -gt 1 ]] && exit 0\n'
        "trap 'echo stand-in: TERM; exit 75' TERM\n"
        "while true; do sleep 0.2; done\n",
    )
    (tmp_path / "logs").mkdir()
    env = {"PATH": f"{bin_dir}:{os.environ['PATH']}", "LSJOB_RESULTS": str(tmp_path / "results")}
    # A 2-minute limit and a signal 60 s before it. slurmctld checks every 30 s and signals once
    # `now + warning + 30 s` passes the limit: 30-60 s in (measured). Not @90: that signals in the first
    # 30 s of every attempt, so now and then in a resumed attempt's first milliseconds.
    array_id = cluster.run(
        "sbatch", "--parsable", "--array=0-1", "--time=2", "--signal=B:TERM@60", *SMALL,
        str(SLURM / "sweep.sbatch"), "spec.yaml", cwd=tmp_path, env=env,
    ).strip()  # fmt: skip

    cluster.wait_gone(array_id, timeout=6 * 60)

    for index in range(2):
        job = cluster.job(f"{array_id}_{index}")
        assert (job["JobState"], job["Restarts"], job["ExitCode"]) == ("COMPLETED", "1", "0:0"), job
        text = (tmp_path / "logs" / f"lsjob-sweep_{array_id}_{index}.out").read_text()
        assert "stand-in: TERM" in text and f"task {index} restart 1" in text, text


@pytest.mark.slow
def test_an_interrupted_array_task_sends_back_no_other_task(cluster: SlurmCluster, tmp_path):
    """One task of an array has the array's id as its SLURM_JOB_ID (the last to start), and to
    scontrol that id is the whole array: requeued by it, the task that had already finished
    went back and ran again. A stand-in lsjob: that task exits 75 once the other has ended."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    _stub(
        bin_dir,
        "lsjob",
        'mkdir -p "$LSJOB_RESULTS"\n'
        'mark="$LSJOB_RESULTS/attempts.$SLURM_ARRAY_TASK_ID"\n'
        'echo "$SLURM_JOB_ID $SLURM_ARRAY_JOB_ID" >> "$mark"\n'
        '[[ $SLURM_JOB_ID != "$SLURM_ARRAY_JOB_ID" || $(wc -l < "$mark") -gt 1 ]] && exit 0\n'
        'until [[ $(find "$LSJOB_RESULTS" -name "attempts.*" | wc -l) -ge 2 ]]; do sleep 0.2; done\n'
        "sleep 5\n"  # the other task's script ends: it is COMPLETED when this one requeues
        "exit 75\n",
    )
    (tmp_path / "logs").mkdir()
    results = tmp_path / "results"
    env = {"PATH": f"{bin_dir}:{os.environ['PATH']}", "LSJOB_RESULTS": str(results)}
    array_id = cluster.run("sbatch", "--parsable", "--array=0-1", *SMALL, str(SLURM / "sweep.sbatch"), "spec.yaml",
                           cwd=tmp_path, env=env).strip()  # fmt: skip
    cluster.wait_gone(array_id, timeout=6 * 60)

    attempts = {i: (results / f"attempts.{i}").read_text().splitlines() for i in range(2)}
    holder = [i for i, lines in attempts.items() if lines[0].split() == [array_id, array_id]]
    assert len(holder) == 1, attempts  # what this test is about: one task holds the array's id
    (other,) = {0, 1} - set(holder)
    assert len(attempts[holder[0]]) == 2 and len(attempts[other]) == 1, attempts
    restarts = {i: cluster.job(f"{array_id}_{i}")["Restarts"] for i in range(2)}
    assert restarts == {holder[0]: "1", other: "0"}, restarts
    for i in range(2):
        assert cluster.job(f"{array_id}_{i}")["JobState"] == "COMPLETED"
    log = (tmp_path / "logs" / f"lsjob-sweep_{array_id}_{holder[0]}.out").read_text()
    assert f"requeued job {array_id}_{holder[0]}" in log, log


@pytest.mark.slow
def test_a_stop_reaches_lsjob_started_through_srun(cluster: SlurmCluster, tmp_path):
    """LSJOB_CMD='srun ... lsjob', as the Pyxis example: srun answers a TERM by killing its
    tasks, so the script must have Slurm signal the step instead, or the step's work is lost."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    _stub(
        bin_dir,
        "lsjob",
        'mark="$LSJOB_RESULTS/attempts"\n'
        'echo x >> "$mark"\n'
        '[[ $(wc -l < "$mark") -gt 1 ]] && exit 0\n'
        "trap 'echo stand-in: checkpointed on TERM; exit 75' TERM\n"
        'touch "$LSJOB_RESULTS/started"\n'
        "while true; do sleep 0.2; done\n",
    )
    (tmp_path / "logs").mkdir()
    results = tmp_path / "results"
    env = {"PATH": f"{bin_dir}:{os.environ['PATH']}", "LSJOB_RESULTS": str(results),
           "LSJOB_CMD": "srun --ntasks=1 lsjob"}  # fmt: skip
    job_id = cluster.run("sbatch", "--parsable", *SMALL, str(SLURM / "train.sbatch"), "spec.yaml", cwd=tmp_path,
                         env=env).strip()  # fmt: skip
    log = tmp_path / "logs" / f"lsjob_{job_id}.out"
    cluster.wait_for(lambda: (results / "started").exists(), 5 * 60, f"the stand-in's start:\n{_read(log)}")
    cluster.run("scancel", "--batch", "--signal=TERM", job_id)  # what --signal=B:TERM@300 does
    cluster.wait_gone(job_id, timeout=6 * 60)
    job = cluster.job(job_id)
    text = _read(log)
    assert "stand-in: checkpointed on TERM" in text and "forcing job termination" not in text, text
    assert (job["JobState"], job["Restarts"], job["ExitCode"]) == ("COMPLETED", "1", "0:0"), (job, text)


def _read(path: Path) -> str:
    return path.read_text() if path.exists() else "(no log)"
