"""The run directory `<root>/<run>/`: who owns it, what state it is in, its manifest.

A run directory is claimed with an exclusive lock held for the life of the
process (flock: the kernel drops it when the process dies, so a crashed task
never blocks its own resubmission). Its `manifest.json` says whether the run is
running, completed, failed or interrupted, and which spec it belongs to.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import errno
import fcntl
import json
import logging
import os
import re
import shutil
import socket
import stat
import time
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

from job import atomic, preemption
from job.errors import NO_SPACE_ERRNOS, NoSpaceError, RunBusyError, SpecError, storage_fault

log = logging.getLogger("lsjob")
LOCK = ".lock"
MANIFEST = "manifest.json"
RUN_LOG = "run.log"
CHECKPOINTS = "checkpoints"
SPEC_FILE = "spec.yaml"  # the spec as the run resolved it
HISTORY_FILE = "history.csv"
METRICS_FILE = "metrics.json"
PREDICTIONS_FILE = "predictions.npz"
MODEL_FILE = "model.keras"
# Written by job.report beside the metrics; aggregate's page links the plots.
CLASSIFICATION_REPORT = "classification_report.txt"
TRAINING_PLOT = "training.png"
CONFUSION_PLOT = "confusion_matrix.png"
RELIABILITY_PLOT = "reliability.png"
CALIBRATION_FILE = "calibration.json"
REPORTS = (CLASSIFICATION_REPORT, TRAINING_PLOT, CONFUSION_PLOT, RELIABILITY_PLOT, CALIBRATION_FILE)
# Every name a run writes in its folder (a test holds a finished run to it): what --force discards.
RUN_FILES = frozenset({
    LOCK, MANIFEST, RUN_LOG, CHECKPOINTS, SPEC_FILE, HISTORY_FILE, METRICS_FILE, PREDICTIONS_FILE, MODEL_FILE, *REPORTS,
})  # fmt: skip
# A manifest's status, as job.run writes it; job.aggregate reads runs by it.
RUNNING, COMPLETED, INTERRUPTED, FAILED = "running", "completed", "interrupted", "failed"
MANIFEST_STATUSES = (RUNNING, COMPLETED, FAILED, INTERRUPTED)
# What a claimed run directory may hold before its manifest is written: a kill
# mid-write also leaves job.atomic's temporary file of spec.yaml or manifest.json.
PRE_MANIFEST = {LOCK, RUN_LOG, SPEC_FILE}
PRE_MANIFEST_TMP_OF = (f".{SPEC_FILE}.", f".{MANIFEST}.")
# What RunDir.lock writes into .lock; read back by lock_holder. The Slurm part (job id and
# restart count) tells a requeued attempt that the lock is its own earlier attempt's.
LOCK_TEXT = re.compile(r"pid (\d+) on (\S+) since (\S+)(?: slurm job (\S+) restart (\d+))?")
# How long a task's new attempt (a requeued Slurm job, a replaced pod) waits for the lock of its
# earlier attempt (_earlier_attempt). That attempt has ended or is stopping, but a node that went
# down can leave its lock on a shared filesystem until the server lets it expire: NFSv4 after its
# lease (90 s by default), Lustre and GPFS once they evict the node.
LOCK_WAIT_S = 300.0
LOCK_POLL_S = 2.0


def now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")


# In a results root others can write to, a symbolic link planted in a run directory would have this
# user's run overwrite, or its aggregate quote into its tables, whatever file of theirs it points at.
# So a link there is followed only to what the link's own owner owns: one's own links (a folder kept
# on a scratch disk, git-annex, DVC), a teammate's links to their own files. Only plain files are
# used: a FIFO would block a reader for good.
FOREIGN_LINK = "a symbolic link to another user's file (not followed)"
DANGLING_LINK = "a symbolic link to nothing (not followed)"
# Likewise a hard link (where the file server lets one be made to a file one does not own).
FOREIGN_HARD_LINK = "another user's file of several names (hard links), not written through"
NOT_FOLLOWED = "a symbolic link (not followed)"


def open_own(path: Path, flags: int, follow: bool = True) -> int:
    """os.open of a run's file, where it is a plain file or (with `follow`) a link its owner may
    follow (OSError otherwise, whose strerror says why)."""
    flags |= os.O_NONBLOCK | os.O_CLOEXEC
    try:
        fd = os.open(path, flags | os.O_NOFOLLOW, 0o666)  # the umask decides
    except OSError as e:
        if e.errno != errno.ELOOP:
            raise
        if not follow:
            raise OSError(errno.ELOOP, NOT_FOLLOWED, str(path)) from None
        fd = _open_link(path, flags & ~os.O_CREAT)  # a link never makes a file where it points
    st = os.fstat(fd)
    writes = flags & (os.O_WRONLY | os.O_RDWR)
    if not stat.S_ISREG(st.st_mode) or (writes and st.st_nlink > 1 and st.st_uid != os.geteuid()):
        os.close(fd)
        raise OSError(
            errno.EINVAL, "not a plain file" if not stat.S_ISREG(st.st_mode) else FOREIGN_HARD_LINK, str(path)
        )
    os.set_blocking(fd, True)
    return fd


def _open_link(path: Path, flags: int) -> int:
    try:
        fd = os.open(path, flags)
    except FileNotFoundError:
        raise OSError(errno.ELOOP, DANGLING_LINK, str(path)) from None
    # Owners compared after opening: the link then read is the one followed, or a later one.
    if os.fstat(fd).st_uid != os.lstat(path).st_uid:
        os.close(fd)
        raise OSError(errno.ELOOP, FOREIGN_LINK, str(path))
    return fd


def link_refusal(path: Path) -> str | None:
    """Why a link at `path` is not followed (see open_own); None where it is no link, or may be."""
    try:
        link = os.lstat(path)
        if not stat.S_ISLNK(link.st_mode):
            return None
        return None if os.stat(path).st_uid == link.st_uid else FOREIGN_LINK
    except FileNotFoundError:
        return DANGLING_LINK if path.is_symlink() else None


def read_own_text(path: Path, errors: str = "strict") -> str:
    """The text of a run's file, as open_own allows it."""
    with open(open_own(path, os.O_RDONLY), encoding="utf-8", errors=errors, newline="") as f:
        return f.read()


