"""The book as readers get it: its configuration, and every built page opened in a headless browser.

The page tests read a built book: ``BNLAB_BOOK_HTML`` (``make test`` builds the ci profile into
_build/ci/_build/html and sets it), else _build/html. Each page of the table of contents is opened from disk in
Debian's Chromium with networking off, driven over the DevTools protocol on a pipe (no driver, no open port). A page
passes when it requested nothing but local files, logged no console error, rendered its math with MathJax, loaded
every image, rendered every widget view from the saved widget state, and (for a notebook) links to itself in Colab.

Every interactive figure (``bnlab.plots.interactive``) on a page is driven too: a script injected into the page
changes each of its controls in turn (a drop-down list, a radio button, a slider, as a reader would, with the
events the browser sends), and the drawn lines (the SVG paths' data) must change each time, with no console error.
Screenshots go to _build/screenshots/ for a person to look at: each page, and each figure before and after each
change.

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
    "chapters/06_batchnorm_in_a_cnn",
    "chapters/07_why_batchnorm_helps",
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


def test_toc_has_the_intro_the_chapters_in_order_the_exercises_and_references():
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


def test_bibliography_holds_the_course_references_every_citation_resolves_and_every_entry_is_cited():
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
    # references.md lists every entry and says the chapters cite them where they use them: none may go uncited.
    assert keys <= cited, f"in references.bib but cited by no page: {sorted(keys - cited)}"


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


@pytest.mark.parametrize("page", toc_pages())
def test_a_page_without_widget_views_loads_no_widgets_manager_or_state(page):
    html = built_page(page).read_text()
    if 'type="application/vnd.jupyter.widget-view+json"' in html:
        return
    assert 'type="application/vnd.jupyter.widget-state+json"' not in html, f"{page} carries unused widget state"
    assert "jupyter-widgets/embed.js" not in html, f"{page} loads the widgets manager for no widget"


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


# Injected into a page: helpers to wait for its interactive figures, to read what a figure draws, and to change one
# of its controls as a reader would (select another option, click another radio button, move a slider one step).
EXPLORER_HELPERS = r"""
window.bnlabTest = {
  roots: () => [...document.querySelectorAll(".bnlab-explorer")],
  ready: async () => {
    const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));
    const roots = window.bnlabTest.roots();
    for (let i = 0; i < 200 && !roots.every((r) => r.bnlabView || r.classList.contains("bnlab-explorer-static-only")); i++) {
      await sleep(100);
    }
    return roots.map((root) => {
      const box = root.getBoundingClientRect();
      const staticImage = root.querySelector(".bnlab-explorer-static");
      return {
        id: root.id,
        live: !!root.bnlabView,
        staticHidden: !!staticImage && getComputedStyle(staticImage).display === "none",
        staticLoaded: !!staticImage && staticImage.complete && staticImage.naturalWidth > 0,
        caption: (root.querySelector("figcaption") || {}).textContent || "",
        controls: [...root.querySelectorAll(".bnlab-explorer-controls .vega-bind")].map((bind) => ({
          label: (bind.querySelector(".vega-bind-name") || {}).textContent || "",
          kind: bind.querySelector("select") ? "select" : bind.querySelector("input[type=radio]") ? "radio" : "slider",
        })),
        axisTitles: [...root.querySelectorAll(".role-axis-title")].map((t) => t.textContent),
        legends: root.querySelectorAll(".role-legend").length,
      };
    });
  },
  printed: () => window.bnlabTest.roots().map((root) => ({
    staticShown: getComputedStyle(root.querySelector(".bnlab-explorer-static")).display !== "none",
    chartShown: getComputedStyle(root.querySelector(".bnlab-explorer-view")).display !== "none",
  })),
  clip: (k) => {
    const box = window.bnlabTest.roots()[k].getBoundingClientRect();
    return {x: box.left + window.scrollX, y: box.top + window.scrollY, width: box.width, height: box.height, scale: 1};
  },
  drawn: (k) => {
    const root = window.bnlabTest.roots()[k];
    return {
      lines: [...root.querySelectorAll(".bnlab-explorer-view .mark-line path")].map((p) => p.getAttribute("d")),
      title: [...root.querySelectorAll(".bnlab-explorer-view .role-title-text")].map((t) => t.textContent).join(" "),
    };
  },
  change: async (k, c) => {
    const root = window.bnlabTest.roots()[k];
    const bind = root.querySelectorAll(".bnlab-explorer-controls .vega-bind")[c];
    const select = bind.querySelector("select");
    const slider = bind.querySelector("input[type=range]");
    const radios = [...bind.querySelectorAll("input[type=radio]")];
    let from, to;
    if (select) {
      from = select.value;
      select.selectedIndex = (select.selectedIndex + 1) % select.options.length;
      to = select.value;
      select.dispatchEvent(new Event("change", {bubbles: true}));
    } else if (slider) {
      from = slider.value;
      const step = +slider.step, value = +slider.value;
      slider.value = value + step <= +slider.max + 1e-9 ? value + step : value - step;
      to = slider.value;
      slider.dispatchEvent(new Event("input", {bubbles: true}));
    } else {
      from = radios.find((r) => r.checked).value;
      const other = radios.find((r) => !r.checked);
      other.click();
      to = other.value;
    }
    await root.bnlabView.runAsync();
    return {from, to};
  },
};
"""


@dataclass
class PageReport:
    """What a page did in the browser."""

    page: str
    shown: dict
    requests: list[str] = field(default_factory=list)
    console_errors: list[str] = field(default_factory=list)
    screenshot: Path | None = None
    explorers: list[dict] = field(default_factory=list)

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

    def open(self, path: Path, name: str) -> PageReport:
        """Any HTML file, reported under ``name``."""
        return self._visit(name, path)

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
            report.explorers = self._drive_explorers(page, session)
            devtools.drain()
            ours = [e for e in devtools.events if e.get("sessionId") == session]
            report.requests = [e["params"]["request"]["url"] for e in ours if e.get("method") == "Network.requestWillBeSent"]
            report.console_errors = _console_errors(ours)
            return report
        finally:
            devtools.send("Target.closeTarget", {"targetId": target})
            devtools.events.clear()

    def _evaluate(self, expression: str, session: str):
        result = self.devtools.send(
            "Runtime.evaluate", {"expression": expression, "awaitPromise": True, "returnByValue": True},
            session=session, timeout=60,
        )
        if "exceptionDetails" in result:
            raise RuntimeError(f"{expression[:60]}... failed in the page: {result['exceptionDetails']}")
        return result["result"].get("value")

    def _drive_explorers(self, page: str, session: str) -> list[dict]:
        """Change every control of every interactive figure on the page, one at a time; record what was drawn
        before and after each change, with screenshots of the figure."""
        self._evaluate(EXPLORER_HELPERS, session)
        explorers = self._evaluate("window.bnlabTest.ready()", session)
        for k, explorer in enumerate(explorers):
            name = f"{page.replace('/', '__')}__explorer-{k}"
            explorer["screenshots"] = [self._clip(f"{name}__before.png", k, session)]
            explorer["changes"] = []
            if not explorer["live"]:
                continue
            for c, control in enumerate(explorer["controls"]):
                before = self._evaluate(f"window.bnlabTest.drawn({k})", session)
                change = self._evaluate(f"window.bnlabTest.change({k}, {c})", session)
                after = self._evaluate(f"window.bnlabTest.drawn({k})", session)
                explorer["changes"].append({**control, **change, "before": before, "after": after})
                explorer["screenshots"].append(self._clip(f"{name}__after-{c}-{control['kind']}.png", k, session))
        if explorers:  # printed, each figure is its static image
            self.devtools.send("Emulation.setEmulatedMedia", {"media": "print"}, session=session)
            for explorer, printed in zip(explorers, self._evaluate("window.bnlabTest.printed()", session)):
                explorer["printed"] = printed
            self.devtools.send("Emulation.setEmulatedMedia", {"media": ""}, session=session)
        return explorers

    def _clip(self, filename: str, k: int, session: str) -> Path:
        """A screenshot of the page's k-th interactive figure (the viewport is as tall as the page by now)."""
        clip = self._evaluate(f"window.bnlabTest.clip({k})", session)
        shot = self.devtools.send("Page.captureScreenshot", {"format": "png", "clip": clip}, session=session, timeout=60)
        path = SCREENSHOTS / filename
        path.write_bytes(base64.b64decode(shot["data"]))
        return path

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
def chromium():
    """One headless Chromium for the module (screenshots start afresh)."""
    executable = find_chromium()
    if executable is None:
        fail_or_skip("no Chromium found (apt-get install chromium, or set BNLAB_CHROMIUM)")
    shutil.rmtree(SCREENSHOTS, ignore_errors=True)
    SCREENSHOTS.mkdir(parents=True)
    with tempfile.TemporaryDirectory(prefix="bnlab-chromium-") as profile:
        opened = Browser(executable, Path(profile))
        try:
            yield opened
        finally:
            opened.devtools.close()


