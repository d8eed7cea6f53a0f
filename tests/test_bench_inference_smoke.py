"""bench/inference.py --smoke (issue 26.4): the inference bench runs end to end on a tiny random
Llama model (gptlab, llama.cpp through xllamacpp on gptlab's GGUF export, transformers, the real
`gptlab serve` with 1/4/8/16 clients, fp32 and bf16 weights) and writes every figure it promises, the interop ones
(llama.cpp's perplexity of the text against gptlab's) within their bounds."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
pytest.importorskip("xllamacpp", reason="llama.cpp's prebuilt wheel xllamacpp is not installed (pip install 'gptlab[test]')")
pytest.importorskip("fastapi", reason="gptlab serve needs the serve extra")


@pytest.mark.slow  # ~20 s: four engines and a server start
def test_smoke_run_writes_every_figure(tmp_path):
    out = tmp_path / "bench_inference.json"
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "CI": "true"}
    cmd = [sys.executable, "bench/inference.py", "--smoke", "--skip", "gpu", "--json", str(out)]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    figures = json.loads(out.read_text())
    assert figures["new_tokens"] == 8 and figures["threads"] == 1
    for engine in ("gptlab_fp32_eager", "llamacpp_f32", "llamacpp_q8_0", "transformers_fp32"):
        assert figures[f"{engine}_decode_tokens_per_s"] > 0 and figures[f"{engine}_ttft_ms"] > 0, engine
    assert abs(figures["llamacpp_f32_perplexity_vs_gptlab"] - 1) < 1e-3
    assert abs(figures["llamacpp_q8_0_perplexity_vs_gptlab"] - 1) < 1e-2
    assert 0 <= figures["llamacpp_f32_same_tokens_as_gptlab_fp32"] <= 8
    assert figures["gptlab_fp32_eager_vs_llamacpp_f32"] > 0 and figures["gptlab_fp32_eager_vs_transformers"] > 0
    for prefix in ("serve", "serve_bf16"):
        for n in (1, 4, 8, 16):
            assert figures[f"{prefix}_clients_{n}_tokens_per_s"] > 0
        assert figures[f"{prefix}_speedup_8"] > 0
    assert "gptlab_fp32_eager_vs_llamacpp_q8_0:" in proc.stdout and f"wrote {out}" in proc.stdout
