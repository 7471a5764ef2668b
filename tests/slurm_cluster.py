"""A private one-node Slurm cluster (munged, slurmctld, slurmd) for the Slurm tests.

Everything lives in one temporary directory: slurm.conf, the munge key and socket,
state, spool, pid and log files. Clients find it through SLURM_CONF (see `env`), and
jobs inherit that variable, so `scontrol requeue` inside a job talks to this cluster.
Nothing global is read or written: the distribution's /etc/slurm and /etc/munge are
untouched, the ports are free ones picked at start, and only the processes started
here are stopped, by their pid. The daemons run as root (slurmd must, to launch jobs).

    with slurm_cluster() as cluster:
        job_id = cluster.sbatch("--wrap", "true")
        cluster.wait_gone(job_id, timeout=60)
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

DAEMONS = ("munged", "slurmctld", "slurmd")
CLIENTS = ("sbatch", "squeue", "scontrol", "scancel", "sinfo")

# Declared, not detected: CI boxes have 2 cores, and the tests want an array's tasks running
# side by side (1 CPU each), as on a real cluster, not one after another. With task/none
# Slurm only counts CPUs and pins nothing, so declaring more than exist costs contention, not
# correctness; config_overrides keeps slurmd from draining a node with fewer CPUs than declared.
NODE_CPUS = 4
NODE_MEMORY_MB = 8192

SLURM_CONF = """\
ClusterName=lsjobtest
SlurmctldHost={host}(127.0.0.1)
SlurmctldPort={ctld_port}
SlurmdPort={slurmd_port}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
# cred_expire is also how long a requeued job is held before it may start again (default 120 s).
AuthInfo=socket={root}/munge/munge.socket,cred_expire=15
StateSaveLocation={root}/state
SlurmdSpoolDir={root}/spool
SlurmctldPidFile={root}/slurmctld.pid
SlurmdPidFile={root}/slurmd.pid
SlurmctldLogFile={root}/slurmctld.log
SlurmdLogFile={root}/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info
# No cgroups in containers and CI runners: track processes by parent pid, bind nothing.
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
# The distribution's plugstack (SPANK plugins such as pyxis) stays out of the test.
PlugStackConfig={root}/plugstack.conf
MailProg=/bin/true
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU_Memory
# Without a memory default each job would be given the whole node, one job at a time.
DefMemPerCPU=512
SlurmdParameters=config_overrides
ReturnToService=2
# Finished jobs stay visible to `scontrol show job` long enough to inspect them.
MinJobAge=600
# Array indices 0..1 only: a 3-point sweep needs two arrays, as 1,002 points do by default.
MaxArraySize=2
NodeName={host} NodeAddr=127.0.0.1 CPUs={cpus} RealMemory={memory} State=UNKNOWN
PartitionName=debug Nodes={host} Default=YES MaxTime=INFINITE State=UP
"""


def missing_binaries() -> list[str]:
    """The Slurm and munge programs this module needs that are not installed."""
    found = {name: shutil.which(name) or _sbin(name) for name in (*DAEMONS, *CLIENTS)}
    return [name for name, path in found.items() if not path]


def _sbin(name: str) -> str | None:
    # Daemons live in /usr/sbin, which a non-login PATH may lack.
    path = Path("/usr/sbin") / name
    return str(path) if path.is_file() else None


def _free_port() -> int:
    """A port free now, below the ephemeral range: one the kernel handed out could be handed out
    again, to any process's outgoing connection, before the daemon binds it (seen in CI: slurmd,
    "Address already in use")."""
    try:
        lowest_ephemeral = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        lowest_ephemeral = 32768
    for _ in range(100):
        port = secrets.randbelow(lowest_ephemeral - 10_000) + 10_000
        with socket.socket() as s:
            try:
                s.bind(("", port))
            except OSError:
                continue
            return port
    raise SlurmError("no free port below the ephemeral range")


class SlurmError(RuntimeError):
    pass


class SlurmCluster:
    def __init__(self, root: Path):
        self.root = root
        self.host = socket.gethostname().split(".")[0]
        self.conf = root / "slurm.conf"
        self.env = {**os.environ, "SLURM_CONF": str(self.conf)}
        self._procs: list[tuple[str, subprocess.Popen]] = []

    # --- lifecycle -------------------------------------------------------------

    def start(self, timeout: float = 60) -> None:
        munge_dir = self.root / "munge"
        for sub in ("state", "spool", "munge"):
            (self.root / sub).mkdir(mode=0o755)
        # munged refuses a socket whose directories are not searchable by everyone.
        self.root.chmod(0o755)
        key = munge_dir / "munge.key"
        key.write_bytes(secrets.token_bytes(1024))
        key.chmod(0o400)
        (self.root / "plugstack.conf").write_text("")
        self.conf.write_text(
            SLURM_CONF.format(
                host=self.host,
                root=self.root,
                ctld_port=_free_port(),
                slurmd_port=_free_port(),
                cpus=NODE_CPUS,
                memory=NODE_MEMORY_MB,
            )
        )
        # Foreground daemons (-F/-D): the pid we hold is the daemon itself, not a forked parent.
        self._spawn(
            "munged",
            "-F",
            f"--socket={munge_dir}/munge.socket",
            f"--key-file={key}",
            f"--pid-file={munge_dir}/munged.pid",
            f"--log-file={self.root}/munged.log",
            f"--seed-file={munge_dir}/munged.seed",
        )
        self._wait(lambda: (munge_dir / "munge.socket").exists(), 10, "munged socket")
        self._spawn("slurmctld", "-D", "-c")
        self._spawn("slurmd", "-D", "-N", self.host)
        self._wait(lambda: self.node_state() == "idle", timeout, "node idle in sinfo")

    def stop(self, timeout: float = 60) -> None:
        """Cancel every job, let them go, then stop the daemons started here, newest first."""
        if any(name == "slurmctld" and p.poll() is None for name, p in self._procs):
            with contextlib.suppress(Exception):
                jobs = self.run("squeue", "-h", "-o", "%i").split()
                if jobs:
                    self.run("scancel", *jobs, check=False)
                    self._wait(lambda: not self.run("squeue", "-h", "-o", "%i").strip(), timeout, "queue empty")
        for name, proc in reversed(self._procs):
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(timeout=20)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
        self._procs.clear()

    def _spawn(self, name: str, *args: str) -> None:
        binary = shutil.which(name) or _sbin(name)
        log = open(self.root / f"{name}.stdout", "wb")  # noqa: SIM115 - closed with the process
        proc = subprocess.Popen([binary, *args], env=self.env, stdout=log, stderr=subprocess.STDOUT)
        log.close()
        self._procs.append((name, proc))

    def _wait(self, ready, timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while not ready():
            dead = [name for name, p in self._procs if p.poll() is not None]
            if dead:
                raise SlurmError(f"{', '.join(dead)} exited while waiting for {what}\n{self.logs()}")
            if time.monotonic() > deadline:
                raise SlurmError(f"timed out after {timeout:.0f}s waiting for {what}\n{self.logs()}")
            time.sleep(0.5)

    def logs(self, lines: int = 20) -> str:
        """The tails of the daemons' logs, for failure messages."""
        out = []
        for log in sorted(self.root.glob("*.log")) + sorted(self.root.glob("*.stdout")):
            tail = log.read_text(errors="replace").splitlines()[-lines:]
            if tail:
                out.append(f"--- {log.name}\n" + "\n".join(tail))
        return "\n".join(out)

    # --- clients ---------------------------------------------------------------

    def run(
        self, *args: str, check: bool = True, cwd: Path | None = None, env: dict | None = None, timeout: float = 60
    ) -> str:
        """A client command against this cluster (env adds to SLURM_CONF and the caller's environment)."""
        proc = subprocess.run(
            args, env={**self.env, **(env or {})}, cwd=cwd, capture_output=True, text=True, timeout=timeout, check=False
        )
        if check and proc.returncode:
            raise SlurmError(f"{' '.join(args)} exited {proc.returncode}: {proc.stderr.strip()}")
        return proc.stdout

    def node_state(self) -> str:
        try:
            return self.run("sinfo", "-h", "-N", "-o", "%t").strip()
        except (SlurmError, subprocess.TimeoutExpired):
            return ""

    def sbatch(self, *args: str, cwd: Path | None = None, env: dict | None = None) -> str:
        """Submit; returns the job id (an array's id for --array)."""
        return self.run("sbatch", "--parsable", *args, cwd=cwd, env=env).strip().split(";")[0]

    def queued(self, job_id: str) -> list[dict[str, str]]:
        """The job's (or array's) entries in squeue, one per task: id, state, reason; [] once it has left."""
        proc = subprocess.run(
            ["squeue", "-h", "-r", "-j", job_id, "-o", "%i|%T|%r"],
            env=self.env,
            capture_output=True,
            text=True,
            check=False,
        )
        if proc.returncode:
            if "Invalid job id" in proc.stderr:  # finished and already purged
                return []
            raise SlurmError(f"squeue -j {job_id} exited {proc.returncode}: {proc.stderr.strip()}\n{self.logs()}")
        out = proc.stdout
        return [dict(zip(("id", "state", "reason"), line.split("|"))) for line in out.splitlines() if line]

    def job(self, job_id: str) -> dict[str, str]:
        """`scontrol show job` as a dict (the first record; for arrays pass a task id)."""
        out = self.run("scontrol", "show", "job", "-o", job_id)
        fields = {}
        for word in out.splitlines()[0].split():
            key, _, value = word.partition("=")
            fields[key] = value
        return fields

    def wait_gone(self, job_id: str, timeout: float) -> None:
        """Poll until the job (every task of an array) has left the queue."""
        self._wait(lambda: not self.queued(job_id), timeout, f"job {job_id} to leave the queue")

    def wait_for(self, ready, timeout: float, what: str) -> None:
        self._wait(ready, timeout, what)


@contextlib.contextmanager
def slurm_cluster(parent: str | None = None):
    """Start a private cluster in a fresh temporary directory; stop it and remove the directory after."""
    # Under the system temp dir, not pytest's: munged needs every parent directory searchable,
    # and unix socket paths must stay short.
    for attempt in range(3):
        root = Path(tempfile.mkdtemp(prefix="lsjob-slurm-", dir=parent))
        cluster = SlurmCluster(root)
        try:
            cluster.start()
            break
        except SlurmError as e:
            cluster.stop()
            shutil.rmtree(root, ignore_errors=True)
            # Another process took a port between its pick and the bind: pick others.
            if "Address already in use" not in str(e) or attempt == 2:
                raise
    try:
        yield cluster
    finally:
        cluster.stop()
        shutil.rmtree(root, ignore_errors=True)
