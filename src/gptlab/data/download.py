"""The download stage: fetch named sources with checksums and a cache, extract, record.

A source is a URI (see :class:`gptlab.params.SourceParams`):

- ``https://...`` / ``http://...``: streamed with a progress bar, a timeout and bounded
  retries; an interrupted transfer resumes with an HTTP Range request (or restarts cleanly
  when the server ignores it); checked, then renamed into the cache.
- ``file://...``: checked in place, then copied.
- ``pypi:NAME==VERSION``: that exact sdist (or wheel), fetched as bytes through the package
  index's simple API (the index pip is configured with; :mod:`gptlab.data.pypi`), the one data
  source every machine here reaches. Nothing of the package is built or run: the bytes are
  checked against the hash the index lists and against the pin before anything reads them.

A ``#GLOB`` suffix extracts the archive members matching GLOB. A source with ``files:``
instead of ``uri:`` fetches each entry the same way, one after the other, into the same folder
(e.g. the 14 parquet shards of FineWeb-Edu's 10BT sample). Fetched files live in a cache
(``download.cache_dir``, ``$GPTLAB_CACHE`` or ``~/.cache/gptlab``) keyed by URI, so re-running
the stage after ``dvc repro -f`` or a params change costs a hash check, not a download.
"""

from __future__ import annotations

import fnmatch
import hashlib
import os
import shutil
import sys
import tarfile
import time
import zipfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from urllib.parse import unquote, urlparse
from urllib.request import url2pathname

import requests

from gptlab.data.pypi import find_release
from gptlab.errors import GptlabError
from gptlab.io import atomic_dir, read_json, sha256_file, write_json
from gptlab.params import DownloadParams, SourceParams
from gptlab.progress import progress

CHUNK_BYTES = 1 << 14  # a dropped connection loses at most one partly read chunk
RETRY_STATUS = {408, 425, 429, 500, 502, 503, 504}


def cache_root(cache_dir: str | None = None) -> Path:
    """Return the download cache folder: ``cache_dir``, else ``$GPTLAB_CACHE``, else ``~/.cache/gptlab``."""
    base = cache_dir or os.environ.get("GPTLAB_CACHE") or Path.home() / ".cache" / "gptlab"
    return Path(base).expanduser() / "downloads"


@dataclass
class Fetched:
    """A verified file: where it lies, its sha256 and size in bytes, and whether it came from the cache."""

    path: Path
    sha256: str
    bytes: int
    cached: bool


def fetch(source: SourceParams, cache: Path, timeout_s: float = 60.0, retries: int = 3, label: str = "") -> Fetched:
    """Fetch ``source`` (without extracting) and return the verified file.

    The expected hash is ``source.sha256``, or the one recorded in the cache on the first
    fetch when that is null. A mismatch deletes the fetched file and raises GptlabError
    naming the URI, the expected and the actual hash. A ``files`` source is fetched one entry
    at a time: pass each of ``source.parts()``.
    """
    if source.files is not None:
        raise GptlabError(f"fetch takes one file, and this source lists {len(source.files)} (files:); fetch each of source.parts()")
    uri = source.location
    if uri.startswith("file://"):
        path = _local_path(uri)
        if not path.is_file():
            raise GptlabError(f"{uri}: no such file {path}; fix the uri in params.yaml download.sources")
        actual = _verify(path, source.sha256, uri, delete=False)
        if source.sha256 is None:
            print(f"download: {label or uri}: {uri} has sha256 {actual}; pin it in params.yaml (sha256: {actual})", file=sys.stderr)
        return Fetched(path, actual, path.stat().st_size, cached=False)

    folder = cache / hashlib.sha256(uri.encode()).hexdigest()[:20]
    folder.mkdir(parents=True, exist_ok=True)
    record_path = folder / "source.json"
    record = read_json(record_path, "a download cache record: delete it to download again") if record_path.exists() else {}
    expected = source.sha256 or record.get("sha256")
    cached_file = folder / record["filename"] if record.get("filename") else None
    if cached_file and cached_file.is_file() and expected and sha256_file(cached_file) == expected:
        return Fetched(cached_file, expected, cached_file.stat().st_size, cached=True)

    if uri.startswith(("https://", "http://")):
        filename = Path(unquote(urlparse(uri).path)).name or "download"
        part = folder / (filename + ".part")
        _http_download(uri, part, timeout_s, retries, label or filename)
    else:
        part, filename = _index_download(uri, source.dist, folder, timeout_s, retries)
    actual = _verify(part, expected, uri if uri.startswith(("https://", "http://")) else f"{uri} ({filename})", delete=True)
    final = folder / filename
    os.replace(part, final)
    if source.sha256 is None and not record.get("sha256"):
        print(f"download: {label or uri}: recorded sha256 {actual}; pin it in params.yaml (sha256: {actual})", file=sys.stderr)
    write_json(record_path, {"uri": uri, "sha256": actual, "filename": filename, "bytes": final.stat().st_size})
    return Fetched(final, actual, final.stat().st_size, cached=False)


