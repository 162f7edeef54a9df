"""Where the course is published and how a student installs it, from the package's own metadata.

The repository URL (``[project.urls] Repository`` in ``pyproject.toml``) and the version (the
release tagged ``v<version>``) are written once; every install line and launch link (the
notebooks' set-up cell, the book's Colab and Binder buttons, error messages) is made from them.
"""

from __future__ import annotations

import re
from functools import lru_cache
from importlib.metadata import PackageNotFoundError, metadata

PACKAGE = "bncourse"
CHECK_EXTRA = "check"
TORCH_CPU_INDEX = "https://download.pytorch.org/whl/cpu"


@lru_cache(maxsize=1)
def _metadata() -> tuple[str, str, str, str]:
    try:
        meta = metadata(PACKAGE)
    except PackageNotFoundError as exc:  # a source tree that was never installed
        raise RuntimeError(
            f"{PACKAGE} is not installed: run `make install` (or pip install -e .)"
        ) from exc
    urls = dict(
        (part.strip() for part in entry.split(",", 1)) for entry in meta.get_all("Project-URL", [])
    )
    if "Repository" not in urls:
        raise RuntimeError(f"{PACKAGE}'s metadata has no Repository URL ([project.urls])")
    torch = next(r for r in meta.get_all("Requires-Dist", []) if re.match(r"torch\b", r))
    return urls["Repository"].rstrip("/"), meta["Version"], meta["Requires-Python"], torch


def repository_url() -> str:
    """The course's public repository, e.g. ``https://github.com/owner/name``."""
    return _metadata()[0]


def release_tag() -> str:
    """The git tag of this version's release."""
    return f"v{_metadata()[1]}"


def install_spec(extra: str | None = None) -> str:
    """The pip requirement that installs this release from its tag (``extra``: e.g. ``check``)."""
    name = f"{PACKAGE}[{extra}]" if extra else PACKAGE
    return f"{name} @ git+{repository_url()}@{release_tag()}"


def install_command(extra: str | None = None) -> str:
    """The shell line a student runs: ``pip install "<spec>"``."""
    return f'pip install "{install_spec(extra)}"'


def python_requirement() -> str:
    """The Pythons the package installs on, in words: ``Python 3.11 or newer``."""
    spec = _metadata()[2]
    match = re.fullmatch(r">=\s*([\d.]+)", spec)
    return f"Python {match.group(1)} or newer" if match else f"Python {spec}"


def torch_cpu_install_command() -> str:
    """The line that installs a CPU build of a torch the package accepts (no CUDA libraries)."""
    return f'pip install "{_metadata()[3].replace(" ", "")}" --index-url {TORCH_CPU_INDEX}'


def github_path() -> str:
    """``owner/name`` of the repository on GitHub, for Colab and Binder links."""
    url = repository_url()
    prefix = "https://github.com/"
    if not url.startswith(prefix):
        raise RuntimeError(f"the repository URL must be on GitHub for Colab links, got {url}")
    return url[len(prefix) :]


def setup_cell_source() -> str:
    """The first cell of every notebook: installs this release where ``bncourse`` is missing."""
    return (
        "# Set-up on Colab, Binder or a notebook saved on its own: installs the course's package\n"
        "# where it is missing. Where it is installed already (a clone of the course), it does\n"
        "# nothing.\n"
        "import importlib.util\n"
        "import subprocess\n"
        "import sys\n"
        "\n"
        'if importlib.util.find_spec("bncourse") is None:\n'
        "    subprocess.run(\n"
        f'        [sys.executable, "-m", "pip", "install", "--quiet", "{install_spec()}"],\n'
        "        check=True,\n"
        "    )\n"
        "    importlib.invalidate_caches()  # so that the next import finds what pip installed"
    )
