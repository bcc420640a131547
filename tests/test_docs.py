"""The course website (`make docs`, minillm.docs): a site of the home page, two lessons and the API reference is built
once, then opened in a real headless Chromium (Debian's, driven by selenium through the system chromedriver: nothing
is downloaded) from the file system and from a local http.server. Needs the `docs` extra and Chromium, so it skips
cleanly without them; marked slow (it runs two lessons): MINILLM_TEST_FLAGS=slow pytest tests/test_docs.py.
A screenshot of every page lands in the test's temporary folder (printed at the end of the run with -s)."""
import functools
import http.server
import json
import os
import shutil
import threading
import urllib.parse
from pathlib import Path

import pytest

from conftest import ROOT

pytestmark = pytest.mark.slow
LESSONS = ["05_attention", "10_memory"]  # short lessons with plots (the first with math)
PAGES = ["index.html", *(f"{n}.html" for n in LESSONS), "api/index.html", "api/minillm.attention.html"]
LOCAL_SCHEMES = {"file", "data", "blob", "about", "chrome", "devtools"}


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    for mod in ("sphinx", "myst_nb", "selenium"):
        pytest.importorskip(mod, reason="the docs extra is not installed: pip install -e '.[docs]'")
    from minillm.docs import build_site
    out = tmp_path_factory.mktemp("docs")
    build_site(ROOT, out / "_site", out / "_build", only=LESSONS)
    return out / "_site"


@pytest.fixture(scope="module")
def browser():
    chromium, driver = shutil.which("chromium"), shutil.which("chromedriver")
    if not (chromium and driver):
        pytest.skip("needs Debian's chromium and chromium-driver (apt-get install chromium chromium-driver)")
    webdriver = pytest.importorskip("selenium.webdriver", reason="the docs extra is not installed")
    from selenium.webdriver.chrome.service import Service
    os.environ["SE_OFFLINE"] = "true"  # selenium-manager must not look anything up: the driver is given
    opts = webdriver.ChromeOptions()
    opts.binary_location = chromium
    for a in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--window-size=1280,900",
              "--no-first-run", "--disable-background-networking", "--disable-component-update", "--disable-sync",
              "--disable-default-apps", "--disable-features=Translate,OptimizationHints,MediaRouter"):
        opts.add_argument(a)
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL", "performance": "ALL"})
    drv = webdriver.Chrome(service=Service(executable_path=driver), options=opts)
    drv.set_page_load_timeout(60)
    yield drv
    drv.quit()


@pytest.fixture(scope="module")
def server(site):
    "The site served by python's http.server on a free port of 127.0.0.1."
    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args): pass
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Quiet, directory=str(site)))
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}/"
    httpd.shutdown()
    httpd.server_close()


def _is_local(url: str) -> bool:
    u = urllib.parse.urlsplit(url)
    return u.scheme in LOCAL_SCHEMES or u.hostname in ("127.0.0.1", "localhost")


def _local_file(url: str, site: Path, base: str) -> Path:
    "The file of the site a local URL names (file:// or the http.server's), query and fragment dropped."
    u = urllib.parse.urlsplit(url)
    path = urllib.parse.unquote(u.path)
    if u.scheme == "file":
        return Path(path)
    return site / path.removeprefix(urllib.parse.urlsplit(base).path).lstrip("/")


def _open(drv, url: str) -> dict:
    """Load `url`, wait for MathJax to finish, and return what happened: console errors, requested URLs."""
    drv.get_log("browser"), drv.get_log("performance")  # drop what earlier pages left
    drv.get(url)
    drv.execute_async_script(
        "const done = arguments[arguments.length - 1];"
        "const p = window.MathJax && MathJax.startup && MathJax.startup.promise;"
        "(p ? p.then(() => done(1), () => done(0)) : done(1));")
    requests = [json.loads(e["message"])["message"] for e in drv.get_log("performance")]
    return {
        "errors": [e["message"] for e in drv.get_log("browser") if e["level"] == "SEVERE"],
        "requests": [m["params"]["request"]["url"] for m in requests if m["method"] == "Network.requestWillBeSent"],
    }


@pytest.mark.parametrize("how", ["file", "http"])
def test_pages_load_offline_and_links_resolve(site, browser, server, tmp_path_factory, how):
    """Each page loads without a console error, every request stays on the machine (file://, or the local server:
    no CDN font, script or style), and every link into the site names a file that exists, and an anchor that exists
    on it. No tolerance: one stray request or one broken link fails. A screenshot per page goes to a temporary
    folder."""
    base = site.resolve().as_uri() + "/" if how == "file" else server
    shots = tmp_path_factory.mktemp(f"screenshots-{how}")
    for page in PAGES:
        seen = _open(browser, base + page)
        browser.save_screenshot(str(shots / page.replace("/", "_").replace(".html", ".png")))
        assert not seen["errors"], f"{how} {page}: console errors {seen['errors']}"
        assert seen["requests"], f"{how} {page}: the request log is empty (is the performance log on?)"
        away = [u for u in seen["requests"] if not _is_local(u)]
        assert not away, f"{how} {page}: requests leaving the machine {away}"
        links = browser.execute_script("return [...document.querySelectorAll('a[href]')].map(a => a.href)")
        for href in links:
            if not _is_local(href) or href.startswith(("data:", "blob:")):
                continue
            target = _local_file(href, site, base)
            assert target.is_file(), f"{how} {page}: link {href} -> missing {target}"
            frag = urllib.parse.unquote(urllib.parse.urlsplit(href).fragment)
            if frag and target.suffix == ".html":
                html = target.read_text(encoding="utf-8")
                assert f'id="{frag}"' in html, f"{how} {page}: link {href}: no anchor #{frag} in {target.name}"
    print(f"screenshots: {shots}")


