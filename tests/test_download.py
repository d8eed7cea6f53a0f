import hashlib
import io
import json
import os
import tarfile
import threading
import zipfile
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from gptlab.data.download import cache_root, download_sources, extract, fetch, sha256_file
from gptlab.errors import GptlabError
from gptlab.params import DownloadParams, SourceParams

PAYLOAD = bytes(range(256)) * 400  # 102,400 bytes
SHA = hashlib.sha256(PAYLOAD).hexdigest()


class Server:
    """A loopback HTTP server whose routes misbehave on purpose; it logs every request."""

    def __init__(self):
        self.requests: list[tuple[str, str | None]] = []
        self.payload = PAYLOAD
        self.drops_left = {"/drop.bin": 1, "/norange.bin": 1}
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_GET(self):
                rng = self.headers.get("Range")
                server.requests.append((self.path, rng))
                body = server.payload
                if self.path == "/missing.bin":
                    self.send_error(404)
                    return
                if self.path == "/flaky.bin" and sum(p == "/flaky.bin" for p, _ in server.requests) == 1:
                    self.send_error(503)
                    return
                start = 0
                if rng and self.path != "/norange.bin":
                    start = int(rng.split("=")[1].rstrip("-"))
                    self.send_response(206)
                    self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
                else:
                    self.send_response(200)
                self.send_header("Content-Length", str(len(body) - start))
                self.end_headers()
                if server.drops_left.get(self.path, 0) > 0:
                    server.drops_left[self.path] -= 1
                    self.wfile.write(body[start : start + len(body) // 3])
                    self.wfile.flush()
                    self.close_connection = True
                    return
                self.wfile.write(body[start:])

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def server():
    s = Server()
    yield s
    s.close()


@pytest.fixture
def cache(tmp_path):
    return cache_root(str(tmp_path / "cache"))


def files_in(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.rglob("*") if p.is_file())


def test_http_good_file_then_served_from_cache(server, cache):
    src = SourceParams(uri=f"{server.url}/good.bin", sha256=SHA)
    got = fetch(src, cache, timeout_s=5, retries=0)
    assert got.path.read_bytes() == PAYLOAD and got.sha256 == SHA and not got.cached
    again = fetch(src, cache, timeout_s=5, retries=0)
    assert again.cached and again.path == got.path
    assert len(server.requests) == 1  # the second fetch never touched the network


def test_http_checksum_mismatch_deletes_and_names_everything(server, cache):
    wrong = "0" * 64
    src = SourceParams(uri=f"{server.url}/good.bin", sha256=wrong)
    with pytest.raises(GptlabError) as e:
        fetch(src, cache, timeout_s=5, retries=0)
    msg = str(e.value)
    assert f"{server.url}/good.bin" in msg and f"expected sha256 {wrong}" in msg and f"got {SHA}" in msg
    assert not [n for n in files_in(cache) if n.endswith((".bin", ".part"))]


def test_http_dropped_connection_resumes_with_range(server, cache):
    got = fetch(SourceParams(uri=f"{server.url}/drop.bin", sha256=SHA), cache, timeout_s=5, retries=2)
    assert got.path.read_bytes() == PAYLOAD
    assert server.requests[0] == ("/drop.bin", None)
    path, rng = server.requests[1]
    start = int(rng.removeprefix("bytes=").rstrip("-"))
    assert path == "/drop.bin" and 0 < start <= len(PAYLOAD) // 3  # resumed, not restarted
    assert len(server.requests) == 2


def test_http_server_ignoring_range_restarts_cleanly(server, cache):
    got = fetch(SourceParams(uri=f"{server.url}/norange.bin", sha256=SHA), cache, timeout_s=5, retries=2)
    assert got.path.read_bytes() == PAYLOAD  # not the first third twice
    assert len(server.requests) == 2


def test_http_retries_server_errors_and_fails_fast_on_404(server, cache):
    got = fetch(SourceParams(uri=f"{server.url}/flaky.bin", sha256=SHA), cache, timeout_s=5, retries=1)
    assert got.path.read_bytes() == PAYLOAD
    with pytest.raises(GptlabError, match=r"/missing.bin: HTTP 404"):
        fetch(SourceParams(uri=f"{server.url}/missing.bin"), cache, timeout_s=5, retries=3)
    assert sum(p == "/missing.bin" for p, _ in server.requests) == 1


def test_http_gives_up_after_bounded_retries(server, cache):
    server.drops_left["/drop.bin"] = 10
    with pytest.raises(GptlabError, match=r"download failed after 2 attempts"):
        fetch(SourceParams(uri=f"{server.url}/drop.bin", sha256=SHA), cache, timeout_s=5, retries=1)


def test_unpinned_hash_is_recorded_and_then_enforced(server, cache, capsys):
    src = SourceParams(uri=f"{server.url}/good.bin")
    got = fetch(src, cache, timeout_s=5, retries=0)
    assert got.sha256 == SHA
    assert f"recorded sha256 {SHA}" in capsys.readouterr().err
    record = json.loads((got.path.parent / "source.json").read_text())
    assert record["sha256"] == SHA
    # The file in the cache is damaged; the server now serves other bytes: the recorded hash wins.
    got.path.write_bytes(b"damaged")
    server.payload = b"something else"
    with pytest.raises(GptlabError, match=f"expected sha256 {SHA}"):
        fetch(src, cache, timeout_s=5, retries=0)


def test_file_source_checked_in_place(tmp_path, cache):
    path = tmp_path / "data.bin"
    path.write_bytes(PAYLOAD)
    got = fetch(SourceParams(uri=path.as_uri(), sha256=SHA), cache)
    assert got.path == path and got.bytes == len(PAYLOAD)
    with pytest.raises(GptlabError, match="checksum mismatch"):
        fetch(SourceParams(uri=path.as_uri(), sha256="1" * 64), cache)
    assert path.exists()  # a user's own file is never deleted
    with pytest.raises(GptlabError, match="no such file"):
        fetch(SourceParams(uri=(tmp_path / "nope").as_uri()), cache)


def make_sdist(path: Path) -> None:
    with tarfile.open(path, "w:gz") as tf:
        for name, data in {"pkg-1.0/texts/a_gut.txt": b"alpha", "pkg-1.0/texts/b_gut.txt": b"beta",
                           "pkg-1.0/texts/c.txt": b"gamma", "pkg-1.0/setup.py": b""}.items():  # fmt: skip
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))


