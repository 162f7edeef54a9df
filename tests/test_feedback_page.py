"""The feedback page a student receives after ``bncourse grade``: readable, offline, their frames.

Unit tests of the pieces (frames filter, links, points, the book's URL), then one graded class of
the example course whose pages are read as HTML and opened in Chromium from disk, offline, at a
desktop and a phone width.
"""

from __future__ import annotations

import importlib.util
import json
import linecache
import re
import sys
import threading
from pathlib import Path

import pytest
import yaml
from bs4 import BeautifulSoup
from example_course import BIN, make_course, release, run, submit_kind
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook, new_output

from bncourse import published
from bncourse.grading.catalogue import BOOK_URL_VARIABLE, CATALOGUE, book_link, book_url
from bncourse.instructor import example_class as ec
from bncourse.instructor.feedback import FeedbackPage, link_urls, mathjax_script, points
from bncourse.trusted.frames import filter_text, is_library_file, student_traceback

ROOT = Path(__file__).resolve().parents[1]
A = ec.ASSIGNMENT
CHROMIUM = Path("/usr/bin/chromium")
WIDTHS = {"desktop": 1280, "phone": 390}
# A student's variance that fails inside the standard library: the traceback must show their line.
RAISING = "import statistics\n\ndef variance(xs):\n    return statistics.variance(xs[:1])"
STUDENT_LINE = "return statistics.variance(xs[:1])"
CELL_FILE = "/tmp/ipykernel_7/2718281828.py"  # where ipykernel compiles a notebook's cell


