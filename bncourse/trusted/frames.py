"""Tracebacks as a student should see them: the frames of their own code, not the grader's.

A frame belongs to the student unless its file is part of an installed library (this package,
the standard library, anything under ``site-packages``: torch, IPython, nbgrader...). Notebook
cells run from files of their own (``/tmp/ipykernel_*/*.py``, ``Cell In[3]`` in IPython's
tracebacks) or from ``<string>``, so they stay. Light to import: the sandboxed kernel uses it.
"""

from __future__ import annotations

import os
import re
import sys
import sysconfig
import traceback
from functools import lru_cache
from types import TracebackType

__all__ = ["filter_text", "is_library_file", "student_traceback"]

_PACKAGE = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@lru_cache(maxsize=1)
def _library_roots() -> tuple[str, ...]:
    roots = {_PACKAGE, sys.prefix, sys.base_prefix, sys.exec_prefix}
    roots |= {
        p for k in ("stdlib", "platstdlib", "purelib", "platlib") if (p := sysconfig.get_path(k))
    }
    return tuple(sorted(os.path.realpath(r) for r in roots if r))


def is_library_file(filename: str) -> bool:
    """Whether ``filename`` (a frame's file) is library code rather than the student's."""
    if filename.startswith("<frozen ") or filename.startswith("<built-in"):
        return True
    if filename.startswith("<"):  # <string>, <stdin>, a cell compiled by the student
        return False
    path = os.path.realpath(os.path.expanduser(filename))
    parts = path.split(os.sep)
    if "site-packages" in parts or "dist-packages" in parts:
        return True
    return any(path == root or path.startswith(root + os.sep) for root in _library_roots())


def student_traceback(error: BaseException, tb: TracebackType | None = None) -> str:
    """``error`` formatted like Python does, with the student's frames only (message kept)."""
    frames = [
        f
        for f in traceback.extract_tb(tb if tb is not None else error.__traceback__)
        if not is_library_file(f.filename)
    ]
    head = (
        ["Traceback (most recent call last):\n", *traceback.format_list(frames)] if frames else []
    )
    return "".join(head + traceback.format_exception_only(type(error), error))


_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")
# IPython's frame entries: "File /path/to/file.py:12, in f(x)" (colours removed), one per entry
_RULE = re.compile(r"\s*-{20,}\s*")
_IPYTHON_FRAME = re.compile(r"\AFile (?P<path>.+?):\d+(?:, in |\n|\Z)")
# Python's: '  File "/path/to/file.py", line 12, in f' then the source line(s) indented deeper
_PYTHON_FRAME = re.compile(r'^(?P<indent> *)File "(?P<path>[^"]+)", line \d+')


def _drop_python_frames(text: str) -> str:
    """``text`` without the library frames of any Python-formatted traceback in it."""
    out: list[str] = []
    skipping: int | None = None  # indentation of the frame line being dropped
    for line in text.split("\n"):
        if skipping is not None:
            indent = len(line) - len(line.lstrip(" "))
            if line.strip() and indent > skipping:
                continue  # the dropped frame's source line and its ^^^ markers
            skipping = None
        match = _PYTHON_FRAME.match(line)
        if match and is_library_file(match["path"]):
            skipping = len(match["indent"])
            continue
        out.append(line)
    return "\n".join(out)


def filter_text(entries: list[str]) -> list[str]:
    """An error output's ``traceback`` entries without the frames of library files.

    Handles IPython's entries (one frame per entry) and Python-formatted tracebacks inside an
    entry (the grader's notes quote where the notebook raised).
    """
    kept = []
    for entry in entries:
        plain = _ANSI.sub("", entry)
        match = _IPYTHON_FRAME.match(plain)
        if (match and is_library_file(match["path"])) or _RULE.fullmatch(plain):
            continue  # a library's frame, or IPython's ----- rule (it wraps on a phone)
        kept.append(_drop_python_frames(entry) if "File " in entry else entry)
    return kept
