"""Load an assignment's builder, ``solutions/<assignment>/build.py``, as a module."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

SOLUTIONS = Path(__file__).resolve().parents[1] / "solutions"


def builder(assignment: str) -> ModuleType:
    """The module that builds ``solutions/<assignment>/<assignment>.ipynb``."""
    name = f"build_{assignment}"
    if name in sys.modules:
        return sys.modules[name]
    path = SOLUTIONS / assignment / "build.py"
    if not path.is_file():
        raise FileNotFoundError(f"assignment {assignment!r} has no builder at {path}")
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module
