"""The built book in a real browser: every page loads cleanly, offline, with working links,
images, math, search, launch buttons and citations.

Runs headless Debian Chromium (/usr/bin/chromium) against `_build/html`, which `make test`
builds from scratch before pytest runs. Pages are discovered by following links from the
landing page, so a new chapter is checked as soon as it is in the table of contents. Every
request that leaves the local server is blocked: the site must work with no network.

The two console errors a stock Jupyter Book 1 page shows in Chromium are removed at their
cause by the book's configuration, so no console error is tolerated here:
- sphinx-thebe's "Identifier 'THEBE_JS_URL' has already been declared": `_ext/unique_scripts.py`
  (Sphinx 7.4 wrote the inline script twice);
- the theme's "Got invalid theme mode": `html_context.default_mode: auto` in `_config.yml`.
"""

from __future__ import annotations

import re
from pathlib import Path, PurePosixPath
from urllib.parse import parse_qs, urlsplit

import pytest
import yaml
from book_site import (
    CHROMIUM,
    CHROMIUM_ARGS,
    PHONE,
    PHONE_LAYOUT_JS,
    RASTER_SUFFIXES,
    PageReport,
    block_external_requests,
    book_root,
    discover_pages,
    html_files,
    is_descriptive_alt,
    link_target,
    redirect_target,
    serve,
    site_dir,
    visit,
)
from PIL import Image

VIEWPORT = {"width": 1280, "height": 900}
SEARCH_PHRASE = "variance shift"
#: Code that draws with matplotlib (an import of it, or a call through pyplot).
DRAWS = re.compile(r"^\s*(import|from) matplotlib\b|\bplt\.\w+\(", re.M)


@pytest.fixture(scope="session")
def site() -> Path:
    site = site_dir()
    if not (site / "index.html").is_file():
        pytest.fail(f"no built book at {site}: run `make book` first (`make test` builds it)")
    return site


@pytest.fixture(scope="session")
def base_url(site: Path):
    with serve(site) as url:
        yield url


@pytest.fixture(scope="session")
def browser():
    if not CHROMIUM.is_file():
        pytest.fail(f"{CHROMIUM} is missing: install Debian's chromium (apt-get install chromium)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=str(CHROMIUM), args=list(CHROMIUM_ARGS)
        )
        yield browser
        browser.close()


@pytest.fixture(scope="session")
def offline_context(browser, base_url):
    """A browser context that can reach only the local server; yields (context, blocked URLs)."""

    def make(**options):
        context = browser.new_context(**{"viewport": VIEWPORT, **options})
        blocked: list[str] = []
        block_external_requests(context, base_url, blocked)
        return context, blocked

    return make


@pytest.fixture(scope="session")
def pages(site: Path) -> list[str]:
    return discover_pages(site)


@pytest.fixture(scope="session")
def reports(offline_context, site: Path, base_url: str, pages: list[str]) -> dict[str, PageReport]:
    context, blocked = offline_context()
    try:
        return {
            page: visit(context, base_url, page, blocked, redirect_target(site, page))
            for page in pages
        }
    finally:
        context.close()


@pytest.fixture(scope="session")
def launch_config(site: Path) -> dict:
    config = yaml.safe_load((book_root(site) / "_config.yml").read_text(encoding="utf-8"))
    return config["launch_buttons"]


def notebook_pages(reports: dict[str, PageReport]) -> list[str]:
    return [path for path, report in reports.items() if report.notebook_cells > 0]


def toc_files(entry) -> set[str]:
    """Every document named in _toc.yml (its `root` and each `file`), without suffix."""
    if isinstance(entry, list):
        return set().union(*(toc_files(item) for item in entry))
    if not isinstance(entry, dict):
        return set()
    own = {entry[key] for key in ("root", "file") if key in entry}
    return own.union(*(toc_files(value) for value in entry.values()))


def test_every_page_is_reachable_from_the_landing_page(site: Path, pages: list[str]) -> None:
    toc = yaml.safe_load((book_root(site) / "_toc.yml").read_text(encoding="utf-8"))
    expected = {f"{PurePosixPath(doc).with_suffix('')}.html" for doc in toc_files(toc)}
    assert sorted(expected - set(pages)) == [], "pages of the table of contents not found"
    assert "search.html" in pages
    assert sorted(set(html_files(site)) - set(pages)) == [], "pages no link leads to"


def test_chapters_that_plot_use_the_course_style(site: Path) -> None:
    """One look across the book: every chapter that draws calls `use_course_style()`."""
    root = book_root(site)
    toc = yaml.safe_load((root / "_toc.yml").read_text(encoding="utf-8"))
    sources = [root / f"{doc}.md" for doc in sorted(toc_files(toc))]
    texts = {path.name: path.read_text(encoding="utf-8") for path in sources if path.is_file()}
    plotting = [name for name, text in texts.items() if DRAWS.search(text)]
    assert plotting, "no chapter draws a figure: the check would be empty"
    assert [name for name in plotting if "use_course_style()" not in texts[name]] == []


