"""The `lsjob` command line: thin wrappers over spec, run and report.

Every expected failure prints one clear line (no traceback) and exits with the
code from job.errors, so schedulers can tell bad input from preemption.
"""

from __future__ import annotations

import json
import logging
import os
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer

from job import preemption
from job.errors import JobError
from job.spec import json_schema, load_spec

app = typer.Typer(
    help="Train MiniGoogLeNet on CIFAR-10 with label smoothing, from a YAML spec.",
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
log = logging.getLogger("lsjob")

SpecArg = Annotated[Path, typer.Argument(help="The run spec (YAML). `lsjob schema` describes every field.")]
SetOpt = Annotated[
    Optional[list[str]],
    typer.Option("--set", help="Override a spec field, e.g. --set train.epochs=2 (repeatable; YAML-typed value)."),
]


@app.command()
def run(
    spec: SpecArg,
    set_: SetOpt = None,
    force: Annotated[bool, typer.Option(help="Discard an existing run of this name and start over.")] = False,
):
    """Train (or resume) the run the spec describes and write its results directory."""
    resolved = load_spec(spec, set_ or [])
    _setup_logging()
    # Schedulers preempt with SIGTERM: stop after the current step; finished epochs are checkpointed.
    preemption.install()
    # TensorFlow's C++ start-up chatter (no CUDA here, plugin notes) buries the epoch lines.
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    from job.run import execute  # imports the ML stack; keep validate/show/schema instant

    raise typer.Exit(execute(resolved, force=force))


@app.command()
def validate(spec: SpecArg, set_: SetOpt = None):
    """Check a spec; exit 0 when it is valid, 2 with every problem listed when not."""
    resolved = load_spec(spec, set_ or [])
    typer.echo(f"{spec}: valid (run {resolved.run_dir}, spec hash {resolved.content_hash()})")


@app.command()
def show(spec: SpecArg, set_: SetOpt = None):
    """Print the resolved spec (defaults filled in, overrides applied) as YAML."""
    typer.echo(load_spec(spec, set_ or []).to_yaml(), nl=False)


@app.command()
def schema():
    """Print the spec's JSON Schema, for editor autocompletion and validation."""
    typer.echo(json.dumps(json_schema(), indent=2))


def _setup_logging() -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(message)s", "%H:%M:%S"))
    log.addHandler(handler)
    log.setLevel(logging.INFO)


def main() -> None:
    # Typer/click handle usage errors themselves (exit 2); ours propagate to here.
    try:
        app()
    except JobError as e:
        print(f"lsjob: error: {e}", file=sys.stderr)
        sys.exit(e.exit_code)


if __name__ == "__main__":
    main()
