"""One run of a stage at a time, and no orphan: a stage under DVC dies with its parent, and a
second run of a stage waits for the first, then stops naming its pid."""

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from gptlab import pipeline
from gptlab.errors import GptlabError

ROOT = Path(__file__).parents[1]
MINIMAL = 'download:\n  sources:\n    corpus: {uri: "file:///tmp/x.txt"}\n'


def env() -> dict:
    return {**os.environ, "PYTHONPATH": str(ROOT / "src") + os.pathsep + os.environ.get("PYTHONPATH", "")}


def gone(pid: int, within_s: float) -> bool:
    """True when process ``pid`` has exited (or is a zombie) within ``within_s`` seconds."""
    deadline = time.monotonic() + within_s
    while time.monotonic() < deadline:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except (FileNotFoundError, ProcessLookupError):
            return True
        if state in ("Z", "X"):
            return True
        time.sleep(0.05)
    return False


def hold_lock(tmp_path: Path, name: str) -> subprocess.Popen:
    """Start a process that holds stage ``name``'s lock in the project ``tmp_path`` until killed."""
    code = f"import sys, time\nfrom gptlab.pipeline import stage_lock\nwith stage_lock({name!r}, {str(tmp_path)!r}):\n    print('held', flush=True)\n    time.sleep(60)\n"
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True, env=env())
    assert proc.stdout.readline().strip() == "held"
    return proc


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="prctl(PR_SET_PDEATHSIG) is Linux's")
def test_a_stage_under_dvc_dies_when_its_parent_is_killed(tmp_path):
    (tmp_path / "params.yaml").write_text(MINIMAL)
    stage = tmp_path / "stage.py"
    stage.write_text(
        textwrap.dedent(f"""
        import sys, time
        from gptlab.pipeline import stage_main
        def run(params):
            print("started", flush=True)
            time.sleep(60)
        sys.exit(stage_main(run, argv=["--params", {str(tmp_path / "params.yaml")!r}]))
        """)
    )
    # the parent plays `dvc repro`: it starts the stage with DVC_STAGE set, then is killed with SIGKILL
    parent_code = (
        "import os, subprocess, sys, time\n"
        f"child = subprocess.Popen([sys.executable, {str(stage)!r}], env={{**os.environ, 'DVC_STAGE': 'fake'}})\n"
        "print(child.pid, flush=True)\ntime.sleep(60)\n"
    )
    parent = subprocess.Popen([sys.executable, "-c", parent_code], stdout=subprocess.PIPE, text=True, env=env())
    try:
        child_pid = int(parent.stdout.readline())
        assert parent.stdout.readline().strip() == "started"
        parent.send_signal(signal.SIGKILL)
        parent.wait(10)
        assert gone(child_pid, 10), "the stage outlived its killed parent"
    finally:
        parent.kill()
        try:
            os.kill(child_pid, signal.SIGKILL)
        except (ProcessLookupError, UnboundLocalError):
            pass


def test_a_stage_run_by_hand_is_not_tied_to_its_parent(monkeypatch):
    monkeypatch.delenv("DVC_STAGE", raising=False)
    assert pipeline.die_with_parent() is False


def test_a_second_run_of_a_stage_is_refused_naming_the_first_ones_pid(tmp_path):
    (tmp_path / ".dvc").mkdir()
    holder = hold_lock(tmp_path, "tokenize")
    try:
        start = time.monotonic()
        with pytest.raises(GptlabError, match=rf"stage tokenize is already running \(pid {holder.pid} holds .*gptlab-tokenize\.lock\); .*kill {holder.pid}"):
            with pipeline.stage_lock("tokenize", tmp_path, wait_s=0.5):
                pass
        assert time.monotonic() - start >= 0.5  # it waited for the first run before giving up
        with pipeline.stage_lock("pretrain", tmp_path, wait_s=0):  # another stage is not blocked
            pass
    finally:
        holder.kill()
        holder.wait()
    # kill -9 of the holder frees the lock at once: the rerun goes ahead
    with pipeline.stage_lock("tokenize", tmp_path, wait_s=0) as path:
        assert path.read_text().strip() == str(os.getpid())


def test_stage_main_holds_the_lock_and_says_so_in_one_line(tmp_path, monkeypatch, capsys):
    (tmp_path / ".dvc").mkdir()
    (tmp_path / "params.yaml").write_text(MINIMAL)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(pipeline, "_stage_name", lambda run: "download")
    monkeypatch.setattr(pipeline, "LOCK_WAIT_S", 0.2)
    seen = []
    assert pipeline.stage_main(lambda params: seen.append((tmp_path / ".dvc/tmp/gptlab-download.lock").read_text()), argv=[]) == 0
    assert seen == [f"{os.getpid()}\n"]
    holder = hold_lock(tmp_path, "download")
    try:
        assert pipeline.stage_main(lambda params: seen.append("ran twice"), argv=[]) == 2
    finally:
        holder.kill()
        holder.wait()
    err = capsys.readouterr().err
    assert f"gptlab: error: stage download is already running (pid {holder.pid}" in err and "ran twice" not in seen
