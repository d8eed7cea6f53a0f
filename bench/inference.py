"""The inference bench (issue 26.4): in one run, on the same weights, threads and prompt,

- gptlab's one-prompt greedy decode: fp32, bf16 and int8 weights, eager and compiled
  (``gptlab.inference.prepare``; ``--skip compiled`` leaves the compiled ones out, and the JSON
  lists the variants measured under ``gptlab_variants``);
- llama.cpp through its prebuilt wheel ``xllamacpp``, on gptlab's own GGUF export of the same
  model at f32 and q8_0 (:mod:`gptlab.convert.llamacpp`), which also checks interop: llama.cpp's
  greedy tokens against gptlab's fp32 ones, and the perplexity of a text under each file
  against gptlab's; with ``--threads`` above 1 also llama.cpp on one thread
  (``llamacpp_*_1thread``), which can be its faster setting on a small VM;
- transformers' ``generate`` on gptlab's Hugging Face export of the model;
- ``gptlab serve`` (the real server, a subprocess on 127.0.0.1), fp32 and bf16 weights: aggregate
  tokens/s of 1, 4, 8 and 16 concurrent OpenAI ``/v1/completions`` clients;
- on a GPU (``torch.cuda.is_available()``): batch 1 and 64 in bf16, gptlab against transformers.

Per engine: time to first token (prefill + first token, ms) and decode tokens/s (the tokens after
the first, over the time after the first), medians over ``--rounds`` rounds after one warm-up,
the engines taking turns within each round (a shared machine's load falls on all alike);
``vs_llamacpp_*``: decode tokens/s over llama.cpp's f32 and q8_0 (> 1: gptlab is faster). Every
figure is measured in this run: the machine may be shared, so compare ratios, not absolutes
across runs. Figures go to ``metrics/bench_inference.json``::

    PYTHONPATH=src python bench/inference.py                      # models/finetuned (else models/base)
    PYTHONPATH=src python bench/inference.py --model DIR --new-tokens 128
    PYTHONPATH=src python bench/inference.py --smoke --json /tmp/b.json   # tiny random model, seconds: correctness only
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import math
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path

os.environ.setdefault("GPTLAB_QUIET", "1")

import torch  # noqa: E402

from gptlab.checkpoint import save_model  # noqa: E402
from gptlab.config import GPTConfig  # noqa: E402
from gptlab.convert.gguf_export import export_gguf  # noqa: E402
from gptlab.convert.hf import export_hf  # noqa: E402
from gptlab.convert.load_any import load_any  # noqa: E402
from gptlab.inference import prepare  # noqa: E402
from gptlab.io import write_json  # noqa: E402
from gptlab.model import GPT  # noqa: E402
from gptlab.sampling import SamplingConfig, stream  # noqa: E402
from gptlab.tokenizer import gpt2  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
PROMPT = "The history of the city of Paris begins around 250 BC, when a tribe of the Senones settled on an island in the river, and"
TEXT = (  # ASCII (llama.cpp reports no probability for part of a character), a few sentences of ordinary prose
    "The cat sat on the mat and looked out of the window. It was a cold morning, and the street was quiet. "
    "A man walked past with his dog, and the cat watched them until they turned the corner."
)
CONCURRENCY = (1, 4, 8, 16)
SERVE_WEIGHTS = ("fp32", "bf16")  # serve_* (fp32) and serve_bf16_*
SMOKE = GPTConfig(
    vocab_size=50257, context_length=256, emb_dim=64, n_heads=4, n_kv_heads=2, n_layers=2, mlp_hidden=128,
    norm="rmsnorm", positions="rope", mlp="swiglu", qkv_bias=False, proj_bias=False, mlp_bias=False,
)  # fmt: skip


Run = Callable[[], tuple[float, float, list[int]]]
"""One greedy generation by one engine: (seconds to the first new token, decode tokens/s after
it, the first row's new tokens)."""


def median(xs: list[float]) -> float:
    return statistics.median(xs) if xs else float("nan")


# ---------------------------------------------------------------- gptlab


def gptlab_decode(model: GPT, prompts: list[list[int]], new_tokens: int) -> tuple[float, float, list[list[int]]]:
    """One greedy run of the one sampler: ``(seconds to the first token, decode tokens/s over all
    rows after the first token, the new tokens of each row)``."""
    rows: list[list[int]] = [[] for _ in prompts]
    start = time.perf_counter()
    first = None
    for tokens, _active in stream(model, prompts, SamplingConfig(new_tokens, temperature=0.0)):
        if first is None:
            first = time.perf_counter()
        for row, t in zip(rows, tokens):
            row.append(t)
    end = time.perf_counter()
    decode = len(prompts) * (new_tokens - 1) / (end - first) if end > first else float("nan")
    return first - start, decode, rows


def gptlab_runner(model: GPT, prompts: list[list[int]], new_tokens: int) -> Run:
    """A :data:`Run` of gptlab's one sampler on ``model``."""

    def run() -> tuple[float, float, list[int]]:
        ttft, rate, rows = gptlab_decode(model, prompts, new_tokens)
        return ttft, rate, rows[0]

    return run


def gptlab_variants(compiled: bool = True) -> list[tuple[str, str, bool]]:
    """``(name, weights, compiled)`` of each variant to measure: fp32/bf16/int8 x eager and, when
    ``compiled``, compiled (``gptlab.inference.prepare``)."""
    return [(f"{w}_{'compiled' if c else 'eager'}", w, c) for w in ("fp32", "bf16", "int8") for c in (False, True) if compiled or not c]


def prepared(model: GPT, weights: str, compiled: bool, device: str) -> GPT:
    """A copy of ``model`` on ``device`` made ready by ``prepare`` (which may change a model in place)."""
    copy = GPT(model.config)
    copy.load_state_dict(model.state_dict())
    copy = copy.to(device).eval()
    return prepare(copy, weights=weights, compile=compiled)


# ---------------------------------------------------------------- llama.cpp


def llamacpp_runner(gguf: Path, n_ctx: int, threads: int, prompt: list[int], new_tokens: int) -> Run:
    """A :data:`Run` of llama.cpp (:class:`gptlab.convert.llamacpp.LlamaCpp`) on the file ``gguf``:
    the file loaded for this run only and closed after it, the prompt prefilled anew, timings as
    llama.cpp measured them (loading excluded). A loaded llama.cpp keeps its thread pool polling
    between requests: on the 2-core machine of this project that slowed every other engine in the
    process by a third (the tiny Shakespeare model: gptlab 1,360 -> 900 tokens/s), so no engine is
    measured while one is loaded."""
    from gptlab.convert.llamacpp import LlamaCpp

    def run() -> tuple[float, float, list[int]]:
        with LlamaCpp(gguf, n_ctx=n_ctx, threads=threads) as llama:
            c = llama.greedy(prompt, new_tokens)
        return c.prompt_ms / 1e3, c.decode_tokens_per_s, c.tokens

    return run


def llamacpp_perplexity(gguf: Path, n_ctx: int, threads: int, ids: list[int]) -> float:
    """The perplexity llama.cpp gives the token ids ``ids`` under the file ``gguf`` (loaded for
    this call only, as :func:`llamacpp_runner` does)."""
    from gptlab.convert.llamacpp import LlamaCpp

    with LlamaCpp(gguf, n_ctx=n_ctx, threads=threads) as llama:
        return llama.perplexity(ids)


# ---------------------------------------------------------------- transformers


class _Clock:
    """A ``generate`` streamer recording when each new token arrives (the first put is the prompt)."""

    def __init__(self):
        self.times: list[float] = []

    def put(self, value) -> None:
        self.times.append(time.perf_counter())

    def end(self) -> None:
        pass


def transformers_runner(folder: Path, prompts: list[list[int]], new_tokens: int, device: str, dtype: torch.dtype) -> Run:
    """A :data:`Run` of transformers' ``generate`` (greedy, its own cache, exactly ``new_tokens``)
    on the HF export in ``folder``."""
    import transformers

    hf = transformers.AutoModelForCausalLM.from_pretrained(folder, dtype=dtype).to(device).eval()
    width = max(len(p) for p in prompts)
    ids = torch.tensor([[0] * (width - len(p)) + p for p in prompts], device=device)
    mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts], device=device)
    kwargs = {"max_new_tokens": new_tokens, "min_new_tokens": new_tokens, "do_sample": False, "pad_token_id": 0}

    def run() -> tuple[float, float, list[int]]:
        clock = _Clock()
        start = time.perf_counter()
        with torch.no_grad():
            out = hf.generate(ids, attention_mask=mask, streamer=clock, **kwargs)
        end = time.perf_counter()
        first = clock.times[1]
        return first - start, len(prompts) * (new_tokens - 1) / (end - first), out[0, width:].tolist()

    return run