def _local_path(uri: str) -> Path:
    parsed = urlparse(uri)
    return Path(url2pathname(unquote(parsed.netloc + parsed.path) if parsed.netloc not in ("", "localhost") else unquote(parsed.path)))


def _verify(path: Path, expected: str | None, uri: str, delete: bool) -> str:
    actual = sha256_file(path)
    if expected is not None and actual != expected:
        if delete:
            path.unlink(missing_ok=True)
        raise GptlabError(
            f"{uri}: checksum mismatch: expected sha256 {expected}, got {actual}"
            + ("; the partial file was deleted" if delete else "")
            + " (if the source changed on purpose, update sha256 in params.yaml)"
        )
    return actual


def _http_download(url: str, part: Path, timeout_s: float, retries: int, label: str) -> None:
    """Stream ``url`` into ``part``, resuming an interrupted transfer; return when complete."""
    last_error = "no attempt made"
    for attempt in range(retries + 1):
        if attempt:
            time.sleep(min(0.25 * 2**attempt, 8.0))
        have = part.stat().st_size if part.exists() else 0
        headers = {"Range": f"bytes={have}-"} if have else {}
        try:
            with requests.get(url, stream=True, timeout=timeout_s, headers=headers) as r:
                if r.status_code == 416 and have:  # nothing left to fetch: the part is complete
                    return
                if r.status_code in RETRY_STATUS:
                    last_error = f"HTTP {r.status_code}"
                    continue
                if r.status_code >= 400:
                    raise GptlabError(f"{url}: HTTP {r.status_code} {r.reason}; check the URL in params.yaml download.sources")
                resuming = r.status_code == 206
                if not resuming:
                    have = 0  # the server ignored the Range header: restart from zero
                length = r.headers.get("Content-Length")
                total = have + int(length) if length is not None else None
                with (
                    open(part, "ab" if resuming else "wb") as f,
                    progress(total=total, initial=have, unit="B", unit_scale=True, unit_divisor=1024, desc=label, leave=False) as bar,
                ):
                    for chunk in r.iter_content(CHUNK_BYTES):
                        f.write(chunk)
                        bar.update(len(chunk))
                got = part.stat().st_size
                if total is not None and got != total:
                    last_error = f"connection closed after {got} of {total} bytes"
                    continue
                return
        except (requests.ConnectionError, requests.Timeout, requests.exceptions.ChunkedEncodingError) as e:
            last_error = f"{type(e).__name__}: {e}"
    raise GptlabError(f"{url}: download failed after {retries + 1} attempts ({last_error}); check the network or raise download.retries")


def _index_download(uri: str, dist: str, folder: Path, timeout_s: float, retries: int) -> tuple[Path, str]:
    """Fetch the exact file ``pypi:NAME==VERSION`` names through the package index's simple API
    (:func:`gptlab.data.pypi.find_release`); return (part path, file name).

    Only bytes are fetched: nothing of the package is built or run. The bytes must match the
    sha256 the index lists for the file (the caller then checks the pin).
    """
    found = find_release(uri[len("pypi:") :], dist, timeout_s, retries)
    if PurePosixPath(found.filename).name != found.filename or found.filename in ("", ".", ".."):
        raise GptlabError(f"{uri}: the index names the file {found.filename!r}, which is not a plain file name; check pip's index-url")
    part = folder / (found.filename + ".part")
    if found.url.startswith("file://"):
        src = _local_path(found.url)
        if not src.is_file():
            raise GptlabError(f"{uri}: the index lists {found.url}, which is not a file; check pip's index-url")
        shutil.copyfile(src, part)
    else:
        _http_download(found.url, part, timeout_s, retries, found.filename)
    if found.sha256 is not None and (actual := sha256_file(part)) != found.sha256.lower():
        part.unlink(missing_ok=True)
        raise GptlabError(
            f"{uri} ({found.filename}): the index lists sha256 {found.sha256} but the bytes fetched from {found.url} have {actual}; "
            "the partial file was deleted (retry, or check pip's index-url)"
        )
    return part, found.filename


