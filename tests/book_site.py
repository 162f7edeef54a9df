"""The built book as a reader's browser sees it: a local web server, headless Chromium, and a
report of what each page did while it loaded (errors, requests, images, links, math)."""

from __future__ import annotations

import functools
import http.server
import os
import re
import threading
from collections import deque
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from urllib.parse import unquote, urljoin, urlsplit

from bs4 import BeautifulSoup

#: The book root (where _config.yml lives); the site is built into <root>/_build/html.
ROOT = Path(__file__).resolve().parents[1]
#: Points the tests at a book built elsewhere (`jupyter-book build --path-output DIR`): DIR/_build/html.
SITE_ENV = "BNCOURSE_BOOK_HTML"

CHROMIUM = Path("/usr/bin/chromium")
#: Debian's Chromium, headless, with no background traffic of its own (updates, sync, QUIC).
CHROMIUM_ARGS = (
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-quic",
)

#: Folders of the build that hold assets and downloadable sources, not pages.
ASSET_FOLDERS = ("_static", "_sources", "_images")
#: How a matplotlib figure looks when a notebook shows its text repr instead of the image.
FIGURE_REPR = re.compile(r"<Figure size \d+x\d+ with \d+ Axes>")
RASTER_SUFFIXES = (".png", ".jpg", ".jpeg", ".gif", ".webp")


def site_dir() -> Path:
    """The built HTML site: $BNCOURSE_BOOK_HTML if set, else <root>/_build/html."""
    return Path(os.environ.get(SITE_ENV) or ROOT / "_build" / "html").resolve()


