"""The book's local Sphinx extensions (_ext/): MathJax served offline, each script written once."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

import pytest
import yaml
from sphinx.builders.html._assets import _JavaScript
from sphinx.errors import ConfigError

ROOT = Path(__file__).resolve().parents[1]


def load_extension(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(name, ROOT / "_ext" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


offline_mathjax = load_extension("offline_mathjax")
unique_scripts = load_extension("unique_scripts")


def test_the_configured_mathjax_is_a_shipped_mathjax_3_component() -> None:
    config = yaml.safe_load((ROOT / "_config.yml").read_text(encoding="utf-8"))
    name = offline_mathjax.component_name(config["sphinx"]["config"]["mathjax_path"])
    script = (offline_mathjax.mathjax_build_dir() / name).read_text(encoding="utf-8")
    assert 'VERSION="3.' in script
    fonts = offline_mathjax.mathjax_build_dir() / "output" / "chtml" / "fonts" / "woff-v2"
    assert any(fonts.glob("*.woff"))


@pytest.mark.parametrize(
    "path",
    [
        "https://cdn.jsdelivr.net/npm/mathjax@3/es5/tex-mml-chtml.js",
        "/mathjax/tex-mml-chtml.js",
        "tex-mml-chtml.js",
        "mathjax/no-such-component.js",
    ],
)
def test_mathjax_path_must_name_a_component_the_site_serves(path: str) -> None:
    with pytest.raises(ConfigError, match="mathjax"):
        offline_mathjax.component_name(path)


def test_an_inline_script_registered_twice_is_written_once() -> None:
    # What Sphinx 7.4 hands the page for sphinx-thebe's configuration script.
    body = 'const THEBE_JS_URL = "x"'
    scripts = [
        _JavaScript("_static/a.js", priority=500),
        _JavaScript(None, priority=500, body=body),
        _JavaScript("", priority=500, body=body),
        _JavaScript("", priority=500, body="var other = 1"),
    ]
    context = {"script_files": scripts}
    unique_scripts.drop_repeated_scripts(None, "page", "page.html", context, None)
    assert context["script_files"] is scripts  # changed in place, as the builder expects
    assert [(s.filename, s.attributes.get("body")) for s in scripts] == [
        ("_static/a.js", None),
        (None, body),
        ("", "var other = 1"),
    ]


glued_alt = load_extension("glued_alt")


def test_glued_alt_text_is_the_glued_string_without_its_quotes():
    assert glued_alt.glued_text({"text/plain": "'Line plot: 3 points, it\\'s rising'"}) == (
        "Line plot: 3 points, it's rising"
    )
    assert glued_alt.glued_text({"text/plain": "42"}) == "42"  # a number's repr as it is
    assert glued_alt.glued_text({"text/plain": "<Figure size 640x480>"}) == "<Figure size 640x480>"


def test_glue_figure_accepts_alt_glue_besides_myst_nbs_options():
    options = glued_alt.PasteFigureWithGluedAlt.option_spec
    assert {"alt", "alt-glue", "name"} <= set(options)
