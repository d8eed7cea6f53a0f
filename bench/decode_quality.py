"""What bf16 and int8 weights cost in quality: reference loss and greedy answers against fp32.

On the first --records test records, each weight format (:func:`gptlab.inference.prepare`)
gives the score stage's reference loss (:func:`gptlab.score.metrics.reference_loss`, mean
nats/token of the reference outputs) and greedy answers (:func:`gptlab.generate.respond`, the
generate stage's batching); printed as the loss's relative change from fp32 (target: within 1%)
and how many answers differ from fp32's (and how many of their first 16 characters do).

    python bench/decode_quality.py --model models/finetuned --test data/instructions/test.json [--records 30]

Writes the figures to --json (default ``metrics/bench_decode_quality.json``).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch

from gptlab.checkpoint import load_model
from gptlab.data.instructions import load_records
from gptlab.data.prompts import model_prompt_style
from gptlab.generate import respond
from gptlab.inference import prepare
from gptlab.sampling import SamplingConfig
from gptlab.score.metrics import reference_loss


def main(argv: list[str] | None = None) -> dict:
    """Run the comparison; return the figures it prints."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", required=True, help="a gptlab model folder")
    ap.add_argument("--test", required=True, help="the instructions' test split (JSON records)")
    ap.add_argument("--records", type=int, default=30)
    ap.add_argument("--new-tokens", type=int, default=64)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--style", default=None, help="prompt style (default: the one the model folder records, else alpaca)")
    ap.add_argument("--weights", default="fp32,bf16,int8", help="formats to compare, fp32 first (the baseline)")
    ap.add_argument("--json", default="metrics/bench_decode_quality.json")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    records = load_records(args.test)[: args.records]
    style = args.style or model_prompt_style(args.model, "alpaca")
    cfg = SamplingConfig(max_new_tokens=args.new_tokens, temperature=0.0)
    out: dict = {"model": args.model, "records": len(records), "style": style, "weights": {}}
    answers: dict[str, list[str]] = {}
    formats = args.weights.split(",")
    if formats[0] != "fp32":
        formats.insert(0, "fp32")
    for weights in formats:
        model, tok = load_model(args.model)
        model = prepare(model, weights=weights, compile=False)
        t = time.perf_counter()
        with torch.inference_mode():
            loss = statistics.fmean(reference_loss(model, tok, records, style))
        answers[weights] = [r["response"] for r in respond(model, tok, records, cfg, 16, style)]
        base = out["weights"].get("fp32", {}).get("reference_loss", loss)
        differ = sum(a != b for a, b in zip(answers[weights], answers["fp32"]))
        differ16 = sum(a[:16] != b[:16] for a, b in zip(answers[weights], answers["fp32"]))
        out["weights"][weights] = {
            "reference_loss": round(loss, 5),
            "relative_to_fp32": round(loss / base - 1, 5),
            "answers_differing_from_fp32": differ,
            "answers_differing_in_first_16_chars": differ16,
            "seconds": round(time.perf_counter() - t, 1),
        }
        print(
            f"{weights}: reference loss {loss:.4f} ({(loss / base - 1) * 100:+.2f}% vs fp32), greedy answers differing from fp32: "
            f"{differ}/{len(records)} ({differ16} in their first 16 characters)",
            flush=True,
        )
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(out, indent=2) + "\n")
    return out


if __name__ == "__main__":
    main()
