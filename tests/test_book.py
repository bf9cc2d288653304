"""The book as readers get it: its configuration, and every built page opened in a headless browser.

The page tests read a built book: ``BNLAB_BOOK_HTML`` (``make test`` builds the ci profile into
_build/ci/_build/html and sets it), else _build/html. Each page of the table of contents is opened from disk in
Debian's Chromium with networking off, driven over the DevTools protocol on a pipe (no driver, no open port). A page
passes when it requested nothing but local files, logged no console error, rendered its math with MathJax, loaded
every image, rendered every widget view from the saved widget state, and (for a notebook) links to itself in Colab.
Screenshots go to _build/screenshots/ for a person to look at.

Where the browser or the built book is missing, these tests skip, except under CI (``CI`` set) or with
``BNLAB_REQUIRE_BROWSER=1``, where they fail.
"""

from __future__ import annotations

import base64
import fcntl
import json
import os
import queue
import re
import shutil
import subprocess
import tempfile
import threading
import time
from dataclasses import dataclass, field
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
CONFIG = yaml.safe_load((REPO / "_config.yml").read_text())
TOC = yaml.safe_load((REPO / "_toc.yml").read_text())
BOOK_HTML = Path(os.environ.get("BNLAB_BOOK_HTML", REPO / "_build" / "html"))
SCREENSHOTS = REPO / "_build" / "screenshots"
REQUIRED = bool(os.environ.get("CI")) or os.environ.get("BNLAB_REQUIRE_BROWSER") == "1"

CHAPTERS = [
    "chapters/01_batchnorm_in_an_mlp",
    "chapters/02_placement",
    "chapters/03_bias_redundancy",
    "chapters/04_running_statistics",
    "chapters/05_eval_mode",
]
CITATION_KEYS = {
    "ioffe2015batch",
    "santurkar2018how",
    "bjorck2018understanding",
    "kohler2019exponential",
    "wu2021rethinking",
    "vanlaarhoven2017l2",
    "luo2019towards",
    "pytorch_batchnorm1d",
    "caffenet_benchmark",
}
LOCAL_SCHEMES = {"file", "data", "blob", "about"}


def toc_pages() -> list[str]:
    """Every page of the table of contents, root first, as docnames (paths without suffix)."""
    pages = [TOC["root"]]
    for part in TOC.get("parts", []):
        for chapter in part.get("chapters", []):
            pages.append(chapter["file"])
            pages.extend(section["file"] for section in chapter.get("sections", []))
    return pages


def source_of(page: str) -> Path:
    """The source file of a docname: a notebook or a Markdown page."""
    for suffix in (".ipynb", ".md"):
        if (REPO / f"{page}{suffix}").exists():
            return REPO / f"{page}{suffix}"
    raise FileNotFoundError(f"the table of contents names {page!r}, which is neither a notebook nor a Markdown file")


def expected_colab_link(notebook: str) -> str:
    """colab.research.google.com/github/<org>/<repo>/blob/<branch>/<path>.ipynb, from _config.yml's settings."""
    repo_path = urlsplit(CONFIG["repository"]["url"]).path.strip("/")
    colab = CONFIG["launch_buttons"]["colab_url"].rstrip("/")
    return f"{colab}/github/{repo_path}/blob/{CONFIG['repository']['branch']}/{notebook}"


def fail_or_skip(reason: str):
    if REQUIRED:
        pytest.fail(f"{reason} (required: CI or BNLAB_REQUIRE_BROWSER=1 is set)")
    pytest.skip(reason)


# --- configuration -------------------------------------------------------------------------------------------------


def test_repository_settings_name_a_github_repository_on_main():
    url = CONFIG["repository"]["url"]
    assert re.fullmatch(r"https://github\.com/[\w.-]+/[\w.-]+", url), url
    assert CONFIG["repository"]["branch"] == "main"
    assert CONFIG["launch_buttons"]["colab_url"] == "https://colab.research.google.com"


def test_toc_has_the_intro_the_five_chapters_the_exercises_and_references():
    pages = toc_pages()
    assert pages[0] == "intro"
    assert [p for p in pages if p in CHAPTERS] == CHAPTERS
    exercises = [p for p in pages if p.startswith("chapters/exercises/")]
    assert len(exercises) >= len(CHAPTERS)
    assert "references" in pages
    for page in pages:
        source_of(page)  # raises where a page has no source


