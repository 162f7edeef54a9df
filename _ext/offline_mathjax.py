"""Serve MathJax from the built site itself, so formulas render with no network access.

MathJax 3 comes from the ``django-static-mathjax`` wheel, a plain copy of the MathJax 3.2 component
build (``mathjax-full``) pinned in ``constraints.txt`` and installed with the book's other tools.
This extension copies the component that ``mathjax_path`` names, and the folders it loads on
demand (fonts, TeX extensions, menu, accessibility), into ``_static/mathjax/`` of the HTML output.
"""

from __future__ import annotations

import shutil
from importlib import resources
from pathlib import Path, PurePosixPath
from typing import Any

from sphinx.application import Sphinx
from sphinx.config import Config
from sphinx.errors import ConfigError

#: Folder under ``_static/`` that receives MathJax; ``mathjax_path`` must point inside it.
STATIC_FOLDER = "mathjax"


def mathjax_build_dir() -> Path:
    """The installed MathJax 3 component build (the folder holding ``tex-mml-chtml.js``)."""
    return Path(str(resources.files("mathjax"))) / "static" / "mathjax" / "es5"


def component_name(mathjax_path: str) -> str:
    """The component file that ``mathjax_path`` loads; ConfigError unless it is one we ship."""
    path = PurePosixPath(mathjax_path)
    if "://" in mathjax_path or path.is_absolute() or path.parent != PurePosixPath(STATIC_FOLDER):
        raise ConfigError(
            f"mathjax_path must be '{STATIC_FOLDER}/<component>.js' (a file served from the "
            f"site's own _static folder, so math renders offline), got {mathjax_path!r}"
        )
    if not (mathjax_build_dir() / path.name).is_file():
        raise ConfigError(
            f"mathjax_path names {path.name!r}, which is not a MathJax component in "
            f"{mathjax_build_dir()}"
        )
    return path.name


def check_config(app: Sphinx, config: Config) -> None:
    component_name(config.mathjax_path)


def copy_mathjax(app: Sphinx) -> None:
    """Copy the configured component and its on-demand folders into ``_static/mathjax``."""
    if app.builder.format != "html":
        return
    source = mathjax_build_dir()
    target = Path(app.outdir) / "_static" / STATIC_FOLDER
    target.mkdir(parents=True, exist_ok=True)
    shutil.copy2(source / component_name(app.config.mathjax_path), target)
    for folder in sorted(p for p in source.iterdir() if p.is_dir()):
        shutil.copytree(folder, target / folder.name, dirs_exist_ok=True)


def setup(app: Sphinx) -> dict[str, Any]:
    app.connect("config-inited", check_config)
    # Pages are written after builder-inited, so the files exist when Sphinx checksums them.
    app.connect("builder-inited", copy_mathjax)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