def _load_script(name: str):
    spec = importlib.util.spec_from_file_location(name, ROOT / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# -- the book's URL ---------------------------------------------------------------------------


def test_the_published_url_is_the_one_in_config_yml():
    config = yaml.safe_load((ROOT / "_config.yml").read_text(encoding="utf-8"))
    script = _load_script("book_url")
    assert published.BOOK_URL == config["html"]["baseurl"]
    # the package's copy is exactly what `make release` writes
    source = (ROOT / "bncourse" / "published.py").read_text(encoding="utf-8")
    assert source == script.module_source(script.book_url())


def test_book_links_are_absolute_by_default_and_the_instructor_can_move_them(monkeypatch):
    monkeypatch.delenv(BOOK_URL_VARIABLE, raising=False)
    misconception = next(iter(CATALOGUE.values()))
    assert book_url() == published.BOOK_URL
    assert misconception.link == (
        f"{published.BOOK_URL}book/{misconception.page}.html#{misconception.anchor}"
    )
    monkeypatch.setenv(BOOK_URL_VARIABLE, "https://mirror.example.edu/bn")
    assert book_link("batchnorm", "x") == "https://mirror.example.edu/bn/book/batchnorm.html#x"


# -- the student's own frames -----------------------------------------------------------------


def _student_error() -> BaseException:
    """An error raised in a 'cell' function, called through library code (json's decoder)."""
    namespace: dict = {}
    code = "def hook(obj):\n    return obj['missing']\n"
    linecache.cache[CELL_FILE] = (len(code), None, code.splitlines(True), CELL_FILE)  # as IPython
    exec(compile(code, CELL_FILE, "exec"), namespace)
    try:
        json.loads('{"a": 1}', object_hook=namespace["hook"])
    except KeyError as error:
        return error
    raise AssertionError("the hook did not raise")


def test_a_traceback_keeps_the_students_frames_and_the_message_only():
    error = _student_error()
    text = student_traceback(error)
    assert f'File "{CELL_FILE}", line 2, in hook' in text
    assert "return obj['missing']" in text
    assert text.rstrip().endswith("KeyError: 'missing'")
    assert str(Path(json.__file__).parent) not in text  # json's decoder frames are gone
    assert is_library_file(json.__file__) and is_library_file(pytest.__file__)
    assert not is_library_file(CELL_FILE) and not is_library_file("<string>")


def test_ipython_tracebacks_lose_library_frames():
    from IPython.core.ultratb import AutoFormattedTB

    error = _student_error()
    entries = AutoFormattedTB(mode="Context").structured_traceback(
        type(error), error, error.__traceback__
    )
    kept = filter_text(entries)
    text = "".join(kept)
    assert any(CELL_FILE in entry for entry in entries)
    assert any("decoder.py" in entry for entry in entries)  # IPython shows json's frames
    assert "json/decoder.py" not in text and "json/__init__.py" not in text
    assert CELL_FILE in text and "'missing'" in kept[-1]  # the student's frame, the message
    assert "Traceback (most recent call last)" in text and "-" * 20 not in text  # no rule


def test_quoted_python_tracebacks_lose_library_frames():
    library = str(Path(json.__file__).with_name("decoder.py"))
    note = (
        "Where the notebook raised it:\nTraceback (most recent call last):\n"
        f'  File "{library}", line 353, in raw_decode\n    obj, end = self.scan_once(s, idx)\n'
        "               ^^^^^^^^^^^^^^^^^^^^^^\n"
        f"  File \"{CELL_FILE}\", line 2, in hook\n    return obj['missing']\n"
        "KeyError: 'missing'"
    )
    message = "\x1b[0;31mRemoteError\x1b[0m: KeyError: 'missing'"
    kept = filter_text([message, note])
    assert kept[0] == message
    assert library not in kept[1] and "scan_once" not in kept[1] and "^^^" not in kept[1]
    assert f"File \"{CELL_FILE}\", line 2, in hook\n    return obj['missing']" in kept[1]
    assert kept[1].endswith("KeyError: 'missing'")


# -- the page's pieces ------------------------------------------------------------------------


def test_urls_in_messages_become_links_without_their_punctuation():
    html = link_urls("Read more: https://example.org/book/a.html#b-c. Then (https://x.org/y).")
    assert '<a href="https://example.org/book/a.html#b-c" rel="noopener">' in html
    assert '<a href="https://x.org/y" rel="noopener">https://x.org/y</a>).' in html


def test_mathjax_is_inlined_from_the_installed_component():
    script = mathjax_script()
    assert len(script) > 100_000 and "MathJax" in script
    assert not re.search(r"</script|<!--", script, re.I)


def test_the_points_are_one_row_per_graded_cell():
    def graded(grade_id: str, score: float, maximum: float, **flags) -> dict:
        return {"nbgrader": {"grade": True, "grade_id": grade_id, "score": score,
                             "points": maximum, **flags}}  # fmt: skip

    nb = new_notebook(
        cells=[
            new_markdown_cell("intro"),
            new_code_cell("a", metadata=graded("answer", 1, 2, solution=True)),
            new_code_cell("t", metadata=graded("test_a", 2.5, 2.5)),
            new_markdown_cell("w", metadata=graded("essay", 0, 3, solution=True)),
        ]
    )
    nb.cells[2].outputs = [new_output("error", ename="E", evalue="v", traceback=["E: v"])]
    _, resources = FeedbackPage().preprocess(nb, {"nbgrader": {"score": 3.5, "max_score": 7.5}})
    page = resources["bncourse_feedback"]
    assert [(r["id"], r["kind"], r["score"], r["max"], r["full"]) for r in page["points"]] == [
        ("answer", "graded answer", "1", "2", False),
        ("test_a", "test", "2.5", "2.5", True),
        ("essay", "written answer", "0", "3", False),
    ]
    assert (page["score"], page["max_score"]) == ("3.5", "7.5") and page["mathjax"]
    assert points(nb) == page["points"]


# -- a graded class -----------------------------------------------------------------------------

MIRROR = "https://mirror.example.edu/bncourse/"


@pytest.fixture(scope="module")
def graded(tmp_path_factory) -> dict[str, Path]:
    """The example course graded by ``bncourse grade``: one mistake, one error, one correct."""
    root = make_course(tmp_path_factory.mktemp("feedback") / "course")
    submit_kind(root, "bo", "unbiased")
    submit_kind(root, "di", "correct")
    answers = {**ec.ANSWERS["correct"], "variance": RAISING}
    ec.submit(root, "cy", ec.answer(release(root), answers))
    with pytest.MonkeyPatch.context() as patch:  # the default: the URL in _config.yml
        patch.delenv(BOOK_URL_VARIABLE, raising=False)
        run([str(BIN / "bncourse"), "grade", A, "--workers", "2"], root)
    return {s: root / "feedback" / s / A / f"{A}.html" for s in ("bo", "cy", "di")}


@pytest.mark.slow
def test_the_instructor_moves_book_links_in_nbgrader_config(tmp_path, monkeypatch):
    root = make_course(tmp_path / "course")
    with (root / "nbgrader_config.py").open("a", encoding="utf-8") as config:
        config.write(f"c.TrustedExecute.book_url = {MIRROR!r}\n")
    submit_kind(root, "bo", "unbiased")
    monkeypatch.delenv(BOOK_URL_VARIABLE, raising=False)
    run([str(BIN / "bncourse"), "grade", A, "--workers", "1"], root)
    soup = _soup(root / "feedback" / "bo" / A / f"{A}.html")
    links = {a["href"] for a in soup.select("div.output_error a")}
    assert links == {f"{MIRROR}book/batchnorm.html#bn-unbiased-variance"}


def _soup(path: Path) -> BeautifulSoup:
    return BeautifulSoup(path.read_text(encoding="utf-8"), "html.parser")


def _error_text(soup: BeautifulSoup) -> str:
    return "\n".join(pre.get_text() for pre in soup.select("div.output_error pre"))


@pytest.mark.slow
def test_feedback_loads_nothing_from_elsewhere_and_links_the_published_book(graded):
    for path in graded.values():
        soup = _soup(path)
        loads = [
            tag.get("src") or tag.get("href")
            for tag in soup.find_all(["script", "link", "img", "iframe", "source", "video"])
            if tag.get("src") or tag.get("href")
        ]
        assert loads == [], path  # scripts and styles are inlined: the file works on its own
        external = {a["href"] for a in soup.find_all("a", href=True) if "://" in a["href"]}
        assert all(href.startswith(published.BOOK_URL) for href in external), external
    links = {a["href"] for a in _soup(graded["bo"]).select("div.output_error a")}
    assert links == {book_link("batchnorm", "bn-unbiased-variance")}
    assert links == {f"{published.BOOK_URL}book/batchnorm.html#bn-unbiased-variance"}


@pytest.mark.slow
def test_feedback_shows_the_students_frames_and_never_the_graders(graded):
    for path in graded.values():
        html = path.read_text(encoding="utf-8")
        package = str(Path(sys.modules["bncourse"].__file__).parent)
        for grader_file in (package, "bncourse/trusted", "site-packages", "statistics.py"):
            assert grader_file not in html, (path, grader_file)
        frames = re.findall(r'File "([^"]+)", line \d+', _error_text(_soup(path)))
        assert all("/ipykernel_" in frame for frame in frames), frames  # the student's cells
    text = _error_text(_soup(graded["cy"]))
    assert "variance requires at least two data points" in text  # the message stays
    assert "in variance" in text and STUDENT_LINE in text  # the student's line that raised
    assert re.search(r'File "[^"]*ipykernel[^"]*", line 4, in variance', text)


@pytest.mark.slow
def test_feedback_has_a_points_table_and_wrapping_messages(graded):
    lost = {"bo": {"test_variance"}, "cy": {"test_variance"}, "di": set()}
    for student, path in graded.items():
        soup = _soup(path)
        rows = [
            [cell.get_text(" ", strip=True) for cell in tr.find_all(["td", "th"])]
            for tr in soup.select("table.bn-points tbody tr")
        ]
        expected = [
            [f"{cell} test", "0" if cell in lost[student] else str(p), str(p)]
            for cell, p in ec.POINTS.items()
        ]
        assert rows == expected, student
        total = sum(int(row[1]) for row in expected)
        foot = [c.get_text(strip=True) for c in soup.select("table.bn-points tfoot tr > *")]
        assert foot == ["Total", str(total), str(sum(ec.POINTS.values()))]
        style = "\n".join(s.get_text() for s in soup.find_all("style"))
        rule = re.search(r"div\.output_error pre[^{]*\{[^}]*white-space: pre-wrap;", style)
        assert rule, "error outputs must wrap"
        assert soup.find("meta", attrs={"name": "viewport"})
    assert len(_soup(graded["bo"]).select("div.output_error pre")) == 1


def _only(context, allowed: str) -> list[str]:
    """Let ``context`` load ``allowed`` and nothing else; the URLs it asked for."""
    requested: list[str] = []

    def route(route, request) -> None:
        requested.append(request.url)
        if request.url == allowed:
            route.continue_()
        else:
            route.abort()

    context.route("**/*", route)
    return requested


def _open(browser, page_file: Path, width: int, screenshot: Path | None):
    """Open ``page_file`` offline at ``width``: what it shows, what it asked for, its errors."""
    context = browser.new_context(viewport={"width": width, "height": 900})
    context.set_offline(True)
    requested = _only(context, page_file.as_uri())
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    page.goto(page_file.as_uri())
    page.wait_for_selector("mjx-container svg", timeout=30_000)
    shown = page.evaluate(
        """() => ({
          scroll: document.documentElement.scrollWidth,
          viewport: window.innerWidth,
          math: document.querySelectorAll('mjx-container').length,
          raw: [...document.querySelectorAll('.rendered_html')]
                 .some(e => e.innerText.includes('\\frac')),
          wrap: getComputedStyle(document.querySelector('div.output_error pre')).whiteSpace,
          // MathJax's assistive MathML is clipped to nothing: screen readers read it
          widest: Math.max(...[...document.querySelectorAll('body *')]
                     .filter(e => !e.closest('mjx-assistive-mml'))
                     .map(e => e.getBoundingClientRect().right)),
        })"""
    )
    if screenshot is not None:
        page.screenshot(path=str(screenshot), full_page=True)
    context.close()
    return shown, requested, errors


def _collect(fn, failures: list[BaseException]) -> None:
    try:
        fn()
    except BaseException as error:  # re-raised in the test's own thread
        failures.append(error)


@pytest.mark.slow
def test_feedback_reads_without_sideways_scrolling_with_math_offline(graded, tmp_path):
    if not CHROMIUM.is_file():
        pytest.fail(f"{CHROMIUM} is missing: install Debian's chromium (apt-get install chromium)")
    from book_site import CHROMIUM_ARGS
    from playwright.sync_api import sync_playwright

    # In a thread of its own: another test file's browser session may hold this thread's asyncio
    # loop (xdist runs several files in one process), and Playwright's sync API refuses to run
    # inside a running loop.
    def check_pages() -> None:
        formulas = sum(
            len(re.findall(r"\$\$.+?\$\$", c.source)) for c in ec.source_notebook().cells
        )
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(
                executable_path=str(CHROMIUM), args=list(CHROMIUM_ARGS)
            )
            try:
                for student in ("bo", "cy"):  # a long message with a link; a traceback
                    for name, width in WIDTHS.items():
                        shot = tmp_path / f"feedback-{name}.png" if student == "bo" else None
                        shown, requested, errors = _open(browser, graded[student], width, shot)
                        where = (student, name, shown)
                        assert shown["viewport"] == width, where
                        assert shown["scroll"] <= width and shown["widest"] <= width + 0.5, where
                        assert shown["math"] == formulas and not shown["raw"], where  # typeset
                        assert shown["wrap"] == "pre-wrap", where
                        assert requested == [graded[student].as_uri()] and errors == [], where
            finally:
                browser.close()

    failures: list[BaseException] = []
    thread = threading.Thread(target=lambda: _collect(check_pages, failures))
    thread.start()
    thread.join()
    if failures:
        raise failures[0]
    assert all((tmp_path / f"feedback-{name}.png").stat().st_size > 10_000 for name in WIDTHS)
