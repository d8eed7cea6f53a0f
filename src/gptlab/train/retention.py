"""Retention of resumable training state: ``checkpoints/<stage>/<run id>/`` grows one folder per
run id (each change of params or data starts a new one); keep the most recently used few."""

from __future__ import annotations

import os
import shutil
from pathlib import Path


def _is_run_folder(path: Path) -> bool:
    return path.is_dir() and not path.name.startswith(".") and any((path / n).is_dir() for n in ("latest", "best"))


def last_used(run_dir: Path) -> float:
    """When a run folder was last used (seconds since the epoch): the newest of the folder's and
    its ``latest/``'s modification times."""
    times = [run_dir.stat().st_mtime]
    if (run_dir / "latest").exists():
        times.append((run_dir / "latest").stat().st_mtime)
    return max(times)


def mark_used(run_dir: str | Path) -> None:
    """Record that a run folder is in use now (a resumed run counts as recent)."""
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    os.utime(run_dir)


def clean_checkpoints(checkpoint_dir: str | Path, keep: int, current: str | Path | None = None) -> list[Path]:
    """Delete all but the ``keep`` most recently used run folders (those holding ``latest/`` or
    ``best/``) of ``checkpoint_dir``; ``current`` (a run folder) is never deleted and counts as
    one of the ``keep``. ``keep`` 0 keeps everything. Returns the folders removed, oldest first."""
    checkpoint_dir = Path(checkpoint_dir)
    if keep <= 0 or not checkpoint_dir.is_dir():
        return []
    current_path = Path(current).resolve() if current is not None else None
    runs = sorted((p for p in checkpoint_dir.iterdir() if _is_run_folder(p)), key=last_used, reverse=True)
    others = [p for p in runs if p.resolve() != current_path]
    slots = keep - (1 if current_path is not None and current_path.exists() else 0)
    removed = sorted(others[max(slots, 0) :], key=last_used)
    for path in removed:
        shutil.rmtree(path, ignore_errors=True)
    return removed
