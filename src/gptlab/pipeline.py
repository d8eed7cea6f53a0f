"""Running a pipeline stage the same way from DVC and from the command line.

``dvc.yaml`` runs ``python -m stages.X``; ``gptlab X`` imports the same ``stages/X.py`` from
the project folder. Either way :func:`stage_main` parses ``--params FILE`` and any number of
``-S key=value`` overrides (as ``dvc exp run -S`` takes them), loads the typed params and calls
the stage's ``run(params)``. Bad input ends with one line on stderr and exit code 2; Ctrl-C or
SIGTERM (after the stage saved what it can) with exit code 130.

One run of a stage at a time: :func:`stage_lock` holds ``.dvc/tmp/gptlab-<stage>.lock`` while
the stage runs, so a second run waits for it a few seconds, then stops with one line naming the
holder's pid. Under DVC a stage also dies with its parent (:func:`die_with_parent`): a
``kill -9`` of ``dvc repro`` leaves no orphan writing the stage's outputs behind a rerun.
"""

from __future__ import annotations

import argparse
import ast
import contextlib
import ctypes
import dataclasses
import fcntl
import importlib
import os
import signal
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from types import ModuleType

import yaml

from gptlab.errors import GptlabError
from gptlab.params import Params, load_params
from gptlab.params.docs import params_help

# The stages of dvc.yaml, in pipeline order (each is stages/<name>.py and `gptlab <name>`).
STAGES = (
    "download",
    "tokenize",
    "pretrain",
    "instructions",
    "download_checkpoint",
    "convert",
    "finetune",
    "generate",
    "generate_base",
    "reference_loss",
    "reference_loss_base",
    "litgpt",
    "score",
)
LOCK_WAIT_S = 10.0  # a second run of a stage waits this long for the first (e.g. one saving after SIGTERM) to end
PR_SET_PDEATHSIG = 1  # linux/prctl.h


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """Show each option's default, and keep the description's line breaks."""


def run_cli(fn: Callable[[], object]) -> int:
    """Run ``fn``; print a GptlabError as one line and return 2, else return 0. Ctrl-C returns 130."""
    try:
        fn()
    except GptlabError as e:
        print(f"gptlab: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("gptlab: interrupted", file=sys.stderr)
        return 130
    return 0


def stage_parser(prog: str, doc: str | None, add_help: bool = True) -> argparse.ArgumentParser:
    """Return the argument parser every stage shares: ``--params`` and ``-S key=value``."""
    parser = argparse.ArgumentParser(prog=prog, description=doc, formatter_class=HelpFormatter, add_help=add_help)
    parser.add_argument("--params", default="params.yaml", help="the params file (YAML)")
    parser.add_argument(
        "-S",
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override one param for this run, as `dvc exp run -S` does; the value is YAML (e.g. -S pretrain.max_steps=50)",
    )
    return parser


def stage_main(run: Callable, doc: str | None = None, argv: Sequence[str] | None = None, prog: str | None = None) -> int:
    """Parse a stage's command line, load its params and call ``run(params)``; return the exit code.

    ``--help`` also lists every params field the stage reads (dvc.yaml's ``params:`` of the stage
    whose module defines ``run``) with its doc, its default and its value in ``--params``."""
    argv = list(sys.argv[1:] if argv is None else argv)
    name = _stage_name(run)
    prog = prog or f"python -m stages.{name or '<name>'}"
    parser = stage_parser(prog, doc)
    if "-h" in argv or "--help" in argv:
        known, _ = stage_parser(prog, doc, add_help=False).parse_known_args(argv)
        parser.epilog = _params_epilog(name, known)
    args = parser.parse_args(argv)

    def locked_run() -> None:
        params = load_params(args.params, overrides=args.overrides)
        die_with_parent()
        with stage_lock(name, wait_s=LOCK_WAIT_S) if name else contextlib.nullcontext():
            run(params)

    by_hand = name is not None and DVC_STAGE_ENV not in os.environ and os.environ.get("RANK", "0") == "0"  # torchrun: rank 0 writes
    before = _out_stamps(stage_outs(name)) if by_hand else {}
    code = run_cli(locked_run)
    for out in [o for o, stamp in before.items() if _stamp(o) not in (None, stamp)]:
        print(f"gptlab: replaced {out} (tracked by DVC stage {name}); `dvc repro` or `dvc checkout` to get the pipeline's version back")
    return code


def die_with_parent() -> bool:
    """Under DVC (``DVC_STAGE`` set) on Linux, have the kernel send this process SIGTERM when its
    parent dies (``prctl(PR_SET_PDEATHSIG)``); return True when that is set up.

    A stage run by hand (no ``DVC_STAGE``) is left alone, so ``nohup gptlab pretrain &`` outlives
    its shell. A parent already gone by the time the request took effect gets the same SIGTERM.
    """
    if DVC_STAGE_ENV not in os.environ or not sys.platform.startswith("linux"):
        return False
    parent = os.getppid()
    try:
        if ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0) != 0:
            return False
    except (OSError, AttributeError):
        return False
    if os.getppid() != parent:
        os.kill(os.getpid(), signal.SIGTERM)
    return True


