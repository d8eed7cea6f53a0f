"""pypi: sources come through the index's simple API as bytes: no build step, no code of the package run."""

import hashlib
import io
import json
import tarfile
import threading
import zipfile
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from gptlab.data.download import download_sources, extract
from gptlab.errors import GptlabError
from gptlab.params import DownloadParams, SourceParams

JSON_TYPE = "application/vnd.pypi.simple.v1+json"


def trap_sdist(marker: Path, top: str = "evilpkg-1.0") -> bytes:
    """An sdist whose build backend and setup.py write ``marker`` the moment anything runs them."""
    trap = f"import pathlib\npathlib.Path({str(marker)!r}).write_text('the package ran')\n"
    backend = (
        trap + "def prepare_metadata_for_build_wheel(d, c=None):\n    raise SystemExit(1)\n" + "def get_requires_for_build_wheel(c=None):\n    return []\n"
    )
    members = {
        f"{top}/pyproject.toml": '[build-system]\nrequires = []\nbuild-backend = "backend"\nbackend-path = ["."]\n',
        f"{top}/backend.py": backend,
        f"{top}/setup.py": trap,
        f"{top}/PKG-INFO": "Metadata-Version: 2.1\nName: evilpkg\nVersion: 1.0\n",
        f"{top}/data/a.txt": "alpha\n",
        f"{top}/data/b.txt": "beta\n",
    }
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tf:
        for name, text in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(text.encode())
            tf.addfile(info, io.BytesIO(text.encode()))
    return buf.getvalue()


class Index:
    """A package index on 127.0.0.1: /simple/<project>/ pages (JSON or HTML) and /files/<name>; it logs every path asked for."""

    def __init__(self):
        self.routes: dict[str, tuple[str, bytes]] = {}
        self.asked: list[str] = []
        index = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_GET(self):
                index.asked.append(self.path)
                if self.path not in index.routes:
                    self.send_error(404)
                    return
                ctype, body = index.routes[self.path]
                self.send_response(200)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def add_json(self, project: str, files: dict[str, bytes], listed: dict[str, str] | None = None) -> None:
        listed = listed or {}
        entries = [{"filename": n, "url": f"../../files/{n}", "hashes": {"sha256": listed.get(n, hashlib.sha256(b).hexdigest())}} for n, b in files.items()]
        self.routes[f"/simple/{project}/"] = (JSON_TYPE, json.dumps({"meta": {"api-version": "1.0"}, "name": project, "files": entries}).encode())
        self.routes.update({f"/files/{n}": ("application/octet-stream", b) for n, b in files.items()})

    def add_html(self, project: str, files: dict[str, bytes]) -> None:
        links = "".join(f'<a href="{self.url}/files/{n}#sha256={hashlib.sha256(b).hexdigest()}">{n}</a><br/>' for n, b in files.items())
        self.routes[f"/simple/{project}/"] = ("text/html", f"<!DOCTYPE html><html><body>{links}</body></html>".encode())
        self.routes.update({f"/files/{n}": ("application/octet-stream", b) for n, b in files.items()})


@pytest.fixture
def index(monkeypatch):
    idx = Index()
    monkeypatch.setenv("PIP_INDEX_URL", f"{idx.url}/simple")  # pip's own setting: gptlab reads the index pip would use
    monkeypatch.delenv("PIP_EXTRA_INDEX_URL", raising=False)
    yield idx
    idx.httpd.shutdown()
    idx.httpd.server_close()


def params(tmp_path: Path, uri: str, sha256: str | None, dist: str = "sdist") -> DownloadParams:
    return DownloadParams(sources={"corpus": SourceParams(uri=uri, sha256=sha256, dist=dist)}, cache_dir=str(tmp_path / "cache"), retries=0, timeout_s=5)


def test_a_booby_trapped_sdist_is_fetched_checked_and_extracted_without_running_it(index, tmp_path):
    marker = tmp_path / "PWNED"
    sdist = trap_sdist(marker)
    index.add_json("evilpkg", {"evilpkg-1.0.tar.gz": sdist, "evilpkg-0.9.tar.gz": b"old"})
    download_sources(params(tmp_path, "pypi:evilpkg==1.0#data/*.txt", hashlib.sha256(sdist).hexdigest()), tmp_path / "raw")
    assert sorted(p.name for p in (tmp_path / "raw" / "corpus").iterdir()) == ["a.txt", "b.txt"]
    assert (tmp_path / "raw" / "corpus" / "b.txt").read_text() == "beta\n"
    assert not marker.exists()  # no build backend, no setup.py: nothing of the package ran
    assert index.asked == ["/simple/evilpkg/", "/files/evilpkg-1.0.tar.gz"]  # only the page and that exact file


