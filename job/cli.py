"""The `lsjob` command line: thin wrappers over the modules (spec, run, sweep, bench, report, aggregate, k8s).

Every expected failure prints one clear line (no traceback) and exits with the
code from job.errors, so schedulers can tell bad input from preemption.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import tempfile
from pathlib import Path
from typing import Annotated

import typer

from job import k8s, preemption, sweep
from job.errors import EXIT_NO_SPACE, NO_SPACE_ERRNOS, JobError, SpecError
from job.spec import EMPTY_PATH, json_schema, load_spec

app = typer.Typer(
    help="Train MiniGoogLeNet on CIFAR-10 with label smoothing, from a YAML spec.",
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
log = logging.getLogger("lsjob")


def _path(value: str) -> Path:
    if value == "":  # as a spec's paths: "$OUT" of an unset variable is not the working directory
        raise typer.BadParameter(EMPTY_PATH)
    return Path(value)


SpecArg = Annotated[
    Path,
    typer.Argument(metavar="SPEC", parser=_path, help="The run spec (YAML). `lsjob schema` describes every field."),
]
SetOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--set",
        metavar="KEY=VALUE",
        help="Override a spec field, e.g. --set train.epochs=2 (repeatable; YAML-typed value).",
    ),
]
IndexOpt = Annotated[
    int | None,
    typer.Option(
        "--index",
        metavar="N",
        help="Which point of a sweep spec. Default: $SLURM_ARRAY_TASK_ID or $JOB_COMPLETION_INDEX.",
        show_default=False,
    ),
]
# show reads no array-task variable: it prints what you ask for, in a job or not.
ShowIndexOpt = Annotated[
    int | None,
    typer.Option(
        "--index",
        metavar="N",
        help="Print that point of a sweep spec instead (default: the spec itself).",
        show_default=False,
    ),
]
sweep_app = typer.Typer(help="Inspect a sweep spec's points (every spec is a sweep of at least one point).")
app.add_typer(sweep_app, name="sweep")
k8s_app = typer.Typer(help="Kubernetes manifests for a spec (see k8s/README.md).")
app.add_typer(k8s_app, name="k8s")


@app.command()
def run(
    spec: SpecArg,
    set_: SetOpt = None,
    index: IndexOpt = None,
    force: Annotated[
        bool,
        typer.Option(help="Discard an existing run of this name and start over (a requeued Slurm attempt resumes)."),
    ] = False,
    index_offset: Annotated[
        int,
        typer.Option(
            min=0,
            metavar="K",
            help="Added to the array index: slurm/submit.sh gives it to a sweep's later arrays where the sweep "
            "has more points than one Slurm array may (MaxArraySize).",
        ),
    ] = 0,
):
    """Train (or resume) one run, or one point of a sweep, and write its results directory."""
    point = sweep.select(sweep.points(load_spec(spec, set_ or [])), index, offset=index_offset)
    _setup_logging()
    # Schedulers preempt with SIGTERM: checkpoint the current step, then stop (train.EpochRecorder).
    preemption.install()
    _load_keras()
    from job.run import execute  # imports the ML stack; keep validate/show/schema instant

    raise typer.Exit(execute(point.spec, force=force, sweep_point=_point_record(point)))


@app.command()
def bench(
    spec: SpecArg,
    set_: SetOpt = None,
    index: IndexOpt = None,
    steps: Annotated[
        int,
        typer.Option(
            min=2,
            help="Training steps timed after warm-up (the first is left out of the median and p90: "
            "it carries fit's set-up).",
        ),
    ] = 50,
    warmup: Annotated[int, typer.Option(min=1, help="Steps run first: compilation and warm-up.")] = 10,
    out: Annotated[
        Path | None, typer.Option(metavar="FILE", parser=_path, help="Write the JSON here instead of to stdout.")
    ] = None,
):
    """Time the spec's real training step on synthetic data: a table on stderr, JSON on stdout (or --out)."""
    point = sweep.select(sweep.points(load_spec(spec, set_ or [])), index)
    if out is not None:  # before minutes of benchmarking, not after
        _check_out_file(out)
    _setup_logging()
    _load_keras()
    from job import atomic
    from job.bench import bench as run_bench
    from job.bench import table

    result = run_bench(point.spec, steps=steps, warmup=warmup)
    typer.echo(table(result), err=True)
    if out is None:
        typer.echo(json.dumps(result, indent=2))
        return
    try:
        if _written_into(out):
            out.write_text(json.dumps(result, indent=2) + "\n")
        else:
            atomic.write_json(out, result)
    except OSError as e:  # the figures are not lost: they go to stdout instead
        typer.echo(json.dumps(result, indent=2))
        raise SpecError(f"--out {out}: cannot write it ({e.strerror or e}); the JSON went to stdout") from None


