"""The ``gptlab`` command: thin subcommands over the library.

Bad input ends the command with one line ``gptlab: error: ...`` on stderr and exit code 2;
anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Sequence

from gptlab.errors import GptlabError


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


def _download(args: argparse.Namespace) -> None:
    from gptlab.data.download import download_sources
    from gptlab.params import load_params

    summary = download_sources(load_params(args.params).download, args.out, args.metrics)
    print(f"download: {summary['files']} files, {summary['bytes']:,} bytes into {args.out}")


def _tokenize(args: argparse.Namespace) -> None:
    from gptlab.data.corpus import tokenize_corpus
    from gptlab.params import load_params

    params = load_params(args.params)
    s = tokenize_corpus(params.tokenize, args.corpus, args.out, params.seed, args.metrics)
    print(
        f"tokenize: {s['documents']['train']}+{s['documents']['val']} documents, "
        f"{s['tokens']['train']:,} train / {s['tokens']['val']:,} val tokens, "
        f"{s['tokens_per_s']:,.0f} tokens/s with {s['workers']} workers -> {args.out}"
    )


def _pretrain(args: argparse.Namespace) -> None:
    import dataclasses
    import signal

    from gptlab.params import load_params
    from gptlab.train import pretrain, publish

    params = load_params(args.params)
    p = params.pretrain if args.max_steps is None else dataclasses.replace(params.pretrain, max_steps=args.max_steps)
    # `kill` (SIGTERM) saves a checkpoint like Ctrl-C does, so the next run resumes
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    result = pretrain(params.model.to_config(), p, args.shards, params.seed, live_dir=args.metrics_dir)
    if publish(result, args.out):
        s = result.summary
        print(f"pretrain: {s['steps']} steps, val loss {s['val_loss']} ({s['val_bits_per_byte']} bits/byte), {s['tokens_per_s']} tokens/s -> {args.out}")


def _encode(args: argparse.Namespace) -> None:
    from gptlab.tokenizer import load_tokenizer

    tok = load_tokenizer(args.tokenizer)
    print(json.dumps(tok.encode(args.text, allowed_special="all")))


def _generate(args: argparse.Namespace) -> None:
    import codecs

    from gptlab.checkpoint import load_model
    from gptlab.generate import SamplingConfig, stream
    from gptlab.tokenizer import token_bytes

    model, tok = load_model(args.model, args.device)
    cfg = SamplingConfig(args.max_new_tokens, args.temperature, args.top_k, args.top_p, args.seed)
    prompt = tok.encode(args.prompt, allowed_special="all")
    utf8 = codecs.getincrementaldecoder("utf-8")(errors="replace")  # a character may span tokens
    for tokens, _ in stream(model, [prompt], cfg, stop_tokens=[tok.eot_token], use_cache=not args.no_cache, pad_token=tok.eot_token):
        token = int(tokens[0])
        if token == tok.eot_token:
            break
        sys.stdout.write(utf8.decode(token_bytes(tok, token)))
        sys.stdout.flush()
    sys.stdout.write(utf8.decode(b"", final=True) + "\n")


def build_parser() -> argparse.ArgumentParser:
    """Return the argument parser of the ``gptlab`` command."""
    parser = argparse.ArgumentParser(prog="gptlab", description="Build a GPT-2-style model end to end.")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("download", help="fetch the raw data sources named in params.yaml")
    p.add_argument("--params", default="params.yaml")
    p.add_argument("--out", default="data/raw")
    p.add_argument("--metrics", default="metrics/download.json")
    p.set_defaults(fn=_download)

    p = sub.add_parser("tokenize", help="encode the corpus into train/val token shards")
    p.add_argument("--params", default="params.yaml")
    p.add_argument("--corpus", default="data/raw/corpus")
    p.add_argument("--out", default="data/shards")
    p.add_argument("--metrics", default="metrics/tokenize.json")
    p.set_defaults(fn=_tokenize)

    p = sub.add_parser("pretrain", help="pretrain a GPT on the token shards (torchrun for several processes)")
    p.add_argument("--params", default="params.yaml")
    p.add_argument("--shards", default="data/shards")
    p.add_argument("--out", default="models/pretrained")
    p.add_argument("--metrics-dir", default="metrics/pretrain", help="DVCLive folder: metrics.json, plots")
    p.add_argument("--max-steps", type=int, default=None, help="override pretrain.max_steps")
    p.set_defaults(fn=_pretrain)

    p = sub.add_parser("generate", help="continue a prompt with a model, streaming tokens as they come")
    p.add_argument("--model", required=True, help="a gptlab checkpoint folder (or a Hugging Face GPT-2 folder)")
    p.add_argument("--prompt", required=True)
    p.add_argument("--max-new-tokens", type=int, default=64)
    p.add_argument("--temperature", type=float, default=0.8, help="0 = greedy")
    p.add_argument("--top-k", type=int, default=None)
    p.add_argument("--top-p", type=float, default=None)
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--device", default="cpu")
    p.add_argument("--no-cache", action="store_true", help="recompute the whole prefix each step (for comparison)")
    p.set_defaults(fn=_generate)

    p = sub.add_parser("encode", help="print the token ids of a text")
    p.add_argument("text")
    p.add_argument("--tokenizer", default="gpt2", help="'gpt2' or a SimpleTokenizer tokenizer.json")
    p.set_defaults(fn=_encode)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``gptlab`` command; returns the exit code."""
    args = build_parser().parse_args(argv)
    return run_cli(lambda: args.fn(args))


if __name__ == "__main__":
    sys.exit(main())
