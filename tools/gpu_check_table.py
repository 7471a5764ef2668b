"""The table of tools/gpu_check.sh, from what its steps left in its work folder, and its checks.

    python3 tools/gpu_check_table.py versions           # Python and package versions; whether TensorFlow imports
    KERAS_BACKEND=jax python3 tools/gpu_check_table.py devices [--gpu]   # keras on that backend, the devices
                                                        # it sees; --gpu: exit 1 where it sees no GPU
    python3 tools/gpu_check_table.py summary FILE       # one line of a bench run's JSON
    python3 tools/gpu_check_table.py pick WORK BATCH BACKEND   # the backend and precision that benched
                                                        # fastest at BATCH; BACKEND in float32 where none did
    python3 tools/gpu_check_table.py table WORK OUT     # print the table; write gpu_check.md and .json to OUT

WORK holds bench.tsv (one line per bench run: backend, batch, precision, status,
wall seconds, detail), the runs' JSON (bench-<backend>-<batch>-<precision>.json),
run.tsv (backend, batch, precision, status, wall seconds, detail), header.txt and the 2-epoch
run's results folder (history.csv, manifest.json, run.log). Standard library only, but
for `devices`: it runs before anything is known to work.
"""

from __future__ import annotations

import csv
import importlib.metadata
import json
import platform
import sys
from datetime import datetime
from pathlib import Path

FULL_EPOCHS = 70  # the recipe's epoch count, for the projection
# The anchor: a hand-written PyTorch MiniGoogLeNet on one H100 (channels-last, bf16
# autocast, torch.compile, data and augmentation on the GPU), batch 512, 1.5 s per epoch.
ANCHOR_IMAGES_PER_S = 33_400
ANCHOR_GOAL = 1.5  # epoch time at batch 512 within this multiple of the anchor's
END_TO_END_GOAL_S = 300  # the 70-epoch recipe at batch 64, end to end
COLUMNS = ("backend", "precision", "batch", "images/s", "x anchor", "step ms med", "step ms p90", "compile s",
           "cache", "est. epoch s", "device peak MB", "wall s", "status")  # fmt: skip


def read_tsv(path: Path) -> list[list[str]]:
    if not path.exists():
        return []
    # Only tabs and newlines separate: a detail line may hold anything else, cut mid-character.
    text = path.read_bytes().decode("utf-8", errors="replace")  # read_text would turn a lone \r into a line end
    return [line.split("\t") for line in text.split("\n") if line.strip()]


def bench_rows(work: Path) -> list[dict]:
    rows = []
    for backend, batch, precision, status, wall_s, detail in read_tsv(work / "bench.tsv"):
        result_path = work / f"bench-{backend}-{batch}-{precision}.json"
        result = json.loads(result_path.read_text()) if status == "ok" and result_path.exists() else None
        rows.append({"backend": backend, "batch": int(batch), "precision": precision, "status": status,
                     "wall_s": float(wall_s), "detail": detail, "result": result})  # fmt: skip
    return sorted(rows, key=lambda r: (r["backend"], r["batch"], r["precision"] != "off", r["precision"]))


VERSIONS_OF = ("keras", "pydantic", "pydantic-core", "optree", "namex", "typer", "numpy", "jax", "jaxlib", "torch",
               "scikit-learn", "matplotlib", "h5py", "pyyaml", "typing-extensions")  # fmt: skip


def versions() -> list[str]:
    found = []
    for name in VERSIONS_OF:
        try:
            found.append(f"{name} {importlib.metadata.version(name)}")
        except importlib.metadata.PackageNotFoundError:
            found.append(f"{name} -")
    lines = [f"python {platform.python_version()}; " + ", ".join(found)]
    try:
        import tensorflow  # the machine this check is for has none
    except ImportError as e:
        lines.append(f"tensorflow: not importable, as intended ({type(e).__name__}: {e})")
    else:
        lines.append(f"tensorflow: IMPORTABLE ({tensorflow.__version__}): not the machine this check is for")
    return lines