def owned_by(path: Path, run: Path) -> str:
    """Advice for a file of the run in `run` that this user may not use: whose it is, and what to ask."""
    owner = None
    for where in (path, run):  # the run folder's owner where the file itself is out of sight
        with contextlib.suppress(OSError):
            owner = where.stat().st_uid
            break
    if owner == os.getuid():
        return f"it is yours, yet closed to you: open the run folder to yourself (chmod -R u+rwX {run}), then re-run"
    whose = "another user" if owner is None else f"user {owner}"
    return (f"it belongs to {whose}. Run as that user, or ask them to make the run folder writable to your group "
            f"(chmod -R g+rwX {run}), then re-run")  # fmt: skip


def code_versions(record: dict) -> tuple[dict[str, str], str | None]:
    """The library versions and git commit a manifest (or one of its attempts) records, Python's
    version left out (it changes no number): what made a result, as the log, a resume's warning and
    aggregate's compare it. Empty and None where the record has none."""
    versions = record.get("versions") if isinstance(record.get("versions"), dict) else {}
    commit = record.get("git_commit")
    code = {name: version for name, version in versions.items() if name != "python" and isinstance(version, str)}
    return code, commit if isinstance(commit, str) and commit else None


def slurm_restart() -> int:
    """SLURM_RESTART_COUNT: how many times Slurm has requeued this job (0 outside Slurm)."""
    try:
        return int(os.environ.get("SLURM_RESTART_COUNT") or 0)
    except ValueError:
        return 0


def nearest_existing(path: Path) -> Path:
    """`path`, or the nearest folder above it that is there: where making it would start. A link
    to nothing counts as there (a mkdir there fails); OSError where a folder cannot be looked into."""
    return next((p for p in [path, *path.absolute().parents] if p.is_symlink() or p.exists()), Path("/"))


