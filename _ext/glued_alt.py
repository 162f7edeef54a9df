"""Alt text of a ``{glue:figure}`` taken from a glued text, so that it can follow the data.

myst-nb's ``{glue:figure}`` takes its ``:alt:`` as typed text. With this extension the directive
also accepts ``:alt-glue: key``: the alt text is then the string glued under ``key`` by the same
page (``glue("key", "a sentence", display=False)``), written by the code that drew the figure::

    ```{glue:figure} co_width_fig
    :alt-glue: co_width_alt
    :name: co-width-figure
    ```
"""

from __future__ import annotations

import ast
from typing import Any

from docutils.parsers.rst import directives as spec
from myst_nb.ext.glue.directives import PasteFigureDirective
from myst_nb.ext.glue.utils import RetrievalError, glue_warning, retrieve_glue_data
from sphinx.application import Sphinx


def glued_text(data: dict[str, Any]) -> str:
    """The plain text of a glued string (its ``text/plain`` repr, quotes removed)."""
    text = data.get("text/plain", "")
    try:
        value = ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text
    return value if isinstance(value, str) else text


class PasteFigureWithGluedAlt(PasteFigureDirective):
    """``{glue:figure}`` whose alt text may come from a glued string (``:alt-glue: key``)."""

    option_spec = {**PasteFigureDirective.option_spec, "alt-glue": spec.unchanged_required}

    def run(self):
        key = self.options.pop("alt-glue", None)
        if key is not None:
            try:
                self.options["alt"] = glued_text(retrieve_glue_data(self.document, key).data)
            except RetrievalError as exc:
                return [glue_warning(str(exc), self.document, self.line)]
        return super().run()


def setup(app: Sphinx) -> dict[str, Any]:
    app.setup_extension("myst_nb")
    app.add_directive_to_domain("glue", "figure", PasteFigureWithGluedAlt, override=True)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