def test_notebooks_execute_with_the_cache_and_a_timeout_for_the_full_profile():
    execute = CONFIG["execute"]
    assert execute["execute_notebooks"] == "cache"
    assert execute["timeout"] >= 1800 and execute["allow_errors"] is False
    # A shared cache path would hand ci-profile outputs to the full build: each build keeps its own.
    assert not execute.get("cache")


def test_bibliography_holds_the_course_references_and_every_citation_resolves():
    bib = (REPO / "references.bib").read_text()
    keys = set(re.findall(r"^@\w+\{([^,\s]+),", bib, flags=re.MULTILINE))
    assert CITATION_KEYS <= keys, f"missing from references.bib: {sorted(CITATION_KEYS - keys)}"
    assert CONFIG["bibtex_bibfiles"] == ["references.bib"]
    assert "{bibliography}" in (REPO / "references.md").read_text()
    cited = set()
    for page in toc_pages():
        for group in re.findall(r"\{cite(?::\w+)?\}`([^`]+)`", source_of(page).read_text()):
            cited.update(key.strip() for key in group.split(","))
    assert cited <= keys, f"cited but not in references.bib: {sorted(cited - keys)}"


def test_mathjax_and_the_widget_manager_are_served_from_the_book():
    sphinx = CONFIG["sphinx"]["config"]
    scripts = [sphinx["mathjax_path"], *sphinx["nb_ipywidgets_js"]]
    for script in scripts:
        assert "//" not in script, f"{script} is not a path inside the book"
    for static_dir in sphinx["html_static_path"]:
        assert not Path(static_dir).is_absolute()
    assert "require" not in " ".join(sphinx["nb_ipywidgets_js"]), "embed.js needs no require.js"


# --- the built book -------------------------------------------------------------------------------------------------


def built_page(page: str) -> Path:
    if not (BOOK_HTML / "index.html").exists():
        fail_or_skip(f"no built book in {BOOK_HTML} (run `make book`, or set BNLAB_BOOK_HTML)")
    path = BOOK_HTML / f"{page}.html"
    assert path.exists(), f"{page} is in the table of contents but not in the built book {BOOK_HTML}"
    return path


class _Resources(HTMLParser):
    """The URLs a page loads by itself: scripts, stylesheets and preloads, images, frames, media."""

    LOADING = {"script": "src", "img": "src", "iframe": "src", "source": "src", "video": "src", "audio": "src"}

    def __init__(self):
        super().__init__()
        self.urls: list[str] = []

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "link" and set((attrs.get("rel") or "").split()) & {"stylesheet", "preload", "modulepreload", "icon"}:
            self.urls.append(attrs.get("href") or "")
        elif tag in self.LOADING and attrs.get(self.LOADING[tag]):
            self.urls.append(attrs[self.LOADING[tag]])


@pytest.mark.parametrize("page", toc_pages())
def test_page_loads_nothing_from_outside_the_book(page):
    parser = _Resources()
    parser.feed(built_page(page).read_text())
    remote = [u for u in parser.urls if u.startswith("//") or urlsplit(u).scheme not in ("", *LOCAL_SCHEMES)]
    assert not remote, f"{page} loads {remote}"


# --- the built book in a browser ------------------------------------------------------------------------------------

CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--no-default-browser-check",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-extensions",
    "--disable-default-apps",
    "--mute-audio",
    "--hide-scrollbars",
    # Networking off: no name resolves (the page also runs with the DevTools network emulation offline).
    "--host-resolver-rules=MAP * ~NOTFOUND",
    "--remote-debugging-pipe",
]