def links_to_nothing(path: Path) -> bool:
    """A symbolic link whose target is not there (or a loop), of which a mkdir says only "File exists"."""
    return path.is_symlink() and not path.exists()


def check_writable(root: Path, create: bool = True) -> None:
    """Fail before training, not after 70 epochs, when results cannot be written. With
    create=False nothing is made: the nearest existing folder must let the root be created."""
    if not create:
        existing = nearest_existing(root)
        if not existing.is_dir():
            raise _not_a_directory(root, existing)
        if not os.access(existing, os.W_OK | os.X_OK):
            where = "" if existing == root else f" ({existing} cannot hold it)"
            raise SpecError(f"the results root {root} is not writable{where}; set output.root to a writable directory")
        return
    with _storage_errors_said(root, "making the results root", "set output.root to a writable directory"):
        try:
            root.mkdir(parents=True, exist_ok=True)
        except (FileExistsError, NotADirectoryError):  # mkdir names neither the file nor the link to nothing
            raise _not_a_directory(root, nearest_existing(root)) from None
    if not os.access(root, os.W_OK | os.X_OK):
        raise SpecError(f"the results root {root} is not writable; set output.root to a writable directory")


def _not_a_directory(root: Path, existing: Path) -> SpecError:
    if links_to_nothing(existing):
        why = f"{existing} is a link to nothing (to {os.readlink(existing)}); create what it points to, or"
    else:
        why = f"{existing} is not a directory;"
    return SpecError(f"cannot create the results root {root}: {why} set output.root to a writable directory")


