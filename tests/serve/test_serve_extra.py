"""The server is an optional extra: without fastapi or uvicorn, ``gptlab serve`` and ``import
gptlab.serve`` stop with one line naming the extra to install."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def run_without(module: str, code: str) -> subprocess.CompletedProcess:
    """Run ``code`` in a fresh interpreter where importing ``module`` fails as if it were not installed."""
    prelude = f"import sys; sys.modules[{module!r}] = None\n"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")])}
    return subprocess.run([sys.executable, "-c", prelude + code], capture_output=True, text=True, env=env, cwd=ROOT, timeout=120)


@pytest.mark.parametrize("module", ["fastapi", "uvicorn"])
def test_gptlab_serve_without_the_extra_says_what_to_install(module, tmp_path):
    proc = run_without(module, f"from gptlab.cli import main; sys.exit(main(['serve', '--model', {str(tmp_path)!r}]))")
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert module in lines[0] and "pip install 'gptlab[serve]'" in lines[0]


def test_importing_gptlab_serve_without_fastapi_raises_gptlab_error():
    proc = run_without("fastapi", "from gptlab.errors import GptlabError\ntry:\n    import gptlab.serve\nexcept GptlabError as e:\n    print(e)")
    assert proc.returncode == 0, proc.stderr
    assert "pip install 'gptlab[serve]'" in proc.stdout