class DevToolsPipe:
    """Chromium driven over the Chrome DevTools Protocol on the pipe --remote-debugging-pipe opens.

    The browser reads JSON commands, each ended by a NUL byte, from its file descriptor 3 and writes replies and
    events to its descriptor 4. A thread splits the replies; ``send`` waits for the reply to its command and keeps
    the events that arrive meanwhile in ``events``.
    """

    def __init__(self, executable: str, profile_dir: Path):
        commands_in, self._commands = os.pipe()
        self._replies, replies_out = os.pipe()
        # Move the browser's ends above 2..4, so that placing them on 3 and 4 cannot overwrite one with the other.
        child_in = fcntl.fcntl(commands_in, fcntl.F_DUPFD_CLOEXEC, 10)
        child_out = fcntl.fcntl(replies_out, fcntl.F_DUPFD_CLOEXEC, 10)
        os.close(commands_in)
        os.close(replies_out)

        def pipes_on_3_and_4():
            os.dup2(child_in, 3)  # dup2's copies are inherited by the browser; the originals close on exec
            os.dup2(child_out, 4)

        self.log = profile_dir / "chromium.log"
        with open(self.log, "wb") as log:
            self.process = subprocess.Popen(
                [executable, *CHROMIUM_FLAGS, f"--user-data-dir={profile_dir}", "about:blank"],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                close_fds=False,
                preexec_fn=pipes_on_3_and_4,
            )
        os.close(child_in)
        os.close(child_out)
        self._messages: queue.Queue = queue.Queue()
        self.events: list[dict] = []
        self._next_id = 0
        threading.Thread(target=self._read_replies, daemon=True).start()

    def _read_replies(self):
        buffer = b""
        while chunk := os.read(self._replies, 1 << 16):
            buffer += chunk
            *messages, buffer = buffer.split(b"\0")
            for message in messages:
                self._messages.put(json.loads(message))
        self._messages.put(None)

    def send(self, method: str, params: dict | None = None, *, session: str | None = None, timeout: float = 30):
        self._next_id += 1
        command = {"id": self._next_id, "method": method, "params": params or {}}
        if session:
            command["sessionId"] = session
        os.write(self._commands, json.dumps(command).encode() + b"\0")
        deadline = time.monotonic() + timeout
        while True:
            message = self._next_message(deadline, waiting_for=method)
            if message.get("id") == self._next_id:
                if "error" in message:
                    raise RuntimeError(f"{method}: {message['error']}")
                return message["result"]
            self.events.append(message)

    def wait_for_event(self, method: str, *, timeout: float = 30) -> dict:
        deadline = time.monotonic() + timeout
        while not any(e.get("method") == method for e in self.events):
            self.events.append(self._next_message(deadline, waiting_for=method))
        return next(e for e in self.events if e.get("method") == method)

    def drain(self) -> None:
        """Keep every event that has arrived so far."""
        while True:
            try:
                message = self._messages.get_nowait()
            except queue.Empty:
                return
            if message is not None:
                self.events.append(message)

    def _next_message(self, deadline: float, *, waiting_for: str) -> dict:
        try:
            message = self._messages.get(timeout=max(0.0, deadline - time.monotonic()))
        except queue.Empty:
            raise TimeoutError(f"Chromium did not answer {waiting_for} in time") from None
        if message is None:
            raise RuntimeError(f"Chromium closed the DevTools pipe; its log: {self.log.read_text()[-2000:]}")
        return message

    def close(self) -> None:
        try:
            self.send("Browser.close", timeout=5)
        except (RuntimeError, TimeoutError, OSError):
            pass
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        os.close(self._commands)


