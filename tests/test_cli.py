"""The `lsjob` command as users and schedulers run it: in a subprocess, logs in a pipe."""

import csv
import json
import os
import re
import shlex
import signal
import subprocess
import sys
import time

import pytest
from conftest import ROOT, TINY

from job import errors
from job.errors import EXIT_BUSY, EXIT_INTERRUPTED
from job.spec import load_spec

keras = pytest.importorskip("keras")


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
    assert [line.split()[2:4] for line in epoch_lines] == [["epoch", "1/2"], ["epoch", "2/2"]]
    assert "\x08" not in proc.stdout and "━" not in proc.stdout
    assert "0.91" in proc.stderr  # the tutorial's smoothed-label example
    # What computes is in the log, which may be all a Slurm or Kubernetes user has.
    versions, backend = manifest["versions"], keras.backend.backend()  # the subprocess's: same environment
    computing = f"computing: lsjob {versions['lsjob']}, keras {versions['keras']}, {backend} "
    assert (
        computing in proc.stderr
        and "precision off (spec); batch 32 (32 per replica), 16 steps per epoch" in proc.stderr
    )
    assert computing in (run_dir / "run.log").read_text()
    # The synthetic task is learnable: well above 10% chance after two short epochs.
    assert manifest["test_accuracy"] > 0.2  # 256 test images: chance is 0.10 +- 0.02

    again = lsjob("run", str(ROOT / "specs" / "smoke.yaml"), "--set", f"output.root={tmp_path}")
    done = f"already complete (test accuracy {manifest['test_accuracy']:.4f}); nothing to do"
    assert again.returncode == 0 and done in again.stderr and again.stdout == ""


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
    # A preemption is routine, not a failure: requeued logs should not fill with errors.
    assert err.splitlines()[-1].startswith("lsjob: interrupted: stopped by SIGTERM") and "lsjob: error" not in err
    manifest = json.loads((tmp_path / "preempted" / "manifest.json").read_text())
    assert manifest["status"] == "interrupted" and "SIGTERM" in manifest["reason"]
    logged = (tmp_path / "preempted" / "run.log").read_text()
    assert "WARNING run interrupted: stopped by SIGTERM" in logged and " ERROR " not in logged

    resumed = lsjob(*_args(tmp_path, "preempted"))
    assert resumed.returncode == 0, resumed.stderr
    # SIGTERM checkpoints the step it stopped at: inside epoch 2, or right after epoch 1.
    assert "resuming epoch 2 of 2 at step" in resumed.stderr or "resuming after epoch 1 of 2" in resumed.stderr
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
    # The run's compute time is both attempts', not the last one's.
    assert manifest["duration_s"] == pytest.approx(sum(a["seconds"] for a in manifest["attempts"]), abs=0.01)
    assert manifest["duration_s"] > max(a["seconds"] for a in manifest["attempts"]) + 1


@pytest.mark.parametrize(
    "error, code, label",
    [(errors.StorageError, 1, "error"), (errors.SpecError, 2, "error"), (errors.DataError, 3, "error"),
     (errors.DivergedError, 4, "error"), (errors.RunBusyError, 5, "error"), (errors.NoSpaceError, 6, "error"),
     (errors.InterruptedRun, 75, "interrupted")],
)  # fmt: skip
def test_each_failure_exits_with_the_code_the_readme_and_the_schedulers_key_on(monkeypatch, capsys, error, code, label):
    """k8s/ fails a Job at once on 2 and 4 and retries the rest; Slurm requeues 75. A diverged run
    that exited 0 would be marked succeeded, and retried never; one that exited 1, retried in vain."""
    from job import cli

    def app():
        raise error("what happened")

    monkeypatch.setattr(cli, "app", app)
    with pytest.raises(SystemExit) as exited:
        cli.main()
    assert exited.value.code == code
    assert capsys.readouterr().err == f"lsjob: {label}: what happened\n"


