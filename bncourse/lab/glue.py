"""Values computed in a chapter, glued into its prose by myst-nb, or shown where myst-nb is missing.

In the book build :func:`glue` is ``myst_nb.glue``. A chapter downloaded as a notebook, or
opened on Colab or Binder, runs with the package alone: there a glued figure or table is shown
where it is computed (the prose that would hold it is not rendered), and a glued number or
sentence, which the reader sees in the printed output of the cells anyway, is not repeated.
"""

from __future__ import annotations

import numbers
from typing import Any

try:
    from myst_nb import glue as _myst_glue
except ImportError:  # the student install: no book tools
    _myst_glue = None

__all__ = ["glue", "glue_number", "glue_text", "have_myst_nb"]


def have_myst_nb() -> bool:
    """Whether glued values reach the book's prose (myst-nb is installed)."""
    return _myst_glue is not None


def glue(name: str, value: Any, display: bool = True) -> None:
    """Glue ``value`` under ``name`` for the prose (``{glue}`name```); see the module docstring."""
    if not isinstance(name, str) or not name:
        raise ValueError(f"name must be a non-empty string, got {name!r}")
    if _myst_glue is not None:
        _myst_glue(name, value, display=display)
        return
    if display or not isinstance(value, numbers.Number | str):
        from IPython.display import display as show

        show(value)


def glue_number(name: str, value: Any) -> None:
    """Glue a number as a plain Python ``int`` or ``float`` (a tensor or NumPy scalar is converted)."""
    value = value.item() if hasattr(value, "item") else value
    glue(name, value if isinstance(value, int) else float(value), display=False)


def glue_text(name: str, text: str) -> None:
    """Glue a sentence or phrase for the prose, not displayed in the cell."""
    glue(name, text, display=False)
