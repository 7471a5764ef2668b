"""Errors users can act on, each with the exit code the CLI returns for it.

Schedulers key retries off these codes: bad input (2) and data problems (3) fail
fast, an interrupted run (75, EX_TEMPFAIL) is requeued and resumes.
"""

import errno

EXIT_OK = 0
EXIT_INTERNAL = 1
EXIT_BAD_INPUT = 2
EXIT_DATA = 3
EXIT_DIVERGED = 4
EXIT_BUSY = 5
EXIT_NO_SPACE = 6
EXIT_INTERRUPTED = 75


# Out of space, out of quota, or over a file-size limit (ulimit -f): the same remedy.
NO_SPACE_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG}


class JobError(Exception):
    """An expected failure: the CLI prints its message (no traceback) and exits."""

    exit_code = EXIT_INTERNAL
    # How the CLI labels the message: `lsjob: error: ...`.
    label = "error"


class StorageError(JobError):
    """The storage failed in a way that may pass (an I/O error, a stale NFS handle, a timeout):
    not the spec's fault, so not exit 2, which schedulers never retry."""

    exit_code = EXIT_INTERNAL


class SpecError(JobError):
    """The spec or a CLI override is invalid."""

    exit_code = EXIT_BAD_INPUT


class DataError(JobError):
    """The dataset is missing, corrupt, hostile or cannot be fetched."""

    exit_code = EXIT_DATA


class DivergedError(JobError):
    """Training produced a non-finite loss."""

    exit_code = EXIT_DIVERGED


class RunBusyError(JobError):
    """Another live process holds the run directory."""

    exit_code = EXIT_BUSY


class NoSpaceError(JobError):
    """The disk, a quota or a file-size limit ran out while writing; the last checkpoint is intact."""

    exit_code = EXIT_NO_SPACE


class InterruptedRun(JobError):
    """SIGTERM/SIGINT arrived; the step it stopped at is checkpointed."""

    exit_code = EXIT_INTERRUPTED
    # Not an error: every preemption and time limit ends this way, and requeued logs collect them.
    label = "interrupted"


# Storage faults that may pass (NFS under load, a server restart, a failing disk): reported as
# such, exit 1, rather than as bad input (exit 2, never retried), a data problem (3), or a
# damaged run (whose advice, --force, would discard it).
PASSING_ERRNOS = {
    errno.EIO, errno.ESTALE, errno.ETIMEDOUT, errno.ENOTCONN, errno.EAGAIN, errno.EINTR, errno.EHOSTDOWN,
    errno.EHOSTUNREACH, errno.ENETDOWN, errno.ENETUNREACH, errno.ECONNRESET, errno.ECONNREFUSED, errno.ECONNABORTED,
}  # fmt: skip


def storage_fault(path, error: OSError) -> StorageError | None:
    if error.errno not in PASSING_ERRNOS:
        return None
    return StorageError(
        f"{path}: {error.strerror or error} (the storage failed, not the spec); run the same command again "
        "once the storage is healthy: a run resumes where it stopped"
    )
