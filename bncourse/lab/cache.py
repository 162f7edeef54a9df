"""On-disk cache of experiment results, keyed by configuration and by the package's own code.

A result is stored as JSON under ``<cache dir>/<name>-<key>.json``. The key is a SHA-256 of the
experiment's name, its configuration (as canonical JSON), ``bncourse.__version__``, a hash of the
source of the package's computational code (every ``*.py`` file of ``bncourse/nn``,
``bncourse/lab``, ``bncourse/theory.py`` and ``bncourse/__init__.py``) and the kind of device
(results on a GPU are not bit-identical to CPU results). Any change to that code therefore
recomputes every experiment, while an unchanged rebuild of the book reads all of them back in
milliseconds.

The cache folder is, in order: the ``cache_dir`` argument, the ``BNCOURSE_CACHE`` environment
variable, ``<repository>/.cache/bncourse/experiments`` when the package runs from a source
checkout, and ``~/.cache/bncourse/experiments`` otherwise.
"""

from __future__ import annotations

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
    "COMPUTATIONAL_PARTS",
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


#: The parts of the package whose code can change a result: the reference layers, the theory,
#: the lab (data, models, training, probes, experiments) and the package's ``__init__``. The
#: autograder and the command line are left out, so working on them does not retrain anything.
COMPUTATIONAL_PARTS = ("__init__.py", "theory.py", "nn", "lab")


def package_hash(
    package_dir: str | os.PathLike | None = None, parts: tuple[str, ...] = COMPUTATIONAL_PARTS
) -> str:
    """SHA-256 over the relative paths and contents of the ``*.py`` files of ``parts``.

    ``parts`` names files or folders directly under the package folder (default:
    :data:`COMPUTATIONAL_PARTS`); folders are searched recursively.
    """
    return _package_hash(str(Path(package_dir or _PACKAGE_DIR).resolve()), tuple(parts))


@lru_cache(maxsize=8)
def _package_hash(package_dir: str, parts: tuple[str, ...]) -> str:
    root = Path(package_dir)
    digest = hashlib.sha256()
    files: set[Path] = set()
    for part in parts:
        target = root / part
        if target.is_dir():
            files.update(target.rglob("*.py"))
        elif target.is_file():
            files.add(target)
    for path in sorted(files):
        if "__pycache__" in path.parts:
            continue
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