def _archive_members(archive: Path) -> list[tuple[str, object]]:
    """Return (member path, handle) for every regular file in a zip/wheel or tar archive."""
    if zipfile.is_zipfile(archive):
        zf = zipfile.ZipFile(archive)
        return [(i.filename, (zf, i)) for i in zf.infolist() if not i.is_dir()]
    if tarfile.is_tarfile(archive):
        tf = tarfile.open(archive)
        return [(m.name, (tf, m)) for m in tf.getmembers() if m.isfile()]
    raise GptlabError(f"{archive}: not a zip or tar archive, so '#GLOB' cannot extract from it; drop the #GLOB part")


def extract(archive: Path, pattern: str, dest: Path, uri: str = "") -> list[Path]:
    """Extract the members of ``archive`` matching ``pattern`` into ``dest`` (flat, by basename).

    Only regular files are read (links, devices and folders are never matched), their bytes
    copied into ``dest/<basename>`` with no metadata: nothing is written outside ``dest``, and
    a matching member with an absolute path or a ``..`` part is refused as unsafe.

    Member paths are matched below the archive's single top folder when it has one (an
    sdist's ``NAME-VERSION/``). Returns the written paths, sorted. Raises GptlabError when
    nothing matches or two matches share a basename.
    """
    members = _archive_members(archive)
    names = [name for name, _ in members]
    tops = {PurePosixPath(n).parts[0] for n in names}
    strip = len(tops) == 1 and all(len(PurePosixPath(n).parts) > 1 for n in names)
    chosen = {}
    for name, handle in members:
        rel = str(PurePosixPath(*PurePosixPath(name).parts[1:])) if strip else name
        if fnmatch.fnmatchcase(rel, pattern):
            base = PurePosixPath(rel).name
            if base in ("", ".", ".."):
                raise GptlabError(
                    f"{uri or archive}: archive member {name!r} matches '#{pattern}' but names no file (it ends in {base or '/'!r}); "
                    "narrow the glob to the files you want or fix the archive"
                )
            if PurePosixPath(name).is_absolute() or ".." in PurePosixPath(name).parts:
                raise GptlabError(
                    f"{uri or archive}: archive member {name!r} matches '#{pattern}' but its path is absolute or climbs out with '..'; "
                    "the archive is unsafe: check where it comes from"
                )
            if base in chosen:
                raise GptlabError(f"{uri or archive}: '#{pattern}' matches two members named {base}; narrow the glob")
            chosen[base] = handle
    if not chosen:
        example = ", ".join(sorted(names)[:3])
        raise GptlabError(
            f"{uri or archive}: the glob '#{pattern}' matches none of the {len(names)} members (e.g. {example}); fix the #GLOB part of the uri in params.yaml"
        )
    dest.mkdir(parents=True, exist_ok=True)
    written = []
    for base, (container, member) in sorted(chosen.items()):
        src = container.open(member) if isinstance(container, zipfile.ZipFile) else container.extractfile(member)
        with src, open(dest / base, "wb") as out:
            shutil.copyfileobj(src, out)
        written.append(dest / base)
    return written


