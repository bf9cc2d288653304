"""Which values share one mean and variance in BatchNorm: a block of cells per input layout, ``(N, C)``,
``(N, C, L)`` and ``(N, C, H, W)``, with one channel's cells shaded (chapter 1)."""

from __future__ import annotations

import matplotlib.pyplot as plt
from matplotlib.patches import Polygon

# The three input layouts the chapter draws: (title, (N, C, depth) in cells, depth axis label, the averaged axes).
LAYOUTS = (
    ("BatchNorm1d, (N, C)", (6, 4, 0), None, "N"),
    ("BatchNorm1d, (N, C, L)", (6, 4, 5), "L", "N and L"),
    ("BatchNorm2d, (N, C, H, W)", (6, 4, 5), "H × W\n(flattened)", "N, H and W"),
)
SHADE, PLAIN, EDGE = "tab:blue", "#f2f2f2", "#555555"
DEPTH_X, DEPTH_Y = 0.45, 0.35  # the oblique projection of one cell of depth


def _project(x: float, y: float, z: float) -> tuple[float, float]:
    return x + DEPTH_X * z, y + DEPTH_Y * z


def _cell(ax, corners, shaded: bool) -> None:
    ax.add_patch(Polygon([_project(*c) for c in corners], closed=True, facecolor=SHADE if shaded else PLAIN,
                         edgecolor=EDGE, linewidth=0.6, alpha=0.85 if shaded else 1.0))


def draw_block(ax, n: int, c: int, depth: int, *, channel: int = 1, depth_label: str | None = None) -> None:
    """One input tensor as a block of cells: batch ``N`` downwards, channels ``C`` across, and ``depth`` cells of
    length (``L``) or of image positions (``H, W``, flattened) into the page. The cells of ``channel`` are shaded:
    all the values BatchNorm normalises with one mean and one variance."""
    for i in range(c):  # front face, z = 0: row j is example j
        for j in range(n):
            y = n - 1 - j
            _cell(ax, [(i, y, 0), (i + 1, y, 0), (i + 1, y + 1, 0), (i, y + 1, 0)], i == channel)
    for i in range(c):  # top face, y = n
        for k in range(depth):
            _cell(ax, [(i, n, k), (i + 1, n, k), (i + 1, n, k + 1), (i, n, k + 1)], i == channel)
    for j in range(n):  # right face, x = c
        for k in range(depth):
            y = n - 1 - j
            _cell(ax, [(c, y, k), (c, y + 1, k), (c, y + 1, k + 1), (c, y, k + 1)], c - 1 == channel)
    ax.annotate("", xy=(-0.35, 0), xytext=(-0.35, n), arrowprops=dict(arrowstyle="->", color=EDGE))
    ax.text(-0.55, n / 2, "N (batch)", rotation=90, ha="right", va="center")
    ax.annotate("", xy=(c, -0.35), xytext=(0, -0.35), arrowprops=dict(arrowstyle="->", color=EDGE))
    ax.text(c / 2, -0.55, "C (channels)", ha="center", va="top")
    if depth:
        start, end = _project(c + 0.25, 0, 0), _project(c + 0.25, 0, depth)
        ax.annotate("", xy=end, xytext=start, arrowprops=dict(arrowstyle="->", color=EDGE))
        ax.text(end[0] + 0.1, (start[1] + end[1]) / 2 - 0.2, depth_label or "", ha="left", va="center")
    ax.set_xlim(-1.6, c + DEPTH_X * 5 + 1.6)
    ax.set_ylim(-1.6, n + DEPTH_Y * 5 + 0.6)
    ax.set_aspect("equal")
    ax.axis("off")


def plot_statistics_axes():
    """Three blocks, ``(N, C)``, ``(N, C, L)`` and ``(N, C, H, W)``, with the values that share one channel's mean
    and variance shaded. Returns the figure."""
    fig, axes = plt.subplots(1, len(LAYOUTS), figsize=(12, 4.6))
    for ax, (title, (n, c, depth), depth_label, over) in zip(axes, LAYOUTS):
        draw_block(ax, n, c, depth, depth_label=depth_label)
        ax.set_title(f"{title}\nshaded: one channel's values,\none mean and variance over {over}", fontsize=10)
    fig.tight_layout()
    return fig