def devices(need_gpu: bool = False) -> tuple[str, bool]:
    """What the backend computes on; not ok where a GPU is needed and the backend sees none: a
    CUDA that failed to start leaves JAX and torch on the CPU with only a warning, and every
    bench would then time out, or report the CPU's figures, in the GPU's place."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repo's job package
    import keras

    from job import runtime

    line = f"keras {keras.__version__} on {keras.backend.backend()}: devices {runtime.devices()}"
    kind, capability = runtime.accelerator()
    if kind == "gpu":
        return f"{line}, compute capability {capability[0]}.{capability[1]}", True
    if need_gpu:
        return f"{line}: no GPU visible to {keras.backend.backend()}, so it would run on the CPU", False
    return line, True


def summary(path: Path) -> str:
    r = json.loads(path.read_text())
    return (f"{r['images_per_s']:,.0f} images/s, step {r['step_ms_median']:.2f} ms median, "
            f"compile and warm-up {r['compile_and_warmup_s']:.1f} s, on {', '.join(r['devices'])}")  # fmt: skip


def pick(work: Path, batch: int, fallback: str) -> str:
    """The backend and precision with the most images/s at `batch`; `fallback` in float32 when
    none ran (a backend the check found usable: one it dropped must not get the run)."""
    ok = [r for r in bench_rows(work) if r["result"] and r["batch"] == batch]
    best = max(ok, key=lambda r: r["result"]["images_per_s"]) if ok else {"backend": fallback, "precision": "off"}
    return f"{best['backend']} {best['precision']}"


def shown(precision: str) -> str:
    return {"off": "float32"}.get(precision, precision)


def gpu_name(header: list[str]) -> str | None:
    """The GPU nvidia-smi named in the header, None without one."""
    line = next((h for h in header if h.startswith("nvidia-smi: ")), "")
    name = line.removeprefix("nvidia-smi: ").split(",")[0].strip()
    return name if name and not name.startswith(("not found", "no answer")) else None


def _number(value, digits: int = 1) -> str:
    return "-" if value is None else f"{value:,.{digits}f}"


def _cache(r: dict) -> str:
    """How the compile time was made: cold when the bench compiled programs (and wrote them
    to the cache, or loaded none), warm when it loaded them; entries already there from
    another precision or batch do not make it warm."""
    if not r:
        return "-"
    if not r.get("compile_cache"):
        return "none"
    return "cold" if r["compile_cache_entries_written"] or r.get("compile_cache_hits") == 0 else "warm"


def _times_anchor(images_per_s: float | None) -> str:
    """This epoch's time as a multiple of the anchor's: 1.00x matches it, 2.00x takes twice as long."""
    return "-" if not images_per_s else f"{ANCHOR_IMAGES_PER_S / images_per_s:.2f}x"


def anchor_lines(rows: list[dict], gpu: str | None = None) -> list[str]:
    """The goal at batch 512: the best epoch there within ANCHOR_GOAL of the anchor's."""
    lines = [
        f"x anchor: epoch time over the PyTorch anchor's (H100, batch 512, bf16, torch.compile: "
        f"{ANCHOR_IMAGES_PER_S:,} images/s, 1.5 s an epoch); goal at batch 512: {ANCHOR_GOAL}x or less"
    ]
    at_512 = [r for r in rows if r["result"] and r["batch"] == 512]
    if at_512:
        best = max(at_512, key=lambda r: r["result"]["images_per_s"])
        ratio = ANCHOR_IMAGES_PER_S / best["result"]["images_per_s"]
        met = "goal met" if ratio <= ANCHOR_GOAL else "goal NOT met"
        if gpu is None or "H100" not in gpu:  # an H200's faster memory, say, flatters the ratio
            met += f" (but the anchor is an H100's figure and this ran on {gpu or 'no NVIDIA GPU'})"
        lines.append(f"  best at batch 512: {best['backend']} {shown(best['precision'])}, {ratio:.2f}x: {met}")
    else:
        lines.append("  no bench at batch 512 finished: goal not measured")
    return lines


def table_lines(rows: list[dict]) -> list[str]:
    cells = [list(COLUMNS)]
    for row in rows:
        r = row["result"] or {}
        cells.append([
            row["backend"], shown(row["precision"]), str(row["batch"]),
            _number(r.get("images_per_s"), 0), _times_anchor(r.get("images_per_s")),
            _number(r.get("step_ms_median"), 2), _number(r.get("step_ms_p90"), 2),
            _number(r.get("compile_and_warmup_s")), _cache(r), _number(r.get("epoch_s_estimate")),
            _number(r.get("device_peak_mb"), 0), _number(row["wall_s"], 0), row["status"],
        ])  # fmt: skip
    widths = [max(len(line[i]) for line in cells) for i in range(len(COLUMNS))]
    right = {"batch", "images/s", "x anchor", "step ms med", "step ms p90", "compile s", "est. epoch s",
             "device peak MB", "wall s"}  # fmt: skip
    out = []
    for n, line in enumerate(cells):
        out.append("  ".join(c.rjust(w) if COLUMNS[i] in right else c.ljust(w)
                             for i, (c, w) in enumerate(zip(line, widths))).rstrip())  # fmt: skip
        if n == 0:
            out.append("  ".join("-" * w for w in widths))
    return out