# ---------------------------------------------------------------- one run, engines taking turns


def interleaved(runners: dict[str, Run], rounds: int) -> dict[str, dict]:
    """Run each engine once to warm it (``warmup_s``: that run's wall time, compilation included),
    then ``rounds`` rounds in which every engine runs once in turn, so a shared machine's changing
    load falls on all engines alike; per engine the medians ``ttft_ms`` and
    ``decode_tokens_per_s``, and the last run's ``tokens``."""
    out: dict[str, dict] = {}
    for name, run in runners.items():
        start = time.perf_counter()
        run()
        out[name] = {"warmup_s": time.perf_counter() - start}
    samples: dict[str, list] = {name: [] for name in runners}
    for _ in range(rounds):
        for name, run in runners.items():
            samples[name].append(run())
    for name, runs in samples.items():
        out[name].update(ttft_ms=1e3 * median([r[0] for r in runs]), decode_tokens_per_s=median([r[1] for r in runs]), tokens=runs[-1][2])
    return out


def leading_agreement(tokens: list[int], reference: list[int]) -> float:
    """How many of ``tokens`` equal ``reference``'s before the first difference."""
    return float(next((i for i, (a, b) in enumerate(zip(tokens, reference)) if a != b), min(len(tokens), len(reference))))


# ---------------------------------------------------------------- gptlab serve


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def measure_serve(folder: Path, prompt: str, new_tokens: int, threads: int, concurrency: tuple[int, ...], timeout_s: float, weights: str = "fp32") -> dict:
    """Start ``gptlab serve --weights weights`` on ``folder``; for each client count, that many concurrent greedy
    ``/v1/completions`` requests (``new_tokens`` at most each): aggregate completion tokens/s
    over the wall time of the whole round, and ``speedup_N``: over the one-client rate."""
    port = free_port()
    cmd = [sys.executable, "-m", "gptlab.cli", "serve", "--model", str(folder), "--port", str(port), "--threads", str(threads), "--weights", weights]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")]), "CI": "true"}
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                urllib.request.urlopen(url + "/", timeout=2).read()
                break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"gptlab serve did not start: {(proc.stderr.read() if proc.poll() is not None else 'timeout')[-2000:]}") from None
                time.sleep(0.5)

        def request(_: int) -> int:
            body = json.dumps({"model": folder.name, "prompt": prompt, "max_tokens": new_tokens, "temperature": 0}).encode()
            req = urllib.request.Request(url + "/v1/completions", body, {"Content-Type": "application/json"})
            with urllib.request.urlopen(req, timeout=600) as r:
                return int(json.loads(r.read())["usage"]["completion_tokens"])

        request(0)  # warm-up
        out: dict = {}
        for n in concurrency:
            start = time.perf_counter()
            with concurrent.futures.ThreadPoolExecutor(n) as pool:
                tokens = sum(pool.map(request, range(n)))
            out[f"clients_{n}_tokens_per_s"] = tokens / (time.perf_counter() - start)
        for n in concurrency[1:]:
            out[f"speedup_{n}"] = out[f"clients_{n}_tokens_per_s"] / out[f"clients_{concurrency[0]}_tokens_per_s"]
        return out
    finally:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()


