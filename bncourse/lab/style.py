"""One figure style for the whole book."""

from __future__ import annotations

# No backend is forced here: a notebook kernel keeps its inline backend, which is what turns a
# figure into the PNG the book shows (under Agg a glued figure would render as its text repr).
import matplotlib
import matplotlib.pyplot as plt

#: Colours used consistently across chapters (colour-blind safe, readable on light and dark).
COLORS = {
    "train": "#0072B2",
    "eval": "#D55E00",
    "reference": "#009E73",
    "accent": "#CC79A7",
    "neutral": "#7F7F7F",
    "extra": "#E69F00",
}


def use_course_style() -> None:
    """Apply the course's matplotlib style; call once at the top of a chapter."""
    plt.rcParams.update(
        {
            "figure.figsize": (7.0, 4.0),
            "figure.dpi": 110,
            "savefig.dpi": 110,
            "figure.facecolor": "white",
            "axes.facecolor": "white",
            "savefig.facecolor": "white",
            "axes.grid": True,
            "grid.alpha": 0.3,
            "axes.spines.top": False,
            "axes.spines.right": False,
            "axes.titlesize": 12,
            "axes.labelsize": 11,
            "legend.frameon": False,
            "axes.prop_cycle": matplotlib.cycler(color=list(COLORS.values())),
        }
    )