class RunDir:
    def __init__(self, path: Path):
        self.path = Path(path)
        self._lock_fd: int | None = None

    @property
    def manifest_path(self) -> Path:
        return self.path / MANIFEST

    def claim(self) -> None:
        """Take the run's lock, or raise RunBusyError naming the process that holds it."""
        check_writable(self.path.parent)
        if self.path.is_dir() and self.is_foreign():
            raise SpecError(
                f"{self.path} exists and is not an lsjob run directory; refusing to write into it. "
                "Choose another output.run or output.root"
            )
        with _storage_errors_said(self.path, "making the run directory", "set output.root to a writable directory"):
            self.path.mkdir(exist_ok=True)
            self._refuse_links()
        self.lock()

    def lock(self) -> None:
        """Take the lock of an existing run directory (claim's last step; `lsjob report`
        takes it alone: rewriting a run's reports needs only that folder)."""
        with _storage_errors_said(self.path, "locking the run directory"):
            try:
                # Emptied and rewritten at every start: through a link, even one's own, that would destroy
                # the file it points at (as root, any file), and a lock kept elsewhere gains nothing.
                fd = open_own(self.path / LOCK, os.O_RDWR | os.O_CREAT, follow=False)
            except PermissionError as e:  # a teammate's run in a shared folder, say
                raise SpecError(
                    f"cannot lock the run directory {self.path} as user {os.getuid()} ({e.strerror}): "
                    f"{owned_by(self.path / LOCK, self.path)}"
                ) from None
            except OSError as e:
                if e.errno not in (errno.ELOOP, errno.EINVAL, errno.EISDIR):
                    raise
                if e.errno == errno.ELOOP:  # not followed: any link
                    raise SpecError(
                        f"{self.path / LOCK} is a symbolic link: a run's lock is emptied and rewritten at every "
                        "start, so lsjob never takes it through a link, which would overwrite the file it points "
                        f"at. Remove the link (rm {self.path / LOCK}; nothing of the run is lost) and re-run the "
                        "same command"
                    ) from None
                why = "not a plain file" if e.errno == errno.EISDIR else e.strerror  # strerror: "Is a directory"
                raise SpecError(_not_lsjobs(self.path / LOCK, why)) from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            try:
                self._wait_for_an_earlier_attempt(fd)
            except BaseException:
                os.close(fd)
                raise
        except OSError as e:
            if e.errno not in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL):
                raise
            log.warning("%s: this filesystem does not support locks; duplicate tasks are not detected", self.path)
        slurm = f" slurm job {job} restart {slurm_restart()}" if (job := os.environ.get("SLURM_JOB_ID")) else ""
        with _storage_errors_said(self.path, "locking the run directory"):
            try:
                os.ftruncate(fd, 0)
                os.pwrite(fd, f"pid {os.getpid()} on {socket.gethostname()} since {now()}{slurm}\n".encode(), 0)
                # On the file server now, not in this node's cache: a node that dies soon after leaves
                # its name, which tells a requeued attempt the lock is its own earlier one's.
                os.fsync(fd)
            except OSError:
                os.close(fd)
                raise
        self._lock_fd = fd
        # What a process killed mid-write left: ours alone to clear, since we hold the lock.
        atomic.clear_torn(self.path)

    def _refuse_links(self) -> None:
        """What a run writes in, or under, as open_own allows (its .lock is opened so). Not in
        lock(): `lsjob report` writes neither, so a foreign link there is no reason to refuse it."""
        for name in (RUN_LOG, CHECKPOINTS):
            path = self.path / name
            why = link_refusal(path)
            if why is None and name == RUN_LOG and path.exists() and not path.is_file():
                why = "not a plain file"
            if why is not None:
                raise SpecError(_not_lsjobs(path, why))

    def _wait_for_an_earlier_attempt(self, fd: int) -> None:
        """Return once `fd` is locked, where the holder is this task's attempt before the scheduler
        started it again (_earlier_attempt); else RunBusyError. Another task's lock is never
        waited for: a duplicate task is refused at once."""
        holder = os.pread(fd, 512, 0).decode(errors="replace").strip()
        match = LOCK_TEXT.fullmatch(holder)
        earlier = _earlier_attempt(match) if match else None
        if earlier is None:
            raise RunBusyError(
                f"{self.path} is in use by {holder or 'another process'}; a second task for the same run must not "
                "write into it. Wait for it to finish, or stop it first."
            )
        log.warning(
            "%s is still locked by %s, %s; %s until it expires: waiting up to %d s for it",
            self.path, holder, earlier.who, earlier.why, LOCK_WAIT_S,
        )  # fmt: skip
        deadline = time.monotonic() + LOCK_WAIT_S
        while time.monotonic() < deadline:
            preemption.check()
            time.sleep(LOCK_POLL_S)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                continue
            log.info("%s: the earlier attempt's lock has been let go; this attempt holds it", self.path)
            return
        raise RunBusyError(
            f"{self.path} is still locked by {holder}, {earlier.who}, after {LOCK_WAIT_S:.0f} s of waiting: "
            f"{earlier.why} (NFSv3 keeps a lost node's locks until the node starts again). Once {earlier.check}, "
            f"remove {self.path / LOCK} and {earlier.again}: the run resumes from its last checkpoint."
        )

    def release(self) -> None:
        if self._lock_fd is not None:
            os.close(self._lock_fd)  # closing drops the flock
            self._lock_fd = None

    def read_manifest(self, advice: str = "move it away or pass --force to start the run afresh") -> dict | None:
        """The manifest; None when there is none. A damaged one is a SpecError ending in `advice`."""
        try:
            manifest = json.loads(read_own_text(self.manifest_path))
        except (FileNotFoundError, NotADirectoryError):  # no run there (a file in the path: no root either)
            return None
        except (OSError, ValueError) as e:
            fault = storage_fault(self.manifest_path, e) if isinstance(e, OSError) else None
            raise fault or SpecError(
                f"{self.manifest_path} is unreadable ({e}); the run directory is damaged: {advice}"
            ) from None
        if not isinstance(manifest, dict):
            raise SpecError(
                f"{self.manifest_path} holds a JSON {type(manifest).__name__}, not an object; "
                f"the run directory is damaged: {advice}"
            )
        return manifest

    def write_manifest(self, manifest: dict) -> None:
        atomic.write_json(self.manifest_path, manifest)

    def is_foreign(self) -> bool:
        """A non-empty directory that lsjob did not create: never write into it."""
        names = {
            p.name for p in self.path.iterdir()
            if not (atomic.WRITE_TMP.fullmatch(p.name) and p.name.startswith(PRE_MANIFEST_TMP_OF))
        }  # fmt: skip
        return MANIFEST not in names and not names <= PRE_MANIFEST

    def wipe(self) -> None:
        """--force: discard everything of an earlier run, keeping our lock. The spec and then the
        manifest go last: killed midway, the folder still reads as a run of ours, which --force
        can finish discarding, rather than as a foreign folder no command will write into.
        Refused, with nothing removed, where the folder also holds what no run writes (a user's
        notes, a run made inside it): that is not the run's to discard."""
        entries = list(self.path.iterdir())
        others = sorted(p.name + ("/" if p.is_dir() and not p.is_symlink() else "") for p in entries
                        if p.name not in RUN_FILES)  # fmt: skip
        if others:
            shown = ", ".join(others[:5]) + (f", ... ({len(others)} in all)" if len(others) > 5 else "")
            raise SpecError(
                f"--force would discard the run in {self.path}, which also holds what no run writes there: "
                f"{shown}. Move that out of it (it is not the run's to delete), then run the same command again"
            )
        last = (SPEC_FILE, MANIFEST)
        for p in sorted(entries, key=lambda p: last.index(p.name) + 1 if p.name in last else 0):
            if p.name != LOCK:
                _delete(p)

    def remove(self) -> None:
        """The folder of a run that kept nothing, gone (run.py: a Ctrl-C before it saved anything),
        with our lock last; anything not a run's (a folder made for it beforehand) is left."""
        for name in sorted(RUN_FILES - {LOCK}) + [LOCK]:
            if os.path.lexists(self.path / name):
                _delete(self.path / name)
        with contextlib.suppress(OSError):  # not empty: what is left is not ours to remove
            self.path.rmdir()


