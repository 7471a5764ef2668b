"""aggregate.html in a real browser: Debian's chromium, headless, driven by Playwright.

The page written for a small fake results tree must render (a screenshot that is not
blank), log no console error, throw nothing, have no request fail and make none that
leaves the machine, show one row per run, and every link to a run's plot must open
an image. The browser is the system's (`executable_path`): `playwright install` is
never needed, and nothing is downloaded.

Skipped when chromium or the playwright package is missing, unless
LSJOB_REQUIRE_BROWSER is set (CI), where that fails instead.
"""

import io
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import matplotlib.image
import numpy as np
import pytest
from test_aggregate import edit_manifest, write_run

from job.aggregate import aggregate

CHROMIUM_ARGS = [
    "--no-sandbox",  # root in a container: the sandbox cannot start
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
# Loads every link of the runs table as an image, in the page; the links that fail.
CHECK_LINKS = """async () => {
    const urls = Array.from(document.querySelectorAll("td.plots a"), (a) => a.href);
    const load = (url) => new Promise((resolve) => {
        const image = new Image();
        image.onload = () => resolve(image.naturalWidth > 0 ? null : url);
        image.onerror = () => resolve(url);
        image.src = url;
    });
    return {count: urls.length, failed: (await Promise.all(urls.map(load))).filter(Boolean)};
}"""


def unavailable(why):
    if os.environ.get("LSJOB_REQUIRE_BROWSER"):
        pytest.fail(f"{why}; LSJOB_REQUIRE_BROWSER is set, so the browser test must run")
    pytest.skip(why)


@pytest.fixture(scope="module")
def browser():
    try:
        from playwright.sync_api import Error, sync_playwright
    except ImportError:
        unavailable("the PyPI package playwright is not installed (pip install -e '.[test]')")
    executable = shutil.which("chromium")
    if executable is None:
        unavailable("chromium is not installed (Debian: apt-get install chromium)")
    with sync_playwright() as playwright:
        try:
            # Playwright gives the browser a fresh temporary profile of its own.
            browser = playwright.chromium.launch(executable_path=executable, args=CHROMIUM_ARGS)
        except Error as e:
            unavailable(f"{executable} does not start under Playwright: {e}")
        yield browser
        browser.close()


@dataclass
class Opened:
    """A page opened in the browser, and what went wrong while it loaded."""

    page: object
    errors: list[str] = field(default_factory=list)  # console errors and uncaught exceptions
    failed: list[str] = field(default_factory=list)  # requests that failed
    requested: list[str] = field(default_factory=list)

    def check_links(self) -> dict:
        return self.page.evaluate(CHECK_LINKS)


@pytest.fixture
def open_page(browser):
    contexts = []

    def open_(path: Path) -> Opened:
        context = browser.new_context(viewport={"width": 1400, "height": 900})
        contexts.append(context)
        opened = Opened(context.new_page())
        page = opened.page
        page.on("console", lambda m: m.type == "error" and opened.errors.append(f"console: {m.text}"))
        page.on("pageerror", lambda e: opened.errors.append(f"exception: {e}"))
        page.on("requestfailed", lambda r: opened.failed.append(f"{r.url} ({r.failure})"))
        page.on("request", lambda r: opened.requested.append(r.url))
        page.goto(path.resolve().as_uri(), wait_until="load")
        return opened

    yield open_
    for context in contexts:
        context.close()


# Completed runs of both methods and the baseline; a failed run whose reason would be
# markup; a run cut off mid-write; one stopped while starting; one named to break URLs.
TREE = {
    "labels-f0.1-s0": ("labels", 0.1, 0, 84),
    "labels-f0.1-s1": ("labels", 0.1, 1, 86),
    "loss-f0.1-s0": ("loss", 0.1, 0, 83),
    "loss-f0.1-s1": ("loss", 0.1, 1, 82),
    "none-s0": ("none", 0.0, 0, 78),
}
ODD = "odd #1 <script>x()"
REASON = '<script>console.error("injected")</script> & <img src=x onerror=alert(1)>'


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    root = tmp_path_factory.mktemp("page") / "results"
    for name, (method, factor, seed, correct) in TREE.items():
        write_run(root, name, method, factor, seed, correct=correct)
    write_run(root, "tmp", "labels", 0.2, 0, correct=85).rename(root / ODD)
    failed = write_run(root, "labels-f0.2-s1", "labels", 0.2, 1, status="failed", done=1)
    edit_manifest(failed, reason=REASON)
    cut = write_run(root, "loss-f0.2-s0", "loss", 0.2, 0)
    text = (cut / "manifest.json").read_text()
    (cut / "manifest.json").write_text(text[: len(text) // 2])
    starting = write_run(root, "loss-f0.2-s1", "loss", 0.2, 1, status="running", done=0)
    for name in ("manifest.json", ".lock"):
        (starting / name).unlink()  # stopped while starting: only its spec.yaml
    return root


@pytest.fixture
def tree(built, tmp_path):
    return Path(shutil.copytree(built, tmp_path / "results", symlinks=True))


def colours(png: bytes) -> int:
    """Distinct colours in a PNG (each packed into one integer: np.unique over rows is slow)."""
    image = (matplotlib.image.imread(io.BytesIO(png), format="png")[..., :3] * 255).astype(np.uint32)
    return len(np.unique(image[..., 0] << 16 | image[..., 1] << 8 | image[..., 2]))


def test_page_renders_without_errors_and_shows_every_run(tree, open_page):
    summary = aggregate(tree)
    opened = open_page(tree / "aggregate.html")
    page = opened.page
    screenshot = page.screenshot(full_page=True)
    assert screenshot.startswith(b"\x89PNG") and colours(screenshot) > 100  # text, tables, plots: not blank
    assert opened.errors == [] and opened.failed == []
    assert all(url.startswith(("file:", "data:")) for url in opened.requested), opened.requested

    rows = page.evaluate("""() => Array.from(document.querySelectorAll("table.runs tbody tr"),
        (tr) => [tr.cells[0].innerText, tr.dataset.status, getComputedStyle(tr).backgroundColor])""")
    assert len(rows) == len(summary.runs) == 9
    assert [(name, status) for name, status, _ in rows] == [(r.run, r.status) for r in summary.runs]
    statuses = {status for _, status, _ in rows}
    assert statuses == {"completed", "failed", "damaged", "incomplete"}
    # Whatever did not complete stands out: a coloured row, unlike a completed one.
    background = {status: colour for _, status, colour in rows}
    assert all(background[s] != background["completed"] for s in statuses - {"completed"})

    # The three aggregate plots are embedded and decoded; the markup in the reason is text.
    images = page.evaluate("() => Array.from(document.images, (i) => [i.src.slice(0, 22), i.naturalWidth])")
    assert len(images) == 3 and all(src == "data:image/png;base64," and width > 100 for src, width in images)
    assert page.evaluate("() => document.scripts.length") == 0
    reason = page.locator("tr[data-status=failed] td.reason").inner_text()
    assert reason == REASON
    assert "labels vs loss at the same factor" in page.locator("h2#labels-vs-loss").inner_text()


@pytest.mark.parametrize("where", ["root", "elsewhere"])
def test_every_plot_link_opens_an_image(tree, tmp_path, open_page, where):
    out = tree if where == "root" else tmp_path / "report"  # elsewhere: links go up and over with ../
    aggregate(tree, out=out)
    opened = open_page(out / "aggregate.html")
    # Six completed runs, and the cut-off one that wrote its reports before its manifest broke.
    assert opened.check_links() == {"count": 7 * 3, "failed": []}
    assert opened.errors == [] and opened.failed == []
    hrefs = opened.page.evaluate("() => Array.from(document.querySelectorAll('td.plots a'), (a) => a.href)")
    assert any("odd%20%231%20%3Cscript%3Ex%28%29/reliability.png" in href for href in hrefs)


def test_a_broken_link_is_caught_and_a_missing_plot_is_never_linked(tree, open_page):
    aggregate(tree)
    (tree / "labels-f0.1-s1" / "training.png").unlink()  # after the page was written
    opened = open_page(tree / "aggregate.html")
    result = opened.check_links()
    assert result["count"] == 21 and len(result["failed"]) == 1
    assert result["failed"][0].endswith("/labels-f0.1-s1/training.png")
    assert any("labels-f0.1-s1/training.png" in failure for failure in opened.failed)
    assert any("ERR_FILE_NOT_FOUND" in error for error in opened.errors)

    aggregate(tree)  # written again: the page links only what exists
    opened = open_page(tree / "aggregate.html")
    assert opened.check_links() == {"count": 20, "failed": []}
    assert opened.errors == [] and opened.failed == []