def test_pages_load_without_console_or_page_errors(reports: dict[str, PageReport]) -> None:
    problems = {
        path: r.console_errors + r.page_errors
        for path, r in reports.items()
        if r.console_errors or r.page_errors
    }
    assert problems == {}


def test_every_request_to_the_site_succeeds(reports: dict[str, PageReport]) -> None:
    problems = {path: r.failed_local for path, r in reports.items() if r.failed_local}
    assert problems == {}


def test_every_image_loads(reports: dict[str, PageReport]) -> None:
    broken = {
        path: [img["src"] for img in r.images if img["width"] == 0]
        for path, r in reports.items()
        if any(img["width"] == 0 for img in r.images)
    }
    assert broken == {}


def test_every_image_has_alt_text(reports: dict[str, PageReport]) -> None:
    missing = {
        path: [f"{img['src']} (alt={img['alt']!r})" for img in bad]
        for path, r in reports.items()
        if (bad := [img for img in r.images if not is_descriptive_alt(img["alt"])])
    }
    assert missing == {}, "give every figure alt text (`:alt:` of {glue:figure} or {figure})"


def test_figures_show_as_images_not_as_text(reports: dict[str, PageReport]) -> None:
    as_text = {path: r.figure_reprs for path, r in reports.items() if r.figure_reprs}
    assert as_text == {}, "a figure was shown as its text repr: was the inline backend replaced?"


def test_figures_carry_an_opaque_background_for_dark_mode(
    site: Path, base_url: str, reports: dict[str, PageReport]
) -> None:
    """A transparent figure would put dark axes and labels on the dark theme's background."""
    figures = {
        target[0]
        for r in reports.values()
        for img in r.images
        if (target := link_target(base_url, img["src"])) is not None
        and target[0].startswith("_images/")
        and PurePosixPath(target[0]).suffix.lower() in RASTER_SUFFIXES
    }
    transparent = []
    for figure in sorted(figures):
        with Image.open(site / figure) as image:
            rgba = image.convert("RGBA")
            if rgba.getchannel("A").getextrema()[0] < 255:
                transparent.append(figure)
    assert transparent == []


def test_internal_links_and_anchors_resolve(
    site: Path, base_url: str, reports: dict[str, PageReport]
) -> None:
    broken = []
    for path, report in reports.items():
        for href in report.links:
            target = link_target(base_url, href)
            if target is None:
                continue
            target_path, fragment = target
            if not (site / target_path).is_file():
                broken.append(f"{path} -> {target_path} (no such file)")
            elif fragment and target_path.endswith(".html"):
                target_ids = reports[target_path].ids if target_path in reports else None
                if target_ids is None:
                    broken.append(f"{path} -> {target_path} (a page no link leads to)")
                elif fragment not in target_ids:
                    broken.append(f"{path} -> {target_path}#{fragment} (no such anchor)")
    assert sorted(set(broken)) == []


def test_math_renders_with_mathjax_served_by_the_site(
    base_url: str, reports: dict[str, PageReport]
) -> None:
    with_math = {path: r for path, r in reports.items() if r.math_elements}
    assert with_math, "no page has math: the check would be empty"
    unrendered = {
        path: f"{r.math_rendered} of {r.math_elements} formulas typeset, {r.math_errors} errors"
        for path, r in with_math.items()
        if r.math_rendered != r.math_elements or r.math_errors
    }
    assert unrendered == {}
    local = base_url + "_static/mathjax/"
    sources = {path: r.mathjax_scripts for path, r in reports.items() if r.mathjax_scripts}
    assert set(with_math) <= set(sources)
    assert {p: s for p, s in sources.items() if not all(u.startswith(local) for u in s)} == {}


def test_search_finds_the_variance_shift(offline_context, base_url: str, site: Path) -> None:
    context, _ = offline_context()
    try:
        page = context.new_page()
        page.goto(f"{base_url}search.html?q={SEARCH_PHRASE.replace(' ', '+')}")
        page.locator("#search-results .search-summary").wait_for(timeout=30_000)
        hits = page.eval_on_selector_all(
            "#search-results ul.search li a", "a => a.map(e => e.href)"
        )
    finally:
        context.close()
    pages = {target[0] for href in hits if (target := link_target(base_url, href)) is not None}
    assert pages, f"searching {SEARCH_PHRASE!r} found nothing"
    assert all((site / p).is_file() for p in pages), pages