def test_extract_tar_below_top_folder_and_zip(tmp_path):
    sdist = tmp_path / "pkg-1.0.tar.gz"
    make_sdist(sdist)
    out = extract(sdist, "texts/*_gut.txt", tmp_path / "out")
    assert [p.name for p in out] == ["a_gut.txt", "b_gut.txt"]
    assert (tmp_path / "out" / "b_gut.txt").read_bytes() == b"beta"
    wheel = tmp_path / "pkg.whl"
    with zipfile.ZipFile(wheel, "w") as zf:
        zf.writestr("pkg/data/x.json", "{}")
        zf.writestr("pkg-1.0.dist-info/METADATA", "")
    assert [p.name for p in extract(wheel, "pkg/data/*.json", tmp_path / "w")] == ["x.json"]
    with pytest.raises(GptlabError, match=r"the glob '#nothing/\*' matches none of the 4 members"):
        extract(sdist, "nothing/*", tmp_path / "none")
    with pytest.raises(GptlabError, match="not a zip or tar archive"):
        extract(tmp_path / "out" / "a_gut.txt", "*", tmp_path / "x")


def test_a_member_that_names_no_file_is_refused_in_one_line(tmp_path):
    archive = tmp_path / "evil.tar"
    with tarfile.open(archive, "w") as tf:
        for name, data in (("x/good.txt", b"ok"), ("x/..", b"boom")):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    with pytest.raises(GptlabError, match=r"archive member 'x/\.\.' matches '#\*' but names no file .*narrow the glob"):
        extract(archive, "*", tmp_path / "out", uri="file:///evil.tar#*")
    assert [p.name for p in extract(archive, "*.txt", tmp_path / "ok")] == ["good.txt"]  # a narrower glob still works


def make_wheel(folder: Path) -> Path:
    """A minimal valid wheel of the package `gptlabfixture` 1.0 holding data/sample.json."""
    folder.mkdir()
    path = folder / "gptlabfixture-1.0-py3-none-any.whl"
    files = {
        "gptlabfixture/__init__.py": "",
        "gptlabfixture/data/sample.json": '[{"instruction": "x", "output": "y"}]',
        "gptlabfixture-1.0.dist-info/METADATA": "Metadata-Version: 2.1\nName: gptlabfixture\nVersion: 1.0\n",
        "gptlabfixture-1.0.dist-info/WHEEL": "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
    }
    record = "".join(f"{n},,\n" for n in files) + "gptlabfixture-1.0.dist-info/RECORD,,\n"
    with zipfile.ZipFile(path, "w") as zf:
        for name, text in files.items():
            zf.writestr(name, text)
        zf.writestr("gptlabfixture-1.0.dist-info/RECORD", record)
    return path


def test_pypi_source_through_pip_download(tmp_path, cache, monkeypatch):
    wheel = make_wheel(tmp_path / "index")
    monkeypatch.setenv("PIP_NO_INDEX", "1")
    monkeypatch.setenv("PIP_FIND_LINKS", str(wheel.parent))
    src = SourceParams(uri="pypi:gptlabfixture==1.0#gptlabfixture/data/*.json", sha256=sha256_file(wheel), dist="wheel")
    got = fetch(src, cache, timeout_s=10, retries=0)
    assert got.path.name == wheel.name and got.sha256 == sha256_file(wheel)
    with pytest.raises(GptlabError, match=r"pypi:gptlabfixture==2.0: pip download of the wheel failed"):
        fetch(SourceParams(uri="pypi:gptlabfixture==2.0", dist="wheel"), cache, timeout_s=10, retries=0)


