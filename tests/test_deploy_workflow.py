"""The GitHub Pages workflow builds the book exactly as `make book-clean` does and publishes it.

`make test` runs `make book-clean` before pytest, so a workflow running the same commands
builds a book that this suite has just built and checked.
"""

from __future__ import annotations

import re
import shlex
import subprocess
import tomllib
from pathlib import Path

import pytest
import yaml
from packaging.specifiers import SpecifierSet

ROOT = Path(__file__).resolve().parents[1]
WORKFLOW = ROOT / ".github" / "workflows" / "deploy-book.yml"


def make_dry_run(*targets: str) -> list[str]:
    """The shell commands `make` runs for `targets`, every prerequisite remade (make -n -B)."""
    result = subprocess.run(
        ["make", "--no-print-directory", "-n", "-B", *targets],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    )
    return [line.strip() for line in result.stdout.splitlines() if line.strip()]


def expand(command: str) -> list[str]:
    """A workflow shell line, with `make TARGET...` replaced by the commands make runs for it."""
    words = shlex.split(command)
    if words and words[0] == "make":
        return make_dry_run(*[w for w in words[1:] if not w.startswith("-")])
    return [command.strip()]


@pytest.fixture(scope="module")
def workflow() -> dict:
    return yaml.safe_load(WORKFLOW.read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def build_commands(workflow: dict) -> list[str]:
    """Every shell command of the build job, in order, with make targets expanded."""
    commands: list[str] = []
    for step in workflow["jobs"]["build"]["steps"]:
        for line in step.get("run", "").splitlines():
            if line.strip() and not line.strip().startswith("#"):
                commands += expand(line)
    return commands


def test_workflow_builds_the_book_with_the_makefiles_clean_build(build_commands) -> None:
    makefile = make_dry_run("book-clean")
    book = [c for c in makefile if c.startswith("jupyter-book build")]
    assert len(book) == 1, makefile
    assert book[0] in build_commands
    assert "rm -rf _build" in build_commands
    assert build_commands.index("rm -rf _build") < build_commands.index(book[0])


def test_workflow_installs_torch_pinned_by_the_constraints(build_commands) -> None:
    constraints = (ROOT / "constraints.txt").read_text(encoding="utf-8")
    pin = re.search(r"^torch==(\S+)$", constraints, re.M)
    assert pin, "constraints.txt must pin torch"
    installs = [c for c in build_commands if re.search(r"\bpip install\b", c)]
    torch_installs = [c for c in installs if re.search(r"\btorch\b", c)]
    assert torch_installs, installs
    for command in torch_installs:
        assert f"torch=={pin.group(1)}" in command and "-c constraints.txt" in command
    assert all("-c constraints.txt" in c for c in installs)


def test_workflow_publishes_the_built_html_on_pages(workflow: dict) -> None:
    triggers = workflow.get("on", workflow.get(True))  # YAML 1.1 reads a bare `on` as True
    assert triggers["push"]["branches"] == ["main"]
    assert workflow["permissions"]["pages"] == "write"
    assert workflow["permissions"]["id-token"] == "write"
    build_steps = workflow["jobs"]["build"]["steps"]
    upload = [
        s for s in build_steps if s.get("uses", "").startswith("actions/upload-pages-artifact@")
    ]
    assert len(upload) == 1 and upload[0]["with"]["path"] == "_build/html"
    deploy = workflow["jobs"]["deploy"]
    assert deploy["needs"] == "build"
    assert any(s.get("uses", "").startswith("actions/deploy-pages@") for s in deploy["steps"])


def test_workflow_python_satisfies_the_package(workflow: dict) -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    setup = [
        s
        for s in workflow["jobs"]["build"]["steps"]
        if s.get("uses", "").startswith("actions/setup-python@")
    ]
    assert len(setup) == 1
    assert str(setup[0]["with"]["python-version"]) in SpecifierSet(project["requires-python"])