def test_bad_input_exit_codes_and_no_traceback(tmp_path):
    missing = lsjob("run", str(tmp_path / "nope.yaml"))
    assert missing.returncode == 2 and "does not exist" in missing.stderr
    bad_set = lsjob("validate", "/dev/null", "--set", "train.epochs")
    assert bad_set.returncode == 2 and "dotted.key=value" in bad_set.stderr
    for proc in (missing, bad_set):
        assert "Traceback" not in proc.stderr


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs /dev/full, a device every write to fails")
@pytest.mark.parametrize("command", [["show", "/dev/null"], ["schema"]])
def test_output_into_a_full_disk_exits_6_with_one_line(command):
    # `lsjob show spec.yaml > full/disk/spec.yaml`: a traceback and exit 1 ("a bug, retry") before.
    with open("/dev/full", "w") as full:
        proc = subprocess.run([sys.executable, "-m", "job", *command], stdout=full, stderr=subprocess.PIPE, text=True)
    assert proc.returncode == errors.EXIT_NO_SPACE
    assert proc.stderr.strip().splitlines()[-1] == (
        "lsjob: error: cannot write the output: No space left on device; free space and run it again"
    )
    assert "Traceback" not in proc.stderr


@pytest.mark.slow
def test_a_file_size_limit_is_a_clear_no_space_failure_with_its_own_exit_code(tmp_path):
    import resource

    def limit():  # ulimit -f: the manifest and logs fit, the first checkpoint does not
        resource.setrlimit(resource.RLIMIT_FSIZE, (2**20, 2**20))

    proc = subprocess.run([sys.executable, "-m", "job", *_args(tmp_path, "limited")], capture_output=True,
                          text=True, preexec_fn=limit)  # fmt: skip
    assert proc.returncode == 6, proc.stderr
    assert "ran out of disk space" in proc.stderr and "Traceback" not in proc.stderr
    # One line that says why and what a re-run does, not h5py's dump of its write call.
    last = proc.stderr.splitlines()[-1]
    assert last.startswith("lsjob: error: ran out of disk space writing") and "(File too large)" in last
    assert "no checkpoint was written yet, so it starts the training over" in last and "buf =" not in last
    manifest = json.loads((tmp_path / "limited" / "manifest.json").read_text())
    assert manifest["status"] == "failed" and "ran out of disk space" in manifest["reason"]
    checkpoints = tmp_path / "limited" / "checkpoints"
    assert not checkpoints.exists() or not list(checkpoints.iterdir())  # no torn checkpoint left


def test_data_problem_exit_code(tmp_path):
    proc = lsjob(
        "run", "/dev/null", "--set", f"data.path={tmp_path / 'missing.tar.gz'}", "--set", f"output.root={tmp_path}"
    )
    assert proc.returncode == 3, proc.stderr
    assert "Traceback" not in proc.stderr and "missing.tar.gz" in proc.stderr


def test_help_lists_the_commands():
    proc = lsjob("--help")
    assert proc.returncode == 0
    for command in ("run", "validate", "show", "schema", "sweep"):
        assert command in proc.stdout


def test_show_prints_the_spec_asked_for_even_inside_an_array_task():
    sweep = str(ROOT / "specs" / "smoke-sweep.yaml")
    env = {**os.environ, "SLURM_ARRAY_TASK_ID": "1", "COLUMNS": "200"}
    whole = lsjob("show", sweep, env=env)
    assert whole.returncode == 0 and "sweep:" in whole.stdout
    assert "SLURM_ARRAY_TASK_ID" not in lsjob("show", "--help", env=env).stdout  # as run's --index has it
    assert "SLURM_ARRAY_TASK_ID" in lsjob("run", "--help", env=env).stdout


@pytest.mark.parametrize("command", ["run", "bench"])
def test_a_keras_backend_that_cannot_load_is_bad_setup_not_a_bug(command, tmp_path):
    env = {**os.environ, "KERAS_BACKEND": "nosuchbackend"}
    proc = lsjob(command, str(ROOT / "specs" / "smoke.yaml"), "--set", f"output.root={tmp_path / 'r'}", env=env)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "Keras cannot load its backend (KERAS_BACKEND: nosuchbackend)" in proc.stderr
    assert not (tmp_path / "r").exists()


def test_inspecting_commands_do_not_load_the_ml_stack():
    # validate, show, schema and sweep count run on login nodes and in submit scripts: instant.
    code = "import sys, job.cli; print(sorted(m for m in ('keras', 'tensorflow', 'jax', 'torch') if m in sys.modules))"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True).stdout.strip() == "[]"