def _delete(path: Path) -> None:
    """A run's file or folder; a link in a folder's place goes, not what it points at."""
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        path.unlink()


class EarlierAttempt(NamedTuple):
    """A lock held by this task's own attempt before the scheduler started it again, in words."""

    who: str  # who holds it
    why: str  # why it may still hold it
    check: str  # how to make sure nothing of it still runs
    again: str  # how to run the task again once the lock file is removed


def _earlier_attempt(lock: re.Match) -> EarlierAttempt | None:
    """Whether the lock's holder is this task's attempt before the scheduler started it again."""
    pid, host, slurm_job, restart = int(lock[1]), lock[2], lock[4], lock[5]
    if slurm_job is not None:
        return _requeued_from(slurm_job, int(restart), host)
    return _replaced_pod(pid, host)


def _requeued_from(slurm_job: str, restart: int, host: str) -> EarlierAttempt | None:
    """Slurm requeues a job whose node went down under the same SLURM_JOB_ID, counting
    SLURM_RESTART_COUNT up, once it has given that attempt up."""
    if slurm_job != os.environ.get("SLURM_JOB_ID") or restart >= slurm_restart():
        return None
    node = host.split(".")[0]  # Slurm's node names are short
    return EarlierAttempt(
        f"this Slurm job's attempt before it was requeued (restart {restart})",
        "Slurm has ended that attempt, so its node most likely went down and the file server keeps its lock",
        f"nothing of job {slurm_job} runs on {node} (`scontrol show node {node}`)",
        "resubmit it",
    )


def _replaced_pod(pid: int, host: str) -> EarlierAttempt | None:
    """Kubernetes starts the pod of an Indexed Job's index again once the earlier one has failed
    (podReplacementPolicy: Failed), under the same hostname, <job>-<index>, and lsjob is PID 1
    in both; so is a Job deleted and applied again while its old pod still stops. A holder with
    this hostname and another pid alive here shares this very pod (kubectl exec): live."""
    index = os.environ.get("JOB_COMPLETION_INDEX")
    if index is None or host != socket.gethostname() or (pid != os.getpid() and _pid_alive(pid)):
        return None
    job = host.removesuffix(f"-{index}")
    return EarlierAttempt(
        f"an earlier pod of this Job's index {index}",
        "that pod may still be stopping, or its node went down and the file server keeps its lock",
        f"no pod of Job {job}, index {index} runs in any namespace or cluster that writes here (`kubectl get pods -A "
        f"-l batch.kubernetes.io/job-name={job},batch.kubernetes.io/job-completion-index={index}`)",
        "let the Job retry it (or apply it again once it has failed)",
    )