def test_lessons_show_plots_math_and_folded_solutions(site, browser):
    """A lesson page shows its plots (every image of the page is on disk, non-empty, decoded by the browser with a
    non-zero size), its math typeset by the local MathJax (where its markdown has any), its exercises' solutions
    folded behind a toggle, its Colab and Kaggle links, and no nbdev `#|` line. Counts, not pixels: any plot at all
    passes; zero fails."""
    for name in LESSONS:
        _open(browser, (site / f"{name}.html").resolve().as_uri())
        imgs = browser.execute_script("return [...document.querySelectorAll('img')]"
                                      ".map(i => [i.getAttribute('src'), i.naturalWidth, i.complete])")
        plots = [i for i in imgs if "_images/" in i[0]]
        assert plots, f"{name}: no plot on the page"
        for src, width, complete in plots:
            assert complete and width > 0, f"{name}: image {src} did not load"
            assert (site / src).stat().st_size > 0, f"{name}: image {src} is empty"
        nb = json.loads((ROOT / "nbs" / f"{name}.ipynb").read_text(encoding="utf-8"))
        if any("$" in "".join(c["source"]) for c in nb["cells"] if c["cell_type"] == "markdown"):
            assert browser.execute_script("return document.querySelectorAll('mjx-container').length") > 0, name
        summaries = browser.execute_script(
            "return [...document.querySelectorAll('details summary')].map(s => s.textContent)")
        assert any("Show the solution" in s for s in summaries), f"{name}: no folded solution"
        text = browser.execute_script("return document.body.innerText")
        assert "#|" not in text, f"{name}: an nbdev directive line shows"
        hrefs = browser.execute_script("return [...document.querySelectorAll('a[href]')].map(a => a.href)")
        assert any("colab.research.google.com" in h for h in hrefs) and any("kaggle.com" in h for h in hrefs), name


def test_home_has_the_lesson_table(site, browser):
    """The home page carries the course's lesson table (hardware and time columns), whose built lessons link to
    their pages and the others to GitHub, and a sidebar listing each built lesson once."""
    _open(browser, (site / "index.html").resolve().as_uri())
    heads = browser.execute_script("return [...document.querySelectorAll('table th')].map(th => th.textContent)")
    assert {"lesson", "hardware", "time"} <= {h.strip() for h in heads}, heads
    rows = browser.execute_script("return [...document.querySelectorAll('table tbody tr')]"
                                  ".map(tr => [...tr.querySelectorAll('a')].map(a => a.href))")
    firsts = [r[0] for r in rows if r]
    for name in LESSONS:
        assert any(h.endswith(f"/{name}.html") for h in firsts), (name, firsts)
    assert any("github.com" in h for h in firsts), firsts
    side = browser.execute_script("return [...document.querySelectorAll('.sidebar-tree a')].map(a => a.href)")
    for name in LESSONS:  # one entry per lesson: a lesson's own `# title` does not make a second
        assert sum(h.endswith(f"/{name}.html") for h in side) == 1, (name, side)


def test_search_finds_a_function_by_name(site, browser):
    """Sphinx's full-text search, from the file system, finds a public function by its name and links to its entry
    in the API reference (causal_mask, from the attention lesson's module)."""
    from selenium.webdriver.support.ui import WebDriverWait
    _open(browser, (site / "search.html").resolve().as_uri() + "?q=causal_mask")
    found = WebDriverWait(browser, 30).until(lambda d: d.execute_script(
        "return [...document.querySelectorAll('#search-results li a')].map(a => a.href)"))
    assert any("api/minillm.attention.html#minillm.attention.causal_mask" in h for h in found), found


def test_failing_cell_names_the_lesson_and_the_cell(tmp_path):
    """A cell that raises fails the build with one line naming the notebook of nbs/ and the cell's index there (a
    checkout of one lesson whose fourth cell divides by zero)."""
    for mod in ("sphinx", "myst_nb"):
        pytest.importorskip(mod, reason="the docs extra is not installed: pip install -e '.[docs]'")
    from minillm.docs import build_site
    from minillm.lessons import dumps_nb
    from minillm.utils import UserError
    root = tmp_path / "checkout"
    (root / "nbs").mkdir(parents=True)
    shutil.copy(ROOT / "settings.ini", root)
    cell = lambda kind, text: {"cell_type": kind, "id": f"c{abs(hash(text)) % 10**6}", "metadata": {}, "source": text,
                               **({"outputs": [], "execution_count": None} if kind == "code" else {})}
    nb = lambda *cells: {"cells": list(cells), "metadata": {}, "nbformat": 4, "nbformat_minor": 5}
    (root / "nbs" / "index.ipynb").write_text(dumps_nb(nb(cell("markdown", "# Home"))))
    (root / "nbs" / "01_broken.ipynb").write_text(dumps_nb(nb(
        cell("raw", "---\ntitle: Broken\ndescription: Fails.\n---"), cell("markdown", "Some prose."),
        cell("code", "x = 1"), cell("code", "y = x / 0"))))
    with pytest.raises(UserError, match=r"nbs/01_broken\.ipynb, cell 3 failed: ZeroDivisionError"):
        build_site(root, tmp_path / "_site", tmp_path / "_build")