def _load_keras() -> None:
    """Import Keras: a backend that is missing or misspelt is a setup error, exit 2 with one
    line, not a traceback under exit 1 (a bug) that a Job would retry."""
    # TensorFlow's C++ notes (CPU instructions) bury the epoch lines. Those it prints before its
    # logging starts (no CUDA here) cannot be hidden this way; level 3 would hide its errors too.
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    try:
        import keras  # noqa: F401
    except (ImportError, ValueError) as e:
        backend = os.environ.get("KERAS_BACKEND") or "the one in ~/.keras/keras.json, else tensorflow"
        raise SpecError(
            f"Keras cannot load its backend (KERAS_BACKEND: {backend}): {type(e).__name__}: {e}; install that "
            "backend, or set KERAS_BACKEND to one that is installed (tensorflow, jax or torch)"
        ) from None


def _written_into(out: Path) -> bool:
    """A link, device or pipe (/dev/stdout, >(jq .)) is written into, never replaced by a file
    renamed over it: as root that would put a file in place of the system's /dev/stdout."""
    return out.is_symlink() or (out.exists() and not out.is_file())


def _check_out_file(out: Path) -> None:
    if out.is_dir():
        raise SpecError(f"--out {out} is a directory; name a file, e.g. {out / 'bench.json'}")
    folder = out.parent
    if not folder.is_dir():
        raise SpecError(f"--out {out}: the folder {folder} does not exist; create it first")
    if _written_into(out):
        try:
            out.stat()  # through the link: /dev/stdout's end, a pipe, has no path to resolve
        except FileNotFoundError:
            pass  # a link to a file not made yet: writing through it makes the file at its end
        except OSError as e:  # a loop, a file where a folder should be
            raise SpecError(f"--out {out} is a link that leads to no file ({e.strerror or e}); name a file") from None
        else:
            if not os.access(out, os.W_OK):
                raise SpecError(f"--out {out} is not writable")
            return
        target = out.resolve()
        if os.readlink(out).endswith("/"):
            raise SpecError(f"--out {out} links to a folder, {target}/; name a file")
        folder = target.parent
        if not folder.is_dir():
            raise SpecError(f"--out {out} links to {target}, whose folder does not exist; create it first")
    try:  # a file made there, not os.access: that says yes to root on a read-only mount or /proc
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as e:
        raise SpecError(f"--out {out}: the folder {folder} is not writable ({e.strerror or e})") from None


@app.command()
def validate(spec: SpecArg, set_: SetOpt = None):
    """Check a spec (every point of a sweep); exit 0 when valid, 2 with every problem listed."""
    resolved = load_spec(spec, set_ or [])
    all_points = sweep.points(resolved)
    if resolved.sweep is None:
        typer.echo(f"{spec}: valid (run {resolved.run_dir}, spec hash {resolved.content_hash()})")
    else:
        typer.echo(f"{spec}: valid sweep of {len(all_points)} runs under {resolved.output.root}")


@app.command()
def show(spec: SpecArg, set_: SetOpt = None, index: ShowIndexOpt = None):
    """Print the resolved spec (defaults filled in, overrides applied) as YAML; --index: one sweep point's."""
    resolved = load_spec(spec, set_ or [])
    if index is not None:
        resolved = sweep.select(sweep.points(resolved), index).spec
    typer.echo(resolved.to_yaml(), nl=False)


@sweep_app.command("count")
def sweep_count(spec: SpecArg, set_: SetOpt = None):
    """Print the number of points: the array size is 0..N-1."""
    typer.echo(len(sweep.points(load_spec(spec, set_ or []))))


