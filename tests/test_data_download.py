"""The download (job/data/download.py) against a real HTTP server on localhost: a server that
stalls, cuts off, refuses or resumes from the wrong byte, and a stop (SIGTERM) mid-download."""

import logging
import threading
import time

import pytest
from cifar_files import BATCHES, SMALL, assert_loaded, expected_arrays, files_under

from job import preemption
from job.data import cifar10, download
from job.errors import DataError, InterruptedRun


@pytest.fixture
def server(monkeypatch):
    """A local HTTP server for the real fetch: serve(body, ...) -> its URL.
    `declared`: the Content-Length sent (a connection cut short sends more than it gives);
    `stall`: after the body, send nothing more and keep the connection, as a server that stops answering;
    `cuts`: how many bytes each response gives before the connection drops, one entry per request
    (then whole); `refusals`: a status for each request to answer instead (0: answer it);
    `ranges`: answer Range requests (206) as a static file server does, else send it whole (200),
    `skew` bytes before where it was asked (a broken server); `etags`: the ETag of each response,
    to see If-Range at work.
    serve.requests: the Range and If-Range headers of every request."""
    import http.server

    release = threading.Event()
    handlers = []
    requests = []

    def serve(body: bytes, declared=None, stall=False, cuts=(), ranges=False, skew=0, etags=(), refusals=()) -> str:
        cuts, etags, refusals = list(cuts), list(etags), list(refusals)

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self):
                asked, if_range = self.headers.get("Range"), self.headers.get("If-Range")
                requests.append((asked, if_range))
                refusal = refusals.pop(0) if refusals else None
                if refusal:  # this request refused with that status (then answered as usual)
                    self.send_response(refusal)
                    if refusal == 416:
                        self.send_header("Content-Range", f"bytes */{len(body)}")
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                etag = etags.pop(0) if etags else None
                start = 0
                if ranges and asked and (if_range is None or if_range == etag):
                    start = int(asked.removeprefix("bytes=").removesuffix("-")) - skew
                    self.send_response(206)
                    self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
                else:
                    self.send_response(200)
                if etag:
                    self.send_header("ETag", etag)
                self.send_header("Content-Length", str((len(body) if declared is None else declared) - start))
                self.send_header("Connection", "close")
                self.end_headers()
                part = body[start:]
                self.wfile.write(part[: cuts.pop(0)] if cuts else part)
                if stall:
                    self.wfile.flush()
                    release.wait(30)
                self.close_connection = True

            def log_message(self, *args):
                pass

        httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=httpd.serve_forever, daemon=True).start()
        handlers.append(httpd)
        return f"http://127.0.0.1:{httpd.server_address[1]}/{cifar10.ARCHIVE_NAME}"

    serve.requests = requests
    monkeypatch.setattr(download, "DOWNLOAD_RESUME_PAUSE_S", 0.0)
    yield serve
    release.set()
    for httpd in handlers:
        httpd.shutdown()
        httpd.server_close()


def test_a_real_download_over_http_is_verified_extracted_and_cached(
    small_rows, cifar_sample, small_tar, trusted, server, monkeypatch, tmp_path
):
    trusted(small_tar)
    monkeypatch.setattr(cifar10, "CIFAR10_URL", server(small_tar.read_bytes()))
    cache = tmp_path / "cache"
    assert_loaded(cifar10.load_cifar10(None, cache), expected_arrays(cifar_sample, SMALL))
    assert sorted(p.name for p in (cache / "datasets").iterdir()) == sorted([cifar10.ARCHIVE_NAME, BATCHES])


