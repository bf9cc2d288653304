"""Numbers from code into the book's prose.

``glue`` hands a value to MyST-NB (``{glue:text}`name` `` in a Markdown cell shows it in the built book).
Where MyST-NB is not installed, as in Colab, it does nothing: the value is still in the notebook's variables.
"""

from __future__ import annotations


def glue(name: str, value, *, display: bool = False) -> None:
    """Make ``value`` available to the book's prose under ``name``."""
    try:
        from myst_nb import glue as myst_glue
    except ImportError:
        return
    myst_glue(name, value, display=display)
