"""`lsjob bench`: the spec's own training step timed, and nothing left behind but the JSON."""

import json
import os
import re
import subprocess
import sys
import types
from pathlib import Path

import numpy as np
import pytest
from conftest import ROOT

keras = pytest.importorskip("keras")


@pytest.mark.slow
def test_bench_times_the_specs_step_and_writes_only_its_json(tmp_path):
    out = tmp_path / "bench.json"
    proc = subprocess.run(
        [sys.executable, "-m", "job", "bench", str(ROOT / "specs" / "smoke.yaml"), "--set", "train.batch_size=16",
         "--steps", "4", "--warmup", "2", "--out", str(out)],
        capture_output=True, text=True, cwd=tmp_path,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bench.json"]  # no results directory
    result = json.loads(out.read_text())
    assert result["batch_size"] == 16 and result["steps_timed"] == 4 and result["precision"] == "off"
    backend = keras.backend.backend()  # the subprocess's too: it inherits KERAS_BACKEND and KERAS_HOME
    assert result["backend"] == backend and result["devices"]
    assert 0 < result["step_ms_median"] <= result["step_ms_p90"]
    assert result["images_per_s"] == pytest.approx(16 / (result["step_ms_median"] / 1000))
    assert result["compile_and_warmup_s"] > 0 and result["host_peak_mb"] > 100
    # What made the figures, as a run's manifest records it: figures are compared across versions.
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True)
    assert result["git_commit"] == (head.stdout.strip() if head.returncode == 0 else None)
    assert result["versions"]["keras"] == keras.__version__
    assert "images/s (median step)" in proc.stderr and proc.stdout == ""
    # The table says why 4 timed steps give 3 step times.
    assert (
        result["step_samples"] == 3 and "(of 3 of the 4 steps: the first, with fit's set-up, left out)" in proc.stderr
    )
    assert "CIFAR-10 epoch (50k), s" in proc.stderr
    if backend != "jax":  # JAX's cache: test_runtime.py
        assert (result["compile_cache"], result["compile_cache_entries_at_start"]) == (None, None)
        assert result["compile_cache_entries_written"] is None
        assert re.search(rf"\ncompile cache +not used on the {backend} backend\n", proc.stderr)
    # What Keras made of "auto" on this backend, beside the spec's value.
    assert result["jit_compile_spec"] == "auto" and isinstance(result["jit_compile"], bool)
    assert re.search(rf"\njit_compile +{result['jit_compile']} \(spec: auto\)\n", proc.stderr)


@pytest.mark.slow
def test_bench_writes_into_a_pipe_or_device_named_by_out_never_over_it(tmp_path):
    # /dev/stdout here is the pipe to this test: replaced by a renamed file, as every other --out
    # is written, root's bench would have put a file in place of the system's /dev/stdout link.
    stdout = "/dev/stdout"
    before = os.readlink(stdout)
    proc = subprocess.run(
        [sys.executable, "-m", "job", "bench", str(ROOT / "specs" / "smoke.yaml"), "--set", "train.batch_size=8",
         "--steps", "2", "--warmup", "1", "--out", stdout],
        capture_output=True, text=True, cwd=tmp_path,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["batch_size"] == 8
    assert os.readlink(stdout) == before and list(tmp_path.iterdir()) == []


def test_out_names_a_link_or_device_it_writes_into_and_a_file_it_replaces_whole(tmp_path):
    from job.cli import _written_into

    target = tmp_path / "real.json"
    target.write_text("{}")
    (tmp_path / "link.json").symlink_to(target)  # /dev/stdout is a link too, to this process's fd 1
    assert _written_into(tmp_path / "link.json") and _written_into(Path("/dev/null"))
    assert not _written_into(target) and not _written_into(tmp_path / "new.json")


def test_out_may_name_a_link_to_a_file_not_made_yet_where_the_file_can_be_made(tmp_path):
    # A link of the user's own to where the figures are to go (results kept elsewhere): its file
    # is made by the write; only where the file cannot be made is the link refused.
    from job.cli import _check_out_file
    from job.errors import SpecError

    (tmp_path / "link.json").symlink_to(tmp_path / "later.json")
    _check_out_file(tmp_path / "link.json")
    (tmp_path / "nowhere.json").symlink_to(tmp_path / "missing" / "later.json")
    with pytest.raises(SpecError, match=r"links to .*missing/later\.json, whose folder does not exist"):
        _check_out_file(tmp_path / "nowhere.json")
    (tmp_path / "proc.json").symlink_to("/proc/later.json")  # a folder no one may make files in, root too
    with pytest.raises(SpecError, match="the folder /proc is not writable"):
        _check_out_file(tmp_path / "proc.json")
    (tmp_path / "folder.json").symlink_to(f"{tmp_path}/new/")  # writing would fail: "Is a directory"
    with pytest.raises(SpecError, match=r"links to a folder, .*new/; name a file"):
        _check_out_file(tmp_path / "folder.json")
    (tmp_path / "loop1").symlink_to("loop2")
    (tmp_path / "loop2").symlink_to("loop1")
    with pytest.raises(SpecError, match=r"loop1 is a link that leads to no file \(Too many levels of symbolic links\)"):
        _check_out_file(tmp_path / "loop1")
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "folder.json", "link.json", "loop1", "loop2", "nowhere.json", "proc.json"
    ]  # fmt: skip