@pytest.mark.parametrize("failure", ["stall", "cut short"])
def test_a_server_that_stalls_or_cuts_the_download_short_fails_it_in_time(
    failure, small_rows, small_tar, trusted, server, monkeypatch, tmp_path
):
    # Keras's get_file had no timeout: a stalled server held every task of a sweep until its time limit.
    trusted(small_tar)
    data = small_tar.read_bytes()
    url = server(b"", declared=len(data), stall=True) if failure == "stall" else server(data[:1000], declared=len(data))
    monkeypatch.setattr(cifar10, "CIFAR10_URL", url)
    monkeypatch.setattr(download, "DOWNLOAD_STALL_S", 0.5)
    started = time.monotonic()
    with pytest.raises(DataError, match="could not download") as err:
        cifar10.load_cifar10(None, tmp_path / "cache")
    assert time.monotonic() - started < 20
    assert ("timed out" if failure == "stall" else f"after 1000 of {len(data)} bytes") in str(err.value)
    assert files_under(tmp_path / "cache") == ["datasets"]
    # Sending nothing fails at once; bytes that keep breaking off are resumed a bounded number of times.
    assert len(server.requests) == (1 if failure == "stall" else 1 + download.DOWNLOAD_RESUMES)


def test_a_download_that_breaks_off_resumes_where_it_stopped(small_rows, cifar_sample, small_tar, trusted, server,
                                                             monkeypatch, caplog, tmp_path):  # fmt: skip
    trusted(small_tar)
    data = small_tar.read_bytes()
    third = len(data) // 3
    monkeypatch.setattr(cifar10, "CIFAR10_URL", server(data, cuts=[third, third], ranges=True, etags=['"v1"'] * 3))
    cache = tmp_path / "cache"
    with caplog.at_level(logging.WARNING, logger="lsjob"):
        assert_loaded(cifar10.load_cifar10(None, cache), expected_arrays(cifar_sample, SMALL))
    assert server.requests == [(None, None), (f"bytes={third}-", '"v1"'), (f"bytes={2 * third}-", '"v1"')]
    assert sum("broke off" in r.getMessage() for r in caplog.records) == 2
    assert (cache / "datasets" / cifar10.ARCHIVE_NAME).read_bytes() == data


def test_the_pause_before_each_resume_doubles(small_tar, server, monkeypatch, tmp_path):
    # Retrying a struggling server at once, five times, would spend the resumes in seconds.
    data = small_tar.read_bytes()
    url = server(data, cuts=[1000] * (1 + download.DOWNLOAD_RESUMES), ranges=True)
    monkeypatch.setattr(download, "DOWNLOAD_RESUME_PAUSE_S", 2.0)
    pauses = []
    monkeypatch.setattr(download, "_pause", pauses.append)
    with pytest.raises(OSError, match=f"closed after 6000 of {len(data)} bytes"):  # the resumes spent
        download.fetch(url, tmp_path / "archive")
    assert pauses == [2.0, 4.0, 8.0, 16.0, 32.0]
    assert (tmp_path / "archive").stat().st_size == 6000  # every piece kept, each resume starting where it stopped


def test_a_resume_refused_for_a_while_is_tried_again(small_rows, cifar_sample, small_tar, trusted, server, monkeypatch,
                                                    tmp_path):  # fmt: skip
    # Most of the file is here: an outage at the resume (503) is waited out, not the end.
    trusted(small_tar)
    data = small_tar.read_bytes()
    monkeypatch.setattr(cifar10, "CIFAR10_URL", server(data, cuts=[1000], ranges=True, refusals=[0, 503, 503]))
    assert_loaded(cifar10.load_cifar10(None, tmp_path / "cache"), expected_arrays(cifar_sample, SMALL))
    assert [asked for asked, _ in server.requests] == [None, "bytes=1000-", "bytes=1000-", "bytes=1000-"]


def test_a_connection_lost_after_the_last_byte_is_a_whole_file(small_rows, cifar_sample, small_tar, trusted, server,
                                                               monkeypatch, tmp_path):  # fmt: skip
    # The server says 416 (nothing left from there, `bytes */size`): the file is whole.
    trusted(small_tar)
    data = small_tar.read_bytes()
    url = server(data, declared=len(data) + 1, ranges=True, refusals=[0, 416])  # one byte short by its count
    monkeypatch.setattr(cifar10, "CIFAR10_URL", url)
    assert_loaded(cifar10.load_cifar10(None, tmp_path / "cache"), expected_arrays(cifar_sample, SMALL))
    assert [asked for asked, _ in server.requests] == [None, f"bytes={len(data)}-"]


