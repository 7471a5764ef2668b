"""tools/gpu_check.sh and the wheels it installs on the GPU test machine, checked without a GPU.

The machine has PyTorch and JAX but no TensorFlow, no network and none of keras, optree,
namex or pydantic: tools/fetch_gpu_wheels.sh brings those as wheels. Its WHEELS list must
cover every dependency in pyproject.toml that the machine lacks, so that adding one without
updating the list fails here rather than on the machine. No test here trains anything.
"""

import csv
import importlib.util
import json
import os
import re
import subprocess
import sys
from importlib import metadata

import pytest
from conftest import ROOT
from packaging.markers import default_environment
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

tomllib = pytest.importorskip("tomllib")  # Python 3.11+

GPU_CHECK = ROOT / "tools" / "gpu_check.sh"
FETCH = ROOT / "tools" / "fetch_gpu_wheels.sh"
TABLE = ROOT / "tools" / "gpu_check_table.py"
TENSORFLOW = importlib.util.find_spec("tensorflow") is not None
# The GPU machine's Python: the wheels are fetched for it, its requirement markers evaluated for it.
DEVICE_ENV = {**default_environment(), "python_version": "3.12", "python_full_version": "3.12.3",
              "sys_platform": "linux", "platform_system": "Linux", "platform_machine": "x86_64",
              "implementation_name": "cpython", "platform_python_implementation": "CPython", "os_name": "posix",
              "extra": ""}  # fmt: skip


def bash_array(script, name: str) -> list[str]:
    """The words of `NAME=( ... )` in a shell script, comments left out."""
    found = re.search(rf"^{name}=\(\n(.*?)^\)", script.read_text(), re.MULTILINE | re.DOTALL)
    assert found, f"{script.name} has no {name}=( ... ) array"
    return [word for line in found.group(1).splitlines() for word in line.split("#", 1)[0].split()]


def wheel_pins() -> dict[str, Version]:
    pins = {}
    for word in bash_array(FETCH, "WHEELS"):
        name, sep, version = word.partition("==")
        assert sep and version, f"{word}: every wheel is pinned with =="
        assert canonicalize_name(name) not in pins, f"{name} listed twice: two versions stop pip on the machine"
        pins[canonicalize_name(name)] = Version(version)
    return pins


def device_has() -> set[str]:
    return {canonicalize_name(n) for n in bash_array(FETCH, "DEVICE_HAS")}


def project_dependencies() -> list[Requirement]:
    with open(ROOT / "pyproject.toml", "rb") as f:
        return [Requirement(d) for d in tomllib.load(f)["project"]["dependencies"]]


