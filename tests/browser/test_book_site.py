"""The course's website in a real browser: a two-chapter site (00 and 02, the lessons executed)
built by `python -m minimoe.course.book build` exactly as `make book` builds the whole one, served
on 127.0.0.1 and opened in headless Chromium.

Checked: the landing page's course map, chapter 02's text, its matplotlib figures (loaded images),
its routing explorer as a snapshot whose plotly figures are interactive (a hover label appears, a
drag zooms the axis), the problem set's statements without solution code, no console error, and
no request leaving the loopback address (plotly.js and MathJax are served by the site itself).
Screenshots (1400x900) go to build/screenshots/.
"""

from __future__ import annotations

import functools
import http.server
import shutil
import subprocess
import sys
import threading
from urllib.parse import urlparse

import nbformat
import pytest
from jlab import ROOT, SCREENSHOTS, _free_port

pytestmark = [pytest.mark.browser, pytest.mark.slow]

SUBSET = ("00_start_here", "02_routing")
BUILD_TIMEOUT_S = 600  # a cold build of the two lessons takes 1-3 minutes on a busy 2-core CPU
LOAD_MS = 60_000


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    """Build the two-chapter site in a copy of the course, serve it on 127.0.0.1."""
    pytest.importorskip("jupyter_book", reason="the book extra is not installed: make book")
    root = tmp_path_factory.mktemp("book")
    for folder in ("notebooks", "exercises"):
        (root / folder).mkdir()
        for name in SUBSET:
            shutil.copy2(ROOT / folder / f"{name}.ipynb", root / folder)
    shutil.copytree(ROOT / "docs", root / "docs")
    shutil.copytree(ROOT / "book", root / "book", ignore=shutil.ignore_patterns("_generated"))
    shutil.copy2(ROOT / "README.md", root / "README.md")
    out = root / "build" / "book"
    proc = subprocess.run(
        [sys.executable, "-m", "minimoe.course.book", "build", "--root", str(root),
         "--out", str(out)],
        capture_output=True, text=True, timeout=BUILD_TIMEOUT_S,
    )  # fmt: skip
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    html = out / "_build" / "html"
    handler = functools.partial(Quiet, directory=str(html))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", _free_port()), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}", html
    server.shutdown()
    server.server_close()


class Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args) -> None:  # no access log in the test output
        pass


def _open(browser, url):
    """A 1400x900 page recording its console errors, page errors and every request's host."""
    page = browser.new_page(viewport={"width": 1400, "height": 900})
    errors, hosts = [], []
    page.on("pageerror", lambda e: errors.append(f"pageerror: {e}"))
    page.on("console", lambda m: errors.append(f"console: {m.text}") if _error(m) else None)
    page.on("request", lambda r: hosts.append((urlparse(r.url).hostname, r.url)))
    page.on("response", lambda r: errors.append(f"{r.status} {r.url}") if r.status >= 400 else None)
    page.goto(url, wait_until="load", timeout=LOAD_MS)
    return page, errors, hosts


def _error(message) -> bool:
    """A console error, except the one MathJax 2's HTML-CSS output always causes: it declares a
    placeholder font at about:blank, which Chromium refuses to load (nothing leaves the page)."""
    blank_font = "font at 'about:blank'" in message.text or (
        "net::ERR_FAILED" in message.text and "about:blank" in str(message.location)
    )
    return message.type == "error" and not blank_font


def _solution_code(name):
    """The lines inside the solution regions of solutions/<name>.ipynb's answer cells."""
    nb = nbformat.read(ROOT / "solutions" / f"{name}.ipynb", as_version=4)
    lines, inside = [], False
    for cell in nb.cells:
        for line in cell.source.splitlines() if "answer" in cell.metadata.get("tags", []) else []:
            if "### BEGIN SOLUTION" in line or "### END SOLUTION" in line:
                inside = "BEGIN" in line
            elif inside:
                lines.append(line)
    return lines


def _off_loopback(hosts):
    return [url for host, url in hosts if host not in ("127.0.0.1", None) and url[:5] != "data:"]