def download_sources(params: DownloadParams, out_dir: str | Path = "data/raw", metrics_path: str | Path | None = None) -> dict:
    """Fetch every source into ``out_dir/<name>/``; return the counts ``{"sources", "files", "bytes"}``.

    The provenance goes to ``out_dir/MANIFEST.json`` (a DVC out, the same bytes for the same
    sources): per source its uri, sha256 and size of the fetched file, license, and each
    written file's path, bytes and sha256; a ``files`` source lists, instead of the first
    three, ``fetched``: per entry its uri, sha256, fetched_bytes and the paths it wrote.
    Whether the cache served a source and how long it took are printed, not recorded.
    ``metrics_path``, when given, receives the counts only. ``out_dir`` is replaced only when
    every source succeeded.
    """
    cache = cache_root(params.cache_dir)
    out_dir = Path(out_dir)
    summary: dict = {"sources": 0, "files": 0, "bytes": 0}
    manifest: dict = {}
    with atomic_dir(out_dir) as tmp:
        for name, source in params.sources.items():
            start = time.perf_counter()
            dest = tmp / name
            if source.files is not None:
                fetched, files, hits = _fetch_entries(name, source, cache, params, dest)
                entries = [{"path": f"{name}/{f.name}", "bytes": f.stat().st_size, "sha256": sha256_file(f)} for f in files]
                manifest[name] = {"license": source.license, "fetched": fetched, "files": entries}
                how = "from the cache" if hits == len(fetched) else f"fetched ({hits} of {len(fetched)} from the cache)"
            else:
                got = fetch(source, cache, params.timeout_s, params.retries, label=name)
                if source.glob:
                    files = extract(got.path, source.glob, dest, uri=source.uri)
                else:
                    dest.mkdir(parents=True)
                    shutil.copyfile(got.path, dest / got.path.name)
                    files = [dest / got.path.name]
                entries = [{"path": f"{name}/{f.name}", "bytes": f.stat().st_size, "sha256": sha256_file(f)} for f in files]
                manifest[name] = {"uri": source.uri, "sha256": got.sha256, "fetched_bytes": got.bytes, "license": source.license, "files": entries}
                how = "from the cache" if got.cached else "fetched"
            written = sum(e["bytes"] for e in entries)
            summary["sources"] += 1
            summary["files"] += len(entries)
            summary["bytes"] += written
            print(f"download: {name}: {len(entries)} files, {written:,} bytes, {how} in {time.perf_counter() - start:.1f} s", file=sys.stderr)
        write_json(tmp / "MANIFEST.json", manifest)
    if metrics_path is not None:
        write_json(metrics_path, summary)
    return summary


def _fetch_entries(name: str, source: SourceParams, cache: Path, params: DownloadParams, dest: Path) -> tuple[list[dict], list[Path], int]:
    """Fetch each ``files`` entry of source ``name`` into ``dest`` (one folder for all).

    Returns, per entry, ``{"uri", "sha256", "fetched_bytes", "paths"}``; the written files in
    entry order; and how many entries the cache served. Any failure raises GptlabError naming
    ``download.sources.<name>.files[i]``; two entries writing the same file name are refused.
    """
    dest.mkdir(parents=True)
    staging = dest.parent / f".{name}.extract"  # inside the stage's temporary folder: removed on failure
    owner: dict[str, int] = {}
    fetched: list[dict] = []
    written: list[Path] = []
    hits = 0
    n = len(source.files)
    for i, (entry, part) in enumerate(zip(source.files, source.parts(), strict=True)):
        key = f"{name}.files[{i}]"
        print(f"download: {name}: file {i + 1}/{n} ({key}) {entry.uri}", file=sys.stderr)
        try:
            got = fetch(part, cache, params.timeout_s, params.retries, label=key)
            if part.glob:
                shutil.rmtree(staging, ignore_errors=True)
                produced = {f.name: f for f in extract(got.path, part.glob, staging, uri=entry.uri)}
            else:
                produced = {entry.name or got.path.name: got.path}
        except GptlabError as e:
            raise GptlabError(f"download.sources.{key}: {e}") from None
        for filename in produced:
            if filename in owner:
                j = owner[filename]
                plain = [k for k in (i, j) if "#" not in source.files[k].uri]
                fix = f"give files[{plain[0]}] its own file name (e.g. name: {plain[0]}_{filename})" if plain else "narrow one of the #GLOBs"
                raise GptlabError(
                    f"download.sources.{name}: files[{j}] ({source.files[j].uri}) and files[{i}] ({entry.uri}) both write {filename} "
                    f"into the {name}/ folder; {fix}"
                )
            owner[filename] = i
        for filename, path in sorted(produced.items()):
            if part.glob:
                os.replace(path, dest / filename)
            else:
                shutil.copyfile(path, dest / filename)
            written.append(dest / filename)
        shutil.rmtree(staging, ignore_errors=True)
        fetched.append({"uri": entry.uri, "sha256": got.sha256, "fetched_bytes": got.bytes, "paths": [f"{name}/{f}" for f in sorted(produced)]})
        hits += got.cached
    return fetched, written, hits
