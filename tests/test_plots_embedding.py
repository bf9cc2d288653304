import json
from pathlib import Path

import altair
import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt

from bnlab.plots.embedding import VEGA_FILES, VEGA_VERSIONS, cdn_urls, explorer_html, png_bytes

REPO = Path(__file__).resolve().parents[1]


def page(spec=None, caption="Try the slider.", log_sliders=()):
    return explorer_html(spec or {"mark": "line"}, png=b"\x89PNG fake", caption=caption, figure_id="bnlab-explorer-1",
                         log_sliders=log_sliders)


def test_the_book_serves_the_versions_the_output_falls_back_to():
    pinned = json.loads((REPO / "book" / "package.json").read_text())["dependencies"]
    assert {name: pinned[name] for name in VEGA_VERSIONS} == VEGA_VERSIONS
    assert set(VEGA_FILES) == set(VEGA_VERSIONS)
    # Altair writes specs for the Vega-Lite the book serves (Colab's Altair 5.5.0 too).
    assert altair.SCHEMA_VERSION == f"v{VEGA_VERSIONS['vega-lite']}"
    assert cdn_urls()["vega-lite"] == "https://cdn.jsdelivr.net/npm/vega-lite@5.20.1/build/vega-lite.min.js"


def test_the_makefile_vendors_the_files_the_pages_load():
    makefile = (REPO / "Makefile").read_text()
    for name, path in VEGA_FILES.items():
        assert f"{name}/{path}" in makefile


def test_the_html_holds_containers_static_image_caption_spec_and_script():
    html = page()
    assert html.startswith('<figure class="bnlab-explorer" id="bnlab-explorer-1"')
    for part in ('class="bnlab-explorer-controls"', 'class="bnlab-explorer-view"', "<figcaption>Try the slider.</figcaption>",
                 'src="data:image/png;base64,iVBOR', '<script type="application/json" class="bnlab-explorer-spec">'
                 '{"mark":"line"}</script>', "window.vegaEmbed", "@media print"):
        assert part in html, part


def test_text_in_the_spec_or_caption_cannot_break_out_of_the_html():
    html = page({"title": "</script><script>alert(1)</script>"}, caption='a <b>bold</b> "claim"')
    assert html.count("</script>") == 2  # the spec's and the loader's own
    assert "<b>" not in html and "a &lt;b&gt;bold&lt;/b&gt; &quot;claim&quot;" in html
    spec = html.split('class="bnlab-explorer-spec">')[1].split("</script>")[0]
    assert json.loads(spec) == {"title": "</script><script>alert(1)</script>"}


def test_log_sliders_are_named_for_the_script():
    assert 'data-log-sliders="[&quot;momentum_control_0&quot;]"' in page(log_sliders=["momentum_control_0"])
    assert 'data-log-sliders="[]"' in page()


def test_png_bytes_is_a_png_of_the_figure():
    fig, ax = plt.subplots(figsize=(2, 1))
    ax.plot([0, 1], [0, 1])
    data = png_bytes(fig, dpi=50)
    plt.close(fig)
    assert data.startswith(b"\x89PNG\r\n\x1a\n")