@pytest.mark.parametrize("script", [GPU_CHECK, FETCH], ids=lambda p: p.name)
def test_scripts_parse(script):
    proc = subprocess.run(["bash", "-n", str(script)], capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stderr


def test_wheel_list_is_pinned_and_apart_from_what_the_machine_has():
    pins, present = wheel_pins(), device_has()
    assert {"keras", "pydantic", "pydantic-core", "optree", "namex"} <= pins.keys()  # never vacuous
    assert not pins.keys() & present, "fetched and also listed as present on the machine"


def test_wheels_cover_every_project_dependency_but_tensorflow():
    covered = wheel_pins().keys() | device_has()
    missing = [str(r) for r in project_dependencies()
               if canonicalize_name(r.name) != "tensorflow" and canonicalize_name(r.name) not in covered]  # fmt: skip
    assert not missing, (
        f"{missing}: not on the GPU machine and not fetched; add a pinned wheel to WHEELS in {FETCH.name} "
        "(or to DEVICE_HAS if the machine has it)"
    )


def test_wheels_cover_what_the_fetched_packages_need():
    """Everything a fetched package requires on the machine is fetched too, or there; pins agree.

    Read from this environment's installed copies where they are the pinned version (the fetch
    script checks the wheels themselves the same way when it downloads them).
    """
    pins, present = wheel_pins(), device_has()
    checked, problems = [], []
    for name, pin in pins.items():
        try:
            if Version(metadata.version(name)) != pin:
                continue
        except metadata.PackageNotFoundError:
            continue
        checked.append(name)
        for req in map(Requirement, metadata.requires(name) or []):
            if req.marker is not None and not req.marker.evaluate(DEVICE_ENV):
                continue
            dep = canonicalize_name(req.name)
            if dep in pins and not req.specifier.contains(pins[dep], prereleases=True):
                problems.append(f"{name} {pin} needs {req}, but {dep}=={pins[dep]} is pinned")
            elif dep not in pins and dep not in present:
                problems.append(f"{name} {pin} needs {req}: neither fetched nor on the machine")
    if not checked:
        pytest.skip("none of the pinned versions is installed here to read requirements from")
    assert not problems, problems


def test_gpu_check_refuses_an_unknown_scale(tmp_path):
    proc = subprocess.run(["bash", str(GPU_CHECK)], env={**os.environ, "GPU_CHECK_SCALE": "huge", "OUT": str(tmp_path)},
                          capture_output=True, text=True, timeout=30, check=False)  # fmt: skip
    assert proc.returncode == 2 and "GPU_CHECK_SCALE" in proc.stderr, proc.stderr
    assert list(tmp_path.iterdir()) == []


def test_full_scale_fits_in_eight_minutes():
    """The budget the script holds itself to, and the step limits inside it."""
    full = re.search(r"^\s*full\)\n(.*?);;", GPU_CHECK.read_text(), re.MULTILINE | re.DOTALL).group(1)
    values = dict(re.findall(r"(\w+)=(\d+)", full))
    budget, bench, first_jax, run, check = (
        int(values[k]) for k in ("budget_s", "bench_s", "first_jax_s", "run_s", "check_s")
    )
    assert budget <= 470  # 8 minutes, less the table and a killed step's 5 s of grace
    # The checks, then the two most important settings on both backends (512 bf16: the
    # anchor's; 64 float32: the run's), then the run, whatever the steps take up to their limits.
    assert 2 * check + 15 + first_jax + 3 * bench + run <= budget
    assert re.findall(r"\bbatches=\((\d+) (\d+)\)", full) == [("64", "512")]
    for scale in ("full", "tiny"):  # the run is picked from the benches at its batch, the smaller one
        settings = re.search(rf"^\s*{scale}\)\n(.*?);;", GPU_CHECK.read_text(), re.MULTILINE | re.DOTALL).group(1)
        assert re.search(r"\bbatches=\((\d+) ", settings).group(1) == re.search(r"\brun_batch=(\d+)", settings).group(1)
    order = re.search(r'for setting in ((?:"[^"]+" ?)+); do', GPU_CHECK.read_text()).group(1)
    assert order.split('" "') == ['"$big bf16', "$small off", "$small bf16", '$big off"']


def _bench_json(backend, batch, precision, images_per_s):
    step_ms = 1000 * batch / images_per_s
    return {"backend": backend, "devices": ["NVIDIA H100"], "precision": precision, "batch_size": batch,
            "images_per_s": images_per_s, "step_ms_median": step_ms, "step_ms_p90": 1.1 * step_ms,
            "compile_and_warmup_s": 21.5, "epoch_s_estimate": 50_000 // batch * step_ms / 1000,
            "host_peak_mb": 3000.0, "device_peak_mb": 812.0,
            "compile_cache": "/w/keras/compile-cache" if backend == "jax" else None,
            "compile_cache_entries_at_start": 0 if backend == "jax" else None,
            "compile_cache_entries_written": 58 if backend == "jax" else None}  # fmt: skip


def _table(*args):
    proc = subprocess.run([sys.executable, str(TABLE), *map(str, args)], capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def test_table_shows_every_row_the_run_and_the_projection(tmp_path):
    work, out = tmp_path / "work", tmp_path / "out"
    work.mkdir()
    rows = [
        ("jax", 64, "off", "ok", 31, ""),
        ("torch", 64, "off", "ok", 18, ""),
        ("jax", 512, "bf16", "timeout 35s", 36, "no result within 35 s; last output: (no output)"),
        ("torch", 64, "bf16", "failed rc=1", 4, "RuntimeError: no bf16 here"),
    ]
    (work / "bench.tsv").write_text("".join("\t".join(map(str, r)) + "\n" for r in rows))
    (work / "bench-jax-64-off.json").write_text(json.dumps(_bench_json("jax", 64, "off", 20_000.0)))
    (work / "bench-torch-64-off.json").write_text(json.dumps(_bench_json("torch", 64, "off", 4_000.0)))
    assert _table("pick", work, 64, "torch").strip() == "jax off"
    assert _table("pick", work, 512, "torch").strip() == "torch off"  # nothing ran there: the usable backend

    run_dir = work / "results" / "gpu-check"
    run_dir.mkdir(parents=True)
    (work / "run.tsv").write_text("jax\t64\toff\tcompleted\t70\t\n")
    with (run_dir / "history.csv").open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["epoch", "loss", "accuracy", "val_loss", "val_accuracy", "val_nll", "lr", "seconds"])
        writer.writerow([1, 2.0, 0.3, 1.9, 0.35, 1.9, 0.005, 30.0])
        writer.writerow([2, 1.5, 0.5, 1.4, 0.55, 1.4, 0.0025, 10.0])
    (run_dir / "manifest.json").write_text(json.dumps({"status": "completed", "test_accuracy": 0.55}))
    # Epoch 2's line comes 10.5 s after epoch 1's: its 10 s in history.csv, then its checkpoint.
    (run_dir / "run.log").write_text(
        "2026-12-05 13:53:02,000 INFO run /w/results/gpu-check: attempt 1\n"
        "2026-12-05 13:53:32,000 INFO epoch 1/2  loss 2.0000  acc 0.3000  ...  30.0s\n"
        "2026-12-05 13:53:42,500 INFO epoch 2/2  loss 1.5000  acc 0.5000  ...  10.0s\n"
        "2026-12-05 13:53:50,000 INFO completed: test accuracy 0.5500, test NLL 1.4000 -> /w/results/gpu-check\n"
    )
    (work / "header.txt").write_text("nvidia-smi: NVIDIA H100 80GB HBM3, 81559 MiB, 570.00\n")

    text = _table("table", work, out)
    lines = text.splitlines()
    assert lines[0].startswith("nvidia-smi: NVIDIA H100")
    assert "images/s" in text and "device peak MB" in text
    table_rows = [line for line in lines if line.startswith(("jax ", "torch "))]
    assert [r.split()[:3] for r in table_rows] == [
        ["jax", "float32", "64"], ["jax", "bf16", "512"], ["torch", "float32", "64"], ["torch", "bf16", "64"]
    ]  # fmt: skip
    assert "20,000" in table_rows[0] and table_rows[0].endswith("ok")
    # JAX's compile time from an empty cache; torch has none.
    assert " cold " in table_rows[0] and " none " in table_rows[2] and " - " in table_rows[1]
    assert table_rows[1].endswith("timeout 35s") and table_rows[3].endswith("failed rc=1")
    assert "RuntimeError: no bf16 here" in text
    assert "1: 30.0, 2: 10.0" in text
    # The 70 s run, and 68 more epochs of 10.5 s, against the goal of 5 minutes at batch 64.
    assert "epoch 2, checkpoint to checkpoint: 10.5 s; projected 70 epochs end to end: 70 + 68 x 10.5 = 784 s" in text
    assert "(13.1 min); goal at batch 64 under 300 s: NOT met" in text
    assert "no bench at batch 512 finished: goal not measured" in text
    assert (out / "gpu_check.md").read_text() == text
    saved = json.loads((out / "gpu_check.json").read_text())
    assert len(saved["bench"]) == 4 and saved["run"]["epoch_cycle_s"] == 10.5
    assert saved["run"]["projected_end_to_end_s"] == 784
    assert saved["run"]["run_status"] == "completed" and saved["run"]["test_accuracy"] == 0.55

    # 40 s for the 2-epoch run and 3 s an epoch after: 244 s for the recipe, within the goal.
    (work / "run.tsv").write_text("jax\t64\tbf16\tcompleted\t40\t\n")
    log = (run_dir / "run.log").read_text().replace("13:53:42,500", "13:53:35,000")
    (run_dir / "run.log").write_text(log)
    text = _table("table", work, out)
    assert "2-epoch run (jax, batch 64, bf16): completed" in text
    assert "40 + 68 x 3.0 = 244 s (4.1 min); goal at batch 64 under 300 s: met" in text

    # Stopped at its time limit: its wall time is no end-to-end figure, and no verdict is given.
    (work / "run.tsv").write_text("jax\t64\tbf16\ttimeout 130s\t135\tno result within 130 s\n")
    assert "goal at batch 64 under 300 s: not judged (the run did not complete: timeout 130s)" in _table(
        "table", work, out
    )


def test_pick_takes_the_fastest_backend_and_precision_at_the_batch(tmp_path):
    rows = [("jax", 64, "off", "ok", 30, ""), ("jax", 64, "bf16", "ok", 30, ""), ("torch", 64, "bf16", "ok", 9, "")]
    (tmp_path / "bench.tsv").write_text("".join("\t".join(map(str, r)) + "\n" for r in rows))
    for (backend, batch, precision, *_), rate in zip(rows, (9_000.0, 12_000.0, 11_000.0)):
        (tmp_path / f"bench-{backend}-{batch}-{precision}.json").write_text(
            json.dumps(_bench_json(backend, batch, precision, rate))
        )
    assert _table("pick", tmp_path, 64, "torch").strip() == "jax bf16"


def test_table_survives_odd_bytes_in_a_step_detail(tmp_path):
    # cut -c cuts bytes: a detail may end mid-character; a carriage return must not split a row.
    detail = "x" * 198 + "\u2014".encode()[:2].decode("latin-1")
    (tmp_path / "bench.tsv").write_bytes(
        b"torch\t64\toff\tfailed rc=1\t4\t" + detail.encode("latin-1") + b"\n"
        + b"jax\t64\toff\tfailed rc=1\t4\tprogress\rbar\n"
    )  # fmt: skip
    _table("table", tmp_path, tmp_path)
    written = (tmp_path / "gpu_check.md").read_bytes()
    assert b"progress\rbar" in written and b"x" * 198 in written


def test_table_calls_a_compile_warm_only_when_the_bench_compiled_nothing(tmp_path):
    # Benches run in one cache: the second finds the first's entries, but its bf16 step is
    # a new program; only a repeat of the same bench loads everything.
    # The last wrote nothing and loaded nothing: JAX kept none of its programs (they compiled
    # under its minimum compile time), so it compiled them all.
    rows = [("jax", 64, "off", "ok", 30, ""), ("jax", 64, "bf16", "ok", 30, ""), ("jax", 512, "off", "ok", 9, ""),
            ("jax", 512, "bf16", "ok", 9, "")]  # fmt: skip
    (tmp_path / "bench.tsv").write_text("".join("\t".join(map(str, r)) + "\n" for r in rows))
    for (backend, batch, precision, *_), at_start, written, hits in zip(rows, (0, 58, 70, 70), (58, 12, 0, 0),
                                                                       (0, 3, 9, 0)):  # fmt: skip
        result = {**_bench_json(backend, batch, precision, 20_000.0), "compile_cache_entries_at_start": at_start,
                  "compile_cache_entries_written": written, "compile_cache_hits": hits}  # fmt: skip
        (tmp_path / f"bench-{backend}-{batch}-{precision}.json").write_text(json.dumps(result))
    table_rows = [line for line in _table("table", tmp_path, tmp_path).splitlines() if line.startswith("jax ")]
    assert [row.split()[8] for row in table_rows] == ["cold", "cold", "warm", "cold"]


def test_table_sets_each_bench_against_the_pytorch_anchor_and_judges_the_goal_at_512(tmp_path):
    # The anchor: 33,400 images/s at batch 512. 16,700 takes twice as long; 25,000 is within 1.5x.
    rows = [("jax", 512, "off", "ok", 30, ""), ("jax", 512, "bf16", "ok", 30, ""), ("torch", 512, "bf16", "ok", 20, "")]
    (tmp_path / "bench.tsv").write_text("".join("\t".join(map(str, r)) + "\n" for r in rows))
    for (backend, batch, precision, *_), rate in zip(rows, (16_700.0, 25_000.0, 8_350.0)):
        result = _bench_json(backend, batch, precision, rate)
        (tmp_path / f"bench-{backend}-{batch}-{precision}.json").write_text(json.dumps(result))
    text = _table("table", tmp_path, tmp_path)
    table_rows = [line for line in text.splitlines() if line.startswith(("jax ", "torch "))]
    assert [row.split()[4] for row in table_rows] == ["2.00x", "1.34x", "4.00x"]
    assert (
        "best at batch 512: jax bf16, 1.34x: goal met (but the anchor is an H100's figure and this ran on no "
        "NVIDIA GPU)" in text
    )
    (tmp_path / "header.txt").write_text("nvidia-smi: NVIDIA H200, 143771 MiB, 570.00\n")
    assert "1.34x: goal met (but the anchor is an H100's figure and this ran on NVIDIA H200)" in _table(
        "table", tmp_path, tmp_path
    )
    (tmp_path / "header.txt").write_text("nvidia-smi: NVIDIA H100 80GB HBM3, 81559 MiB, 570.00\n")
    assert "best at batch 512: jax bf16, 1.34x: goal met\n" in _table("table", tmp_path, tmp_path)

    (tmp_path / "bench-jax-512-bf16.json").write_text(json.dumps(_bench_json("jax", 512, "bf16", 20_000.0)))
    assert "best at batch 512: jax bf16, 1.67x: goal NOT met\n" in _table("table", tmp_path, tmp_path)
    (tmp_path / "bench-torch-512-bf16.json").write_text(json.dumps(_bench_json("torch", 512, "bf16", 1_000.0)))
    (tmp_path / "bench-jax-512-bf16.json").unlink()
    (tmp_path / "bench.tsv").write_text("jax\t512\toff\tok\t30\t\n")
    assert "best at batch 512: jax float32, 2.00x" in _table("table", tmp_path, tmp_path)


def test_table_without_any_result_still_prints(tmp_path):
    (tmp_path / "bench.tsv").write_text("torch\t64\toff\tskipped: out of time\t0\tthe budget left 3 s\n")
    text = _table("table", tmp_path, tmp_path)
    assert "skipped: out of time" in text and "2-epoch run: not started" in text


def test_fetching_the_wheels_explains_itself_and_takes_no_arguments():
    # --help must not start a download.
    shown = subprocess.run(["bash", str(FETCH), "--help"], capture_output=True, text=True, timeout=30, check=False)
    assert shown.returncode == 0 and shown.stdout.startswith("Fetch, on a machine with PyPI")
    assert "carry" in shown.stdout
    wrong = subprocess.run(["bash", str(FETCH), "3.12"], capture_output=True, text=True, timeout=30, check=False)
    assert wrong.returncode == 2 and "takes no arguments" in wrong.stderr


FAKE_LSJOB = """
import json, os, sys
from pathlib import Path

args = sys.argv[1:]
with open(os.environ["CALLS"], "a") as calls:
    calls.write(" ".join([os.environ["KERAS_BACKEND"], *args]) + "\\n")
no_graphs = "xla_gpu_enable_command_buffer=" in os.environ.get("XLA_FLAGS", "")
graphs_fail = os.environ.get("CUDA_GRAPHS_FAIL") and not no_graphs
if os.environ["KERAS_BACKEND"] == "jax" and graphs_fail:
    sys.exit("INTERNAL: Failed to add memset node to a CUDA graph: CUDA_ERROR_INVALID_VALUE")
if args[0] == "bench":
    sets = dict(a.split("=", 1) for a in args if "=" in a)
    backend, batch = os.environ["KERAS_BACKEND"], int(sets["train.batch_size"])
    precision = sets["runtime.mixed_precision"]
    speed = {("jax", "off"): 1000, ("jax", "bf16"): 3000, ("torch", "off"): 2000, ("torch", "bf16"): 4000}
    result = json.loads(os.environ["BENCH_JSON"])
    result.update(backend=backend, batch_size=batch, precision=precision, images_per_s=speed[backend, precision])
    Path(args[args.index("--out") + 1]).write_text(json.dumps(result))
"""


def _run_check(tmp_path, devices_check: str = 'echo "$2: fake"; exit 0', bench_json: str | None = None, **env):
    """The whole script with a PYTHON whose lsjob steps answer at once (FAKE_LSJOB, each bench
    writing `bench_json`) and whose checks of the machine run `devices_check` instead; `env` is
    added to the environment. Returns the process, OUT and the file of lsjob's calls."""
    (tmp_path / "fake_lsjob.py").write_text(FAKE_LSJOB)
    fake = tmp_path / "python"
    fake.write_text(f"""#!/usr/bin/env bash
if [[ $1 == -m && $2 == job ]]; then shift 2; exec {sys.executable} {tmp_path}/fake_lsjob.py "$@"; fi
[[ $1 == tools/gpu_check_table.py && $2 == versions ]] && {{ echo "$2: fake"; exit 0; }}
[[ $1 == tools/gpu_check_table.py && $2 == devices ]] && {{ {devices_check}; }}
exec {sys.executable} "$@"
""")
    fake.chmod(0o755)
    out, calls = tmp_path / "out", tmp_path / "calls"
    bench_json = json.dumps(_bench_json("jax", 64, "off", 1000)) if bench_json is None else bench_json
    env = {**os.environ, "PYTHON": str(fake), "OUT": str(out), "CALLS": str(calls), "GPU_CHECK_WHEELS": "",
           "BENCH_JSON": bench_json, **env}  # fmt: skip
    proc = subprocess.run(["bash", str(GPU_CHECK)], env=env, capture_output=True, text=True, timeout=300, check=False)
    return proc, out, calls


def _no_gpu_for(backend: str, devices: str) -> str:
    """A devices check where `backend` sees only `devices`, a CPU, and the other a GPU."""
    return (
        f"[[ $KERAS_BACKEND == {backend} && $3 == --gpu ]] && "
        f'{{ echo "devices {devices}: no GPU visible to {backend}"; exit 1; }}; echo "devices [cuda:0]"; exit 0'
    )


def test_a_backend_that_sees_no_gpu_is_dropped_and_the_check_fails(tmp_path):
    # CUDA that failed to start leaves torch (or JAX) on the CPU: its benches would spend the
    # budget timing out. The check says so, benches the other backend only, and exits 1.
    proc, out, calls = _run_check(tmp_path, _no_gpu_for("torch", "[cpu]"))
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "torch: FAILED: devices [cpu]: no GPU visible to torch" in proc.stdout
    assert {line.split()[0] for line in calls.read_text().splitlines()} == {"jax"}
    assert "1 step(s) not ok" in proc.stdout


def test_a_backend_dropped_for_want_of_a_gpu_never_gets_the_run(tmp_path):
    # JAX sees no GPU and every torch bench fails: no bench result to pick the run's backend
    # from, and the run goes to torch, not to JAX on the CPU, which would spend the budget.
    proc, out, calls = _run_check(tmp_path, _no_gpu_for("jax", "[cpu:0]"), bench_json="not json: every bench fails")
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "2-epoch run on torch, off: start" in proc.stdout
    assert {line.split()[0] for line in calls.read_text().splitlines()} == {"torch"}


def test_jax_goes_on_without_cuda_graphs_where_the_driver_cannot_build_them(tmp_path):
    proc, out, calls = _run_check(tmp_path, CUDA_GRAPHS_FAIL="1", XLA_FLAGS="")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "bench-jax-512-bf16: failed rc=1" in proc.stdout  # the first try of the first JAX bench
    assert "this bench again, and JAX's later steps, with XLA_FLAGS=--xla_gpu_enable_command_buffer=" in proc.stdout
    assert re.search(r"bench-jax-512-bf16: ok", proc.stdout) and re.search(r"bench-jax-64-off: ok", proc.stdout)
    assert "0 step(s) not ok" in proc.stdout
    assert "JAX without CUDA graphs" in (out / "gpu_check.md").read_text()  # the table says how JAX ran
    jax_benches = [line for line in calls.read_text().splitlines() if line.startswith("jax bench")]
    assert len(jax_benches) == 5  # 512 bf16 twice, then the other three once each
    # Compiled afresh again (another cache key): the retry has the first JAX bench's longer limit.
    limits = re.findall(r"bench-jax-512-bf16: start \(limit (\d+) s", proc.stdout)
    assert len(limits) == 2 and limits[1] == limits[0] == "90"


@pytest.mark.skipif(not TENSORFLOW, reason="runs the check on this CPU's TensorFlow")
def test_the_devices_check_refuses_a_cpu_where_a_gpu_is_needed():
    proc = subprocess.run([sys.executable, str(TABLE), "devices", "--gpu"], capture_output=True, text=True, cwd=ROOT)
    assert proc.returncode == 1 and "no GPU visible to tensorflow, so it would run on the CPU" in proc.stdout
    proc = subprocess.run([sys.executable, str(TABLE), "devices"], capture_output=True, text=True, cwd=ROOT)
    assert proc.returncode == 0 and "on tensorflow: devices" in proc.stdout


def test_the_script_benches_most_important_first_and_gives_the_run_all_the_time_left(tmp_path):
    """The whole script, lsjob's own steps answering at once: the order of the benches, the
    run's backend and precision picked from them, and the run's time limit."""
    proc, out, calls = _run_check(tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    steps = [line.split()[:2] + [a.split("=")[1] for a in line.split() if "batch_size=" in a or "precision=" in a]
             for line in calls.read_text().splitlines()]  # fmt: skip
    assert steps == [
        *[[b, "bench", "512", "bf16"] for b in ("jax", "torch")],
        *[[b, "bench", "64", "off"] for b in ("jax", "torch")],
        *[[b, "bench", "64", "bf16"] for b in ("jax", "torch")],
        *[[b, "bench", "512", "off"] for b in ("jax", "torch")],
        ["torch", "run", "64", "bf16"],  # the fastest at the run's batch
    ]
    assert "runtime.jit_compile=false" in calls.read_text().splitlines()[-1]  # torch runs eagerly
    # The run is kept its 130 s while benching, and then gets all the budget has left.
    limit = int(re.search(r"2-epoch run on torch, bf16: start .* limit (\d+) s\)", proc.stdout).group(1))
    budget = int(re.search(r"^\s*full\)\n.*?\bbudget_s=(\d+)", GPU_CHECK.read_text(), re.M | re.S).group(1))
    assert 130 < limit <= budget - 5
    assert (out / "gpu_check.md").is_file() and (out / "gpu_check.log").is_file()


def _write_rows(work, rows):
    (work / "bench.tsv").write_text("".join("\t".join(map(str, r)) + "\n" for r in rows))


def _two_epoch_run(work, tsv_line, log_times=("13:53:32,000", "13:53:35,000"), seconds=(30.0, 3.0)):
    """A 2-epoch run's folder as gpu_check.sh leaves it: run.tsv's line, history.csv, manifest, run.log."""
    run_dir = work / "results" / "gpu-check"
    run_dir.mkdir(parents=True, exist_ok=True)
    (work / "run.tsv").write_text(tsv_line)
    with (run_dir / "history.csv").open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["epoch", "loss", "accuracy", "val_loss", "val_accuracy", "val_nll", "lr", "seconds"])
        for epoch, s in enumerate(seconds, start=1):
            writer.writerow([epoch, 2.0, 0.3, 1.9, 0.35, 1.9, 0.005, s])
    (run_dir / "run.log").write_text(
        "2026-12-05 13:53:02,000 INFO run /w/results/gpu-check: attempt 1\n"
        + "".join(f"2026-12-05 {t} INFO epoch {n}/2  loss 2.0000 ...\n" for n, t in enumerate(log_times, start=1))
    )
    return run_dir


def test_a_bench_that_timed_out_after_writing_its_json_shows_no_figures_and_is_not_picked(tmp_path):
    # A bench can write its JSON and then hang on exit past its limit (timeout -k kills it): its
    # status says it did not finish, and neither the table nor `pick` takes its figures.
    _write_rows(
        tmp_path,
        [
            ("jax", 64, "off", "ok", 30, ""),
            ("torch", 64, "bf16", "timeout 60s", 65, "no result within 60 s; last output: x"),
        ],
    )
    (tmp_path / "bench-jax-64-off.json").write_text(json.dumps(_bench_json("jax", 64, "off", 10_000.0)))
    (tmp_path / "bench-torch-64-bf16.json").write_text(json.dumps(_bench_json("torch", 64, "bf16", 30_000.0)))
    assert _table("pick", tmp_path, 64, "torch").strip() == "jax off"
    torch = next(line for line in _table("table", tmp_path, tmp_path).splitlines() if line.startswith("torch "))
    assert "30,000" not in torch and torch.split()[3] == "-" and torch.endswith("timeout 60s")
    saved = json.loads((tmp_path / "gpu_check.json").read_text())
    assert [b["result"] is None for b in saved["bench"]] == [False, True]


def test_an_epoch_time_of_exactly_the_goal_meets_it(tmp_path):
    # "goal at batch 512: 1.5x or less": 1.50x itself is met.
    _write_rows(tmp_path, [("jax", 512, "bf16", "ok", 30, "")])
    (tmp_path / "bench-jax-512-bf16.json").write_text(json.dumps(_bench_json("jax", 512, "bf16", 33_400 / 1.5)))
    (tmp_path / "header.txt").write_text("nvidia-smi: NVIDIA H100 80GB HBM3, 81559 MiB, 570.00\n")
    assert "best at batch 512: jax bf16, 1.50x: goal met\n" in _table("table", tmp_path, tmp_path)


def test_the_run_line_says_how_long_everything_outside_the_epochs_took(tmp_path):
    # 40 s end to end, epochs of 30 s and 3 s: 7 s of start-up, data, evaluation and reports.
    _two_epoch_run(tmp_path, "jax\t64\toff\tcompleted\t40\t\n")
    text = _table("table", tmp_path, tmp_path)
    assert (
        "epoch seconds (validation included): 1: 30.0, 2: 3.0; start-up, data, final evaluation and reports: 7 s"
        in text
    )
    assert json.loads((tmp_path / "gpu_check.json").read_text())["run"]["outside_epochs_s"] == 7


def test_a_run_stopped_after_its_first_epoch_still_gets_a_table_without_a_projection(tmp_path):
    # Timed out in epoch 2: one epoch line in run.log, no gap between two to project from.
    _two_epoch_run(tmp_path, "jax\t64\toff\ttimeout 130s\t135\tno result within 130 s\n",
                   log_times=("13:53:32,000",), seconds=(30.0,))  # fmt: skip
    text = _table("table", tmp_path, tmp_path)
    assert "2-epoch run (jax, batch 64, float32): timeout 130s" in text
    assert "projected" not in text
    assert "epoch_cycle_s" not in json.loads((tmp_path / "gpu_check.json").read_text())["run"]


def test_a_run_at_another_batch_than_64_is_not_judged_against_the_goal_at_64(tmp_path):
    # Fast enough, but at batch 512: the 5-minute goal is the recipe's, at batch 64.
    _two_epoch_run(tmp_path, "jax\t512\toff\tcompleted\t40\t\n")
    text = _table("table", tmp_path, tmp_path)
    assert "goal at batch 64 under 300 s: not measured (the run was at batch 512)" in text
    assert ": met" not in text


def test_a_projection_of_exactly_the_goal_is_not_under_it(tmp_path):
    # "under 300 s": 96 + 68 x 3.0 = 300 s is not.
    _two_epoch_run(tmp_path, "jax\t64\toff\tcompleted\t96\t\n")
    assert "96 + 68 x 3.0 = 300 s (5.0 min); goal at batch 64 under 300 s: NOT met" in _table(
        "table", tmp_path, tmp_path
    )


def test_the_table_has_a_rule_under_its_header_and_numbers_aligned_right(tmp_path):
    # Columns of figures of different widths line up on the right.
    _write_rows(tmp_path, [("jax", 64, "off", "ok", 31, ""), ("torch", 64, "off", "ok", 8, "")])
    (tmp_path / "bench-jax-64-off.json").write_text(json.dumps(_bench_json("jax", 64, "off", 20_000.0)))
    (tmp_path / "bench-torch-64-off.json").write_text(json.dumps(_bench_json("torch", 64, "off", 4_000.0)))
    lines = _table("table", tmp_path, tmp_path).splitlines()
    at = next(i for i, line in enumerate(lines) if line.startswith("backend "))
    header, rule, jax, torch = lines[at : at + 4]
    assert set(rule.replace(" ", "")) == {"-"} and len(rule.split()) == 13  # one dash run a column
    end = header.index("images/s") + len("images/s")
    assert jax[:end].endswith("20,000") and torch[:end].endswith("4,000")
    end = header.index("wall s") + len("wall s")
    assert jax[:end].endswith("31") and torch[:end].endswith(" 8")


def test_a_header_without_an_nvidia_gpu_is_not_taken_for_a_gpu_name(tmp_path):
    # nvidia-smi missing or not answering: the verdict names no GPU, not "not found".
    _write_rows(tmp_path, [("jax", 512, "bf16", "ok", 30, "")])
    (tmp_path / "bench-jax-512-bf16.json").write_text(json.dumps(_bench_json("jax", 512, "bf16", 25_000.0)))
    for header in ("nvidia-smi: not found", "nvidia-smi: no answer within 10 s"):
        (tmp_path / "header.txt").write_text(header + "\n")
        assert "this ran on no NVIDIA GPU)" in _table("table", tmp_path, tmp_path), header


def test_the_summary_of_a_bench_is_one_line_of_its_figures(tmp_path):
    # What gpu_check.sh prints after each bench.
    path = tmp_path / "bench.json"
    path.write_text(json.dumps(_bench_json("jax", 512, "bf16", 25_000.0)))
    assert _table("summary", path) == (
        "25,000 images/s, step 20.48 ms median, compile and warm-up 21.5 s, on NVIDIA H100\n"
    )