@contextlib.contextmanager
def _storage_errors_said(path: Path, doing: str, advice: str | None = None):
    """A full disk (exit 6) or a storage fault (exit 1) while the results root or the run
    directory is made or its lock written, said in one line as when training writes, not a
    traceback that reads as a bug, nor bad input (exit 2, never retried); given `advice`, any
    other error is bad input, ending in it."""
    try:
        yield
    except OSError as e:
        if e.errno in NO_SPACE_ERRNOS:
            raise NoSpaceError(
                f"ran out of disk space {doing} {path} ({e.strerror or e}); free space there (or raise the "
                "quota) and re-run the same command"
            ) from e
        if (fault := storage_fault(path, e)) is not None:
            raise fault from e
        if advice is None:
            raise
        # Where os.access said yes and the kernel no (root in /proc or /sys): a place for no results.
        raise SpecError(f"{doing} {path} failed ({e.strerror or e}): {advice}") from e


def _not_lsjobs(path: Path, why: str) -> str:
    return (
        f"{path} is {why}: lsjob uses a run's files only where they are plain files, or links to "
        f"files of the link's own owner. See what it is (ls -l {path}), remove or replace it, and re-run the "
        "same command"
    )


# ---------------------------------------------------------------------------- reading another process's run


def is_run_directory(folder: Path) -> bool:
    """Whether `folder` is a run's: it holds lsjob's lock (every claimed run keeps one), or a
    manifest and spec as a run writes them (a copy made without hidden files)."""
    try:
        return is_lsjob_lock(folder / LOCK) or ((folder / MANIFEST).is_file() and (folder / SPEC_FILE).is_file())
    except OSError:  # a folder this user may not look into: not known to be a run
        return False


def enclosing_run(path: Path) -> Path | None:
    """The run directory that `path` is or lies in, if any: nothing else may be written there
    (a finished run clears its checkpoints/, --force refuses what is not the run's)."""
    try:
        where = path.resolve()
    except (OSError, RuntimeError):  # a link loop (RuntimeError before Python 3.13): the writes say so
        return None
    return next((folder for folder in (where, *where.parents) if is_run_directory(folder)), None)


def is_lsjob_lock(path: Path) -> bool:
    """Whether `path` holds the text RunDir.lock writes; other tools keep a .lock too."""
    try:
        return LOCK_TEXT.fullmatch(read_own_text(path, errors="replace").strip()) is not None
    except OSError:
        return False


@dataclass(frozen=True)
class Holder:
    text: str  # who holds (or held) the lock, for the reason column
    alive: bool = False  # provably alive on this host
    dead: bool = False  # provably gone
    remote: bool = False  # on another host: not checked


def lock_holder(path: Path) -> Holder:
    """What .lock says about the run's process. Only reads: the flock itself is never taken."""
    lock = path / LOCK
    try:
        text = read_own_text(lock, errors="replace").strip()
    except FileNotFoundError:
        return Holder(f"there is no {LOCK}, so whether its process is alive is unknown")
    except OSError as e:
        return Holder(f"{LOCK} is unreadable ({e.strerror or e}), so whether its process is alive is unknown")
    match = LOCK_TEXT.fullmatch(text)
    if not match or int(match[1]) <= 0:
        return Holder(f"{LOCK} does not name a process ({text[:60]!r})")
    pid, host, since = int(match[1]), match[2], match[3]
    who = f"pid {pid} on {host} (since {since})"
    if host != socket.gethostname():
        return Holder(f"{who}: another host, not checked from here", remote=True)
    if (_pid_alive(pid) and not _started_after(pid, since)) or _flock_held(lock):
        return Holder(who, alive=True)
    return Holder(who, dead=True)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)  # signal 0: only asks whether the process exists
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # exists, owned by someone else
    except OSError:
        return True  # cannot tell: never call a run killed on a guess
    return True