@pytest.fixture(scope="module")
def browser(chromium):
    """The browser, for tests of the built book."""
    if not (BOOK_HTML / "index.html").exists():
        fail_or_skip(f"no built book in {BOOK_HTML} (run `make book`, or set BNLAB_BOOK_HTML)")
    return chromium


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


# --- interactive figures -------------------------------------------------------------------------------------------

# The chapters' interactive figures (at least this many per page; other pages may have them too).
EXPLORERS = {"chapters/02_placement": 1, "chapters/04_running_statistics": 1, "chapters/07_why_batchnorm_helps": 1}
VEGA_SCRIPTS = ("_static/vega/vega.min.js", "_static/vega/vega-lite.min.js", "_static/vega/vega-embed.min.js")


def test_the_chapters_explorers_are_in_the_book():
    for page, count in EXPLORERS.items():
        html = built_page(page).read_text()
        assert html.count('class="bnlab-explorer"') >= count, f"{page}: expected {count} interactive figure(s)"


@pytest.mark.parametrize("page", toc_pages())
def test_a_page_with_an_explorer_loads_vega_from_the_book_at_its_depth(page):
    path = built_page(page)
    parser = _Resources()
    parser.feed(path.read_text())
    vega = [u for u in parser.urls if "/vega/" in u or u.startswith("vega/")]
    if 'class="bnlab-explorer"' not in path.read_text():
        assert not vega, f"{page} has no interactive figure but loads {vega}"
        return
    resolved = [(path.parent / u.split("?")[0]).resolve() for u in vega]
    expected = [(BOOK_HTML / script).resolve() for script in VEGA_SCRIPTS]
    assert resolved == expected, f"{page} loads {vega}; expected the book's own {VEGA_SCRIPTS}, in that order"
    assert all(p.is_file() and p.stat().st_size > 10_000 for p in resolved)


