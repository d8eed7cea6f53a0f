"""Find one exact release file on a Python package index, without pip and without running it.

A ``pypi:NAME==VERSION`` source names a release; :func:`find_release` reads the index's simple
API page of NAME (PEP 691 JSON, or PEP 503 HTML) and returns the URL and the listed sha256 of
that version's sdist (or of the wheel this interpreter would install). The caller downloads
the bytes and checks the hashes: nothing of the package is built, imported or run (``pip
download`` of an sdist runs the package's build backend to read its metadata, before any pin
is checked).

The indexes are those pip is configured with (:func:`index_urls`): its ``index-url``
(``PIP_INDEX_URL``, pip's config files, else https://pypi.org/simple), then its
``extra-index-url`` entries, searched in that order; ``file://`` indexes are read from disk.
"""

from __future__ import annotations

import ast
import html.parser
import json
import os
import re
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from urllib.parse import unquote, urldefrag, urljoin, urlparse
from urllib.request import url2pathname

import requests
from packaging.tags import sys_tags
from packaging.utils import InvalidSdistFilename, InvalidWheelFilename, canonicalize_name, parse_sdist_filename, parse_wheel_filename
from packaging.version import InvalidVersion, Version

from gptlab.errors import GptlabError

DEFAULT_INDEX = "https://pypi.org/simple"
SIMPLE_JSON = "application/vnd.pypi.simple.v1+json"
ACCEPT = f"{SIMPLE_JSON}, application/vnd.pypi.simple.v1+html;q=0.2, text/html;q=0.01"
RETRY_STATUS = {408, 425, 429, 500, 502, 503, 504}
# pip reads these config sections for `pip download`, the later ones winning
_SECTIONS = ("global", "download", ":env:")


@dataclass(frozen=True)
class IndexFile:
    """One file an index lists: its name, absolute URL, the sha256 the index gives (None when it gives none) and the page it came from."""

    filename: str
    url: str
    sha256: str | None
    page: str


def index_urls() -> list[str]:
    """Return the places pip would search for a release, in order: its index-url and extra-index-urls
    (simple-API roots), then its find-links entries prefixed ``flat:`` (a folder or a page of links).

    Read from ``python -m pip config list`` (environment variables and every config file pip
    reads), else from ``PIP_INDEX_URL`` / ``PIP_EXTRA_INDEX_URL`` when pip is not installed;
    pip's ``no-index`` leaves the find-links only.
    """
    config = _pip_config()
    setting = lambda key: config.get(key) or os.environ.get("PIP_" + key.upper().replace("-", "_")) or ""  # noqa: E731
    primary = setting("index-url").split()[:1] or [DEFAULT_INDEX]
    indexes = primary + [u for u in setting("extra-index-url").split() if u not in primary]
    flat = ["flat:" + u for u in setting("find-links").split()]
    return flat if setting("no-index").lower() in ("1", "true", "yes", "on") else indexes + flat


def _pip_config() -> dict[str, str]:
    """Return pip's effective settings for ``pip download`` (``{"index-url": ...}``); {} when pip cannot tell."""
    try:
        proc = subprocess.run([sys.executable, "-m", "pip", "config", "list"], capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired):
        return {}
    if proc.returncode != 0:
        return {}
    found: dict[str, dict[str, str]] = {}
    for line in proc.stdout.splitlines():
        match = re.match(r"^([^=]+?)\.([A-Za-z0-9_-]+)=(.*)$", line.strip())
        if match:
            section, key, raw = match.groups()
            try:
                value = ast.literal_eval(raw)
            except (ValueError, SyntaxError):
                value = raw.strip("'\"")
            found.setdefault(key, {})[section] = str(value)
    return {key: next(by[s] for s in reversed(_SECTIONS) if s in by) for key, by in found.items() if any(s in by for s in _SECTIONS)}


class _Links(html.parser.HTMLParser):
    """The ``<a href>`` targets of a PEP 503 page."""

    def __init__(self):
        super().__init__()
        self.hrefs: list[str] = []

    def handle_starttag(self, tag, attrs):
        href = dict(attrs).get("href")
        if tag == "a" and href:
            self.hrefs.append(href)


def parse_page(body: bytes, content_type: str, page: str) -> list[IndexFile]:
    """Return the files a simple-API project page lists (PEP 691 JSON or PEP 503 HTML), URLs made absolute."""
    if content_type.split(";")[0].strip() == SIMPLE_JSON:
        try:
            files = json.loads(body)["files"]
            return [IndexFile(f["filename"], urljoin(page, f["url"]), (f.get("hashes") or {}).get("sha256"), page) for f in files]
        except (ValueError, KeyError, TypeError) as e:
            raise GptlabError(f"{page}: not a simple-API JSON page ({e}); check pip's index-url") from None
    parser = _Links()
    parser.feed(body.decode("utf-8", errors="replace"))
    out = []
    for href in parser.hrefs:
        url, fragment = urldefrag(urljoin(page, href))
        sha = fragment.removeprefix("sha256=") if fragment.startswith("sha256=") else None
        out.append(IndexFile(PurePosixPath(unquote(urlparse(url).path)).name, url, sha, page))
    return out


