"""How an interactive figure travels in a notebook's output: HTML that draws a Vega-Lite spec wherever it is shown.

``explorer_html`` writes the ``text/html`` output of ``bnlab.plots.interactive``: the controls' and the chart's
containers, a static PNG, the caption, the spec (inert JSON) and a short script. The script draws the spec with
``vegaEmbed`` from the page when the page has it (the book loads its own copy, see ``book/page_scripts.py``),
else it loads ``VEGA_VERSIONS`` from jsDelivr (with require.js where the page has it, as in Jupyter Notebook 6),
as Altair's own HTML renderer does; if that fails (offline), the static image stays. The image is also what
print shows, and what readers without JavaScript see.
"""

from __future__ import annotations

import base64
import html
import io
import json

# The JavaScript an explorer needs: the versions book/package.json pins (Vega-Lite: the schema Altair 5.5 writes).
VEGA_VERSIONS = {"vega": "5.33.1", "vega-lite": "5.20.1", "vega-embed": "6.29.0"}
VEGA_FILES = {"vega": "build/vega.min.js", "vega-lite": "build/vega-lite.min.js", "vega-embed": "build/vega-embed.min.js"}
CDN = "https://cdn.jsdelivr.net/npm"


def png_bytes(figure, *, dpi: float = 90) -> bytes:
    """The figure as PNG bytes, cropped to what is drawn."""
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=dpi, bbox_inches="tight")
    return buffer.getvalue()


def cdn_urls() -> dict[str, str]:
    return {name: f"{CDN}/{name}@{version}/{VEGA_FILES[name]}" for name, version in VEGA_VERSIONS.items()}


STYLE = """
#{id} {{ margin: 1em 0; overflow-x: auto; }}
#{id} .bnlab-explorer-controls .vega-bind {{ display: inline-block; margin: 0 1.4em 0.4em 0; }}
#{id} .bnlab-explorer-controls .vega-bind-radio label {{ margin-right: 0.7em; }}
#{id} .bnlab-explorer-controls .vega-bind-name {{ font-weight: 600; margin-right: 0.3em; }}
#{id} .bnlab-explorer-controls input[type=range] {{ vertical-align: middle; }}
#{id} .bnlab-explorer-static {{ max-width: 100%; height: auto; }}
#{id}.bnlab-explorer-live .bnlab-explorer-static {{ display: none; }}
#{id} figcaption {{ font-size: 0.9em; margin-top: 0.4em; }}
@media print {{
  #{id} .bnlab-explorer-controls, #{id} .bnlab-explorer-view {{ display: none; }}
  #{id}.bnlab-explorer-live .bnlab-explorer-static {{ display: block; }}
}}
"""

# Draws the chart with vegaEmbed: the page's own copy where it has one (the book), else the same versions from a CDN.
LOADER = """
(function () {
  var root = document.getElementById(%(id)s);
  if (!root || root.getAttribute("data-drawing")) return;
  root.setAttribute("data-drawing", "1");
  var spec = JSON.parse(root.querySelector(".bnlab-explorer-spec").textContent);
  var options = {renderer: "svg", actions: false, bind: root.querySelector(".bnlab-explorer-controls")};
  function draw(vegaEmbed) {
    return vegaEmbed(root.querySelector(".bnlab-explorer-view"), spec, options).then(function (result) {
      root.bnlabView = result.view;
      showLogSliders(result.view);
      root.classList.add("bnlab-explorer-live");
    });
  }
  // A log slider moves through log10 of its field: beside it, show the value itself.
  function showLogSliders(view) {
    JSON.parse(root.getAttribute("data-log-sliders") || "[]").forEach(function (name) {
      var input = root.querySelector('input[name="' + name + '"]');
      var readout = input && input.nextElementSibling;
      if (!readout) return;
      function show(value) { readout.textContent = String(+Math.pow(10, value).toPrecision(3)); }
      show(view.signal(name));
      input.addEventListener("input", function () { show(+input.value); });
    });
  }
  function keepStatic(error) {
    root.classList.add("bnlab-explorer-static-only");
    console.warn("Interactive figure not drawn (" + error + "); the static image stays.");
  }
  if (window.vegaEmbed) { draw(window.vegaEmbed).catch(keepStatic); return; }
  var urls = %(urls)s;
  if (typeof window.define === "function" && window.define.amd && window.require && window.require.config) {
    var paths = {};
    for (var name in urls) paths[name] = urls[name].replace(/\\.js$/, "");
    window.require.config({paths: paths});
    window.require(["vega-embed"], function (vegaEmbed) { draw(vegaEmbed).catch(keepStatic); }, keepStatic);
    return;
  }
  function load(name, global) {
    if (window[global]) return Promise.resolve();
    return new Promise(function (resolve, reject) {
      var script = document.createElement("script");
      script.src = urls[name];
      script.onload = resolve;
      script.onerror = function () { reject(new Error("could not load " + urls[name])); };
      document.head.appendChild(script);
    });
  }
  window.bnlabVegaLoading = window.bnlabVegaLoading || load("vega", "vega")
    .then(function () { return load("vega-lite", "vegaLite"); })
    .then(function () { return load("vega-embed", "vegaEmbed"); });
  window.bnlabVegaLoading.then(function () { return draw(window.vegaEmbed); }).catch(keepStatic);
})();
"""


def explorer_html(spec: dict, *, png: bytes, caption: str, figure_id: str, log_sliders=()) -> str:
    """The ``text/html`` output: controls, chart, static image, caption, the spec and the script that draws it.
    ``log_sliders`` names the spec's parameters that hold a base-10 logarithm (their readout shows the value)."""
    spec_json = json.dumps(spec, separators=(",", ":")).replace("</", "<\\/")
    image = base64.b64encode(png).decode("ascii")
    loader = LOADER % {"id": json.dumps(figure_id), "urls": json.dumps(cdn_urls())}
    text = html.escape(caption)
    return (
        f'<figure class="bnlab-explorer" id="{figure_id}" data-log-sliders="{html.escape(json.dumps(list(log_sliders)))}">'
        f"<style>{STYLE.format(id=figure_id)}</style>"
        '<div class="bnlab-explorer-controls"></div>'
        '<div class="bnlab-explorer-view"></div>'
        f'<img class="bnlab-explorer-static" alt="{text} (static image of the first setting)" '
        f'src="data:image/png;base64,{image}">'
        f"<figcaption>{text}</figcaption>"
        f'<script type="application/json" class="bnlab-explorer-spec">{spec_json}</script>'
        f"<script>{loader}</script>"
        "</figure>"
    )
