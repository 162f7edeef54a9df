"""On-disk cache of experiment results, keyed by configuration and by the package's own code.

A result is stored as JSON under ``<cache dir>/<name>-<key>.json``. The key is a SHA-256 of the
experiment's name, its configuration (as canonical JSON), ``bncourse.__version__``, a hash of the
source of the code the experiments run (``bncourse.lab.experiments`` and every ``bncourse``
module it imports, directly or not, found by reading the import statements; see
:func:`source_files`) and the kind of device (results on a GPU are not bit-identical to CPU
results). Any change to that code therefore recomputes every experiment, while an unchanged
rebuild of the book reads all of them back in milliseconds, and work on unrelated parts of the
package (the autograder, the command line, the plots) leaves the cache valid.

The cache folder is, in order: the ``cache_dir`` argument, the ``BNCOURSE_CACHE`` environment
variable, ``<repository>/.cache/bncourse/experiments`` when the package runs from a source
checkout, and ``~/.cache/bncourse/experiments`` otherwise.
"""

from __future__ import annotations

import ast
import hashlib
import json
import os
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import bncourse

__all__ = [
    "CachedResult",
    "ENTRY_MODULES",
    "source_files",
    "cached",
    "cache_key",
    "package_hash",
    "default_cache_dir",
]

_PACKAGE_DIR = Path(bncourse.__file__).resolve().parent


@dataclass(frozen=True)
class CachedResult:
    """A result with where it came from: ``cached`` is true when it was read back from disk."""

    name: str
    config: dict
    data: Any
    seconds: float
    cached: bool
    key: str
    path: Path | None


#: Modules whose code, with every ``bncourse`` module they import (directly or not), decides
#: the results: the experiments and, through them, data, models, training, probes, theory and
#: the reference layers. Code they never import (the autograder, the command line, plotting)
#: does not enter the key, so working on it does not retrain anything.
ENTRY_MODULES = ("bncourse.lab.experiments",)


def _module_path(root: Path, package: str, module: str) -> Path | None:
    """File of ``module`` inside the package folder ``root`` named ``package``, if any."""
    if module != package and not module.startswith(package + "."):
        return None
    parts = module.split(".")[1:]
    base = root.joinpath(*parts)
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def _imported_modules(path: Path, module: str, is_package: bool) -> set[str]:
    """Every module named by an import statement anywhere in ``path`` (also inside functions)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    here = module if is_package else module.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                anchor = here.split(".")
                anchor = anchor[: len(anchor) - (node.level - 1)]
                base = ".".join([*anchor, node.module] if node.module else anchor)
            else:
                base = node.module or ""
            found.add(base)
            # ``from package import name`` may import the submodule ``package.name``.
            found.update(f"{base}.{alias.name}" for alias in node.names)
    return found


def source_files(
    package_dir: str | os.PathLike | None = None,
    entry_modules: tuple[str, ...] = ENTRY_MODULES,
    package: str = "bncourse",
) -> list[Path]:
    """The package's source files that ``entry_modules`` import, transitively, sorted.

    Imports are read from the source (``ast``), so the answer does not depend on what happens to
    be imported in the running process. Importing a module also runs its parents' ``__init__``.
    """
    root = Path(package_dir or _PACKAGE_DIR).resolve()
    seen: set[str] = set()
    files: set[Path] = set()
    todo = list(entry_modules)
    while todo:
        module = todo.pop()
        if module in seen:
            continue
        seen.add(module)
        path = _module_path(root, package, module)
        if path is None:
            continue
        files.add(path)
        parents = module.split(".")
        todo.extend(".".join(parents[:i]) for i in range(1, len(parents)))
        todo.extend(_imported_modules(path, module, path.name == "__init__.py"))
    if not files:
        raise ValueError(f"none of {entry_modules} is a module of {package!r} under {str(root)!r}")
    return sorted(files)


def package_hash(
    package_dir: str | os.PathLike | None = None,
    entry_modules: tuple[str, ...] = ENTRY_MODULES,
    package: str = "bncourse",
) -> str:
    """SHA-256 over the relative paths and contents of :func:`source_files`."""
    root = str(Path(package_dir or _PACKAGE_DIR).resolve())
    return _package_hash(root, tuple(entry_modules), package)


@lru_cache(maxsize=8)
def _package_hash(root: str, entry_modules: tuple[str, ...], package: str) -> str:
    digest = hashlib.sha256()
    for path in source_files(root, entry_modules, package):
        digest.update(path.relative_to(root).as_posix().encode())
        digest.update(b"\0")
        digest.update(path.read_bytes())
        digest.update(b"\0")
    return digest.hexdigest()


def canonical_config(config: dict) -> dict:
    """The configuration as JSON would give it back (tuples become lists), or a TypeError."""
    if not isinstance(config, dict):
        raise TypeError(f"config must be a dict, got {type(config).__name__}")
    try:
        return json.loads(json.dumps(config, sort_keys=True))
    except TypeError as err:
        raise TypeError(
            f"config must hold only JSON values (numbers, strings, lists): {err}"
        ) from None


def cache_key(
    name: str, config: dict, *, package: str | None = None, device_type: str = "cpu"
) -> str:
    """Hex key of ``(name, config, version, package hash, device type)``."""
    payload = {
        "name": name,
        "config": canonical_config(config),
        "version": bncourse.__version__,
        "package": package if package is not None else package_hash(),
        "device": device_type,
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()


def default_cache_dir() -> Path:
    """Where results go when no ``cache_dir`` is given (see the module docstring)."""
    env = os.environ.get("BNCOURSE_CACHE")
    if env:
        return Path(env).expanduser()
    checkout = _PACKAGE_DIR.parent
    if (checkout / "pyproject.toml").is_file():
        return checkout / ".cache" / "bncourse" / "experiments"
    return Path.home() / ".cache" / "bncourse" / "experiments"


def cached(
    name: str,
    config: dict,
    compute: Callable[[dict], Any],
    *,
    cache_dir: str | os.PathLike | None = None,
    refresh: bool = False,
    device_type: str = "cpu",
    package: str | None = None,
) -> CachedResult:
    """Return ``compute(config)``, from disk when this exact computation was stored before.

    ``compute`` must return JSON-serializable data. ``refresh=True`` recomputes and overwrites.
    ``package`` overrides the package hash (tests use it to simulate a changed package).
    """
    config = canonical_config(config)
    key = cache_key(name, config, package=package, device_type=device_type)
    folder = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    path = folder / f"{name}-{key[:20]}.json"
    if not refresh and path.is_file():
        try:
            stored = json.loads(path.read_text())
            if stored.get("key") == key:
                return CachedResult(
                    name, config, stored["data"], stored["seconds"], True, key, path
                )
        except (OSError, ValueError, KeyError):
            pass  # unreadable or partial file: compute again and overwrite it
    start = time.perf_counter()
    data = compute(config)
    seconds = time.perf_counter() - start
    record = {"name": name, "key": key, "config": config, "seconds": seconds, "data": data}
    text = json.dumps(record, sort_keys=True)  # fails here, before anything is written
    folder.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=f".{name}-", suffix=".tmp")
    with os.fdopen(fd, "w") as handle:
        handle.write(text)
    os.replace(tmp, path)
    return CachedResult(name, config, json.loads(text)["data"], seconds, False, key, path)