def test_download_sources_writes_outputs_and_metrics(tmp_path, server):
    sdist = tmp_path / "pkg-1.0.tar.gz"
    make_sdist(sdist)
    params = DownloadParams(
        sources={
            "corpus": SourceParams(uri=sdist.as_uri() + "#texts/*_gut.txt", sha256=sha256_file(sdist)),
            "blob": SourceParams(uri=f"{server.url}/good.bin", sha256=SHA, license="test"),
        },
        cache_dir=str(tmp_path / "cache"),
    )
    out, metrics = tmp_path / "raw", tmp_path / "metrics" / "download.json"
    summary = download_sources(params, out, metrics)
    assert files_in(out) == ["MANIFEST.json", "a_gut.txt", "b_gut.txt", "good.bin"]
    assert (out / "blob" / "good.bin").read_bytes() == PAYLOAD
    saved = json.loads(metrics.read_text())
    # counts only: hashes and URIs are provenance, kept in the MANIFEST.json out
    assert saved == summary == {"sources": 2, "files": 3, "bytes": 5 + 4 + len(PAYLOAD)}
    manifest = json.loads((out / "MANIFEST.json").read_text())
    assert manifest["blob"]["uri"] == f"{server.url}/good.bin" and manifest["blob"]["sha256"] == SHA
    assert manifest["blob"]["fetched_bytes"] == len(PAYLOAD) and manifest["blob"]["license"] == "test"
    assert manifest["corpus"]["files"][0] == {"path": "corpus/a_gut.txt", "bytes": 5, "sha256": hashlib.sha256(b"alpha").hexdigest()}


def test_failed_source_leaves_previous_output_untouched(tmp_path, server):
    out = tmp_path / "raw"
    out.mkdir()
    (out / "keep.txt").write_text("previous run")
    params = DownloadParams(
        sources={
            "good": SourceParams(uri=f"{server.url}/good.bin", sha256=SHA),
            "bad": SourceParams(uri=f"{server.url}/good.bin#*.txt", sha256=SHA),
        },
        cache_dir=str(tmp_path / "cache"),
    )
    with pytest.raises(GptlabError, match="not a zip or tar archive"):
        download_sources(params, out)
    assert files_in(out) == ["keep.txt"]
    assert sorted(os.listdir(tmp_path)) == ["cache", "raw"]  # no temporary folder left behind


def test_parquet_and_jsonl_zst_urls_land_in_the_corpus_and_tokenize(server, tmp_path):
    import io as _io
    import random

    import pyarrow as pa
    import pyarrow.parquet as pq
    import zstandard

    from gptlab.data.tokenize import tokenize_corpus
    from gptlab.params import TokenizeParams

    rng = random.Random(0)  # ~100 KB of random words: larger than a few download chunks
    docs = ["\n".join(" ".join("".join(rng.choices("abcdefghij", k=5)) for _ in range(40)) for _ in range(10)) for _ in range(40)]
    buf = _io.BytesIO()
    pq.write_table(pa.table({"text": docs}), buf, row_group_size=8)
    server.payload = buf.getvalue()
    server.drops_left["/sample/10BT/000_00000.parquet?download=true"] = 1  # a dropped transfer resumes with Range
    params = DownloadParams(sources={"corpus": SourceParams(uri=f"{server.url}/sample/10BT/000_00000.parquet?download=true")}, retries=2)
    download_sources(DownloadParams(params.sources, cache_dir=str(tmp_path / "cache"), retries=2), tmp_path / "raw")
    assert files_in(tmp_path / "raw" / "corpus") == ["000_00000.parquet"]
    assert (tmp_path / "raw" / "corpus" / "000_00000.parquet").read_bytes() == server.payload
    assert server.requests[-1][1] is not None  # the second request asked for the rest only
    s = tokenize_corpus(TokenizeParams(corpus_glob="*.parquet", val_fraction=0.2), tmp_path / "raw" / "corpus", tmp_path / "shards", seed=0)
    assert sum(s["documents"].values()) == 40 and s["split_rule"] == "hash"

    lines = "".join(json.dumps({"text": d}) + "\n" for d in docs).encode()
    server.payload = zstandard.ZstdCompressor().compress(lines)
    (tmp_path / "local.jsonl.zst").write_bytes(server.payload)
    for uri in (f"{server.url}/train/00.jsonl.zst", (tmp_path / "local.jsonl.zst").as_uri()):
        download_sources(DownloadParams({"corpus": SourceParams(uri=uri)}, cache_dir=str(tmp_path / "cache")), tmp_path / "raw")
        (name,) = files_in(tmp_path / "raw" / "corpus")
        assert name.endswith(".jsonl.zst")
        s = tokenize_corpus(TokenizeParams(corpus_glob="*.jsonl.zst", val_fraction=0.2), tmp_path / "raw" / "corpus", tmp_path / "shards", seed=0)
        assert sum(s["documents"].values()) == 40