def _started_after(pid: int, since: str) -> bool:
    """Whether process `pid` started after the lock's time: then it only reuses the pid of the
    process that wrote the lock, which died (SIGKILL, a reboot). From /proc (Linux); False
    where unknown, which keeps the run `running`, the safe side."""
    try:
        claimed = dt.datetime.fromisoformat(since).timestamp()
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        boot = next(float(line.split()[1]) for line in Path("/proc/stat").read_text().splitlines()
                    if line.startswith("btime "))  # fmt: skip
        started = boot + int(fields[19]) / os.sysconf("SC_CLK_TCK")  # field 22, starttime, in ticks
    except (OSError, ValueError, IndexError, StopIteration):
        return False
    # `since` has whole seconds and the boot time too: a margin, so the lock's own process is never taken
    # for a later one. A pid comes back far later than this in practice.
    return started > claimed + 5


def _flock_held(lock: Path) -> bool:
    """Whether /proc/locks lists a lock on the file's inode (Linux; False where unknown).

    A guard for a pid from another pid namespace (a container sharing the host's name):
    its process may live although no process here has its pid. Only the inode is
    compared, since device numbers differ between stat and /proc/locks on some
    filesystems; a coincidental match keeps a run `running`, the safe side.
    """
    try:
        inode = os.stat(lock).st_ino
        table = Path("/proc/locks").read_text()
    except OSError:
        return False
    for line in table.splitlines():
        for word in line.split():
            parts = word.split(":")
            if len(parts) == 3 and parts[2].isdigit() and int(parts[2]) == inode:
                return True
    return False


# ---------------------------------------------------------------------------- finding runs


def find_runs(directory: Path, warnings: list[str], above: frozenset[str] = frozenset()) -> list[tuple[Path, bool]]:
    """(run directory, has a manifest) for every run at or below `directory`.

    A directory with a manifest is a run, and nothing below it is searched (its
    checkpoints/ live there). One with lsjob's spec.yaml or .lock but no manifest is a
    run that stopped while starting, unless runs lie below it: then it is a sweep folder
    that happens to keep a spec. Symbolic links to folders are followed, so a folder of links
    to chosen runs compares them (run_directories counts a run reached twice once); `above`: the real
    paths of the folders this one lies in, so a link back up is not a loop without end.
    """
    real = os.path.realpath(directory)
    if real in above:
        return []
    above = above | {real}
    try:
        with os.scandir(directory) as it:
            entries = sorted(it, key=lambda e: e.name)
    except OSError as e:
        warnings.append(f"could not list {directory} ({e.strerror or e}); runs inside it are not in the table")
        return []
    names = {e.name for e in entries}
    if MANIFEST in names:
        return [(directory, True)]
    found = []
    for entry in entries:
        try:
            is_dir = entry.is_dir()
        except OSError:
            is_dir = False
        # Another aggregate's (or report's) staging folder comes and goes: never a run.
        if is_dir and not atomic.STAGING_TMP.fullmatch(entry.name):
            found += find_runs(Path(entry.path), warnings, above)
    # Other tools keep a .lock too (pytest's numbered folders): only lsjob's own text makes a run.
    if not found and (SPEC_FILE in names or (LOCK in names and is_lsjob_lock(directory / LOCK))):
        return [(directory, False)]
    return found


def run_directories(root: Path, warnings: list[str]) -> list[tuple[Path, bool]]:
    """(run directory, has a manifest) for every run at or below `root`, each once; a folder that
    cannot be listed adds a warning."""
    return _once_each(root, find_runs(root, warnings))


def _once_each(root: Path, found: list[tuple[Path, bool]]) -> list[tuple[Path, bool]]:
    """One entry per run folder reached by more than one path (a link to a run in the tree):
    the path through the fewest links, its own name where it has one."""
    best: dict[str, tuple[int, Path, bool]] = {}
    for path, has_manifest in found:
        parts = path.relative_to(root).parts
        links = sum(root.joinpath(*parts[: i + 1]).is_symlink() for i in range(len(parts)))
        real = os.path.realpath(path)
        if real not in best or links < best[real][0]:
            best[real] = (links, path, has_manifest)
    return [(path, has_manifest) for _, path, has_manifest in best.values()]