def book_root(site: Path) -> Path:
    """The book (and repository) root the site was built from.

    <root>/_build/html for a build in place; this repository for one written elsewhere with
    `jupyter-book build --path-output DIR .`.
    """
    built_in_place = site.parents[1]
    return built_in_place if (built_in_place / "_config.yml").is_file() else ROOT


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 (stdlib's name)
        pass


@contextmanager
def serve(directory: Path) -> Iterator[str]:
    """Serve `directory` over HTTP on 127.0.0.1 (a free port) and yield its base URL."""
    handler = functools.partial(_QuietHandler, directory=str(directory))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/"
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def _local_target(site: Path, page: str, href: str) -> str | None:
    """The site-relative path an href of `page` points to, or None if it leaves the site."""
    fake = "http://site.invalid/"
    url = urlsplit(urljoin(fake + page, href))
    if url.scheme not in ("http", "https") or url.netloc != "site.invalid":
        return None
    path = unquote(url.path).lstrip("/")
    if path == "" or path.endswith("/"):
        path += "index.html"
    return path


def _refresh_target(soup: BeautifulSoup) -> str | None:
    meta = soup.find("meta", attrs={"http-equiv": re.compile("^refresh$", re.I)})
    if meta is None:
        return None
    match = re.search(r"url=(.+)$", meta.get("content", ""), re.I)
    return match.group(1).strip() if match else None


def redirect_target(site: Path, page: str) -> str | None:
    """Where a `<meta http-equiv="refresh">` page sends the reader (site-relative), else None."""
    soup = BeautifulSoup((site / page).read_text(encoding="utf-8"), "html.parser")
    refresh = _refresh_target(soup)
    return None if refresh is None else _local_target(site, page, refresh)


def discover_pages(site: Path) -> list[str]:
    """Every HTML page reachable by links from the landing page, as site-relative paths.

    Follows links (`<a href>`, `<link href>` such as rel="search", `<form action>`) and
    `<meta http-equiv="refresh">` (the landing page is a redirect) from index.html, so a
    chapter added to the table of contents is found with no change here.
    """
    found = {"index.html"}
    queue = deque(["index.html"])
    while queue:
        page = queue.popleft()
        soup = BeautifulSoup((site / page).read_text(encoding="utf-8"), "html.parser")
        hrefs = [tag["href"] for tag in soup.find_all(["a", "link"], href=True)]
        hrefs += [form["action"] for form in soup.find_all("form", action=True)]
        if (refresh := _refresh_target(soup)) is not None:
            hrefs.append(refresh)
        for href in hrefs:
            target = _local_target(site, page, href)
            if (
                target is not None
                and target.endswith(".html")
                and target not in found
                and not target.startswith(ASSET_FOLDERS)
                and (site / target).is_file()
            ):
                found.add(target)
                queue.append(target)
    return sorted(found)


def html_files(site: Path) -> list[str]:
    """Every .html file of the build outside the asset folders, as site-relative paths."""
    return sorted(
        p.relative_to(site).as_posix()
        for p in site.rglob("*.html")
        if not p.relative_to(site).as_posix().startswith(ASSET_FOLDERS)
    )


@dataclass
class PageReport:
    """What one page did in the browser, and what its DOM held once loaded and typeset."""

    path: str
    console_errors: list[str] = field(default_factory=list)
    page_errors: list[str] = field(default_factory=list)
    failed_local: list[str] = field(default_factory=list)
    blocked_external: list[str] = field(default_factory=list)
    images: list[dict] = field(default_factory=list)
    links: list[str] = field(default_factory=list)
    ids: set[str] = field(default_factory=set)
    bib_entry_ids: set[str] = field(default_factory=set)
    math_elements: int = 0
    math_rendered: int = 0
    math_errors: int = 0
    mathjax_scripts: list[str] = field(default_factory=list)
    notebook_cells: int = 0
    figure_reprs: list[str] = field(default_factory=list)


# Runs in the page once it has loaded and MathJax has typeset it.
_COLLECT_JS = """
async () => {
  const images = Array.from(document.images);
  images.forEach(img => { if (img.loading === 'lazy') img.loading = 'eager'; });
  await Promise.race([
    Promise.all(images.map(img => img.complete ? null :
      new Promise(done => { img.addEventListener('load', done); img.addEventListener('error', done); }))),
    new Promise(done => setTimeout(done, 10000)),
  ]);
  const math = Array.from(document.querySelectorAll('.math'));
  const main = document.querySelector('main') || document.body;
  return {
    images: images.map(img => ({src: img.currentSrc || img.src, width: img.naturalWidth,
                                alt: img.getAttribute('alt')})),
    links: Array.from(document.querySelectorAll('a[href]'), a => a.href),
    ids: Array.from(document.querySelectorAll('[id]'), e => e.id)
           .concat(Array.from(document.querySelectorAll('a[name]'), a => a.name)),
    bibEntryIds: Array.from(document.querySelectorAll('[role="doc-biblioentry"][id]'), e => e.id),
    mathElements: math.length,
    mathRendered: math.filter(e => e.querySelector('mjx-container')).length,
    mathErrors: document.querySelectorAll('mjx-merror').length,
    mathjaxScripts: Array.from(document.scripts, s => s.src).filter(s => /mathjax/i.test(s)),
    notebookCells: document.querySelectorAll('div.cell').length,
    mainText: main.innerText,
  };
}
"""

#: A phone held upright (an iPhone 12 to 15): the width at which the book must still fit.
PHONE = {"width": 390, "height": 844}

#: What a reader on a narrow screen would miss or have to scroll sideways for: a page wider than
#: the screen, a table wider than its column (its last columns out of view), content cut off by
#: an overflow that hides it, inline code running past the text. Code blocks and display math
#: may scroll inside themselves; MathJax's hidden assistive copies are not content.
PHONE_LAYOUT_JS = r"""
() => {
  const vw = document.documentElement.clientWidth;
  const problems = [];
  const what = (el) => `${el.tagName.toLowerCase()}${el.className && typeof el.className === 'string' ? '.' + el.className.trim().split(/\s+/).join('.') : ''} "${(el.textContent || '').trim().replace(/\s+/g, ' ').slice(0, 60)}"`;
  if (document.documentElement.scrollWidth > vw) problems.push(`page is ${document.documentElement.scrollWidth}px wide in a ${vw}px viewport`);
  const article = document.querySelector('article.bd-article') || document.querySelector('main');
  if (!article) return {problems};
  const right = article.getBoundingClientRect().right;
  for (const el of article.querySelectorAll('*')) {
    if (el.closest('mjx-container, .math, pre')) continue;
    const st = getComputedStyle(el);
    const r = el.getBoundingClientRect();
    if (r.width === 0 || st.visibility === 'hidden') continue;
    if (el.tagName === 'TABLE' && el.getBoundingClientRect().width > el.parentElement.clientWidth + 1)
      problems.push(`table wider than its column (${Math.round(r.width)} > ${el.parentElement.clientWidth}px): ${what(el)}`);
    else if ((st.overflowX === 'hidden' || st.overflowX === 'clip') && el.scrollWidth > el.clientWidth + 2)
      problems.push(`content cut off (${el.scrollWidth} > ${el.clientWidth}px): ${what(el)}`);
    else if (el.tagName === 'CODE' && r.right > right + 1 && !el.closest('table'))
      problems.push(`inline code runs past the text column: ${what(el)}`);
  }
  return {problems};
}
"""


_WAIT_FOR_MATHJAX_JS = """
async () => {
  if (window.MathJax && MathJax.startup && MathJax.startup.promise) {
    await MathJax.startup.promise;
  }
}
"""


def block_external_requests(context, base: str, blocked: list[str]) -> None:
    """Let the browser fetch only from the local server; record and abort everything else."""

    def route(route) -> None:
        url = route.request.url
        if url.startswith(base):
            route.continue_()
        else:
            blocked.append(url)
            route.abort()

    context.route("**/*", route)


def is_external_load_failure(message, base: str) -> bool:
    """A console error that only says a blocked request to another origin failed to load."""
    url = (message.location or {}).get("url", "")
    return message.text.startswith("Failed to load resource") and not url.startswith(base)


def visit(
    context, base: str, path: str, blocked: list[str], redirect: str | None = None
) -> PageReport:
    """Load `path` from the local server in a fresh tab and report what happened.

    A redirect page (`redirect` is its target) is followed to its target; its report holds the
    redirect as its one link, and the target page is checked on its own.
    """
    report = PageReport(path=path)
    page = context.new_page()

    def on_console(message) -> None:
        if message.type == "error" and not is_external_load_failure(message, base):
            where = (message.location or {}).get("url", "")
            report.console_errors.append(f"{message.text} (at {where})")

    def on_response(response) -> None:
        if response.url.startswith(base) and response.status >= 400:
            report.failed_local.append(f"{response.url}: HTTP {response.status}")

    def on_request_failed(request) -> None:
        if request.url.startswith(base):
            report.failed_local.append(f"{request.url}: {request.failure}")

    page.on("console", on_console)
    page.on("pageerror", lambda error: report.page_errors.append(str(error)))
    page.on("response", on_response)
    page.on("requestfailed", on_request_failed)
    start = len(blocked)
    try:
        if redirect is not None:
            page.goto(base + path, wait_until="commit")
            page.wait_for_url(base + redirect)
            page.wait_for_load_state("networkidle")
            data = None
        else:
            page.goto(base + path, wait_until="load")
            page.evaluate(_WAIT_FOR_MATHJAX_JS)
            page.wait_for_load_state("networkidle")
            data = page.evaluate(_COLLECT_JS)
    finally:
        page.close()
    report.blocked_external = blocked[start:]
    if data is None:
        report.links = [base + redirect]
        return report
    report.images = data["images"]
    report.links = data["links"]
    report.ids = set(data["ids"])
    report.bib_entry_ids = set(data["bibEntryIds"])
    report.math_elements = data["mathElements"]
    report.math_rendered = data["mathRendered"]
    report.math_errors = data["mathErrors"]
    report.mathjax_scripts = data["mathjaxScripts"]
    report.notebook_cells = data["notebookCells"]
    report.figure_reprs = FIGURE_REPR.findall(data["mainText"])
    return report


def link_target(base: str, href: str) -> tuple[str, str] | None:
    """(site-relative path, fragment) of a link to the local site, None for other origins."""
    if not href.startswith(base):
        return None
    url = urlsplit(href)
    path = unquote(url.path).lstrip("/")
    if path == "" or path.endswith("/"):
        path += "index.html"
    return path, unquote(url.fragment)


def is_descriptive_alt(alt: str | None) -> bool:
    """Alt text a screen reader can use: present, not blank, not just the image's file name."""
    if alt is None or not alt.strip():
        return False
    return PurePosixPath(alt.strip()).suffix.lower() not in (*RASTER_SUFFIXES, ".svg")