SWEEP = """
data: {source: synthetic, train_size: 128, test_size: 32}
train: {epochs: 1, batch_size: 16}
sweep:
  smoothing.method: [labels, loss]
  train.seed: [1, 2, 3, 4]
"""


def test_sweep_count_and_list(tmp_path):
    spec = tmp_path / "sweep.yaml"
    spec.write_text(SWEEP)
    assert lsjob("sweep", "count", str(spec)).stdout == "8\n"
    lines = lsjob("sweep", "list", str(spec)).stdout.splitlines()
    assert lines[0].split() == ["index", "run", "smoothing.method", "train.seed"]
    assert lines[1].split() == ["0", "labels-f0.1-s1", "labels", "1"]
    assert lines[8].split() == ["7", "loss-f0.1-s4", "loss", "4"]
    assert lsjob("sweep", "count", str(ROOT / "specs" / "smoke.yaml")).stdout == "1\n"


@pytest.mark.parametrize(
    "args, env, message",
    [
        (["--index", "8"], {}, "--index 8 is out of range: the spec has 8 points (0..7)"),
        (["--index", "x"], {}, "Invalid value for '--index'"),
        ([], {"SLURM_ARRAY_TASK_ID": "8"}, "SLURM_ARRAY_TASK_ID 8 is out of range"),
        ([], {"JOB_COMPLETION_INDEX": "two"}, "JOB_COMPLETION_INDEX='two' is not a sweep index"),
        ([], {}, "a sweep of 8 runs: pick one with --index 0..7"),
        (["--index-offset", "6"], {"SLURM_ARRAY_TASK_ID": "2"}, "SLURM_ARRAY_TASK_ID 2 + --index-offset 6 = 8 is out"),
        (["--index-offset", "6"], {}, "--index-offset 6 adds to the array index, but neither"),
        (["--index-offset", "-1"], {"SLURM_ARRAY_TASK_ID": "2"}, "Invalid value for '--index-offset'"),
    ],
)
def test_a_bad_sweep_index_exits_2_before_anything_is_written(tmp_path, args, env, message):
    spec = tmp_path / "sweep.yaml"
    spec.write_text(SWEEP)
    clean = {k: v for k, v in os.environ.items() if k not in ("SLURM_ARRAY_TASK_ID", "JOB_COMPLETION_INDEX")}
    proc = lsjob("run", str(spec), "--set", f"output.root={tmp_path / 'results'}", *args, env={**clean, **env})
    assert proc.returncode == 2 and message in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stderr and not (tmp_path / "results").exists()