# Run in the page once it has loaded: wait for MathJax's first typesetting, for the widget manager to render every
# saved view, and for every image; then describe what the page shows.
INSPECT_PAGE = r"""
(async () => {
  const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));
  if (window.MathJax && MathJax.startup && MathJax.startup.promise) await MathJax.startup.promise;
  const views = () => [...document.querySelectorAll('script[type="application/vnd.jupyter.widget-view+json"]')];
  const rendered = (view) => {
    const area = view.previousElementSibling;
    return !!(area && area.classList.contains("widget-subarea") && area.childElementCount > 0);
  };
  for (let i = 0; i < 150 && !views().every(rendered); i++) await sleep(100);
  for (const img of document.images) img.loading = "eager";
  await Promise.all([...document.images].map((img) =>
    img.complete ? null : new Promise((resolve) => { img.onload = img.onerror = resolve; })));
  if (window.MathJax && MathJax.startup && MathJax.startup.promise) await MathJax.startup.promise;
  await sleep(200);

  const skip = "pre, code, script, style, textarea, mjx-container";
  const walker = document.createTreeWalker(document.body, NodeFilter.SHOW_TEXT);
  const rawMath = [];
  for (let node = walker.nextNode(); node; node = walker.nextNode()) {
    if (node.nodeValue.includes("$$") && !node.parentElement.closest(skip)) rawMath.push(node.nodeValue.trim().slice(0, 80));
  }
  const math = [...document.querySelectorAll(".math")];
  return {
    math: math.length,
    mathUnrendered: math.filter((m) => !m.querySelector("mjx-container")).map((m) => m.textContent.trim().slice(0, 80)),
    mathErrors: [...document.querySelectorAll("mjx-merror")].map((m) => m.textContent.slice(0, 80)),
    rawMath,
    images: [...document.images].map((img) => ({src: img.src.slice(0, 120), loaded: img.complete && img.naturalWidth > 0})),
    widgetViews: views().length,
    widgetViewsRendered: views().filter(rendered).length,
    widgetErrors: [...document.querySelectorAll(".widget-subarea")].filter((a) => a.textContent.includes("Error displaying widget")).length,
    colabLinks: [...document.querySelectorAll('a[href*="colab.research.google.com"]')].map((a) => a.href),
    height: Math.ceil(document.documentElement.scrollHeight),
  };
})()
"""


@dataclass
class PageReport:
    """What a page did in the browser."""

    page: str
    shown: dict
    requests: list[str] = field(default_factory=list)
    console_errors: list[str] = field(default_factory=list)
    screenshot: Path | None = None

    @property
    def remote_requests(self) -> list[str]:
        return [url for url in self.requests if urlsplit(url).scheme not in LOCAL_SCHEMES]


def _console_errors(events: list[dict]) -> list[str]:
    errors = []
    urls = {e["params"]["requestId"]: e["params"]["request"]["url"] for e in events
            if e.get("method") == "Network.requestWillBeSent"}
    for event in events:
        method, params = event.get("method"), event.get("params", {})
        if method == "Runtime.exceptionThrown":
            details = params["exceptionDetails"]
            description = details.get("exception", {}).get("description") or details.get("text")
            errors.append(f"uncaught: {description} ({details.get('url', '')}:{details.get('lineNumber')})")
        elif method == "Runtime.consoleAPICalled" and params.get("type") in ("error", "assert"):
            errors.append("console.error: " + " ".join(str(a.get("value", a.get("description", ""))) for a in params["args"]))
        elif method == "Log.entryAdded" and params["entry"]["level"] == "error":
            errors.append(f"{params['entry']['text']} {params['entry'].get('url', '')}".strip())
        elif method == "Network.loadingFailed" and not params.get("canceled"):
            errors.append(f"failed to load ({params.get('errorText')}): {urls.get(params.get('requestId'), '?')}")
    return errors


