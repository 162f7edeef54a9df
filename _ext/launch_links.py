"""The book's repository and launch links, from the package's metadata and the chapters' twins.

- The repository URL (repository button, issue button, Binder and Colab links) is the one in
  ``pyproject.toml`` (``[project.urls] Repository``, read through :mod:`bncourse.distribution`),
  so that the book, the notebooks' set-up cell and the install lines name the same repository;
  the pages' install lines are MyST substitutions made from it (``{{ install_student }}``).
- Every chapter written as MyST Markdown has a notebook twin, ``book/<chapter>.ipynb`` without
  outputs (``make notebooks``); the theme then points Binder and Colab to that twin, which is
  what a student can open. Colab opens ``.ipynb`` files from GitHub and nothing else, so a page
  without a twin gets no Colab button rather than a link to an error page.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sphinx.application import Sphinx
from sphinx.config import Config

from bncourse import distribution

COLAB = "Colab"


def use_package_repository(app: Sphinx, config: Config) -> None:
    """Set the theme's repository URL to the package's, with the repository and issue buttons."""
    options = dict(config.html_theme_options or {})
    options["repository_url"] = distribution.repository_url()
    options["use_repository_button"] = True
    options["use_issues_button"] = True
    config.html_theme_options = options
    # {{ install_student }} and the others in the pages: install lines as the package makes them
    config.myst_substitutions = {
        **(config.myst_substitutions or {}),
        "clone_repository": f"`git clone {distribution.repository_url()}`",
        "python_requirement": distribution.python_requirement(),
        "install_student": f"`{distribution.install_command(distribution.CHECK_EXTRA)}`",
        "install_torch_cpu": f"`{distribution.torch_cpu_install_command()}`",
    }


def colab_can_open(app: Sphinx, pagename: str) -> bool:
    """Whether the repository holds this page as an ``.ipynb`` (the theme links to that one)."""
    return Path(app.env.doc2path(pagename)).with_suffix(".ipynb").is_file()


def drop_colab_without_notebook(
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
    app.connect("config-inited", use_package_repository)
    # After sphinx-book-theme builds the launch buttons (priority 501), before they are rendered.
    app.connect("html-page-context", drop_colab_without_notebook, priority=600)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