@sweep_app.command("list")
def sweep_list(spec: SpecArg, set_: SetOpt = None):
    """One line per point: index, run directory name, and the value of each swept field."""
    all_points = sweep.points(load_spec(spec, set_ or []))
    keys = list(dict.fromkeys(k for p in all_points for k in p.values))
    rows = [["index", "run", *keys]]
    rows += [[str(p.index), p.run_name, *(sweep.show_value(p.values[k]) if k in p.values else "-" for k in keys)]
             for p in all_points]  # fmt: skip
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        typer.echo("  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip())


@app.command()
def aggregate(
    root: Annotated[
        Path, typer.Argument(metavar="ROOT", parser=_path, help="A results root; runs are found at any depth below it.")
    ],
    out: Annotated[
        Path | None,
        typer.Option(metavar="DIR", parser=_path, help="Where the tables, plots and page go (default: ROOT)."),
    ] = None,
):
    """Tabulate every run under ROOT (aggregate.csv, .json, .md, .html); plot accuracy and ECE against the factor."""
    from job.aggregate import aggregate as aggregate_runs  # matplotlib: only for this command

    _setup_logging()  # on stderr: stdout is the Markdown
    typer.echo(aggregate_runs(root, out).markdown, nl=False)


@app.command()
def report(
    run_dir: Annotated[
        Path,
        typer.Argument(
            metavar="RUN_DIR", parser=_path, help="A finished run's directory, e.g. results/labels-f0.1-s42."
        ),
    ],
):
    """Regenerate a finished run's reports and plots from its predictions.npz and history.csv (no training code)."""
    from job.report import regenerate  # matplotlib and scikit-learn: only for this command

    metrics = regenerate(run_dir)
    typer.echo(
        f"{run_dir}: reports rewritten (test accuracy {metrics['test_accuracy']:.4f}, "
        f"NLL {metrics['test_nll']:.4f}, ECE {metrics['test_ece']:.4f})"
    )


@k8s_app.command("render")
def k8s_render(
    spec: SpecArg,
    image: Annotated[str, typer.Option(help="The image built from the Dockerfile, e.g. REGISTRY/lsjob:0.1.0.")],
    name: Annotated[str | None, typer.Option(help="Job name. Default: lsjob-<spec file name>.")] = None,
    parallelism: Annotated[
        int | None, typer.Option(min=1, help="Sweep points at once. Default: all, up to Kubernetes' limit.")
    ] = None,
    results_claim: Annotated[str, typer.Option(help="PVC mounted at /results.")] = k8s.RESULTS_CLAIM,
    cache_claim: Annotated[str, typer.Option(help="PVC for the dataset cache.")] = k8s.CACHE_CLAIM,
    gpus: Annotated[
        int | None, typer.Option(min=1, help="GPUs per pod. Default: runtime.replicas (needed when that is all).")
    ] = None,
    cpu: Annotated[str | None, typer.Option(help=f"CPUs per pod. Default: {k8s.CPU_PER_GPU} per GPU.")] = None,
    memory: Annotated[
        str | None, typer.Option(help=f"Memory per pod (request = limit). Default: {k8s.MEMORY_PER_GPU_GI}Gi per GPU.")
    ] = None,
    grace_seconds: Annotated[
        int, typer.Option(min=1, help="Seconds from SIGTERM to kill: time to finish a step and checkpoint.")
    ] = k8s.GRACE_SECONDS,
    backoff_limit: Annotated[
        int, typer.Option(min=0, help="Retries per sweep point of failures that may pass (exit 1, 3, 5, 6, OOM).")
    ] = k8s.BACKOFF_LIMIT,
    node_selector: Annotated[
        list[str] | None,
        typer.Option(
            metavar="KEY=VALUE",
            help="A node label the pods need, e.g. nvidia.com/gpu.product=NVIDIA-H100-80GB-HBM3; repeatable.",
        ),
    ] = None,
    toleration: Annotated[
        list[str] | None,
        typer.Option(
            metavar="KEY[=VALUE][:EFFECT]",
            help="A taint of the GPU nodes the pods may run on, as kubectl taint writes it, e.g. "
            "nvidia.com/gpu:NoSchedule; repeatable.",
        ),
    ] = None,
):
    """Print a ConfigMap holding the spec and an Indexed Job (one completion per sweep point; one for
    a single run), for `kubectl apply -f -`."""
    manifests = k8s.render(
        spec,
        image=image,
        name=name,
        parallelism=parallelism,
        results_claim=results_claim,
        cache_claim=cache_claim,
        gpus=gpus,
        cpu=cpu,
        memory=memory,
        grace_seconds=grace_seconds,
        backoff_limit=backoff_limit,
        node_selector=node_selector or (),
        tolerations=toleration or (),
    )
    typer.echo(manifests, nl=False)


@k8s_app.command("volumes")
def k8s_volumes(
    storage_class: Annotated[
        str | None,
        typer.Option(
            help="A storage class that offers ReadWriteMany (NFS, CephFS, EFS, ...). Default: the cluster's. "
            "'': none, to bind volumes an administrator made."
        ),
    ] = None,
    results_size: Annotated[str, typer.Option(help="The results claim's size.")] = "20Gi",
    cache_size: Annotated[str, typer.Option(help="The dataset cache claim's size (CIFAR-10 takes 350 MB).")] = "2Gi",
    results_claim: Annotated[str, typer.Option(help="Its name, as render's --results-claim.")] = k8s.RESULTS_CLAIM,
    cache_claim: Annotated[str, typer.Option(help="Its name, as render's --cache-claim.")] = k8s.CACHE_CLAIM,
):
    """Print the two claims every Job mounts (k8s/volumes.yaml with your storage class), to apply once."""
    typer.echo(
        k8s.render_volumes(
            results_claim=results_claim,
            cache_claim=cache_claim,
            results_size=results_size,
            cache_size=cache_size,
            storage_class=storage_class,
        ),
        nl=False,
    )


@app.command()
def schema():
    """Print the spec's JSON Schema, for editor autocompletion and validation."""
    typer.echo(json.dumps(json_schema(), indent=2))


def _point_record(point: sweep.Point) -> dict | None:
    """What the manifest records of the sweep: which point, of how many, with which values."""
    if not point.values:
        return None
    return {"index": point.index, "values": point.values}


def _setup_logging() -> None:
    # One such handler, on today's stderr: a second command in one process (a notebook calling
    # main, a test) printed every line twice, the first time to a stderr since replaced.
    for earlier in [h for h in log.handlers if getattr(h, "lsjob_stderr", False)]:
        log.removeHandler(earlier)
    handler = logging.StreamHandler(sys.stderr)
    handler.lsjob_stderr = True
    # The date too: a requeued job's attempts, or kubectl logs of a long run, span days.
    handler.setFormatter(logging.Formatter("%(asctime)s %(message)s", "%Y-%m-%d %H:%M:%S"))
    log.addHandler(handler)
    log.setLevel(logging.INFO)


def _check_working_directory() -> None:
    # Relative paths (the default results root among them) mean nothing in a folder since deleted:
    # os.getcwd() fails there, deep inside whatever first resolves one.
    try:
        os.getcwd()
    except FileNotFoundError:
        raise SpecError(
            "the current folder no longer exists (deleted, or its mount went away): cd to one that does, "
            "and run the command again"
        ) from None


def main() -> None:
    # Typer/click handle usage errors themselves (exit 2); ours propagate to here.
    try:
        _check_working_directory()
        app()
    except JobError as e:
        print(f"lsjob: {e.label}: {e}", file=sys.stderr)
        sys.exit(e.exit_code)
    except OSError as e:
        # Writing stdout into a full disk (`lsjob show > spec.yaml`, `aggregate > table.md`): the
        # commands' own files turn this into a NoSpaceError, naming them, before it gets here.
        if e.errno not in NO_SPACE_ERRNOS:
            raise
        print(f"lsjob: error: cannot write the output: {e.strerror}; free space and run it again", file=sys.stderr)
        sys.exit(EXIT_NO_SPACE)


if __name__ == "__main__":
    main()
