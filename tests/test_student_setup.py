"""What a student outside the repository relies on: the set-up cell, the installed assignments,
the chapters' notebook twins, the Binder environment and the install lines, all from one place."""

from __future__ import annotations

import filecmp
import importlib.util
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import jupytext
import nbformat
import pytest

from bncourse import distribution
from bncourse.instructor import packaged

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))
import setup_cells  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
ASSIGNMENTS = sorted(p.name for p in (REPO / "solutions").iterdir() if p.is_dir())
CHAPTERS = sorted(p for p in (REPO / "book").glob("*.md") if "```{code-cell}" in p.read_text())


def _first_code_cell(nb: nbformat.NotebookNode) -> nbformat.NotebookNode:
    return next(c for c in nb.cells if c.cell_type == "code")


def _released(folder: str, assignment: str) -> nbformat.NotebookNode:
    return nbformat.read(REPO / folder / assignment / f"{assignment}.ipynb", as_version=4)


def test_the_release_is_named_once_in_pyproject() -> None:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    assert distribution.repository_url() == project["urls"]["Repository"]
    assert distribution.release_tag() == f"v{project['version']}"
    assert distribution.install_spec("check") == (
        f"bncourse[check] @ git+{project['urls']['Repository']}@v{project['version']}"
    )
    config = (REPO / "_config.yml").read_text()
    assert project["urls"]["Repository"] not in config, "the book takes the URL from the package"


@pytest.mark.parametrize("folder", ["solutions", "exercises"])
@pytest.mark.parametrize("assignment", ASSIGNMENTS)
def test_every_assignment_notebook_begins_with_the_locked_setup_cell(folder, assignment) -> None:
    cell = _released(folder, assignment).cells[0]
    assert cell.cell_type == "code"
    assert cell.source == distribution.setup_cell_source()
    assert cell.metadata["nbgrader"]["locked"] is True  # restored from the gradebook at grading
    assert not cell.metadata["nbgrader"]["solution"] and not cell.metadata["nbgrader"]["grade"]


@pytest.mark.parametrize("chapter", CHAPTERS, ids=lambda p: p.stem)
def test_every_chapter_and_its_twin_begin_with_the_setup_cell(chapter: Path) -> None:
    source = jupytext.read(chapter)
    cell = _first_code_cell(source)
    assert cell.source == distribution.setup_cell_source()
    assert cell.metadata.get("tags") == ["remove-cell"]  # book readers do not need it
    twin = chapter.with_suffix(".ipynb")
    assert twin.is_file(), f"run `make notebooks`: {twin.name} is missing"
    assert _first_code_cell(nbformat.read(twin, as_version=4)).source == cell.source


@pytest.mark.parametrize("chapter", CHAPTERS, ids=lambda p: p.stem)
def test_chapter_twins_are_their_markdown_without_outputs(chapter: Path) -> None:
    """Launch buttons open book/<chapter>.ipynb: it must be the chapter as written now."""
    want = jupytext.read(chapter)
    got = nbformat.read(chapter.with_suffix(".ipynb"), as_version=4)
    view = lambda nb: [(c.cell_type, c.source, c.metadata.get("tags", [])) for c in nb.cells]  # noqa: E731
    assert view(got) == view(want), f"run `make notebooks`: {chapter.stem}.ipynb is stale"
    assert all(not c.get("outputs") for c in got.cells if c.cell_type == "code")


def test_setup_cell_does_nothing_where_the_package_is_installed(monkeypatch) -> None:
    calls = []
    monkeypatch.setattr(subprocess, "run", lambda *a, **k: calls.append(a))
    exec(distribution.setup_cell_source(), {})
    assert calls == []


def test_setup_cell_installs_the_release_where_the_package_is_missing(monkeypatch) -> None:
    calls = []
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "bncourse" else real(name, *a)
    )
    monkeypatch.setattr(subprocess, "run", lambda args, **kw: calls.append((args, kw)))
    exec(distribution.setup_cell_source(), {})
    assert calls == [
        (
            [sys.executable, "-m", "pip", "install", "--quiet", distribution.install_spec()],
            {"check": True},
        )
    ]


def test_packaged_assignments_are_what_release_writes(tmp_path) -> None:
    written = packaged.write_packaged(REPO / "solutions", tmp_path)
    assert sorted(p.stem for p in written) == ASSIGNMENTS == packaged.packaged_assignments()
    for path in written:
        committed = packaged.PACKAGED_DIR / path.name
        assert filecmp.cmp(path, committed, shallow=False), f"run `make release`: {path.name}"


@pytest.mark.parametrize("assignment", ASSIGNMENTS)
def test_packaged_assignments_hold_every_test_and_no_solution(assignment) -> None:
    solution = _released("solutions", assignment)
    installed = nbformat.read(packaged.packaged_notebook(assignment), as_version=4)
    inside, outside, region = set(), set(), False
    for cell in solution.cells:
        for line in cell.source.splitlines():
            if "BEGIN SOLUTION" in line or "END SOLUTION" in line:
                region = "BEGIN" in line  # the markers themselves are kept, for nbgrader
                continue
            (inside if region else outside).add(line.strip())
    secret = inside - outside - {""}
    kept = {line.strip() for c in installed.cells for line in c.source.splitlines()}
    assert secret and not secret & kept
    tests = {c.id: c.source for c in solution.cells if packaged.graded_cell_ids(_only(c))}
    kept_tests = {c.id: c.source for c in installed.cells if c.id in tests}
    assert tests and kept_tests == tests, "test cells, hidden tests included, are kept as written"