def test_landing_page_shows_the_course_map(site, browser):
    base, _ = site
    page, errors, hosts = _open(browser, base + "/")  # index.html redirects to the landing page
    page.wait_for_selector("table", timeout=LOAD_MS)
    text = page.inner_text("article")
    assert "Run it yourself" in text and "make lab" in text
    rows = page.locator("article table tbody tr")
    assert rows.count() == len(SUBSET)
    assert "Routing" in rows.nth(1).inner_text()
    links = [rows.nth(1).locator("a").nth(i).get_attribute("href") for i in range(2)]
    assert links[0].endswith("notebooks/02_routing.html"), links
    assert links[1].endswith("problems/02_routing.html"), links
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SCREENSHOTS / "book_landing.png"))
    page.close()
    assert not errors, errors
    assert not _off_loopback(hosts), _off_loopback(hosts)


def test_chapter_renders_text_figures_and_interactive_plotly(site, browser):
    base, html = site
    page, errors, hosts = _open(browser, base + "/notebooks/02_routing.html")
    article = page.locator("article")
    assert "Routing" in page.locator("article h1").first.inner_text()
    # the note on the lesson's source and how to run it, with a working download link
    note = article.locator(".admonition.note").first
    assert "make lab" in note.inner_text() and "notebooks/02_routing.ipynb" in note.inner_text()
    href = note.locator("a").first.get_attribute("href")
    assert (html / "notebooks" / href).resolve().is_file(), href
    # static figures: the executed matplotlib outputs, loaded
    images = article.locator(".cell_output img")
    assert images.count() >= 3
    assert all(
        images.nth(i).evaluate("i => i.complete && i.naturalWidth > 100")
        for i in range(images.count())
    )
    # the explorer as a snapshot: its note, its controls' values, its plotly figures drawn
    snapshot = article.locator(".minimoe-snapshot").first
    assert "make lab" in snapshot.locator(".minimoe-live-note").inner_text()
    assert "top-k K" in snapshot.inner_text()
    plot = snapshot.locator(".js-plotly-plot").first
    plot.locator(".main-svg").first.wait_for(timeout=LOAD_MS)
    assert snapshot.locator(".js-plotly-plot").count() == 2
    plot.scroll_into_view_if_needed()
    box = plot.locator(".nsewdrag").first.bounding_box()
    # hover: plotly draws a hover label for the point under the mouse
    page.mouse.move(box["x"] + box["width"] * 0.3, box["y"] + box["height"] * 0.5)
    page.mouse.move(box["x"] + box["width"] * 0.31, box["y"] + box["height"] * 0.5)
    plot.locator(".hoverlayer .hovertext").first.wait_for(timeout=10_000)
    # zoom: a drag across the plot area narrows the x range
    read_range = "p => Array.from(p._fullLayout.xaxis.range)"
    before = plot.evaluate(read_range)
    page.mouse.move(box["x"] + box["width"] * 0.2, box["y"] + box["height"] * 0.5)
    page.mouse.down()
    page.mouse.move(box["x"] + box["width"] * 0.4, box["y"] + box["height"] * 0.5, steps=8)
    page.mouse.up()
    page.wait_for_function(
        f"([p, b]) => {{ const r = ({read_range})(p); return r[1] - r[0] < 0.5 * (b[1] - b[0]); }}",
        arg=[plot.element_handle(), before],
        timeout=10_000,
    )
    # MathJax, served by the site, typeset the lesson's formulas
    page.wait_for_selector(".MathJax, .MathJax_CHTML, .MathJax_SVG", timeout=LOAD_MS)
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    plot.scroll_into_view_if_needed()
    page.screenshot(path=str(SCREENSHOTS / "book_chapter02.png"))
    page.close()
    assert not errors, errors
    assert not _off_loopback(hosts), _off_loopback(hosts)


def test_problem_set_shows_statements_not_solutions(site, browser):
    base, html = site
    page, errors, hosts = _open(browser, base + "/book/_generated/problems/02_routing.html")
    text = page.inner_text("article")
    assert "Exercise 02.1" in text and "Exercise 02.3" in text
    assert "NotImplementedError" in text  # the stubs to fill in
    assert "BEGIN SOLUTION" not in text
    solution_lines = [
        line.strip() for line in _solution_code("02_routing") if len(line.strip()) > 25
    ]
    assert solution_lines, "the solutions' answer regions were not found"
    assert not [line for line in solution_lines if line in text]
    link = page.locator("article .admonition.note a").first
    assert link.get_attribute("href").endswith("02_routing.ipynb")
    page.screenshot(path=str(SCREENSHOTS / "book_problems02.png"))
    page.close()
    assert not errors, errors
    assert not _off_loopback(hosts), _off_loopback(hosts)
