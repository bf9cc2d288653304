"""Sphinx extension: each page's scripts: Vega for interactive figures, each script once, widgets with MathJax 3.

A page that holds an interactive figure (``bnlab.plots.interactive``: an element of class ``bnlab-explorer``) loads
vega, vega-lite and vega-embed from the book's own ``_static/vega/`` (``make vendor`` puts them there), in its
``<head>``, so that ``vegaEmbed`` is defined before the figure's script runs and nothing is fetched from a CDN.
Sphinx writes each path relative to the page, at any depth (``chapters/``, ``chapters/exercises/``). Other pages
load none of it.

A page that shows no widget view loads neither the Jupyter widgets manager nor any widget state: a notebook's
cells that the book leaves out (a live explorer, say) still leave their widgets' state in the notebook, which
MyST-NB would otherwise put on the page.

Two fixes, each for a console error the browser test (tests/test_book.py) would otherwise report on every page:

1. Sphinx 7.4 lists a body-only script (``app.add_js_file(None, body=...)``) twice when an extension adds it after
   the HTML builder has started: once from the registry (filename ``''``) and once directly (filename ``None``).
   sphinx-thebe's ``const THEBE_JS_URL = ...`` then runs twice, a SyntaxError. Each page keeps the first copy.
2. The Jupyter widgets HTML manager typesets widget labels with MathJax 2's ``MathJax.Hub.Queue``; the book loads
   MathJax 3. A few lines of JavaScript route those calls to MathJax 3's ``typesetPromise``.
"""

from __future__ import annotations

# Runs after the deferred MathJax script, before the widget manager renders (it waits for the window's load event).
MATHJAX2_ADAPTER = """
document.addEventListener("DOMContentLoaded", () => {
  const mathjax = window.MathJax;
  if (mathjax && mathjax.startup && !mathjax.Hub) {
    mathjax.Hub = {
      Queue: (command) => mathjax.startup.promise.then(() => mathjax.typesetPromise([command[2]])),
    };
  }
});
""".strip()


# In _static: the files the Makefile's vendor target copies from book/package-lock.json's vega packages, in load order.
VEGA_SCRIPTS = ("vega/vega.min.js", "vega/vega-lite.min.js", "vega/vega-embed.min.js")
EXPLORER_MARK = 'class="bnlab-explorer"'


def add_vega_to_pages_with_explorers(app, pagename, templatename, context, doctree) -> None:
    """``html-page-context``: a page whose body holds an interactive figure loads Vega (for this page only)."""
    if EXPLORER_MARK in (context.get("body") or ""):
        for script in VEGA_SCRIPTS:
            app.add_js_file(script, priority=400)


WIDGET_STATE = "application/vnd.jupyter.widget-state+json"
WIDGET_VIEW = "application/vnd.jupyter.widget-view+json"


def drop_unused_widget_scripts(app, pagename, templatename, context, doctree) -> None:
    """``html-page-context``, after MyST-NB's: no widget view on the page, no widget state and no widgets manager."""
    scripts = getattr(app.builder, "_js_files", None)
    if not scripts or WIDGET_VIEW in (context.get("body") or ""):
        return
    manager = {f"_static/{path}" for path in getattr(app.config, "nb_ipywidgets_js", None) or {}}  # as Sphinx lists them
    scripts[:] = [
        script for script in scripts
        if getattr(script, "attributes", {}).get("type") != WIDGET_STATE and getattr(script, "filename", None) not in manager
    ]


def _script_key(script) -> tuple:
    """What makes two of Sphinx's script entries the same script, whether its filename is None or ''."""
    filename = getattr(script, "filename", script) or ""
    attributes = getattr(script, "attributes", {})
    return (filename, getattr(script, "priority", None), tuple(sorted((k, str(v)) for k, v in attributes.items())))


def drop_duplicate_scripts(app, pagename, templatename, context, doctree) -> None:
    """``html-page-context``: keep the first of each script in the page's script list (in place: the page uses it)."""
    scripts = getattr(app.builder, "_js_files", None)
    if not scripts:
        return
    seen: set[tuple] = set()
    unique = []
    for script in scripts:
        key = _script_key(script)
        if key not in seen:
            seen.add(key)
            unique.append(script)
    scripts[:] = unique


def setup(app):
    # Added here, before the builder exists, so it is listed once.
    app.add_js_file(None, body=MATHJAX2_ADAPTER)
    app.connect("html-page-context", add_vega_to_pages_with_explorers)
    # After MyST-NB's handler (priority 500), which adds the widget scripts to a page.
    app.connect("html-page-context", drop_duplicate_scripts, priority=900)
    app.connect("html-page-context", drop_unused_widget_scripts, priority=900)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
