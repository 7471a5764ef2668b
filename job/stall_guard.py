"""When a stopped run stops asking for a requeue: the guard against a job that is stopped
before every first step, by a time limit inside the stop signal's margin, and requeued
to be stopped again, forever. It counts a run's recorded attempts and, under Slurm, the
restarts that left no record (SLURM_RESTART_COUNT), and turns the last stop into bad input
(exit 2) that says why."""

from __future__ import annotations

import os
import types
from collections.abc import Mapping

from job import preemption
from job.errors import JobError, SpecError
from job.rundir import INTERRUPTED, RunDir, slurm_restart

# Attempts in a row stopped by SIGTERM before checkpointing anything, after which a stop is no
# longer a requeue: preemption rarely strikes one job's first minute this often, while a time
# limit inside sbatch's --signal margin (--time=5 with TERM@300) stops every attempt before its
# first step, and each requeued attempt would repeat it forever. A Ctrl-C is a person at the
# terminal, who needs no such guard: it breaks the streak.
STALLED_ATTEMPTS = 5


# A Slurm attempt that left no record: stopped before it claimed the run directory (in the
# data's download, or waiting on a lock) or killed before lsjob could act on the TERM, which
# slurm/'s scripts requeue too. Either way it saved nothing.
UNRECORDED_STOP = types.MappingProxyType({"status": INTERRUPTED, "stopped_by": "SIGTERM", "checkpointed": False})
# Set by slurm/'s batch scripts, which run one `lsjob run` per job (array task): every restart
# of the job was then an attempt at this run, those before its first record too. A script of
# the user's own may run several in turn, where a run's first restarts went to the ones before.
ONE_RUN_PER_JOB = "LSJOB_SLURM_ONE_RUN"


def stalled_before_claim(run_dir: RunDir) -> SpecError | None:
    """stalled() for an attempt stopped before it claimed the run directory, under Slurm, whose
    restart count tells the attempts that left no record (elsewhere a stop there is requeued)."""
    if preemption.requested() != "SIGTERM" or not os.environ.get("SLURM_JOB_ID"):
        return None
    try:
        manifest = run_dir.read_manifest() or {}
    except JobError:  # damaged, or the storage failed: no streak can be told, so no guard
        return None
    attempts = manifest.get("attempts")
    return stalled(attempts if isinstance(attempts, list) else [], this_one=UNRECORDED_STOP)


def _with_unrecorded(attempts: list) -> list:
    """`attempts`, with each earlier attempt of this Slurm job that left no record (its restart
    count missing among them) put back in its place as an UNRECORDED_STOP: from the job's first
    restart under ONE_RUN_PER_JOB, else from the first this run recorded."""
    job = os.environ.get("SLURM_JOB_ID")
    if not job:
        return attempts
    ours = {id(a): a.get("slurm_restart") for a in attempts if isinstance(a, dict) and a.get("slurm_job") == job}
    if not all(isinstance(restart, int) for restart in ours.values()):
        return attempts  # recorded by an lsjob from before restarts were: nothing to go by
    first = 0 if os.environ.get(ONE_RUN_PER_JOB) == "1" else min(ours.values(), default=slurm_restart())
    missing = sorted(set(range(first, slurm_restart())) - set(ours.values()))
    out = []
    for attempt in attempts:
        while missing and id(attempt) in ours and missing[0] < ours[id(attempt)]:
            out.append(UNRECORDED_STOP)
            missing.pop(0)
        out.append(attempt)
    return out + [UNRECORDED_STOP] * len(missing)


def stalled(attempts: list, this_one: Mapping | None = None) -> SpecError | None:
    """Why a stop ends the run rather than asking for a requeue, when the last STALLED_ATTEMPTS
    attempts (this one included: the last recorded, or `this_one` where it left no record) were
    all stopped by SIGTERM before they saved a checkpoint."""
    attempts = [*_with_unrecorded(attempts), *([this_one] if this_one else [])][-STALLED_ATTEMPTS:]
    earlier_stopped = all(a.get("status") == INTERRUPTED for a in attempts[:-1])  # this one's is not yet written
    none_saved = all(a.get("checkpointed") is False and a.get("stopped_by") != "SIGINT" for a in attempts)
    if len(attempts) < STALLED_ATTEMPTS or not earlier_stopped or not none_saved:
        return None
    unrecorded = sum(a is UNRECORDED_STOP for a in attempts)
    told = f" ({unrecorded} of them left no record in the run's manifest; SLURM_RESTART_COUNT counts them)"
    if os.environ.get("SLURM_JOB_ID"):
        why = ("a time limit within the stop signal's margin does this (sbatch --time under about 6 minutes with "
               "slurm/'s --signal=B:TERM@300): give the job more time")  # fmt: skip
    else:  # a Kubernetes pod, say: no time limit of ours, but a pod stopped in its start-up every time
        why = "something stops it each time before it trains (a preemption or eviction in its start-up): see what"
    return SpecError(
        f"stopped {STALLED_ATTEMPTS} attempts in a row before any of them saved a checkpoint"
        f"{told if unrecorded else ''}, so requeueing would only repeat it; {why}, then run the same command to resume"
    )
