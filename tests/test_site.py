"""The course website (`make site`) in a real browser: headless Chromium through Selenium.

Every page loads over HTTP with the right title and no JavaScript errors, its images load, its math is
rendered, its internal links resolve, and the navigation reaches every lesson. Screenshots of the home page
and a chapter are saved into `_site/`. `make test` builds the site before running this file; without a
browser (Debian's chromium and chromium-driver) or without a built site it is skipped, saying why.
"""
import functools
import re
import http.server
import shutil
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from urllib.parse import urldefrag, urljoin, urlparse

import pytest

ROOT = Path(__file__).resolve().parent.parent
SITE = ROOT / "_site"
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
DRIVER = shutil.which("chromedriver")

pytestmark = [
    pytest.mark.skipif(not (CHROMIUM and DRIVER), reason="no browser: apt-get install chromium chromium-driver"),
    pytest.mark.skipif(not (SITE / "index.html").exists(), reason="no site built: run `make site` first"),
]
webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is in the test extra")


def pages():
    "Every HTML page of the site except the 404 page, relative to the site root."
    return sorted(p.relative_to(SITE).as_posix() for p in SITE.rglob("*.html") if p.name != "404.html")


@pytest.fixture(scope="module")
def server():
    handler = functools.partial(_QuietHandler, directory=str(SITE))
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}/"
    httpd.shutdown()


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


@pytest.fixture(scope="module")
def browser():
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                "--window-size=1280,900"):
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(DRIVER), options=options)
    driver.set_page_load_timeout(60)
    yield driver
    driver.quit()


def _settle(driver, timeout=30):
    "Wait until the page, its images and MathJax's typesetting are done."
    deadline = time.monotonic() + timeout
    script = """
        const imgs = Array.from(document.images);
        const mj = window.MathJax && window.MathJax.Hub;
        return document.readyState === 'complete' && imgs.every(i => i.complete)
            && (!mj || (mj.queue.pending === 0 && mj.queue.running === 0));"""
    while time.monotonic() < deadline:
        if driver.execute_script(script):
            return
        time.sleep(0.1)
    raise AssertionError(f"{driver.current_url} did not finish loading in {timeout} s")


def _status(url):
    try:
        with urllib.request.urlopen(url, timeout=10) as r:
            return r.status
    except urllib.error.HTTPError as e:
        return e.code


def test_every_page_in_a_browser(server, browser):
    checked_links, problems = {}, []
    for page in pages():
        url = urljoin(server, page)
        browser.get(url)
        _settle(browser)
        title = browser.title
        heading = browser.execute_script("const h = document.querySelector('article h1'); return h ? h.innerText : ''")
        if not title.strip() or "404" in title or (heading and heading.strip("¶ \n") not in title):
            problems.append(f"{page}: title {title!r} does not name the page's heading {heading!r}")
        errors = [e["message"] for e in browser.get_log("browser") if e["level"] == "SEVERE"]
        if errors:
            problems.append(f"{page}: JavaScript errors {errors}")
        broken = browser.execute_script(
            "return Array.from(document.images).filter(i => !(i.naturalWidth > 0)).map(i => i.src.slice(0, 80))")
        if broken:
            problems.append(f"{page}: images that did not load {broken}")
        text = browser.execute_script(   # the prose: code cells, outputs and code spans may hold $ and backslashes
            "const skip = 'pre, code, script, style, math, .jp-OutputArea, .jp-InputArea, .highlight';"
            "const w = document.createTreeWalker(document.querySelector('article'), NodeFilter.SHOW_TEXT); const out = [];"
            "while (w.nextNode()) { if (!w.currentNode.parentElement.closest(skip)) out.push(w.currentNode.data); }"
            "return out.join(' ')")
        if "$$" in text or "\\frac" in text or "\\mathrm" in text or re.search(r"\$[^$\s][^$]*\\[a-z]+", text):
            problems.append(f"{page}: math left as raw TeX")
        for href in browser.execute_script("return Array.from(document.links).map(a => a.href)"):
            target = urldefrag(href).url
            if urlparse(target).netloc != urlparse(server).netloc or target in checked_links:
                continue
            checked_links[target] = _status(target)
            if checked_links[target] != 200:
                problems.append(f"{page}: link {target} answers {checked_links[target]}")
    assert not problems, "\n".join(problems)
    assert len(pages()) > 3 and len(checked_links) > len(pages()) / 2
    print(f"{len(pages())} pages and {len(checked_links)} internal links checked")


def test_navigation_reaches_every_lesson_and_exercise(server, browser):
    browser.get(server)
    _settle(browser)
    nav = {urldefrag(h).url.rsplit("/", 1)[-1]
           for h in browser.execute_script("return Array.from(document.querySelectorAll('nav a')).map(a => a.href)")}
    built = {p.name for p in SITE.glob("*.html") if p.name not in ("404.html",)}
    missing = sorted(built - nav)
    assert not missing, f"pages the navigation does not reach: {missing}"
    lessons = {p.stem + ".html" for p in (ROOT / "nbs").glob("*.ipynb") if p.stem != "index"}
    assert lessons <= built | {"index.html"}, f"lessons without a page: {sorted(lessons - built)}"


def test_screenshots(server, browser):
    chapter = next(p for p in pages() if p[:2].isdigit())
    for name, page in (("screenshot-home.png", "index.html"), ("screenshot-chapter.png", chapter)):
        browser.get(urljoin(server, page))
        _settle(browser)
        assert browser.save_screenshot(str(SITE / name))
        assert (SITE / name).stat().st_size > 10_000, f"{name} is nearly empty"
