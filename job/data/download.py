"""Downloading one file over HTTP as a batch job needs it: resumed where it broke off, given
up when the server stalls, stopped at once by a stop request (SIGTERM).

Nothing here knows CIFAR-10: cifar10.download_archive says where the file goes and checks
what arrived.
"""

from __future__ import annotations

import http.client
import logging
import time
import urllib.error
import urllib.request
from pathlib import Path

from job import preemption

log = logging.getLogger("lsjob")

# No byte for this long and a download is given up (exit 3): a server that stops answering
# would otherwise hold every task of a sweep, waiting on the cache lock, until its time limit.
DOWNLOAD_STALL_S = 60.0
DOWNLOAD_LOG_S = 30.0
DOWNLOAD_RESUMES = 5
DOWNLOAD_RESUME_PAUSE_S = 2.0  # before the first resume; doubled before each next one


def fetch(url: str, dest: Path) -> None:
    """Stream `url` into the new file `dest`, checking for a stop request (SIGTERM) between
    chunks. Ours, not Keras's get_file: that has no timeout (a stalled server hangs every task
    waiting on the cache lock), cannot be stopped before it ends, resumes nothing, and draws a
    progress bar into batch logs.

    Once bytes have arrived, a connection that breaks off, stalls or is refused is resumed where
    the file stops (an HTTP Range request), up to DOWNLOAD_RESUMES times, a pause growing between
    them: 170 MB over a long path often loses one. A server that sends nothing at all fails the
    download at once, so waiting tasks are not held.
    """
    with open(dest, "xb") as out:
        validator = None
        for resume in range(DOWNLOAD_RESUMES + 1):
            try:
                _receive(url, out, validator)
                return
            except _Dropped as dropped:
                if not out.tell() or resume == DOWNLOAD_RESUMES:
                    raise dropped.error from None
                validator = dropped.validator
                pause = DOWNLOAD_RESUME_PAUSE_S * 2**resume
                log.warning("the download broke off at %.0f MB (%s); resuming it there in %.0f s",
                            out.tell() / 1e6, dropped.error, pause)  # fmt: skip
                _pause(pause)


def _pause(seconds: float) -> None:
    """Sleep, but stop at once when a stop (SIGTERM) is asked for."""
    until = time.monotonic() + seconds
    while (left := until - time.monotonic()) > 0:
        preemption.check()
        time.sleep(min(left, 0.5))
    preemption.check()


class _Dropped(Exception):
    """The connection failed; the bytes written so far stand."""

    def __init__(self, error: Exception, validator: str | None):
        super().__init__(str(error))
        self.error, self.validator = error, validator


def _receive(url: str, out, validator: str | None) -> None:
    """One request, appended to `out` from where it ends. Only the network's failures become
    _Dropped; the file's own (a full disk) end the download as they are."""
    offset = out.tell()
    headers = {}
    if offset:
        headers["Range"] = f"bytes={offset}-"
        if validator:  # the same file, or the server sends it whole (200) rather than splice two versions
            headers["If-Range"] = validator
    try:
        response = urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=DOWNLOAD_STALL_S)
    except urllib.error.HTTPError as e:
        # Nothing left to send: the connection broke just after the last byte.
        if offset and e.code == 416 and e.headers.get("Content-Range", "") == f"bytes */{offset}":
            return
        raise _Dropped(e, validator) from e
    except (OSError, http.client.HTTPException) as e:
        raise _Dropped(e, validator) from e
    with response:
        if offset and response.status != 206:  # Range ignored, or the file changed: it comes whole
            out.seek(0)
            out.truncate()
            offset, validator = 0, None
        elif offset and not response.headers.get("Content-Range", "").startswith(f"bytes {offset}-"):
            error = OSError(f"the server resumed at {response.headers.get('Content-Range')!r}, not at byte {offset}")
            raise _Dropped(error, validator)
        # The first response's, or a whole file's anew: a later resume must continue this one.
        validator = validator or response.headers.get("ETag") or response.headers.get("Last-Modified")
        length = int(response.headers.get("Content-Length") or 0)
        size = offset + length if length else 0
        reported = time.monotonic()
        while True:
            try:
                # read1: what has arrived, up to 64 KB; read() would wait for all 64 KB on a slow link.
                chunk = response.read1(1 << 16)
            except (OSError, http.client.HTTPException) as e:
                raise _Dropped(e, validator) from e
            if not chunk:
                break
            out.write(chunk)
            preemption.check()
            if time.monotonic() - reported >= DOWNLOAD_LOG_S:
                reported = time.monotonic()
                log.info("downloaded %.0f of %s MB", out.tell() / 1e6, f"{size / 1e6:.0f}" if size else "?")
    if size and out.tell() != size:
        raise _Dropped(OSError(f"the connection closed after {out.tell()} of {size} bytes"), validator)
