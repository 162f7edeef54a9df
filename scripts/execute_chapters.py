"""Execute the book's chapters in parallel into Jupyter Book's execution cache.

``jupyter-book build`` executes chapters one after another; run first, this fills
``_build/.jupyter_cache`` with a pool of processes (longest chapters first), so the build then
finds every chapter cached. A chapter that fails here is left uncached: the build executes it
again and reports its error as usual.

Usage: ``python scripts/execute_chapters.py CACHE_DIR CHAPTER.md ...``
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from jupyter_cache import get_cache
from jupyter_cache.executors import load_executor

MYST_READER = {"name": "myst_nb_md", "type": "plugin"}


def previous_seconds(cache_dir: Path) -> dict[str, float]:
    """Each chapter's execution time in ``cache_dir`` from an earlier build, if any."""
    if not cache_dir.exists():
        return {}
    cache = get_cache(str(cache_dir))
    return {r.uri: float(r.data.get("execution_seconds", 0.0)) for r in cache.list_cache_records()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("cache_dir", type=Path, help="Jupyter Book's cache, _build/.jupyter_cache")
    parser.add_argument("chapters", nargs="+", type=Path, help="MyST notebooks to execute")
    parser.add_argument("--timeout", type=int, default=600, help="seconds per chapter")
    args = parser.parse_args(argv)
    missing = [str(p) for p in args.chapters if not p.is_file()]
    if missing:
        parser.error(f"chapters: no such file: {', '.join(missing)}")
    chapters = [str(p.resolve()) for p in args.chapters]
    # Longest first (as last measured; the instructors' chapter when nothing is known), so the
    # pool does not end on one long chapter alone.
    seconds = previous_seconds(args.cache_dir)
    chapters.sort(key=lambda uri: (-seconds.get(uri, 0.0), "instructors" not in uri, uri))
    cache = get_cache(str(args.cache_dir))
    for record in cache.list_project_records():
        cache.remove_nb_from_project(record.pk)
    for uri in chapters:
        cache.add_nb_to_project(uri, read_data=MYST_READER)
    executor = load_executor("local-parallel", cache=cache)
    result = executor.run_and_cache(timeout=args.timeout, allow_errors=False)
    print(
        f"chapters executed in parallel: {len(result.succeeded)} ok, "
        f"{len(result.excepted) + len(result.errored)} left for the build to report"
        f" ({os.cpu_count()} processes)",
        file=sys.stderr,
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