def test_a_wrong_pin_is_refused_naming_the_file_and_nothing_runs_or_stays(index, tmp_path):
    marker = tmp_path / "PWNED"
    sdist = trap_sdist(marker)
    index.add_json("evilpkg", {"evilpkg-1.0.tar.gz": sdist})
    wrong = "0" * 64
    with pytest.raises(GptlabError) as e:
        download_sources(params(tmp_path, "pypi:evilpkg==1.0#data/*.txt", wrong), tmp_path / "raw")
    msg = str(e.value)
    assert "pypi:evilpkg==1.0 (evilpkg-1.0.tar.gz): checksum mismatch" in msg and f"expected sha256 {wrong}" in msg
    assert f"got {hashlib.sha256(sdist).hexdigest()}" in msg
    assert not marker.exists() and not (tmp_path / "raw").exists()
    assert not [p for p in (tmp_path / "cache").rglob("*") if p.name.endswith((".gz", ".part"))]


def test_bytes_that_differ_from_the_hash_the_index_lists_are_refused(index, tmp_path):
    sdist = trap_sdist(tmp_path / "PWNED")
    index.add_json("evilpkg", {"evilpkg-1.0.tar.gz": sdist}, listed={"evilpkg-1.0.tar.gz": "1" * 64})
    with pytest.raises(GptlabError, match=r"\(evilpkg-1\.0\.tar\.gz\): the index lists sha256 1{64} but the bytes fetched from .* have [0-9a-f]{64}"):
        download_sources(params(tmp_path, "pypi:evilpkg==1.0#data/*.txt", None), tmp_path / "raw")


def test_an_html_index_a_normalised_name_and_an_equal_version_are_found(index, tmp_path, capsys):
    sdist = trap_sdist(tmp_path / "PWNED", top="Html_Pkg-1.0")
    index.add_html("html-pkg", {"Html_Pkg-1.0.tar.gz": sdist, "Html_Pkg-1.0.zip": b"not this one"})
    download_sources(params(tmp_path, "pypi:HTML.pkg==1.0.0#data/a.txt", None), tmp_path / "raw")
    assert (tmp_path / "raw" / "corpus" / "a.txt").read_text() == "alpha\n"
    assert f"recorded sha256 {hashlib.sha256(sdist).hexdigest()}" in capsys.readouterr().err
    assert not (tmp_path / "PWNED").exists()


def test_a_wheel_source_takes_the_wheel_this_interpreter_would_install(index, tmp_path):
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("evilpkg/data/x.json", "{}")
        zf.writestr("evilpkg-1.0.dist-info/METADATA", "")
    wheel = buf.getvalue()
    index.add_json("evilpkg", {"evilpkg-1.0.tar.gz": b"sdist", "evilpkg-1.0-cp27-cp27m-win32.whl": b"no", "evilpkg-1.0-py3-none-any.whl": wheel})
    download_sources(params(tmp_path, "pypi:evilpkg==1.0#evilpkg/data/*.json", hashlib.sha256(wheel).hexdigest(), dist="wheel"), tmp_path / "raw")
    assert [p.name for p in (tmp_path / "raw" / "corpus").iterdir()] == ["x.json"]
    assert "/files/evilpkg-1.0-py3-none-any.whl" in index.asked


def test_a_release_the_index_lacks_is_named_with_what_it_lists(index, tmp_path):
    index.add_json("evilpkg", {"evilpkg-0.9.tar.gz": b"old"})
    with pytest.raises(GptlabError, match=r"pypi:evilpkg==1\.0: no sdist of evilpkg 1\.0 on the package index \(http://127.*e\.g\. evilpkg-0\.9\.tar\.gz"):
        download_sources(params(tmp_path, "pypi:evilpkg==1.0", None), tmp_path / "raw")
    with pytest.raises(GptlabError, match=r"none lists the project"):
        download_sources(params(tmp_path, "pypi:nopkg==1.0", None), tmp_path / "raw")


@pytest.mark.parametrize("name", ["../escape.txt", "/abs/escape.txt", "top/../../escape.txt"])
def test_an_archive_member_that_leaves_the_folder_is_refused(tmp_path, name):
    archive = tmp_path / "evil.tar"
    with tarfile.open(archive, "w") as tf:
        info = tarfile.TarInfo(name)
        info.size = 4
        tf.addfile(info, io.BytesIO(b"evil"))
    with pytest.raises(GptlabError, match=r"absolute or climbs out with '\.\.'; the archive is unsafe"):
        extract(archive, "*.txt", tmp_path / "out", uri="pypi:x==1#*.txt")
    assert not (tmp_path / "escape.txt").exists() and not (tmp_path / "out").exists()


def test_an_unpinned_file_source_prints_the_hash_to_pin(tmp_path, capsys):
    path = tmp_path / "notes.txt"
    path.write_bytes(b"hello\n")
    sha = hashlib.sha256(b"hello\n").hexdigest()
    download_sources(DownloadParams(sources={"corpus": SourceParams(uri=path.as_uri())}, cache_dir=str(tmp_path / "c")), tmp_path / "raw")
    err = capsys.readouterr().err
    assert f"download: corpus: {path.as_uri()} has sha256 {sha}; pin it in params.yaml (sha256: {sha})" in err
    download_sources(DownloadParams(sources={"corpus": SourceParams(uri=path.as_uri(), sha256=sha)}, cache_dir=str(tmp_path / "c")), tmp_path / "raw")
    assert "pin it" not in capsys.readouterr().err
