"""Environment faults while writing outputs: a full disk, a read-only output folder (issue 24.10).

Each gives one line naming the path and the fix; nothing half-written stays; the previous
output stays as it was. A real small filesystem (a 1 MiB tmpfs) where this process may mount
one (root), else a simulated ENOSPC / EACCES.
"""

import errno
import hashlib
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
from safetensors import SafetensorError

import gptlab.checkpoint as checkpoint
import gptlab.io as gio
from gptlab.checkpoint import save_model
from gptlab.config import GPTConfig
from gptlab.convert.hf import export_hf
from gptlab.errors import GptlabError
from gptlab.io import write_json
from gptlab.model import GPT

ROOT = Path(__file__).parents[1]
SMALL = GPTConfig(vocab_size=50257, context_length=16, emb_dim=4, n_heads=2, n_layers=1)  # ~0.8 MB of weights
LARGE = GPTConfig(vocab_size=50257, context_length=16, emb_dim=16, n_heads=2, n_layers=1)  # ~3.2 MB


def tree(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.rglob("*")) if p.is_file()}


def one_line(fn, match) -> str:
    with pytest.raises(GptlabError, match=match) as info:
        fn()
    assert "\n" not in str(info.value)
    return str(info.value)


def cli(*args) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "gptlab.cli", *map(str, args)],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env={"PYTHONPATH": str(ROOT / "src"), "PATH": "/usr/bin:/bin"},
    )


@pytest.fixture
def tmpfs(tmp_path):
    """A 1 MiB tmpfs mounted in the test's folder (unmounted after), or a skip where mounting is not allowed."""
    mnt = tmp_path / "fs"
    mnt.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mnt)], capture_output=True).returncode:
        pytest.skip("cannot mount a tmpfs here (needs root); the simulated faults below cover the same paths")
    yield mnt
    subprocess.run(["umount", "-l", str(mnt)], capture_output=True)


# ---------------------------------------------------------------- simulated


def test_a_full_disk_under_write_json_is_one_line_naming_the_file_and_keeps_the_old_one(tmp_path, monkeypatch):
    target = tmp_path / "out" / "data.json"
    write_json(target, {"old": 1})

    class Full:
        def __init__(self, f):
            self.f = f

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.f.close()

        def write(self, data):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(gio, "open", lambda *a, **k: Full(open(*a, **k)), raising=False)
    one_line(
        lambda: write_json(target, {"new": 2}), rf"^{target}: no space left on device while writing it .*; free space there or write elsewhere, then rerun$"
    )
    assert json.loads(target.read_text()) == {"old": 1}
    assert sorted(p.name for p in target.parent.iterdir()) == ["data.json"]


def test_a_full_disk_under_a_checkpoint_is_one_line_and_keeps_the_previous_folder(tmp_path, monkeypatch):
    folder = save_model(tmp_path / "m", GPT(SMALL))
    before = tree(folder)

    def full(tensors, path, metadata=None):
        Path(path).write_bytes(b"partial")
        raise SafetensorError('Error while serializing: IoError(Os { code: 28, kind: StorageFull, message: "No space left on device" })')

    monkeypatch.setattr(checkpoint, "save_file", full)
    one_line(lambda: save_model(folder, GPT(LARGE)), rf"^{folder}: no space left on device while writing it")
    assert tree(folder) == before and sorted(p.name for p in tmp_path.iterdir()) == ["m"]


def test_a_full_disk_under_a_hugging_face_export_is_one_line(tmp_path, monkeypatch):
    def full(tensors, path, metadata=None):
        raise SafetensorError('Error while serializing: IoError(Os { code: 28, kind: StorageFull, message: "No space left on device" })')

    monkeypatch.setattr(checkpoint, "save_file", full)
    one_line(lambda: export_hf(GPT(SMALL), tmp_path / "hf"), rf"^{tmp_path / 'hf'}: no space left on device while writing it")
    assert list(tmp_path.iterdir()) == []


def test_an_unwritable_output_folder_is_one_line_naming_it(tmp_path, monkeypatch):
    parent = tmp_path / "out"
    folder = save_model(parent / "m", GPT(SMALL))
    before = tree(folder)

    def denied(*args, dir=None, **kw):
        raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(Path(dir) / ".tmp-x"))

    monkeypatch.setattr(tempfile, "mkdtemp", denied)
    monkeypatch.setattr(tempfile, "mkstemp", denied)
    one_line(
        lambda: save_model(folder, GPT(LARGE)),
        rf"^{parent}: cannot write there \(Permission denied\); make the folder writable or choose another output path, then rerun$",
    )
    one_line(lambda: write_json(parent / "x.json", {}), rf"^{parent}: cannot write there \(Permission denied\)")
    assert tree(folder) == before


def test_an_unreadable_input_inside_a_write_is_not_blamed_on_the_output(tmp_path):
    with pytest.raises(PermissionError):
        with gio.atomic_dir(tmp_path / "out" / "m"):
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), "/somewhere/else/input.bin")
    assert not (tmp_path / "out" / "m").exists() and list((tmp_path / "out").iterdir()) == []


@pytest.mark.skipif(os.geteuid() == 0, reason="root ignores file modes: the read-only tmpfs test below covers it")
def test_a_read_only_parent_by_mode_is_one_line(tmp_path):
    parent = tmp_path / "ro"
    parent.mkdir()
    parent.chmod(0o555)
    try:
        one_line(lambda: save_model(parent / "m", GPT(SMALL)), rf"^{parent}: cannot write there")
    finally:
        parent.chmod(0o755)


# ---------------------------------------------------------------- a real small filesystem


def test_a_real_full_filesystem_gives_one_line_and_keeps_the_previous_checkpoint(tmpfs, tmp_path):
    previous = save_model(tmpfs / "m", GPT(SMALL))
    before = tree(previous)
    source = save_model(tmp_path / "large", GPT(LARGE))
    out = cli("convert", "--model", source, "--out", previous, "--to", "gptlab")
    assert out.returncode == 2, out.stderr[-3000:]
    assert out.stderr.splitlines() == [
        f"gptlab: error: {previous}: no space left on device while writing it (No space left on device); free space there or write elsewhere, then rerun"
    ]
    assert tree(previous) == before and sorted(p.name for p in tmpfs.iterdir()) == ["m"]


def test_a_read_only_filesystem_gives_one_line_and_keeps_the_previous_output(tmpfs, tmp_path):
    previous = save_model(tmpfs / "m", GPT(SMALL))
    before = tree(previous)
    assert subprocess.run(["mount", "-o", "remount,ro", str(tmpfs)], capture_output=True).returncode == 0
    source = save_model(tmp_path / "small", GPT(SMALL))
    out = cli("convert", "--model", source, "--out", previous, "--to", "gptlab")
    assert out.returncode == 2, out.stderr[-3000:]
    assert out.stderr.splitlines() == [
        f"gptlab: error: {tmpfs}: cannot write there (Read-only file system); make the folder writable or choose another output path, then rerun"
    ]
    assert tree(previous) == before