def _get_page(page: str, timeout_s: float, retries: int) -> tuple[bytes, str] | None:
    """Return (body, content type) of a project page, or None when the index does not have the project."""
    if page.startswith("file://"):
        parsed = urlparse(page)
        folder = Path(url2pathname(unquote(parsed.path)))
        target = folder / "index.html" if folder.is_dir() else folder
        return (target.read_bytes(), "text/html") if target.is_file() else None
    last = "no attempt made"
    for attempt in range(retries + 1):
        if attempt:
            time.sleep(min(0.25 * 2**attempt, 8.0))
        try:
            r = requests.get(page, headers={"Accept": ACCEPT}, timeout=timeout_s)
        except (requests.ConnectionError, requests.Timeout) as e:
            last = f"{type(e).__name__}: {e}"
            continue
        if r.status_code == 404:
            return None
        if r.status_code in RETRY_STATUS:
            last = f"HTTP {r.status_code}"
            continue
        if r.status_code >= 400:
            raise GptlabError(f"{page}: HTTP {r.status_code} {r.reason}; check pip's index-url (pip config list)")
        return r.content, r.headers.get("Content-Type", "text/html")
    raise GptlabError(f"{page}: the package index did not answer after {retries + 1} attempts ({last}); check the network or raise download.retries")


def _project_files(index: str, name: str, timeout_s: float, retries: int) -> list[IndexFile]:
    """Return the files the simple-API ``index`` lists for project ``name`` ([] when it has no such project)."""
    page = f"{index.rstrip('/')}/{canonicalize_name(name)}/"
    got = _get_page(page, timeout_s, retries)
    return parse_page(*got, page) if got is not None else []


def _flat_files(location: str, timeout_s: float, retries: int) -> list[IndexFile]:
    """Return the files of a find-links entry: a local folder (no listed hashes) or a page of links."""
    if "://" not in location or location.startswith("file://"):
        folder = Path(url2pathname(unquote(urlparse(location).path))) if location.startswith("file://") else Path(location).expanduser()
        if folder.is_dir():
            return [IndexFile(p.name, p.resolve().as_uri(), None, str(folder)) for p in sorted(folder.iterdir()) if p.is_file()]
    got = _get_page(location, timeout_s, retries)
    return parse_page(*got, location) if got is not None else []


def _same_version(found: Version | str, wanted: str) -> bool:
    try:
        return Version(str(found)) == Version(wanted)
    except InvalidVersion:
        return str(found) == wanted


def _project_of(filename: str) -> str | None:
    """The canonical project name of a wheel or sdist file name (None for anything else)."""
    try:
        return parse_wheel_filename(filename)[0] if filename.endswith(".whl") else parse_sdist_filename(filename)[0]
    except (InvalidWheelFilename, InvalidSdistFilename, InvalidVersion):
        return None


def choose(files: list[IndexFile], name: str, version: str, dist: str) -> IndexFile | None:
    """Return the file of ``name==version`` of kind ``dist`` among ``files``: the sdist (a ``.tar.gz``
    before a ``.zip``), or the wheel whose tags rank first for this interpreter; None when there is none."""
    want = canonicalize_name(name)
    if dist == "sdist":
        sdists = []
        for f in files:
            try:
                project, found = parse_sdist_filename(f.filename)
            except (InvalidSdistFilename, InvalidVersion):
                continue
            if project == want and _same_version(found, version):
                sdists.append(f)
        return min(sdists, key=lambda f: (not f.filename.endswith(".tar.gz"), f.filename), default=None)
    rank = {tag: i for i, tag in enumerate(sys_tags())}
    best, best_rank = None, len(rank)
    for f in files:
        try:
            project, found, _, tags = parse_wheel_filename(f.filename)
        except (InvalidWheelFilename, InvalidVersion):
            continue
        score = min((rank[t] for t in tags if t in rank), default=len(rank))
        if project == want and _same_version(found, version) and score < best_rank:
            best, best_rank = f, score
    return best


def find_release(requirement: str, dist: str, timeout_s: float = 60.0, retries: int = 3, indexes: list[str] | None = None) -> IndexFile:
    """Return the index file of ``requirement`` (``NAME==VERSION``) of kind ``dist`` (sdist or wheel).

    Searches ``indexes`` (default: :func:`index_urls`) in order; GptlabError names the
    requirement, the indexes and a few files they list when none has that release.
    """
    name, _, version = requirement.partition("==")
    indexes = indexes if indexes is not None else index_urls()
    seen: list[str] = []
    for index in indexes:
        files = _flat_files(index.removeprefix("flat:"), timeout_s, retries) if index.startswith("flat:") else _project_files(index, name, timeout_s, retries)
        found = choose(files, name, version, dist)
        if found is not None:
            return found
        seen += [f.filename for f in files if _project_of(f.filename) == canonicalize_name(name)]
    listed = f"; they list e.g. {', '.join(seen[-4:])}" if seen else " (none lists the project)"
    raise GptlabError(
        f"pypi:{requirement}: no {dist} of {name} {version} on the package index ({', '.join(indexes)}){listed}; check the name and version in params.yaml"
    )
