"""A static scan of a submission for routes around the checks, reported for review.

The trusted verdict does not depend on it: whatever a submission does to its own kernel, its
functions are judged by their outputs on inputs drawn in the grader. The guard that refuses
delegation (torch's batch norm and dropout, every ``torch.ops`` kernel, :mod:`bncourse.nn`) runs
inside the student's kernel, though, where code that disables torch-function handling can slip
past it (and a kernel called that way is an ATen kernel again). Honest solutions never need the
constructs below (calls of torch's layers are not among them: the network exercises use them, and
the guard refuses them where they are not allowed), so each one is reported with the cell it is
in, for the instructor to read. Cells are read as IPython runs them, magics included. Code that
changes the grader's own code in the kernel (:func:`is_tampering`) could hide any call from the
guard, so it is not only reported: every part the guard protects scores zero.
"""

from __future__ import annotations

import ast
import re
from collections.abc import Iterable

from nbformat import NotebookNode

__all__ = ["is_tampering", "scan_cells", "scan_source"]

# Dotted prefixes of attribute chains that only a route around the checks needs.
_ROUTES = {
    "torch.ops": "calls ATen kernels directly (torch.ops)",
    "torch._C": "uses torch's C bindings (torch._C)",
    "torch.overrides": "changes torch-function handling (torch.overrides)",
    "torch._ops": "calls ATen kernels directly (torch._ops)",
    "sys.modules": "edits sys.modules",
    "sys.setprofile": "replaces the profiler hook",
    "sys.settrace": "replaces the tracer hook",
    "sys.excepthook": "replaces the exception hook",
    "builtins": "changes builtins",
    "importlib": "imports modules by computed name",
    "ctypes": "uses ctypes",
    "os.kill": "sends signals to processes",
    "os.killpg": "sends signals to processes",
    "os.fork": "forks processes",
    "os.setsid": "starts a new session",
    "subprocess": "starts programs",
    "signal": "installs signal handlers",
    "gc.get_objects": "searches the interpreter's objects",
    "get_ipython": "changes IPython itself",
    "bncourse.nn": "uses the course's reference implementations",
    "bncourse.theory": "uses the course's closed-form reference (bncourse.theory)",
    "bncourse.trusted": "touches the grader's kernel side",
}
# What only code that changes the grader's own code in the kernel needs, directly or through a
# module found by computed name: the guard against delegation runs there and trusts that code, so
# these notes do not only go to review, they make every guarded part score zero.
TAMPERING_NOTES = (
    "touches the grader's kernel side",
    "imports modules by computed name",
    "edits sys.modules",
    "searches the interpreter's objects",
    "uses ctypes",
    "names the grader's kernel side in a string",
    "changes bncourse.",
    "changes grading.",
)


def is_tampering(note: str) -> bool:
    """Whether a note of :func:`scan_source` (or :func:`scan_cells`) is a change to the grader's
    code in the kernel."""
    return any(text in note for text in TAMPERING_NOTES)


# Names whose attributes an answer never assigns (patching a module changes every later use).
_PATCHED = {
    "grading",
    "bncourse",
    "torch",
    "nn",
    "F",
    "np",
    "numpy",
    "math",
    "sys",
    "os",
    "builtins",
}
_CALLS = {
    "__import__": "imports modules by computed name",
    "exec": "runs code built at run time (exec)",
    "eval": "runs code built at run time (eval)",
    "compile": "compiles code at run time",
    "setattr": "sets attributes by computed name",
    "getattr": "reads attributes by computed name",
    "delattr": "deletes attributes by computed name",
    "globals": "reads or edits the notebook's globals",
    "vars": "reads or edits namespaces",
    "open": "opens files",
}


# Attribute names that only a route around the checks reaches for, under any alias of torch.
_NAMES = {
    "_C": "uses torch's C bindings (_C)",
    "DisableTorchFunction": "turns off torch-function handling (DisableTorchFunction)",
    "DisableTorchFunctionSubclass": "turns off torch-function handling",
    "_disabled_torch_function_impl": "turns off torch-function handling",
    "_ops": "calls ATen kernels directly (_ops)",
    "aten": "calls ATen kernels directly (aten)",
}


# Strings that only a lookup of an ATen kernel by computed name needs: the attribute names on the
# way to ``torch.ops.aten`` (``getattr(torch, "ops")``) and pieces of a kernel's name
# (``getattr(torch.ops.aten, "native_batch_" + "norm_backward")``).
_ROUTE_STRINGS = frozenset({"ops", "_ops", "aten", "_C"})
_KERNEL_NAME = re.compile(r"torch\.(?:_?ops|_C)\b|aten::|\bnative_\w*|\w*norm_backward\b")


_KERNEL_SIDE_NAME = re.compile(r"bncourse\.trusted|kernel_side")


def _string_route(value: str) -> str | None:
    """The note for a string constant that names a route to ATen kernels or to the grader's
    kernel side, else None."""
    if _KERNEL_SIDE_NAME.search(value):
        return f"names the grader's kernel side in a string: {value[:80]!r}"
    if value in _ROUTE_STRINGS or _KERNEL_NAME.search(value):
        return f"names ATen kernels or their route in a string: {value!r}"
    return None


