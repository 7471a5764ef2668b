"""JAX's compile-cache entries appear whole: written beside their name, then linked into place.

JAX writes an entry in place after checking that its name is free, so the tasks of a sweep
sharing the cache folder (on NFS, each may see the name free) could tear an entry for good
(runtime._write_compiled_programs_whole). Here a program is compiled with the cache set up
as `lsjob run` sets it up, and each entry's name is checked at the moment its bytes are
flushed: it must not exist yet. Run as a script (tools/check_without_tensorflow.sh does, on JAX):

    KERAS_BACKEND=jax python tests/compile_cache_writes.py

Exit status 0 when every entry was written whole, 1 with what happened when not.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
from pathlib import Path

# JAX reads these as it is imported: with eviction it writes (and locks) by itself, and over a
# minimum compile time it keeps none of the small programs compiled here.
for name in ("JAX_COMPILATION_CACHE_MAX_SIZE", "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"):
    os.environ.pop(name, None)

from job import runtime  # noqa: E402 - after the environment is set
from job.spec import load_spec  # noqa: E402


def main() -> int:
    folder = Path(tempfile.mkdtemp(prefix="compile-cache-"))
    try:
        return check(folder)
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def check(folder: Path) -> int:
    runtime.configure(load_spec(None, [f"runtime.compile_cache={folder}"]).runtime, seed=0)
    flushed, real_fsync = [], os.fsync

    def fsync(fd: int) -> None:
        written = Path(os.readlink(f"/proc/self/fd/{fd}"))
        if written.parent == folder and written.name.startswith("."):  # a temporary file of an entry
            entry = folder / written.name[1:].split(".")[0]
            flushed.append((entry.name, entry.exists()))
        real_fsync(fd)

    os.fsync = fsync
    import jax
    import jax.numpy as jnp

    jax.jit(lambda x: x * 2.0 + 1.0)(jnp.ones(7)).block_until_ready()
    os.fsync = real_fsync
    entries = sorted(p.name for p in folder.iterdir())
    kept = [name for name in entries if name.endswith("-cache")]
    seen = f"entries {entries}; flushed (name, existed already): {flushed}"
    if not kept or any(name.startswith(".") for name in entries):
        print(f"compile_cache_writes: no entry kept, or a temporary file left behind: {seen}", file=sys.stderr)
        return 1
    if sorted(name for name, _ in flushed) != kept or any(existed for _, existed in flushed):
        print(f"compile_cache_writes: an entry was written in place, under its own name: {seen}", file=sys.stderr)
        return 1
    print(f"compile_cache_writes: {len(kept)} entries, each written beside its name and linked into place")
    return 0


if __name__ == "__main__":
    sys.exit(main())