def test_a_resume_after_a_new_file_continues_the_new_one(small_rows, cifar_sample, small_tar, trusted, server,
                                                         monkeypatch, tmp_path):  # fmt: skip
    # The second answer is a new version, whole (its If-Range failed); the next resume must ask for
    # that one, or every later resume fails If-Range and starts over.
    trusted(small_tar)
    data = small_tar.read_bytes()
    url = server(data, cuts=[1000, 2000], ranges=True, etags=['"v1"', '"v2"', '"v2"'])
    monkeypatch.setattr(cifar10, "CIFAR10_URL", url)
    assert_loaded(cifar10.load_cifar10(None, tmp_path / "cache"), expected_arrays(cifar_sample, SMALL))
    assert server.requests == [(None, None), ("bytes=1000-", '"v1"'), ("bytes=2000-", '"v2"')]


@pytest.mark.parametrize("why", ["no ranges", "file changed"])
def test_a_resume_the_server_answers_whole_starts_the_file_over(why, small_rows, cifar_sample, small_tar, trusted,
                                                                server, monkeypatch, tmp_path):  # fmt: skip
    # A server without Range support, or a file replaced meanwhile (If-Range fails), sends all of it:
    # appended, it would make an archive of two halves.
    trusted(small_tar)
    data = small_tar.read_bytes()
    changed = why == "file changed"
    url = server(data, cuts=[1000], ranges=changed, etags=['"v1"', '"v2"'] if changed else ())
    monkeypatch.setattr(cifar10, "CIFAR10_URL", url)
    cache = tmp_path / "cache"
    assert_loaded(cifar10.load_cifar10(None, cache), expected_arrays(cifar_sample, SMALL))
    assert server.requests == [(None, None), ("bytes=1000-", '"v1"' if changed else None)]
    assert (cache / "datasets" / cifar10.ARCHIVE_NAME).read_bytes() == data


def test_a_resume_from_the_wrong_byte_is_refused(small_rows, small_tar, trusted, server, monkeypatch, tmp_path):
    trusted(small_tar)
    data = small_tar.read_bytes()
    monkeypatch.setattr(cifar10, "CIFAR10_URL", server(data, cuts=[1000], ranges=True, skew=1))
    with pytest.raises(DataError, match="resumed at 'bytes 999-.*not at byte 1000"):
        cifar10.load_cifar10(None, tmp_path / "cache")
    assert files_under(tmp_path / "cache") == ["datasets"]


def test_a_stop_during_the_download_stops_it_and_leaves_nothing(small_rows, small_tar, trusted, server, monkeypatch,
                                                                 tmp_path):  # fmt: skip
    trusted(small_tar)
    monkeypatch.setattr(cifar10, "CIFAR10_URL", server(small_tar.read_bytes()))
    monkeypatch.setattr(preemption, "_requested", "SIGTERM")  # arrives as the first bytes do
    with pytest.raises(InterruptedRun, match="SIGTERM"):
        cifar10.load_cifar10(None, tmp_path / "cache")
    assert files_under(tmp_path / "cache") == ["datasets"]


@pytest.mark.parametrize("sent", [0, 1024])
def test_a_stop_during_a_stalled_or_slow_download_is_a_stop_at_once(sent, small_rows, small_tar, trusted, server,
                                                                    monkeypatch, tmp_path):  # fmt: skip
    # SIGTERM while the server sends nothing (it ended as the timeout did: exit 3, never requeued),
    # or while a slow link has sent less than a read's worth (it waited for all 64 KB).
    trusted(small_tar)
    data = small_tar.read_bytes()
    monkeypatch.setattr(cifar10, "CIFAR10_URL", server(data[:sent], declared=len(data), stall=True))
    monkeypatch.setattr(download, "DOWNLOAD_STALL_S", 0.5 if sent == 0 else 20.0)
    monkeypatch.setattr(preemption, "_requested", "SIGTERM")
    started = time.monotonic()
    with pytest.raises(InterruptedRun, match="SIGTERM"):
        cifar10.load_cifar10(None, tmp_path / "cache")
    assert time.monotonic() - started < 10
    assert files_under(tmp_path / "cache") == ["datasets"]