def test_the_bench_table_says_whether_its_compile_time_was_a_compile_or_a_load():
    from job.bench import _cache_how

    jax = {"compile_cache": "/c/keras/compile-cache", "compile_cache_source": "auto: compile-cache/ in Keras's "
           "cache folder", "compile_cache_entries_at_start": 61, "compile_cache_entries_written": 0,
           "compile_cache_hits": 5}  # fmt: skip
    assert _cache_how(jax) == (
        "/c/keras/compile-cache, 61 entries at start, 5 program(s) loaded, 0 written (loaded) (auto: "
        "compile-cache/ in Keras's cache folder)"
    )
    # Entries from another precision or batch: the step itself was compiled.
    assert "61 entries at start, 5 program(s) loaded, 4 written (compiled)" in _cache_how(
        {**jax, "compile_cache_entries_written": 4}
    )
    # Nothing written, nothing loaded: JAX kept none of what it compiled (under its minimum compile time).
    assert "0 program(s) loaded, 0 written (compiled)" in _cache_how({**jax, "compile_cache_hits": 0})
    assert _cache_how({"compile_cache": None, "compile_cache_source": "spec: off"}) == "spec: off"


def test_bench_refuses_a_bad_spec_before_loading_anything(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "job", "bench", "/dev/null", "--set", "train.batch_size=0"],
        capture_output=True, text=True, cwd=tmp_path,
    )  # fmt: skip
    assert proc.returncode == 2 and "train.batch_size" in proc.stderr


