"""Crash-safe file output: whole folders and JSON files appear complete or not at all.

A folder is written as ``.tmp-<name>-<pid>-*`` beside its target and swapped in with two
renames (target -> ``.old-<name>-<pid>``, temp -> target). A process killed at any moment
leaves either the target or its ``.old-`` copy; :func:`recover_dir` (run by every
:func:`atomic_dir` and at the start of a training run) puts a lost target back and removes
what dead writers left. ``GPTLAB_FAULT`` (see :func:`fault_point`) kills the process at a named
point, for the fault-injection tests.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import shutil
import signal
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from gptlab.errors import GptlabError

_FAULT_COUNTS: dict[str, int] = {}


def fault_point(name: str) -> None:
    """Test hook: when ``GPTLAB_FAULT`` is ``<name>[#<n>][=<signal>]`` send this process the
    signal (default KILL) the ``n``-th time (default 1st) it reaches ``name``. No-op otherwise."""
    spec = os.environ.get("GPTLAB_FAULT")
    if not spec:
        return
    point, _, sig = spec.partition("=")
    point, _, nth = point.partition("#")
    if point != name:
        return
    _FAULT_COUNTS[name] = _FAULT_COUNTS.get(name, 0) + 1
    if _FAULT_COUNTS[name] == int(nth or 1):
        os.kill(os.getpid(), getattr(signal, f"SIG{sig or 'KILL'}"))


def _pid_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _leftovers(target: Path, kind: str) -> list[tuple[Path, int | None]]:
    """``(path, writer pid or None)`` of the ``.tmp-``/``.old-`` entries of ``target``: named
    ``<pid>[-<random>]``, or ``<8 random>`` as written before pids were recorded."""
    out = []
    for path in target.parent.glob(f".{kind}-{target.name}-*"):
        rest = path.name[len(f".{kind}-{target.name}-") :]
        pid = rest.split("-", 1)[0]
        if pid.isdigit():
            out.append((path, int(pid)))
        elif "-" not in rest and len(rest) == 8:
            out.append((path, None))
    return out


def recover_dir(target: str | Path) -> list[Path]:
    """Undo what a killed :func:`atomic_dir` left beside ``target``: restore ``target`` from its
    newest ``.old-`` copy when a kill fell between the two renames, then delete the temporary
    and old folders of writers no longer alive. Returns the paths removed or restored."""
    target = Path(target)
    if not target.parent.is_dir():
        return []
    touched: list[Path] = []
    olds = sorted((p for p, pid in _leftovers(target, "old") if pid is None or not _pid_alive(pid)), key=lambda p: p.stat().st_mtime)
    if olds and not target.exists():
        os.replace(olds.pop(), target)
        touched.append(target)
    stale = olds + [p for p, pid in _leftovers(target, "tmp") if pid is None or not _pid_alive(pid)]
    for path in stale:
        shutil.rmtree(path, ignore_errors=True) if path.is_dir() else path.unlink(missing_ok=True)
        touched.append(path)
    return touched


_FULL = (errno.ENOSPC, errno.EDQUOT)
_DENIED = (errno.EACCES, errno.EPERM, errno.EROFS)


def environment_error(e: OSError, target: Path) -> GptlabError | None:
    """Return the one-line GptlabError for a full disk (ENOSPC, EDQUOT) or an output folder this
    process may not write (EACCES, EPERM, EROFS) met while writing ``target``; None for any other error."""
    if e.errno in _FULL:
        return GptlabError(f"{target}: no space left on device while writing it ({os.strerror(e.errno)}); free space there or write elsewhere, then rerun")
    named = Path(os.fsdecode(e.filename)).absolute() if e.filename else None
    if e.errno in _DENIED and (
        named is None or named.is_relative_to(target.parent.absolute()) or target.parent.absolute().is_relative_to(named)
    ):  # not an input it could not read
        return GptlabError(f"{target.parent}: cannot write there ({os.strerror(e.errno)}); make the folder writable or choose another output path, then rerun")
    return None


@contextlib.contextmanager
def environment_errors(target: Path) -> Iterator[None]:
    """Turn a full disk or an unwritable output folder met in the block into one GptlabError
    naming ``target`` (see :func:`environment_error`); other errors pass unchanged."""
    try:
        yield
    except OSError as e:
        error = environment_error(e, target)
        if error is None:
            raise
        raise error from None


@contextlib.contextmanager
def atomic_dir(target: str | Path) -> Iterator[Path]:
    """Yield an empty temporary folder beside ``target``; on success it replaces ``target``.

    On an exception the temporary folder is removed and ``target`` is left as it was, so a
    crash never leaves a half-written output behind (a kill is undone by :func:`recover_dir`).
    A full disk or an unwritable parent folder raises one GptlabError naming the folder.
    """
    target = Path(target)
    with environment_errors(target):
        target.parent.mkdir(parents=True, exist_ok=True)
        recover_dir(target)
        tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{target.name}-{os.getpid()}-", dir=target.parent))
        try:
            yield tmp
            fault_point(f"atomic_dir:{target.name}")
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        swap_in(tmp, target)


def swap_in(tmp: Path, target: Path) -> None:
    """Replace ``target`` with the finished folder ``tmp`` (two renames, see :func:`recover_dir`)."""
    honour_umask(tmp)
    old = None
    if target.exists():
        old = target.with_name(f".old-{target.name}-{os.getpid()}")
        os.replace(target, old)
    fault_point(f"atomic_swap:{target.name}")
    os.replace(tmp, target)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def honour_umask(root: Path) -> None:
    """Give ``root`` and everything below it the modes a plain ``open``/``mkdir`` would under the
    umask (mkdtemp makes 0700, mkstemp and safetensors 0600): outputs stay readable by others."""
    file_mode, dir_mode = readable_mode(), readable_mode(directory=True)
    os.chmod(root, dir_mode)
    for folder, dirs, files in os.walk(root):
        for name in dirs:
            os.chmod(os.path.join(folder, name), dir_mode)
        for name in files:
            os.chmod(os.path.join(folder, name), file_mode)


def readable_mode(directory: bool = False) -> int:
    """The permission bits a new file (0o666) or folder (0o777) gets under the process umask."""
    umask = os.umask(0)
    os.umask(umask)
    return (0o777 if directory else 0o666) & ~umask


def read_json(path: str | Path, what: str = "JSON file") -> Any:
    """Return the parsed JSON of ``path``; a missing or malformed file raises GptlabError in one
    line naming the file (``what`` says what it should be, e.g. "a model folder's config.json")."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        raise GptlabError(f"{path}: no such file ({what}); check the path or rerun the stage that writes it") from None
    except (OSError, UnicodeDecodeError) as e:
        raise GptlabError(f"{path}: cannot read {what}: {e}") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise GptlabError(f"{path}:{e.lineno}: not valid JSON ({e.msg}); {what} must be JSON: fix or delete the file") from None


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield the path of a new empty temporary file beside ``path``, for a writer that opens the
    file by name (``gguf.GGUFWriter``, ``safetensors``); when the block ends without an exception
    the file gets the umask's modes and replaces ``path`` (one rename), otherwise it is removed
    and ``path`` is left as it was. A full disk or an unwritable folder raises one GptlabError naming it."""
    path = Path(path)
    with environment_errors(path):
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".tmp-{path.name}-{os.getpid()}-", dir=path.parent)
        os.close(fd)
        try:
            yield Path(tmp)
            os.chmod(tmp, readable_mode())
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise


@contextlib.contextmanager
def atomic_file(path: str | Path, mode: str = "wb") -> Iterator[Any]:
    """Yield a file object open on a temporary file beside ``path`` (see :func:`atomic_path`):
    ``path`` is replaced when the block ends without an exception, left as it was otherwise.
    ``mode`` is "wb" or "w" (UTF-8 text)."""
    with atomic_path(path) as tmp, open(tmp, mode, **({} if "b" in mode else {"encoding": "utf-8"})) as f:
        yield f


def write_json(path: str | Path, data: Any) -> None:
    """Write ``data`` as indented JSON to ``path`` atomically (temp file, then rename)."""
    write_text(path, json.dumps(data, indent=2, ensure_ascii=False) + "\n")


def write_text(path: str | Path, text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` atomically (temp file, then rename)."""
    with atomic_file(path, "w") as f:
        f.write(text)


def sha256_file(path: str | Path) -> str:
    """Return the hex sha256 of the file at ``path`` (read in 1 MiB blocks)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()