@pytest.mark.parametrize("page", toc_pages())
def test_every_explorer_responds_to_each_of_its_controls_offline(browser, page):
    report = browser.visit(page)
    assert len(report.explorers) >= EXPLORERS.get(page, 0), f"{page}: its interactive figures did not show"
    assert not report.console_errors, f"{page} logged errors: {report.console_errors}"
    assert not report.remote_requests, f"{page} requested {report.remote_requests}"
    for explorer in report.explorers:
        where = f"{page}, {explorer['id']}"
        assert explorer["live"], f"{where}: the chart was not drawn (only the static image shows)"
        assert explorer["staticHidden"] and explorer["staticLoaded"], f"{where}: static image shown or broken"
        assert explorer["caption"].strip(), f"{where}: no caption"
        assert explorer["controls"] and all(c["label"].strip() for c in explorer["controls"]), f"{where}: unlabelled control"
        assert len(explorer["axisTitles"]) >= 2 and all(t.strip() for t in explorer["axisTitles"]), f"{where}: axis titles"
        for change in explorer["changes"]:
            what = f"{where}: {change['kind']} {change['label'].strip()!r} from {change['from']} to {change['to']}"
            assert change["from"] != change["to"], f"{what}: the control did not move"
            assert change["before"]["lines"] and change["after"]["lines"], f"{what}: no lines drawn"
            assert change["after"]["lines"] != change["before"]["lines"], f"{what}: the drawn lines did not change"
            assert change["after"]["title"] != change["before"]["title"], f"{what}: the title did not follow"
        assert len(explorer["changes"]) == len(explorer["controls"])
        assert explorer["printed"] == {"staticShown": True, "chartShown": False}, f"{where}: printed, not its static image"
        assert all(shot.stat().st_size > 0 for shot in explorer["screenshots"])


def test_each_kind_of_control_is_driven_somewhere_in_the_book(browser):
    kinds = {c["kind"] for page in toc_pages() for e in browser.visit(page).explorers for c in e["changes"]}
    assert kinds == {"select", "radio", "slider"}, kinds


def test_an_explorer_outside_the_book_offline_keeps_its_static_image(chromium, tmp_path):
    """In Jupyter or Colab the figure's script loads Vega from a CDN; offline that fails, and the static image stays,
    with a warning, not an error."""
    from bnlab.plots.interactive import explorer

    records = [{"epoch": e, "loss": 1 / (e + s), "seed": s} for s in (1, 2, 3) for e in range(1, 5)]
    figure = explorer(records, x="epoch", y="loss", controls=["seed"], caption="Move the seed slider.")
    page = tmp_path / "notebook-output.html"
    page.write_text(f"<!doctype html><html><head><meta charset='utf-8'></head><body>{figure.html}</body></html>")
    report = chromium.open(page, "outside-the-book")
    (shown,) = report.explorers
    assert not shown["live"] and not shown["staticHidden"] and shown["staticLoaded"]
    assert report.remote_requests, "the figure's script did not try to load Vega"
    assert all(urlsplit(u).hostname == "cdn.jsdelivr.net" for u in report.remote_requests), report.remote_requests
    errors = [e for e in report.console_errors if "cdn.jsdelivr.net" not in e]  # the failed loads are expected here
    assert not errors, errors
