"""`lsjob bench`: the spec's own training step timed, and nothing left behind but the JSON."""

import json
import subprocess
import sys

import pytest
from conftest import ROOT


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
    assert result["backend"] == "tensorflow" and result["devices"]
    assert 0 < result["step_ms_median"] <= result["step_ms_p90"]
    assert result["images_per_s"] == pytest.approx(16 / (result["step_ms_median"] / 1000))
    assert result["compile_and_warmup_s"] > 0 and result["host_peak_mb"] > 100
    assert "images/s (median step)" in proc.stderr and proc.stdout == ""


def test_bench_refuses_a_bad_spec_before_loading_anything(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "job", "bench", "/dev/null", "--set", "train.batch_size=0"],
        capture_output=True, text=True, cwd=tmp_path,
    )  # fmt: skip
    assert proc.returncode == 2 and "train.batch_size" in proc.stderr