# ---------------------------------------------------------------- the run


def model_folder(arg: str | None) -> Path:
    if arg:
        return Path(arg)
    for name in ("models/finetuned", "models/base"):
        if (ROOT / name / "model.safetensors").exists():
            return ROOT / name
    raise SystemExit("bench/inference.py: no models/finetuned or models/base; run `dvc repro convert` or pass --model DIR")


def perplexity(model: GPT, ids: list[int]) -> float:
    """exp(mean cross-entropy) of ``ids`` after the first token, under ``model`` (fp32)."""
    idx = torch.tensor([ids])
    with torch.no_grad():
        logits = model(idx)[0][0].float()
    return math.exp(torch.nn.functional.cross_entropy(logits[:-1], idx[0, 1:]).item())


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=None, help="a gptlab model folder (default: models/finetuned, else models/base)")
    ap.add_argument("--new-tokens", type=int, default=64)
    ap.add_argument("--rounds", type=int, default=3, help="timed rounds per engine (after one warm-up); medians reported")
    ap.add_argument("--threads", type=int, default=2, help="CPU threads of every engine")
    ap.add_argument(
        "--skip",
        default="",
        help="comma-separated parts to leave out: llamacpp, transformers, serve, gpu, compiled (gptlab's compiled variants: minutes of warm-up on a CPU)",
    )
    ap.add_argument("--smoke", action="store_true", help="a tiny random Llama model, 1 round, 8 tokens, 1 thread: correctness only")
    ap.add_argument("--json", default=str(ROOT / "metrics/bench_inference.json"))
    args = ap.parse_args()
    skip = set(filter(None, args.skip.split(",")))
    if args.smoke:  # one thread: a tiny model's steps are too short to share between threads
        args.new_tokens, args.rounds, args.threads = 8, 1, 1
    torch.set_num_threads(args.threads)
    tmp = Path(tempfile.mkdtemp(prefix="bench_inference_"))
    if args.smoke:
        torch.manual_seed(0)
        model, tok = GPT(SMOKE).eval(), gpt2()
        folder = save_model(tmp / "smoke", model, tok)
    else:
        folder = model_folder(args.model)
        model, tok = load_any(folder)
    model = model.float().eval()
    prompt, text = tok.encode(PROMPT), tok.encode(TEXT)
    if len(prompt) + args.new_tokens > model.config.context_length:  # transformers would fail on a position index
        sys.exit(f"bench/inference.py: {folder} has a context of {model.config.context_length} tokens; the prompt ({len(prompt)}) plus "
                 f"--new-tokens {args.new_tokens} does not fit: use --new-tokens {model.config.context_length - len(prompt)} or fewer")  # fmt: skip
    n_ctx = max(len(prompt) + args.new_tokens, len(text)) + 8
    variants = gptlab_variants(compiled="compiled" not in skip)
    res: dict = {
        "model": str(folder),
        "parameters": model.num_parameters(),
        "threads": args.threads,
        "new_tokens": args.new_tokens,
        "prompt_tokens": len(prompt),
        "rounds": args.rounds,
        "cpus": os.cpu_count(),
        "load_average_at_start": round(os.getloadavg()[0], 2),  # > cpus: a shared machine, figures noisy
        "gptlab_variants": [name for name, _, _ in variants],
    }

    def show(name: str, figures: dict) -> None:
        for k, v in figures.items():
            if isinstance(v, float):
                print(f"{name}_{k}: {v:.4g}", flush=True)
                res[f"{name}_{k}"] = round(v, 4)

    runners: dict[str, Run] = {f"gptlab_{name}": gptlab_runner(prepared(model, w, c, "cpu"), [prompt], args.new_tokens) for name, w, c in variants}
    ggufs = {}
    if "llamacpp" not in skip:
        for dtype in ("f32", "q8_0"):
            ggufs[dtype] = export_gguf(model, tok, tmp / f"model-{dtype}.gguf", dtype)
            runners[f"llamacpp_{dtype}"] = llamacpp_runner(ggufs[dtype], n_ctx, args.threads, prompt, args.new_tokens)
            if args.threads > 1:  # llama.cpp's thread pool can lose more than a thread gains (the 2-core Xeon VM, tiny model: 10x slower at 2)
                runners[f"llamacpp_{dtype}_1thread"] = llamacpp_runner(ggufs[dtype], n_ctx, 1, prompt, args.new_tokens)
    if "transformers" not in skip:
        runners["transformers_fp32"] = transformers_runner(export_hf(model, tmp / "hf", tok), [prompt], args.new_tokens, "cpu", torch.float32)
    results = interleaved(runners, args.rounds)
    reference = results["gptlab_fp32_eager"]["tokens"]
    for name, r in results.items():
        if name != "gptlab_fp32_eager":
            r["same_tokens_as_gptlab_fp32"] = leading_agreement(r["tokens"], reference)
        show(name, r)
    show("gptlab", {"perplexity": perplexity(model, text)})
    for dtype, gguf in ggufs.items():
        ppl = llamacpp_perplexity(gguf, n_ctx, args.threads, text)
        show(f"llamacpp_{dtype}", {"perplexity": ppl, "perplexity_vs_gptlab": ppl / res["gptlab_perplexity"]})
    ratios = {}
    for name in (n for n in results if n.startswith("gptlab_")):
        for other in [n for n in results if n.startswith("llamacpp_")] + (["transformers_fp32"] if "transformers_fp32" in results else []):
            ratios[f"{name}_vs_{other.removesuffix('_fp32')}"] = results[name]["decode_tokens_per_s"] / results[other]["decode_tokens_per_s"]
    for key, ratio in ratios.items():
        print(f"{key}: {ratio:.3f}x")
        res[key] = round(ratio, 4)

    if "serve" not in skip:
        for weights in SERVE_WEIGHTS:
            show("serve" if weights == "fp32" else f"serve_{weights}", measure_serve(folder, PROMPT, args.new_tokens, args.threads, CONCURRENCY, 300, weights))

    if "gpu" not in skip and torch.cuda.is_available():
        res["gpu"] = torch.cuda.get_device_name()
        hf_dir = tmp / "hf" if (tmp / "hf").exists() else export_hf(model, tmp / "hf", tok)
        gpu_model = prepared(model, "bf16", "auto", "cuda")
        for batch in (1, 64):
            prompts = [prompt] * batch
            gpu = {"gptlab": gptlab_runner(gpu_model, prompts, args.new_tokens)}
            gpu["transformers"] = transformers_runner(hf_dir, prompts, args.new_tokens, "cuda", torch.bfloat16)
            r = interleaved(gpu, args.rounds)
            for engine in gpu:
                show(f"gpu_{engine}_bf16_batch{batch}", r[engine])
            ratio = r["gptlab"]["decode_tokens_per_s"] / r["transformers"]["decode_tokens_per_s"]
            res[f"gpu_batch{batch}_vs_transformers"] = round(ratio, 4)
            print(f"gpu_batch{batch}_vs_transformers: {ratio:.3f}x")

    write_json(args.json, res)
    print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
