"""Write each ``<script>`` of a page once.

Sphinx 7.4 registers an inline script that an extension adds after the builder started twice
(``Sphinx.add_js_file`` hands the builder ``filename=None``; the builder later re-adds the same
script from the registry as ``filename=''``, and the two do not compare equal). sphinx-thebe's
``const THEBE_JS_URL = ...`` is such a script: declared twice, the second declaration raises
"Identifier 'THEBE_JS_URL' has already been declared" in the reader's browser.
"""

from __future__ import annotations

from typing import Any

from sphinx.application import Sphinx


def script_key(script: Any) -> tuple[Any, ...]:
    """What makes two scripts the same, treating a missing file name and an empty one alike."""
    return (script.filename or "", script.priority, tuple(sorted(script.attributes.items())))


def drop_repeated_scripts(
    app: Sphinx, pagename: str, templatename: str, context: dict[str, Any], doctree: Any
) -> None:
    scripts = context.get("script_files")
    if not scripts:
        return
    seen: set[tuple[Any, ...]] = set()
    unique = []
    for script in scripts:
        key = script_key(script)
        if key not in seen:
            seen.add(key)
            unique.append(script)
    scripts[:] = unique  # the builder restores its own list after each page


def setup(app: Sphinx) -> dict[str, Any]:
    # After the theme and the other extensions have added their page scripts.
    app.connect("html-page-context", drop_repeated_scripts, priority=900)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
