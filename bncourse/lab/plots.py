"""Figures and tables of the variance-shift chapters, drawn from experiment results.

Every function takes the ``data`` of a result of :func:`bncourse.lab.experiments.run_experiment`
(or rows of it) and draws on a given matplotlib ``Axes``, so a chapter composes its own figure.
Call :func:`bncourse.lab.style.use_course_style` first.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from matplotlib.axes import Axes
from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

__all__ = [
    "plot_layer_statistic",
    "plot_mean_std",
    "log_axis",
    "markdown_table",
    "format_mean_std",
    "plot_intervals",
]


def log_axis(ax: Axes) -> None:
    """A logarithmic y axis labelled with plain numbers (1, 2, 5, 10, ...)."""
    ax.set_yscale("log")
    ax.yaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
    ax.yaxis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:g}"))
    ax.yaxis.set_minor_formatter(NullFormatter())


def plot_layer_statistic(
    ax: Axes,
    row: dict,
    key: str = "shift",
    label: str | None = None,
    color: str | None = None,
    linestyle: str = "-",
    marker: str = "o",
) -> None:
    """Mean (over seeds) of the per-layer statistic against BN-layer index, with a +-1 std band."""
    stats = row[key]
    index = np.arange(1, len(stats) + 1)
    mean = np.array([s["mean"] for s in stats])
    std = np.array([s["std"] for s in stats])
    (line,) = ax.plot(
        index, mean, marker=marker, linestyle=linestyle, color=color, label=label or row["label"]
    )
    ax.fill_between(index, mean - std, mean + std, color=line.get_color(), alpha=0.15, lw=0)
    ax.set_xticks(index)


def plot_mean_std(
    ax: Axes,
    x: Sequence[float],
    summaries: Sequence[dict],
    label: str,
    color: str | None = None,
    scale: float = 100.0,
    marker: str = "o",
    linestyle: str = "-",
) -> None:
    """``mean +- std`` summaries (see :func:`bncourse.lab.experiments.mean_std`) as error bars."""
    mean = np.array([s["mean"] for s in summaries]) * scale
    std = np.array([s["std"] for s in summaries]) * scale
    ax.errorbar(
        x, mean, yerr=std, label=label, color=color, marker=marker, linestyle=linestyle, capsize=3
    )


def format_mean_std(summary: dict, scale: float = 100.0, digits: int = 1) -> str:
    """``"97.3 ± 0.8"`` from a ``mean_std`` summary (accuracies are shown in percent)."""
    return f"{summary['mean'] * scale:.{digits}f} ± {summary['std'] * scale:.{digits}f}"


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """A GitHub/MyST pipe table; numbers columns are right-aligned."""
    if any(len(r) != len(headers) for r in rows):
        raise ValueError("every row must have one cell per header")

    def cell(value: object) -> str:
        return str(value).replace("|", "\\|")

    numeric = [
        all(cell(r[i]).lstrip("-").replace(".", "", 1).split(" ")[0].isdigit() for r in rows)
        for i in range(len(headers))
    ]
    lines = ["| " + " | ".join(cell(h) for h in headers) + " |"]
    lines.append("|" + "|".join("---:" if n else ":---" for n in numeric) + "|")
    lines += ["| " + " | ".join(cell(v) for v in r) + " |" for r in rows]
    return "\n".join(lines)


def plot_intervals(
    ax: Axes,
    x: Sequence[float],
    intervals: Sequence[Any],
    label: str,
    color: str | None = None,
    marker: str = "o",
    linestyle: str = "-",
    offset: float = 0.0,
) -> None:
    """Estimates with their confidence intervals as error bars.

    ``intervals`` are results of :mod:`bncourse.lab.stats` with ``low`` and ``high`` and either
    ``mean`` (:class:`~bncourse.lab.stats.MeanCI`) or ``gmean``
    (:class:`~bncourse.lab.stats.GeometricMeanCI`). ``offset`` shifts the points sideways so that
    several series at the same ``x`` stay readable.
    """
    centre = np.array([getattr(i, "gmean", None) or i.mean for i in intervals])
    low = np.array([i.low for i in intervals])
    high = np.array([i.high for i in intervals])
    ax.errorbar(
        np.asarray(x, dtype=float) + offset,
        centre,
        yerr=[centre - low, high - centre],
        label=label,
        color=color,
        marker=marker,
        linestyle=linestyle,
        capsize=3,
    )