@contextlib.contextmanager
def stage_lock(name: str, root: str | Path = ".", wait_s: float = LOCK_WAIT_S) -> Iterator[Path | None]:
    """Hold the exclusive lock of stage ``name`` of the DVC project in ``root`` while the block runs;
    yield the lock file (``.dvc/tmp/gptlab-<name>.lock``, holding this process's pid), or None
    outside a DVC project (no ``.dvc/`` folder).

    The lock is an ``fcntl.flock``: the kernel drops it when the holder exits, however it ends
    (``kill -9`` included). When another process holds it, wait up to ``wait_s`` seconds (saying
    so once), then raise GptlabError naming that process's pid and the fix.
    """
    if not (Path(root) / ".dvc").is_dir():
        yield None
        return
    path = Path(root) / ".dvc" / "tmp" / f"gptlab-{name}.lock"
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        deadline, told = time.monotonic() + wait_s, False
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
                if time.monotonic() >= deadline:
                    raise GptlabError(
                        f"stage {name} is already running (pid {holder} holds {path}); wait for it to end, or end it (kill {holder}) and run again"
                    ) from None
                if not told:
                    print(f"gptlab: stage {name} is running in pid {holder}; waiting up to {wait_s:g} s for it to end", file=sys.stderr)
                    told = True
                time.sleep(0.1)
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        yield path
    finally:
        os.close(fd)  # releases the lock


# DVC sets this variable for every stage command it runs (dvc/stage/run.py): its absence means a run by hand.
DVC_STAGE_ENV = "DVC_STAGE"


def stage_outs(name: str, dvc_yaml: str | Path = "dvc.yaml") -> list[str]:
    """Return the cached outs (paths) stage ``name`` declares in ``dvc_yaml``: what `dvc checkout`
    restores; [] when the file or the stage is not there."""
    try:
        stages = yaml.safe_load(Path(dvc_yaml).read_text(encoding="utf-8")).get("stages", {})
    except (OSError, yaml.YAMLError, AttributeError):
        return []
    outs = []
    for out in (stages.get(name) or {}).get("outs", []):
        path, opts = (out, {}) if isinstance(out, str) else next(iter(out.items()))
        if (opts or {}).get("cache", True):
            outs.append(path)
    return outs


def _stamp(path: str) -> tuple[int, int] | None:
    """``path``'s (inode, mtime ns), or None when it does not exist: a stage replacing it changes both."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_ino, st.st_mtime_ns


def _out_stamps(outs: list[str]) -> dict[str, tuple[int, int] | None]:
    """Each out's :func:`_stamp` before a run."""
    return {out: _stamp(out) for out in outs}


def _stage_name(run: Callable) -> str | None:
    """The stage whose ``stages/<name>.py`` defines ``run`` (also when run as ``python -m``), or None."""
    spec = getattr(run, "__globals__", {}).get("__spec__")
    module = spec.name if spec is not None else getattr(run, "__module__", "")
    return module.removeprefix("stages.") if module.startswith("stages.") else None


def stage_params(name: str | None, dvc_yaml: str | Path = "dvc.yaml") -> list[str]:
    """Return the params keys stage ``name`` declares in ``dvc_yaml`` (``seed``, ``finetune``,
    ``download.retries``...); [] when the file or the stage is not there."""
    try:
        stages = yaml.safe_load(Path(dvc_yaml).read_text(encoding="utf-8")).get("stages", {})
    except (OSError, yaml.YAMLError, AttributeError):
        return []
    return [key if isinstance(key, str) else next(iter(key)) for key in (stages.get(name) or {}).get("params", [])]


def _params_epilog(name: str | None, args: argparse.Namespace) -> str:
    """The params part of a stage's ``--help``: its fields' docs, defaults and current values."""
    keys = stage_params(name) or [f.name for f in dataclasses.fields(Params)]
    try:
        params, source = load_params(args.params, overrides=args.overrides), args.params
    except GptlabError as e:
        params, source = None, f"{args.params} not loaded, defaults only: {e}"
    return params_help(Params, keys, params, source)


def load_stage(name: str, root: str | Path = ".") -> ModuleType:
    """Import ``stages/<name>.py`` of the project in ``root``; raise GptlabError when it is not there."""
    root = Path(root).resolve()
    if not (root / "stages" / f"{name}.py").is_file():
        raise GptlabError(
            f"`gptlab {name}` runs the stage of the project in the current folder, but {root}/stages/{name}.py is missing; cd to the project root (with dvc.yaml)"
        )
    if str(root) not in sys.path:
        sys.path.insert(0, str(root))
    return importlib.import_module(f"stages.{name}")