def _dotted(node: ast.AST, aliases: dict[str, str] | None = None) -> str | None:
    """``a.b.c`` of an attribute chain, its head replaced by what it was imported or bound as."""
    parts = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if isinstance(node, ast.Name):
        parts.append((aliases or {}).get(node.id, node.id))
        return ".".join(reversed(parts))
    return None


def _aliases(tree: ast.AST) -> dict[str, str]:
    """Names bound to modules or their attributes: ``import torch as T``, ``_m = T``, ..."""
    aliases: dict[str, str] = {}
    for _ in range(3):  # chains of assignments
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                for alias in node.names:
                    if alias.asname:
                        aliases[alias.asname] = alias.name
            elif isinstance(node, ast.ImportFrom) and node.module:
                for alias in node.names:
                    aliases[alias.asname or alias.name] = f"{node.module}.{alias.name}"
            elif isinstance(node, ast.Assign) and isinstance(node.value, (ast.Name, ast.Attribute)):
                value = _dotted(node.value, aliases)
                for target in node.targets:
                    if isinstance(target, ast.Name) and value and value != target.id:
                        aliases[target.id] = value
    return aliases


# Magics that change nothing a check relies on: as IPython runs them, they are not reported.
_HARMLESS_MAGICS = frozenset({"matplotlib", "time", "timeit", "load_ext", "autoreload", "env"})


def _python(source: str) -> str:
    """The Python that IPython runs for a cell: magics and ``!`` commands become the calls
    (``get_ipython().run_line_magic(...)``) that the scan can read, like any other code."""
    from IPython.core.inputtransformer2 import TransformerManager

    try:
        return TransformerManager().transform_cell(source)
    except Exception:  # IPython cannot read it either: the kernel's run will say
        return source


def _harmless_magic(node: ast.Call) -> bool:
    """``get_ipython().run_line_magic("matplotlib", ...)`` and the like."""
    func = node.func
    return (
        isinstance(func, ast.Attribute)
        and func.attr == "run_line_magic"
        and isinstance(func.value, ast.Call)
        and isinstance(func.value.func, ast.Name)
        and func.value.func.id == "get_ipython"
        and bool(node.args)
        and isinstance(node.args[0], ast.Constant)
        and node.args[0].value in _HARMLESS_MAGICS
    )


def scan_source(source: str) -> list[str]:
    """What ``source`` does that an honest answer never needs, each said once."""
    try:
        tree = ast.parse(_python(source))
    except SyntaxError:
        return []  # a broken cell: the kernel's run will say
    found: list[str] = []
    routes: set[str] = set()
    aliases = _aliases(tree)
    magics = {  # the get_ipython of harmless magics, as IPython writes them
        id(node.func.value.func)
        for node in ast.walk(tree)
        if isinstance(node, ast.Call) and _harmless_magic(node)
    }

    def note(text: str) -> None:
        if text not in found:
            found.append(text)

    for node in ast.walk(tree):
        names: list[str] = []
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            module = node.module if isinstance(node, ast.ImportFrom) else None
            for alias in node.names:
                names.append(f"{module}.{alias.name}" if module else alias.name)
                if module:
                    names.append(module)
        elif isinstance(node, ast.Attribute):
            if node.attr in _NAMES:
                note(_NAMES[node.attr])
            dotted = _dotted(node, aliases)
            if dotted:
                names.append(dotted)
                if not isinstance(node.ctx, ast.Load) and dotted.split(".")[0] in _PATCHED:
                    note(f"changes {dotted}")
            if (
                node.attr.startswith("__")
                and node.attr.endswith("__")
                and node.attr
                not in (
                    "__init__",
                    "__name__",
                )
            ):
                note(f"reaches into the dunder attribute {node.attr}")
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Name):
            if node.func.id in _CALLS:
                note(_CALLS[node.func.id])
        elif isinstance(node, ast.Constant) and isinstance(node.value, str):
            text = _string_route(node.value)
            if text:
                note(text)
        elif isinstance(node, ast.Name) and id(node) in magics:
            pass
        elif isinstance(node, ast.Name) and node.id in ("__builtins__", "get_ipython"):
            names.append(node.id)
        elif isinstance(node, ast.Name) and isinstance(node.ctx, ast.Load) and node.id in aliases:
            names.append(aliases[node.id])
        for name in names:
            if name.startswith("bncourse.grading.") and name.endswith("variant"):
                note(f"calls the checks' own implementation: {name}")
            for prefix, text in _ROUTES.items():
                if (name == prefix or name.startswith(prefix + ".")) and prefix not in routes:
                    routes.add(prefix)  # the outermost expression is visited first
                    note(f"{text}: {name}")
                    break
    return found


def scan_cells(nb: NotebookNode, tests: Iterable[str]) -> list[tuple[int, str]]:
    """(cell index, note) for every code cell of ``nb`` that the student wrote or could edit."""
    tests = set(tests)
    findings = []
    for index, cell in enumerate(nb.cells):
        if cell.cell_type != "code":
            continue
        meta = cell.get("metadata", {}).get("nbgrader", {})
        if meta.get("grade_id") in tests or (meta.get("locked") and not meta.get("solution")):
            continue  # the instructor's cells (nbgrader puts their source back)
        for text in scan_source(cell.source):
            findings.append((index, f"cell {index} {text}"))
    return findings