def _only(cell: nbformat.NotebookNode) -> nbformat.NotebookNode:
    return nbformat.v4.new_notebook(cells=[cell])


@pytest.mark.parametrize("assignment", ASSIGNMENTS)
def test_a_notebook_is_recognised_by_its_graded_cells(assignment) -> None:
    assert packaged.identify(_released("exercises", assignment)) == assignment


def test_a_notebook_of_no_assignment_is_refused_by_name() -> None:
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("1 + 1")])
    with pytest.raises(FileNotFoundError, match="pass --assignment"):
        packaged.identify(nb)
    with pytest.raises(FileNotFoundError, match="ps01_batchnorm"):
        packaged.packaged_notebook("ps99")


def test_binder_installs_the_cpu_build_of_the_pinned_torch_and_the_student_install() -> None:
    lines = [
        line.strip()
        for line in (REPO / "binder" / "requirements.txt").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    pins = dict(
        line.split("==", 1)
        for line in (REPO / "constraints.txt").read_text().splitlines()
        if "==" in line
    )
    assert "--extra-index-url https://download.pytorch.org/whl/cpu" in lines
    assert f"torch=={pins['torch']}+cpu" in lines
    assert "-c ../constraints.txt" in lines  # relative to the requirements file
    assert ".[check]" in lines and not any("dev" in line for line in lines)
    assert (REPO / "binder" / "runtime.txt").read_text().strip() == "python-3.11"


def test_every_install_line_names_this_release() -> None:
    """README and book give the one install line; no page names another version or URL."""
    texts = {p: p.read_text() for p in [REPO / "README.md", *sorted((REPO / "book").glob("*.md"))]}
    line = distribution.install_command(distribution.CHECK_EXTRA)
    assert line in texts[REPO / "README.md"]
    assert "{{ install_student }}" in texts[REPO / "book" / "exercises.md"]
    for path, text in texts.items():
        for found in re.findall(r"bncourse(?:\[\w+\])? @ git\+[^\s\"'`]+", text):
            assert found.rstrip("\"'`") in {
                distribution.install_spec(),
                distribution.install_spec(distribution.CHECK_EXTRA),
            }, (path, found)


def test_readme_gives_the_cpu_torch_line_the_package_accepts() -> None:
    assert distribution.torch_cpu_install_command() in (REPO / "README.md").read_text()


def test_commands_without_the_check_extra_say_how_to_install_it(monkeypatch, capsys) -> None:
    from bncourse import cli

    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "nbgrader" else real(name, *a)
    )
    assert cli.main(["check", "anything.ipynb"]) == 2
    out = capsys.readouterr().out
    assert "needs nbgrader" in out and distribution.install_command("check") in out


def test_the_book_takes_its_repository_and_install_lines_from_the_package() -> None:
    spec = importlib.util.spec_from_file_location("launch_links", REPO / "_ext" / "launch_links.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)

    class Config:
        html_theme_options = {"repository_branch": "main"}
        myst_substitutions = {}

    config = Config()
    module.use_package_repository(None, config)
    assert config.html_theme_options == {
        "repository_branch": "main",
        "repository_url": distribution.repository_url(),
        "use_repository_button": True,
        "use_issues_button": True,
    }
    subs = config.myst_substitutions
    assert subs["install_student"] == f"`{distribution.install_command('check')}`"
    assert subs["install_torch_cpu"] == f"`{distribution.torch_cpu_install_command()}`"
    assert subs["clone_repository"] == f"`git clone {distribution.repository_url()}`"


def test_the_setup_cell_writer_changes_only_the_setup_cells(tmp_path) -> None:
    """`make release` / `make notebooks` rewrite the set-up cells after a new version; here
    every chapter and solution is current, and a changed source lands in the first cell only."""
    source = distribution.setup_cell_source()
    for chapter in CHAPTERS:
        assert not setup_cells.update_chapter(chapter, source), chapter
        copy = tmp_path / chapter.name
        copy.write_text(chapter.read_text())
        assert setup_cells.update_chapter(copy, "print('new release')")
        before, after = jupytext.read(chapter), jupytext.read(copy)
        assert _first_code_cell(after).source == "print('new release')"
        rest = lambda nb: [c.source for c in nb.cells if c is not _first_code_cell(nb)]  # noqa: E731
        assert rest(after) == rest(before)
    for assignment in ASSIGNMENTS:
        path = REPO / "solutions" / assignment / f"{assignment}.ipynb"
        assert not setup_cells.update_solution(path, source)


def test_check_names_copied_graded_cells_instead_of_failing_inside_nbgrader(tmp_path) -> None:
    import io

    from bncourse.instructor.check import check_notebook

    nb = _released("exercises", "ps01_batchnorm")
    answer = next(c for c in nb.cells if c.get("id") == "batchnorm_forward_train")
    copy = nbformat.from_dict(answer)
    copy["id"] = "a-copy"
    nb.cells.insert(nb.cells.index(answer) + 1, copy)  # Jupyter's "duplicate cell"
    path = tmp_path / "ps01_batchnorm.ipynb"
    nbformat.write(nb, path)
    out = io.StringIO()
    assert check_notebook(path, out=out) == 2
    assert "more than once" in out.getvalue() and "batchnorm_forward_train" in out.getvalue()
    out = io.StringIO()
    assert check_notebook(tmp_path, out=out) == 2
    assert "is a folder, not a notebook file" in out.getvalue()