@pytest.mark.skipif(keras.backend.backend() == "torch", reason="PyTorch runs one step an execution")
def test_the_figures_are_worked_out_from_the_step_clock_as_the_table_says(monkeypatch):
    # Known clock readings, 2 steps an execution: the figures by hand. The slow test above
    # has one step an execution and checks only that the figures agree with one another.
    import types

    from job import bench
    from job.spec import load_spec

    fits = []

    def fit(model, x, targets, batch, n):
        fits.append(n)
        if len(fits) == 1:
            return 5.0, [0.0, 5.0]  # compilation and warm-up
        ends = [0.0, 1.0]  # the first gap holds fit's set-up: left out
        for gap in [0.02, 0.02, 0.02, 0.02, 0.2]:
            ends.append(ends[-1] + gap)
        return ends[-1], ends

    monkeypatch.setattr(bench, "_fit", fit)
    monkeypatch.setattr(bench, "compile_model", lambda *args: types.SimpleNamespace(jit_compile=False))
    spec = load_spec(None, ["runtime.steps_per_execution=2", "train.batch_size=16"])
    result = bench.bench(spec, steps=12, warmup=4)
    assert fits == [4, 12]  # the whole warm-up asked for, then the timed steps
    assert result["step_samples"] == 5 and result["step_ms_median"] == pytest.approx(10.0)
    assert result["step_ms_p90"] == pytest.approx(1000 * float(np.percentile([0.01] * 4 + [0.1], 90)))
    assert result["images_per_s"] == pytest.approx(16 / 0.01)
    assert result["images_per_s_overall"] == pytest.approx(12 * 16 / 1.28)
    assert result["epoch_s_estimate"] == pytest.approx(50_000 // 16 * 0.01)
    assert result["compile_and_warmup_s"] == 5.0


def test_bench_refuses_a_batch_the_replicas_cannot_split_as_run_does(monkeypatch):
    # runtime.replicas: all, on a machine with 2 GPUs: known only once the devices are set up.
    from job import bench, runtime
    from job.errors import SpecError
    from job.spec import load_spec

    def no_model(*args, **kwargs):
        raise AssertionError("the model was built before the refusal")

    monkeypatch.setattr(runtime, "replica_count", lambda: 2)
    monkeypatch.setattr(bench, "compile_model", no_model)
    spec = load_spec(None, ["runtime.replicas=all", "train.batch_size=17"])
    with pytest.raises(SpecError, match="train.batch_size 17 does not split evenly across the 2 replicas"):
        bench.bench(spec, steps=2, warmup=1)


def test_bench_refuses_more_steps_than_the_synthetic_images_it_may_make_before_making_any(monkeypatch):
    # --steps 1000000 at batch 32: 32 million images (92 GiB) asked of memory first.
    from job import bench, runtime
    from job.errors import SpecError
    from job.spec import load_spec

    def no_setup(*args, **kwargs):
        raise AssertionError("the devices were set up before the refusal")

    monkeypatch.setattr(runtime, "configure", no_setup)
    spec = load_spec(None, ["train.batch_size=32"])
    with pytest.raises(SpecError, match=r"--steps 1000000 and --warmup 10 at batch 32 take 32,000,000 synthetic"):
        bench.bench(spec, steps=1_000_000, warmup=10)


@pytest.mark.parametrize("where, message", [
    ("missing/bench.json", "the folder missing does not exist"),
    (".", "is a directory; name a file"),
    # os.access says yes to root anywhere: only a file made there tells.
    ("/proc/bench.json", "the folder /proc is not writable"),
])  # fmt: skip
def test_bench_refuses_an_out_file_it_could_not_write_before_benchmarking(tmp_path, where, message):
    proc = subprocess.run(
        [sys.executable, "-m", "job", "bench", str(ROOT / "specs" / "smoke.yaml"), "--out", where],
        capture_output=True, text=True, cwd=tmp_path,
    )  # fmt: skip
    assert proc.returncode == 2 and message in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stderr and "images/s" not in proc.stderr  # refused before any step
    assert list(tmp_path.iterdir()) == []


def test_the_step_clock_leaves_the_loop_free_to_queue_steps_ahead(monkeypatch):
    # A clock that waited on each step in the loop would time the host's per-step work plus
    # the device's, not the overlapped loop a run has. Keras runs async-safe batch-end
    # callbacks off the loop where its backend is thread-safe (JAX, torch; TensorFlow is not,
    # so the backend is made to say so here).
    import keras

    from job.bench import _StepClock

    class WaitsInTheLoop(keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            pass

    monkeypatch.setattr(keras.src.backend, "IS_THREAD_SAFE", True)
    assert keras.callbacks.CallbackList([_StepClock()])._async_train
    assert not keras.callbacks.CallbackList([WaitsInTheLoop()])._async_train


def test_the_step_clock_orders_steps_by_index_whatever_order_its_threads_finish_in():
    from job.bench import _StepClock

    clock = _StepClock()
    # Times out of step with the steps (step 3 seen before step 2): by time, not by step, was wrong.
    for batch, seconds in [(1, 2.0), (0, 1.0), (3, 2.9), (2, 3.0)]:
        clock.on_train_batch_end(batch, {"loss": 0.5})
        clock.finished[batch] = seconds  # when that step was seen to finish
    assert clock.ends() == [1.0, 2.0, 3.0, 2.9]


def test_the_compile_cache_count_leaves_out_entries_being_written(tmp_path):
    # Another task sharing the folder writes beside the entry's name (atomic.write_once); JAX's lock file.
    from job import bench as bench_mod

    for name in ("jit_step-1a2b-cache", ".jit_step-3c4d-cache.x8k2.tmp", ".lockfile"):
        (tmp_path / name).write_bytes(b"")
    assert bench_mod._cache_entries(str(tmp_path)) == 1
    assert bench_mod._cache_entries(None) is None


def _fake_fit(fits, per_call, setup_s=1.0, gap_s=0.01):
    """A bench._fit stand-in: records (steps, images handed in); every execution after the
    first, fit's set-up included, takes gap_s."""

    def fit(model, x, targets, batch, n):
        fits.append((n, len(x), len(targets)))
        ends = [0.0, setup_s]
        for _ in range(n // per_call - 1):
            ends.append(ends[-1] + gap_s * per_call)
        return ends[-1], ends

    return fit


def _bench(monkeypatch, sets, fit=None, **kwargs):
    """bench.bench on the spec `sets` make, with no model and `fit` (default _fake_fit's) as its clock."""
    from job import bench
    from job.spec import load_spec

    fits = []
    spec = load_spec(None, sets)
    monkeypatch.setattr(bench, "_fit", fit or _fake_fit(fits, spec.runtime.steps_per_execution))
    monkeypatch.setattr(bench, "compile_model", lambda *args: types.SimpleNamespace(jit_compile=False))
    return bench.bench(spec, **kwargs), fits


@pytest.mark.parametrize(
    "per_call, steps, warmup, fitted",
    [
        (1, 1, 0, [1, 2]),  # at least one warm-up step, and two timed for one step time
        (2, 1, 1, [2, 4]),  # ... in whole executions
        (1, 2, 10, [10, 2]),  # more warm-up than timed steps still has the images for it
    ],
)
def test_bench_always_warms_up_and_times_enough_whole_executions(monkeypatch, per_call, steps, warmup, fitted):
    if per_call > 1 and keras.backend.backend() == "torch":
        pytest.skip("PyTorch runs one step an execution")
    result, fits = _bench(monkeypatch, [f"runtime.steps_per_execution={per_call}", "train.batch_size=16"],
                          steps=steps, warmup=warmup)  # fmt: skip
    assert [n for n, _, _ in fits] == fitted
    assert all(images >= n * 16 and labels >= n * 16 for n, images, labels in fits)  # every step a full batch
    assert result["steps_timed"] == fitted[1] and result["step_samples"] >= 1


def test_an_epoch_estimate_counts_only_full_batches(monkeypatch):
    # 50,000 // 64 = 781 steps an epoch, not 781.25 (the batch of 16 elsewhere divides evenly).
    result, _ = _bench(monkeypatch, ["train.batch_size=64"], steps=4, warmup=1)
    assert result["step_ms_median"] == pytest.approx(10.0)
    assert result["epoch_s_estimate"] == pytest.approx(781 * 0.01)


def test_without_a_step_time_per_execution_the_step_time_is_the_calls_average(monkeypatch):
    # A clock that saw no execution end but the last: the timed call's wall time per step.
    def one_end(model, x, targets, batch, n):
        return 1.28, [0.0, 1.28]

    result, _ = _bench(monkeypatch, ["train.batch_size=16"], fit=one_end, steps=8, warmup=1)
    assert result["step_samples"] == 1 and result["step_ms_median"] == pytest.approx(1000 * 1.28 / 8)
    assert result["images_per_s"] == pytest.approx(16 * 8 / 1.28)


def test_the_bench_counts_the_compile_cache_entries_its_warm_up_wrote(monkeypatch, tmp_path):
    # Written is the entries added during build and warm-up, not all there are.
    from dataclasses import replace

    from job import bench, runtime

    cache = tmp_path / "cache"
    cache.mkdir()
    for n in range(3):
        (cache / f"old-{n}").write_bytes(b"")
    real_configure = runtime.configure

    def configure(spec_runtime, seed):
        return replace(real_configure(spec_runtime, seed), compile_cache=str(cache), compile_cache_source="spec")

    calls = []

    def fit(model, x, targets, batch, n):
        calls.append(n)
        if len(calls) == 1:  # the warm-up compiles two programs
            (cache / "new-1").write_bytes(b"")
            (cache / "new-2").write_bytes(b"")
        return 1.0, [0.0, 0.5, 0.51, 0.52]

    monkeypatch.setattr(bench.runtime, "configure", configure)
    result, _ = _bench(monkeypatch, ["train.batch_size=16"], fit=fit, steps=3, warmup=1)
    assert result["compile_cache_entries_at_start"] == 3 and result["compile_cache_entries_written"] == 2


def test_a_fit_call_hands_in_exactly_its_steps_and_times_each_execution_from_its_start(monkeypatch):
    # The warm-up's call trains `n` steps, not all the images made for the timed
    # call; its first end is measured from the call's start, so the set-up gap can be left out.
    import numpy as np

    from job import bench

    now = [10.0]
    monkeypatch.setattr(bench.time, "perf_counter", lambda: now[0])
    monkeypatch.setattr(
        bench.runtime, "feed", lambda x, y=None, *, batch_size: {"x": x, "y": y, "batch_size": batch_size}
    )
    seen = []

    class Model:
        def fit(self, x=None, y=None, batch_size=None, callbacks=(), **kwargs):
            seen.append((len(x), len(y), batch_size))
            clock = callbacks[-1]
            for step in range(len(x) // batch_size):
                now[0] += 1.0
                clock.on_train_batch_end(step, {"loss": 0.5})

    x, targets = np.zeros((160, 32, 32, 3), np.uint8), np.zeros((160, 10), np.float32)
    total, ends = bench._fit(Model(), x, targets, 16, 2)
    assert seen == [(32, 32, 16)]
    assert ends == [10.0, 11.0, 12.0] and total == pytest.approx(2.0)


def test_the_bench_table_says_where_the_precision_came_from_and_the_devices_peak(monkeypatch):
    # "off" as the spec set it; "(auto: ...)" when chosen for the device; peak memory or n/a.
    from job.bench import table

    result = {"backend": "jax", "devices": ["cuda:0"], "precision": "bf16", "precision_source": "spec",
              "replicas": 1, "jit_compile": True, "jit_compile_spec": "auto", "batch_size": 512,
              "images_per_s": 25_000.0, "step_ms_median": 20.48, "step_ms_p90": 22.5, "compile_and_warmup_s": 21.5,
              "compile_cache": None, "compile_cache_source": "spec: off", "epoch_s_estimate": 2.0,
              "host_peak_mb": 3_000.0, "device_peak_mb": 12_345.0, "steps_timed": 50, "step_samples": 49,
              "steps_per_execution": 1}  # fmt: skip
    lines = dict(line.split("  ", 1) for line in table(result).splitlines())
    assert lines["precision"].strip() == "bf16"
    assert lines["device peak MB"].strip() == "12,345"
    lines = dict(
        line.split("  ", 1)
        for line in table(
            {**result, "precision_source": "auto: bf16 on compute capability 9.0", "device_peak_mb": None}
        ).splitlines()  # fmt: skip
    )
    assert lines["precision"].strip() == "bf16 (auto: bf16 on compute capability 9.0)"
    assert lines["device peak MB"].strip() == "n/a"
