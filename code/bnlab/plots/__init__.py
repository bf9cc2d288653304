"""One home for drawing. Topic modules (``experiments``, ``running_stats``, ...) compute and return data; these
modules draw it, each named for what it draws:

* ``curves``: training curves, a metric against the epoch, one line per run (``plot_curves``, ``plot_training``).
* ``statistics_axes``: which values of an ``(N, C)``, ``(N, C, L)`` or ``(N, C, H, W)`` input share one BatchNorm
  mean and variance (``plot_statistics_axes``).
* ``activations``: histograms of what reaches an activation while a network trains, with and without BatchNorm
  (``plot_preactivation_histograms``).
* ``seed_spread``: every seed's result as a dot, with each variant's mean and spread (``plot_seed_spread``).
* ``placement``: chapter 2's runs by BatchNorm placement, dropout and seed: every run at once, and explorers.
* ``running_mean``: chapter 4's running mean of a ``BatchNorm1d`` step by step, one setting or a grid, and explorers.
* ``lr_sweep``: the learning-rate sweep of "Why does BatchNorm help?", epoch by epoch and seed by seed, as an explorer.
* ``interactive``: interactive figures embedded in the page (Vega-Lite through Altair): ``explorer(records, ...)``
  turns tidy records into a chart whose controls filter the data in the reader's browser, with no kernel;
  ``embedding`` writes the HTML output that carries one into a notebook and into the book.
* ``convnets``: the CNN chapter's figures: which values share one mean and variance under each normaliser
  (``plot_statistic_groups``), accuracy against batch size per normaliser (``plot_batch_size_sweep``), fine-tuning
  with BatchNorm in train mode or frozen (``plot_finetuning``).
* ``live``: live explorers, ipywidgets controls that recompute a matplotlib figure where a kernel runs.

The static figures are importable from here; the explorers from their modules (they load Altair and ipywidgets).
"""

from .activations import plot_preactivation_histograms
from .convnets import plot_batch_size_sweep, plot_finetuning, plot_statistic_groups
from .curves import plot_curves, plot_training
from .seed_spread import plot_seed_spread
from .statistics_axes import plot_statistics_axes

__all__ = ["plot_batch_size_sweep", "plot_curves", "plot_finetuning", "plot_preactivation_histograms",
           "plot_seed_spread", "plot_statistic_groups", "plot_statistics_axes", "plot_training"]
