"""Offer "open in Colab" only for pages whose repository source is a Jupyter notebook.

Colab opens ``.ipynb`` files from GitHub and nothing else, but the theme builds its Colab link
from the page's own source file. For a chapter written as a MyST Markdown notebook (``.md``)
that link would open an error page, so the button is left out there; such pages keep their
Binder button and the download button, which offers the executed chapter as ``.ipynb``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sphinx.application import Sphinx

COLAB = "Colab"


def colab_can_open(app: Sphinx, pagename: str) -> bool:
    """Whether the repository holds this page as an ``.ipynb`` (the theme links to that one)."""
    return Path(app.env.doc2path(pagename)).with_suffix(".ipynb").is_file()


def drop_colab_for_text_notebooks(
    app: Sphinx, pagename: str, templatename: str, context: dict[str, Any], doctree: Any
) -> None:
    if doctree is None or colab_can_open(app, pagename):
        return
    for group in context.get("header_buttons", []):
        if group.get("label") == "launch-buttons":
            group["buttons"] = [b for b in group["buttons"] if b.get("text") != COLAB]
    context["header_buttons"] = [
        g
        for g in context.get("header_buttons", [])
        if g.get("label") != "launch-buttons" or g["buttons"]
    ]


def setup(app: Sphinx) -> dict[str, Any]:
    # After sphinx-book-theme builds the launch buttons (priority 501), before they are rendered.
    app.connect("html-page-context", drop_colab_for_text_notebooks, priority=600)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