class Browser:
    """One Chromium for the whole module; each page opens in a fresh tab."""

    def __init__(self, executable: str, profile_dir: Path):
        self.devtools = DevToolsPipe(executable, profile_dir)
        self.reports: dict[str, PageReport] = {}

    def visit(self, page: str) -> PageReport:
        if page not in self.reports:
            self.reports[page] = self._visit(page, built_page(page))
        return self.reports[page]

    def _visit(self, page: str, path: Path) -> PageReport:
        devtools = self.devtools
        target = devtools.send("Target.createTarget", {"url": "about:blank"})["targetId"]
        session = devtools.send("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
        try:
            for domain in ("Page", "Runtime", "Network", "Log"):
                devtools.send(f"{domain}.enable", session=session)
            devtools.send(
                "Network.emulateNetworkConditions",
                {"offline": True, "latency": 0, "downloadThroughput": -1, "uploadThroughput": -1},
                session=session,
            )
            devtools.send(
                "Emulation.setDeviceMetricsOverride",
                {"width": 1280, "height": 900, "deviceScaleFactor": 1, "mobile": False},
                session=session,
            )
            devtools.events.clear()
            devtools.send("Page.navigate", {"url": path.resolve().as_uri()}, session=session)
            devtools.wait_for_event("Page.loadEventFired")
            shown = devtools.send(
                "Runtime.evaluate",
                {"expression": INSPECT_PAGE, "awaitPromise": True, "returnByValue": True},
                session=session,
                timeout=60,
            )
            if "exceptionDetails" in shown:
                raise RuntimeError(f"inspecting {page} failed: {shown['exceptionDetails']}")
            report = PageReport(page, shown["result"]["value"])
            report.screenshot = self._screenshot(page, report.shown["height"], session)
            devtools.drain()
            ours = [e for e in devtools.events if e.get("sessionId") == session]
            report.requests = [e["params"]["request"]["url"] for e in ours if e.get("method") == "Network.requestWillBeSent"]
            report.console_errors = _console_errors(ours)
            return report
        finally:
            devtools.send("Target.closeTarget", {"targetId": target})
            devtools.events.clear()

    def _screenshot(self, page: str, height: int, session: str) -> Path:
        # The whole page in one picture: lay it out in a viewport as tall as the page, then capture that viewport.
        # (Capturing beyond a short viewport shifts the theme's sticky sidebars over the content.)
        self.devtools.send(
            "Emulation.setDeviceMetricsOverride",
            {"width": 1280, "height": max(900, min(height, 12_000)), "deviceScaleFactor": 1, "mobile": False},
            session=session,
        )
        shot = self.devtools.send("Page.captureScreenshot", {"format": "png"}, session=session, timeout=60)
        path = SCREENSHOTS / f"{page.replace('/', '__')}.png"
        path.write_bytes(base64.b64decode(shot["data"]))
        return path


def find_chromium() -> str | None:
    for name in (os.environ.get("BNLAB_CHROMIUM"), "chromium", "chromium-browser", "google-chrome", "chrome"):
        if name and (found := shutil.which(name)):
            return found
    return None


@pytest.fixture(scope="module")
def browser():
    executable = find_chromium()
    if executable is None:
        fail_or_skip("no Chromium found (apt-get install chromium, or set BNLAB_CHROMIUM)")
    if not (BOOK_HTML / "index.html").exists():
        fail_or_skip(f"no built book in {BOOK_HTML} (run `make book`, or set BNLAB_BOOK_HTML)")
    shutil.rmtree(SCREENSHOTS, ignore_errors=True)
    SCREENSHOTS.mkdir(parents=True)
    with tempfile.TemporaryDirectory(prefix="bnlab-chromium-") as profile:
        chromium = Browser(executable, Path(profile))
        try:
            yield chromium
        finally:
            chromium.devtools.close()


@pytest.mark.parametrize("page", toc_pages())
def test_page_renders_offline_in_a_browser(browser, page):
    report = browser.visit(page)
    shown = report.shown
    assert not report.remote_requests, f"{page} requested {report.remote_requests}"
    assert not report.console_errors, f"{page} logged errors: {report.console_errors}"
    assert not shown["mathUnrendered"], f"{page}: MathJax left math unrendered: {shown['mathUnrendered']}"
    assert not shown["mathErrors"], f"{page}: MathJax could not typeset: {shown['mathErrors']}"
    assert not shown["rawMath"], f"{page} shows raw $$ math: {shown['rawMath']}"
    unloaded = [img["src"] for img in shown["images"] if not img["loaded"]]
    assert not unloaded, f"{page}: images did not load: {unloaded}"
    assert shown["widgetViewsRendered"] == shown["widgetViews"], f"{page}: widget views left unrendered"
    assert shown["widgetErrors"] == 0, f"{page}: the widget manager could not display a widget"
    if source_of(page).suffix == ".ipynb":
        expected = expected_colab_link(f"{page}.ipynb")
        assert shown["colabLinks"] == [expected], f"{page}: Colab links {shown['colabLinks']}, expected {expected}"
    else:
        assert shown["colabLinks"] == []
    assert report.screenshot.stat().st_size > 0


def test_math_renders_somewhere_in_the_book(browser):
    assert sum(browser.visit(page).shown["math"] for page in toc_pages()) > 0


def test_at_least_one_widget_view_renders_in_the_book(browser):
    rendered = {page: browser.visit(page).shown["widgetViewsRendered"] for page in toc_pages()}
    assert sum(rendered.values()) >= 1, f"no page of the book renders a widget view: {rendered}"