@pytest.mark.slow
def test_eight_tasks_on_one_results_root_never_clobber_or_look_complete_early(tmp_path):
    """An array job's tasks all start at once on one shared root, plus a resubmitted duplicate."""
    spec, root = tmp_path / "sweep.yaml", tmp_path / "results"
    spec.write_text(SWEEP)
    env = {k: v for k, v in os.environ.items() if k not in ("SLURM_ARRAY_TASK_ID", "JOB_COMPLETION_INDEX")}
    command = [sys.executable, "-m", "job", "run", str(spec), "--set", f"output.root={root}"]
    tasks = [
        subprocess.Popen(command, env={**env, "SLURM_ARRAY_TASK_ID": str(i)}, stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True)
        for i in [*range(8), 3]
    ]  # fmt: skip
    while any(t.poll() is None for t in tasks):
        # A manifest that says completed must mean every result is in place.
        for manifest in root.glob("*/manifest.json"):
            if _read_json_retrying(manifest).get("status") == "completed":
                assert (manifest.parent / "metrics.json").is_file() and (manifest.parent / "model.keras").is_file()
        time.sleep(0.1)
    outcomes = [(t.returncode, t.communicate()[1]) for t in tasks]
    for code, err in outcomes[:3] + outcomes[4:8]:
        assert code == 0, err
    # Of the two tasks for point 3, whichever came second was refused while the other
    # ran, or found the run complete.
    twins = sorted([outcomes[3], outcomes[8]])
    assert twins[0][0] == 0 and twins[1][0] in (0, EXIT_BUSY), twins
    if twins[1][0] == EXIT_BUSY:
        assert "is in use by pid" in twins[1][1]

    names = [f"{m}-f0.1-s{s}" for m in ("labels", "loss") for s in (1, 2, 3, 4)]
    assert sorted(p.name for p in root.iterdir()) == sorted(names)
    for index, name in enumerate(names):
        manifest = json.loads((root / name / "manifest.json").read_text())
        assert manifest["status"] == "completed" and manifest["sweep"]["index"] == index
        assert manifest["sweep"]["values"] == {"smoothing.method": name.split("-")[0], "train.seed": index % 4 + 1}
        assert len(manifest["attempts"]) == 1  # the duplicate never wrote into it
        assert f"{root / name}: attempt 1 of sweep point {index}\n" in (root / name / "run.log").read_text()
        assert load_spec(root / name / "spec.yaml").run_name == name

    table = lsjob("aggregate", str(root))
    assert table.returncode == 0, table.stderr
    with open(root / "aggregate.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert sorted(row["run"] for row in rows) == sorted(names)
    assert {row["status"] for row in rows} == {"completed"}

    # A point run again, by --index or by a requeued task's SLURM_ARRAY_TASK_ID, is left as it is.
    def files(run):  # the lock file names its latest holder; everything else must stay as it was
        return {p: p.read_bytes() for p in (root / run).rglob("*") if p.is_file() and p.name != ".lock"}

    before = files(names[5])
    for again in (command + ["--index", "5"], command):
        proc = subprocess.run(again, env={**env, "SLURM_ARRAY_TASK_ID": "5"}, capture_output=True, text=True)
        assert proc.returncode == 0 and "already complete" in proc.stderr, proc.stderr
    assert files(names[5]) == before


def _read_json_retrying(path):
    # Files are replaced by rename, never rewritten in place, so a read sees a whole file.
    return json.loads(path.read_text())


def test_readme_lists_every_exit_code_and_no_other():
    # Schedulers are configured from that table (which codes to requeue, which to fail).
    section = (ROOT / "README.md").read_text().split("## Exit codes", 1)[1].split("\n## ", 1)[0]
    listed = {int(code) for code in re.findall(r"^\| (\d+) \|", section, re.M)}
    assert listed == {value for name, value in vars(errors).items() if name.startswith("EXIT_")}


def test_an_os_error_other_than_a_full_disk_is_not_called_one(monkeypatch):
    # An unreadable folder, or `lsjob show | head` (EPIPE): not "free space", nor exit 6, which
    # schedulers would treat as a full disk.
    import errno

    from job import cli

    def app():
        raise OSError(errno.EACCES, "Permission denied")

    monkeypatch.setattr(cli, "app", app)
    with pytest.raises(PermissionError):
        cli.main()


def test_a_working_directory_since_deleted_is_bad_input_said_in_one_line(tmp_path):
    # A shell left in a folder that was removed: relative paths mean nothing there.
    gone = tmp_path / "gone"
    gone.mkdir()
    where, python, spec = (shlex.quote(str(p)) for p in (gone, sys.executable, ROOT / "specs" / "smoke.yaml"))
    script = f"cd {where} && rmdir {where} && exec {python} -m job run {spec}"
    proc = subprocess.run(["bash", "-c", script], capture_output=True, text=True)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr == (
        "lsjob: error: the current folder no longer exists (deleted, or its mount went away): cd to one that does, "
        "and run the command again\n"
    )


def test_loading_keras_quiets_tensorflows_notes_for_run_and_bench(monkeypatch):
    from job import cli

    monkeypatch.delenv("TF_CPP_MIN_LOG_LEVEL", raising=False)
    cli._load_keras()
    assert os.environ["TF_CPP_MIN_LOG_LEVEL"] == "2"


@pytest.mark.parametrize(
    "args",
    [["validate", ""], ["aggregate", ""], ["aggregate", "ROOT", "--out", ""], ["report", ""],
     ["bench", "SPEC", "--out", ""], ["run", "SPEC", "--set", "output.root=''"],
     ["run", "SPEC", "--set", "data.cache_dir=''"], ["run", "SPEC", "--set", "data.path=''"]],
)  # fmt: skip
def test_an_empty_path_is_refused_not_taken_for_the_working_directory(tmp_path, args):
    # "$OUT" of an unset variable: Path("") is ".", and the results went into the working directory.
    args = [{"SPEC": str(ROOT / "specs" / "smoke.yaml"), "ROOT": str(tmp_path)}.get(a, a) for a in args]
    proc = lsjob(*args, cwd=tmp_path)
    assert proc.returncode == 2, proc.stderr
    said = " ".join(re.sub("[│╭╮╰╯─]", " ", proc.stderr).split())  # Typer's box wraps its usage errors
    assert "is empty (an unset variable?): give a path, or . for the current folder" in said, proc.stderr
    assert list(tmp_path.iterdir()) == []


def test_validate_says_what_it_checked(tmp_path):
    # A plain spec: the run directory and the spec hash; a sweep: how many runs, under which root.
    plain = lsjob("validate", str(ROOT / "specs" / "smoke.yaml"))
    spec = load_spec(ROOT / "specs" / "smoke.yaml")
    assert plain.returncode == 0
    assert (
        plain.stdout
        == f"{ROOT / 'specs' / 'smoke.yaml'}: valid (run {spec.run_dir}, spec hash {spec.content_hash()})\n"
    )
    sweep_file = tmp_path / "sweep.yaml"
    sweep_file.write_text(SWEEP)
    swept = lsjob("validate", str(sweep_file), "--set", f"output.root={tmp_path / 'results'}")
    assert swept.returncode == 0
    assert swept.stdout == f"{sweep_file}: valid sweep of 8 runs under {tmp_path / 'results'}\n"


def test_show_index_0_prints_the_first_point_not_the_sweep(tmp_path):
    # --index 0 is a point like any other (a falsy 0 must not fall back to the whole sweep).
    spec = tmp_path / "sweep.yaml"
    spec.write_text(SWEEP)
    first = lsjob("show", str(spec), "--index", "0")
    assert first.returncode == 0, first.stderr
    assert "sweep:" not in first.stdout
    shown = tmp_path / "shown.yaml"
    shown.write_text(first.stdout)
    point = load_spec(shown)
    assert (point.smoothing.method, point.train.seed) == ("labels", 1)
    # Exactly the YAML, no blank line added: `lsjob show --index 0 s.yaml > point.yaml` is a spec file.
    assert first.stdout == point.to_yaml()


def test_sweep_list_aligns_columns_and_marks_fields_a_grid_does_not_sweep(tmp_path):
    spec = tmp_path / "sweep.yaml"
    spec.write_text(
        "data: {source: synthetic, train_size: 128, test_size: 32}\n"
        "sweep: [{smoothing.method: [labels]}, {train.seed: [1, 2]}]\n"
    )
    lines = lsjob("sweep", "list", str(spec)).stdout.splitlines()
    assert [line.split() for line in lines] == [
        ["index", "run", "smoothing.method", "train.seed"],
        ["0", "labels-f0.1-s42", "labels", "-"],
        ["1", "labels-f0.1-s1", "-", "1"],
        ["2", "labels-f0.1-s2", "-", "2"],
    ]
    # Columns line up under their headers (a table to read, and to cut by column).
    for header in ("run", "smoothing.method", "train.seed"):
        column = lines[0].index(header)
        for line in lines[1:]:
            assert line[column] != " " and line[column - 1] == " ", (header, line)


@pytest.mark.parametrize("option", [["--steps", "1"], ["--warmup", "0"]])
def test_bench_refuses_too_few_steps_before_benchmarking(tmp_path, option):
    # One timed step leaves no step time once the first (fit's set-up) is left out; no warm-up
    # would time the compilation.
    proc = lsjob("bench", str(ROOT / "specs" / "smoke.yaml"), *option, cwd=tmp_path)
    assert proc.returncode == 2 and f"Invalid value for '{option[0]}'" in proc.stderr, proc.stderr
    assert "images/s" not in proc.stderr and list(tmp_path.iterdir()) == []


def test_bench_refuses_a_link_or_device_out_it_may_not_write(tmp_path, monkeypatch):
    from job import cli
    from job.errors import SpecError

    target = tmp_path / "real.json"
    target.write_text("{}")
    link = tmp_path / "link.json"
    link.symlink_to(target)
    # As a user without write permission sees it (root's os.access says yes to almost anything).
    monkeypatch.setattr(cli.os, "access", lambda path, mode: False)
    with pytest.raises(SpecError, match=r"^--out .*link.json is not writable$"):
        cli._check_out_file(link)


def _run_in_process(monkeypatch, argv):
    """Call `lsjob run` in this process with execute() replaced: what the command hands it."""
    from job import cli, preemption
    from job import run as run_mod

    calls = []

    def execute(spec, *, force, sweep_point):
        calls.append({"spec": spec, "force": force, "sweep_point": sweep_point})
        return 0

    monkeypatch.setattr(run_mod, "execute", execute)
    monkeypatch.setattr(preemption, "install", lambda: None)
    # A handler on this process's logger would outlive the test.
    monkeypatch.setattr(cli, "_setup_logging", lambda: None)
    monkeypatch.setattr(sys, "argv", ["lsjob", "run", *argv])
    for var in ("SLURM_ARRAY_TASK_ID", "JOB_COMPLETION_INDEX"):
        monkeypatch.delenv(var, raising=False)
    with pytest.raises(SystemExit) as exited:
        cli.main()
    assert exited.value.code == 0
    return calls[0]


def test_run_hands_force_and_the_sweep_point_to_execute(tmp_path, monkeypatch):
    spec = tmp_path / "sweep.yaml"
    spec.write_text(SWEEP)
    call = _run_in_process(monkeypatch, [str(spec), "--index", "5", "--force"])
    assert call["force"] is True
    assert call["sweep_point"] == {"index": 5, "values": {"smoothing.method": "loss", "train.seed": 2}}
    assert call["spec"].run_name == "loss-f0.1-s2"
    # A plain spec is no sweep: its manifest records no sweep point; and no --force, no discarding.
    call = _run_in_process(monkeypatch, [str(ROOT / "specs" / "smoke.yaml")])
    assert call["force"] is False and call["sweep_point"] is None


def test_report_prints_the_regenerated_figures(tmp_path, monkeypatch, capsys):
    from job import cli
    from job import report as report_mod

    monkeypatch.setattr(report_mod, "regenerate",
                        lambda run_dir: {"test_accuracy": 0.8123, "test_nll": 0.61234, "test_ece": 0.0345})  # fmt: skip
    monkeypatch.setattr(sys, "argv", ["lsjob", "report", str(tmp_path)])
    with pytest.raises(SystemExit) as exited:
        cli.main()
    assert exited.value.code == 0
    assert capsys.readouterr().out == (
        f"{tmp_path}: reports rewritten (test accuracy 0.8123, NLL 0.6123, ECE 0.0345)\n"
    )


def test_bench_figures_that_cannot_be_written_to_out_go_to_stdout(tmp_path, monkeypatch, capsys):
    # Minutes of benchmarking are not lost to a disk that fails at the end: the JSON goes to stdout.
    import errno

    from job import atomic, cli
    from job import bench as bench_mod

    monkeypatch.setattr(bench_mod, "bench", lambda spec, steps, warmup: {"images_per_s": 123.0})
    monkeypatch.setattr(bench_mod, "table", lambda result: "the table")
    # A handler on this process's logger would outlive the test.
    monkeypatch.setattr(cli, "_setup_logging", lambda: None)

    def write_json(path, data):
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(atomic, "write_json", write_json)
    out = tmp_path / "bench.json"
    monkeypatch.setattr(sys, "argv", ["lsjob", "bench", str(ROOT / "specs" / "smoke.yaml"), "--out", str(out)])
    with pytest.raises(SystemExit) as exited:
        cli.main()
    captured = capsys.readouterr()
    assert exited.value.code == 2
    assert json.loads(captured.out) == {"images_per_s": 123.0}
    assert captured.err.endswith(
        f"lsjob: error: --out {out}: cannot write it (Input/output error); the JSON went to stdout\n"
    )


def test_two_commands_in_one_process_log_each_line_once(monkeypatch, capsys):
    import logging

    from job import cli

    monkeypatch.setattr(cli.log, "handlers", list(cli.log.handlers))  # put back as it was afterwards
    cli._setup_logging()
    cli._setup_logging()
    cli.log.info("once")
    assert capsys.readouterr().err.count("once") == 1
    assert sum(isinstance(h, logging.StreamHandler) and h.stream is sys.stderr for h in cli.log.handlers) == 1