def module_file(name: str, src: Path) -> Path | None:
    """The source file of module ``name`` (``gptlab.x.y``) under ``src``, or None if it is not one of ours."""
    base = src.joinpath(*name.split("."))
    if base.with_suffix(".py").is_file():
        return base.with_suffix(".py")
    if (base / "__init__.py").is_file():
        return base / "__init__.py"
    return None


def _imported_names(path: Path, src: Path) -> list[str]:
    """Return the absolute module names the file at ``path`` imports, anywhere in it (lazy imports
    inside functions included). ``from pkg import name`` gives ``pkg.name`` when that is a module
    under ``src``, else ``pkg``."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    names: list[str] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            for a in node.names:
                full = f"{node.module}.{a.name}"
                names.append(full if module_file(full, src) is not None else node.module)
    return names


def module_imports(src: str | Path = "src", package: str = "gptlab") -> dict[str, set[str]]:
    """Return ``{module: the modules of package it imports}`` for every module of ``package`` under
    ``src`` (dotted names; a package stands for its ``__init__``), lazy imports included. Parent
    packages Python runs on the way are not counted (:func:`imported_files` counts them)."""
    src = Path(src)
    graph: dict[str, set[str]] = {}
    for path in sorted((src / package).rglob("*.py")):
        parts = list(path.relative_to(src).with_suffix("").parts)
        module = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        names = _imported_names(path, src)
        graph[module] = {n for n in names if (n == package or n.startswith(package + ".")) and module_file(n, src) is not None}
    return graph


def imported_files(entry: str | Path, src: str | Path = "src", package: str = "gptlab") -> set[Path]:
    """Return every file of ``package`` under ``src`` that running ``entry`` may import.

    Follows ``import`` and ``from ... import`` statements anywhere in a file (lazy imports inside
    functions included) through the package, transitively, and counts each parent package's
    ``__init__.py``. Paths are relative to the current folder, like dvc.yaml's ``deps``.
    """
    src = Path(src)
    seen: set[Path] = set()
    todo = [Path(entry)]
    while todo:
        path = todo.pop()
        if path in seen:
            continue
        seen.add(path)
        for name in _imported_names(path, src):
            if name != package and not name.startswith(package + "."):
                continue
            parts = name.split(".")
            for i in range(1, len(parts) + 1):  # the module and every parent package
                found = module_file(".".join(parts[:i]), src)
                if found is not None and found not in seen:
                    todo.append(found)
    return {p for p in seen if p != Path(entry)}


def sync_code_deps(dvc_yaml: str | Path = "dvc.yaml", src: str | Path = "src") -> list[str]:
    """Rewrite the ``src/`` entries of every stage's ``deps`` in ``dvc_yaml`` to exactly the files
    its ``stages/<name>.py`` imports (:func:`imported_files`), keeping every other line (comments,
    data deps) as it is. Run from the project root. Returns the names of the stages it changed."""
    path = Path(dvc_yaml)
    lines = path.read_text(encoding="utf-8").splitlines(keepends=True)
    out: list[str] = []
    changed: list[str] = []
    stage = None
    i = 0
    while i < len(lines):
        line = lines[i]
        if line.startswith("  ") and not line.startswith("   ") and line.rstrip().endswith(":"):
            stage = line.strip()[:-1]
        if line.strip() == "deps:" and stage in STAGES:
            out.append(line)
            i += 1
            block = []
            while i < len(lines) and lines[i].startswith("      - "):
                block.append(lines[i])
                i += 1
            old_src = [entry for entry in block if entry.strip()[2:].startswith("src/")]
            new_src = [f"      - {f.as_posix()}\n" for f in sorted(imported_files(f"stages/{stage}.py", src))]
            rest = [entry for entry in block if entry not in old_src]
            entry_file = [entry for entry in rest if entry.strip() == f"- stages/{stage}.py"]
            others = [entry for entry in rest if entry not in entry_file]
            out += entry_file + new_src + others
            if old_src != new_src:
                changed.append(stage)
            continue
        out.append(line)
        i += 1
    path.write_text("".join(out), encoding="utf-8")
    return changed


if __name__ == "__main__":  # python -m gptlab.pipeline: bring dvc.yaml's code deps in step with the imports, and its plots with gptlab.dvc_plots
    print("dvc.yaml: code deps updated for", ", ".join(sync_code_deps()) or "no stage")
    import runpy  # by name, not an import: no stage runs the plots' generator, so it is no stage's dep

    runpy.run_module("gptlab.dvc_plots", run_name="__main__")