def test_notebook_pages_offer_launch_and_download_buttons(
    site: Path, base_url: str, reports: dict[str, PageReport], launch_config: dict
) -> None:
    """Binder, Colab and a download of the notebook on every page that runs code. Both launch
    buttons open a notebook of the repository (a chapter's .ipynb twin): Colab opens nothing
    else, and Jupyter shows a MyST Markdown file as plain text."""
    binder = launch_config["binderhub_url"].rstrip("/") + "/v2/gh/"
    colab = launch_config["colab_url"].rstrip("/") + "/github/"
    root = book_root(site)
    chapters = notebook_pages(reports)
    assert chapters, "no page holds notebook cells"
    problems = []
    for path in chapters:
        links = reports[path].links
        source = PurePosixPath(path).with_suffix(".ipynb")
        if base_url + f"_sources/{source}" not in links:
            problems.append(f"{path}: no download of _sources/{source}")
        binder_links = [u for u in links if u.startswith(binder)]
        if not binder_links:
            problems.append(f"{path}: no Binder button")
        for url in binder_links:
            repo_path = parse_qs(urlsplit(url).query)["urlpath"][0].split("/tree/", 1)[1]
            if not repo_path.endswith(".ipynb") or not (root / repo_path).is_file():
                problems.append(f"{path}: Binder opens {repo_path}, not a notebook in the repo")
        colab_links = [u for u in links if u.startswith(colab)]
        if not colab_links:
            problems.append(f"{path}: no Colab button")
        for url in colab_links:
            repo_path = urlsplit(url).path.split("/blob/", 1)[1].split("/", 1)[1]
            if not repo_path.endswith(".ipynb") or not (root / repo_path).is_file():
                problems.append(f"{path}: Colab opens {repo_path}, not a notebook in the repo")
    assert problems == []


def test_chapters_cite_the_bibliography(base_url: str, reports: dict[str, PageReport]) -> None:
    entries = {(path, entry) for path, r in reports.items() for entry in sorted(r.bib_entry_ids)}
    assert entries, "no bibliography page"
    chapters = [p for p in notebook_pages(reports) if p.startswith("book/")]
    uncited = [
        path
        for path in chapters
        if not any(link_target(base_url, href) in entries for href in reports[path].links)
    ]
    assert uncited == [], "cite the papers the chapter builds on ({cite}`key`)"


def _first_figure_chapter(reports: dict[str, PageReport]) -> str:
    chapters = [p for p in notebook_pages(reports) if p.startswith("book/")]
    with_figures = [
        p for p in chapters if any("/_images/" in img["src"] for img in reports[p].images)
    ]
    return (with_figures or chapters or sorted(reports))[0]


def test_screenshots_of_the_landing_page_and_a_chapter(
    offline_context, base_url: str, site: Path, reports: dict[str, PageReport]
) -> None:
    """Saved under _build/screenshots/ for people to look at; the dark one checks the theme
    follows the reader's dark colour scheme, where figures keep their white background."""
    shots = site.parent / "screenshots"
    shots.mkdir(exist_ok=True)
    chapter = _first_figure_chapter(reports)
    context, _ = offline_context()
    try:
        page = context.new_page()
        page.goto(base_url + "index.html", wait_until="networkidle")
        page.screenshot(path=shots / "landing.png")
        page.goto(base_url + chapter, wait_until="networkidle")
        page.screenshot(path=shots / "chapter.png")
    finally:
        context.close()
    context, _ = offline_context(color_scheme="dark")
    try:
        page = context.new_page()
        page.goto(base_url + chapter, wait_until="networkidle")
        theme = page.evaluate("document.documentElement.dataset.theme")
        figure = page.locator("main img[src*='_images/']")
        if figure.count():
            figure.first.scroll_into_view_if_needed()
        page.screenshot(path=shots / "chapter-dark.png")
    finally:
        context.close()
    assert theme == "dark"
    for name in ("landing.png", "chapter.png", "chapter-dark.png"):
        with Image.open(shots / name) as image:
            assert image.size == (VIEWPORT["width"], VIEWPORT["height"])


def test_pages_fit_a_phone_screen(
    offline_context, base_url: str, site: Path, pages: list[str]
) -> None:
    """At 390 px: no page wider than the screen, no table wider than its column, nothing cut
    off, no inline code past the text (see book_site.PHONE_LAYOUT_JS)."""
    context, _ = offline_context(viewport=PHONE, device_scale_factor=3, is_mobile=True)
    problems = {}
    try:
        for path in (p for p in pages if redirect_target(site, p) is None):
            page = context.new_page()
            page.goto(base_url + path, wait_until="load")
            found = page.evaluate(PHONE_LAYOUT_JS)["problems"]
            page.close()
            if found:
                problems[path] = found
    finally:
        context.close()
    assert problems == {}


def test_the_site_has_a_favicon_at_its_root_and_on_every_page(
    offline_context, base_url: str, site: Path
) -> None:
    context, _ = offline_context()
    try:
        root = context.request.get(base_url + "favicon.ico")
        assert root.status == 200 and root.body()[:4] == b"\x00\x00\x01\x00"  # an ICO file
        page = context.new_page()
        page.goto(base_url + "book/batchnorm.html", wait_until="load")
        icon = page.evaluate("document.querySelector('link[rel~=icon]')?.href")
        assert icon and context.request.get(icon).status == 200
    finally:
        context.close()
    without = [
        p
        for p in html_files(site)
        if redirect_target(site, p) is None and 'rel="icon"' not in (site / p).read_text()
    ]
    assert without == []