def run_summary(work: Path) -> dict | None:
    lines = read_tsv(work / "run.tsv")
    if not lines:
        return None
    backend, batch, precision, status, wall_s, detail = lines[-1]
    summary = {"backend": backend, "batch": int(batch), "precision": precision, "status": status,
               "wall_s": float(wall_s), "detail": detail}  # fmt: skip
    run_dir = work / "results" / "gpu-check"
    history = run_dir / "history.csv"
    if history.exists():
        with history.open() as f:
            summary["epochs"] = [{k: float(v) for k, v in row.items()} for row in csv.DictReader(f)]
    manifest = run_dir / "manifest.json"
    if manifest.exists():
        m = json.loads(manifest.read_text())
        summary.update({k: m.get(k) for k in ("status", "test_accuracy", "devices", "versions") if k in m})
        summary["run_status"] = summary.pop("status")
        summary["status"] = status
    seconds = [e["seconds"] for e in summary.get("epochs", [])]
    if seconds:
        summary["outside_epochs_s"] = summary["wall_s"] - sum(seconds)
    ends = epoch_ends(run_dir / "run.log")
    if len(ends) >= 2:
        # history.csv's seconds stop before the epoch's checkpoint and the next epoch's set-up;
        # run.log's epoch lines follow the checkpoint, so the gap between the last two is what
        # each further epoch of the recipe costs, compilation done (epoch 1 carried it).
        summary["epochs_logged"] = len(ends)
        summary["epoch_cycle_s"] = ends[-1] - ends[-2]
        summary["projected_end_to_end_s"] = summary["wall_s"] + (FULL_EPOCHS - len(ends)) * summary["epoch_cycle_s"]
    return summary


def epoch_ends(run_log: Path) -> list[float]:
    """When run.log says each epoch ended ("2026-12-05 13:53:20,123 INFO epoch 1/2 ..."), in seconds."""
    if not run_log.exists():
        return []
    words = [line.split() for line in run_log.read_text(errors="replace").splitlines()]
    return [datetime.strptime(f"{w[0]} {w[1]}", "%Y-%m-%d %H:%M:%S,%f").timestamp()
            for w in words if len(w) > 3 and w[2:4] == ["INFO", "epoch"]]  # fmt: skip


def run_lines(run: dict | None) -> list[str]:
    if run is None:
        return ["2-epoch run: not started"]
    lines = [f"2-epoch run ({run['backend']}, batch {run['batch']}, {shown(run['precision'])}): {run['status']}, "
             f"{run['wall_s']:.0f} s end to end" + (f" ({run['detail']})" if run["detail"] else "")]  # fmt: skip
    epochs = run.get("epochs", [])
    if epochs:
        lines.append("  epoch seconds (validation included): "
                     + ", ".join(f"{int(e['epoch'])}: {e['seconds']:.1f}" for e in epochs)
                     + f"; start-up, data, final evaluation and reports: {run['outside_epochs_s']:.0f} s")  # fmt: skip
        last = epochs[-1]
        lines.append(f"  after epoch {int(last['epoch'])}: accuracy {last['accuracy']:.3f}, "
                     f"val_accuracy {last['val_accuracy']:.3f}")  # fmt: skip
    if "epoch_cycle_s" in run:
        done, cycle, total = run["epochs_logged"], run["epoch_cycle_s"], run["projected_end_to_end_s"]
        met = "met" if total < END_TO_END_GOAL_S else "NOT met"
        if run["status"] != "completed":  # its wall time is where it was stopped, not its end
            verdict = f"not judged (the run did not complete: {run['status']})"
        elif run["batch"] != 64:
            verdict = f"not measured (the run was at batch {run['batch']})"
        else:
            verdict = met
        lines.append(f"  epoch {done}, checkpoint to checkpoint: {cycle:.1f} s; projected {FULL_EPOCHS} epochs end "
                     f"to end: {run['wall_s']:.0f} + {FULL_EPOCHS - done} x {cycle:.1f} = {total:,.0f} s "
                     f"({total / 60:.1f} min); goal at batch 64 under {END_TO_END_GOAL_S} s: {verdict}")  # fmt: skip
    return lines


def table(work: Path, out: Path) -> int:
    rows = bench_rows(work)
    run = run_summary(work)
    header = (work / "header.txt").read_text(errors="replace").splitlines() if (work / "header.txt").exists() else []
    notes = [
        f"  {r['backend']} batch {r['batch']} {r['precision']}: {r['detail']}" for r in rows if r["status"] != "ok"
    ]
    text = "\n".join([*header, "", *table_lines(rows), "", *anchor_lines(rows, gpu_name(header)),
                      *(["", "not ok:", *notes] if notes else []), "", *run_lines(run)]) + "\n"  # fmt: skip
    print(text, end="")
    out.mkdir(parents=True, exist_ok=True)
    (out / "gpu_check.md").write_text(text)
    (out / "gpu_check.json").write_text(json.dumps({"header": header, "bench": rows, "run": run}, indent=2) + "\n")
    return 0


def main(argv: list[str]) -> int:
    if argv == ["versions"]:
        print("\n".join(versions()))
        return 0
    if argv in (["devices"], ["devices", "--gpu"]):
        line, ok = devices(need_gpu="--gpu" in argv)
        print(line)
        return 0 if ok else 1
    if len(argv) == 2 and argv[0] == "summary":
        print(summary(Path(argv[1])))
        return 0
    if len(argv) == 4 and argv[0] == "pick":
        print(pick(Path(argv[1]), int(argv[2]), argv[3]))
        return 0
    if len(argv) == 3 and argv[0] == "table":
        return table(Path(argv[1]), Path(argv[2]))
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
