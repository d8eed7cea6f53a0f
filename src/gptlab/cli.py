"""The ``gptlab`` command: thin subcommands over the library.

Bad input ends the command with one line ``gptlab: error: ...`` on stderr and exit code 2;
anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

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


def _loop_params(p, max_steps: int | None):
    """Return training-loop params with ``--max-steps`` applied (warmup clipped to fit), and make
    ``kill`` (SIGTERM) save a checkpoint like Ctrl-C does, so the next run resumes."""
    import dataclasses
    import signal

    signal.signal(signal.SIGTERM, signal.default_int_handler)
    return p if max_steps is None else dataclasses.replace(p, max_steps=max_steps, warmup_steps=min(p.warmup_steps, max_steps))


def _pretrain(args: argparse.Namespace) -> None:
    from gptlab.params import load_params
    from gptlab.train.loop import publish
    from gptlab.train.pretrain import pretrain

    params = load_params(args.params)
    p = _loop_params(params.pretrain, args.max_steps)
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

    from gptlab.lora import load_merged
    from gptlab.sampling import SamplingConfig, stream
    from gptlab.tokenizer import token_bytes

    model, tok = load_merged(args.model, args.adapter, args.device)
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


def _instructions(args: argparse.Namespace) -> None:
    from gptlab.data.instructions import load_records, split_records, write_splits
    from gptlab.io import write_json
    from gptlab.params import load_params

    params = load_params(args.params)
    p = params.instructions
    files = sorted(Path(args.raw).glob(p.file_glob))
    if not files:
        raise GptlabError(f"{args.raw}: no file matches instructions.file_glob={p.file_glob!r}; run `dvc repro download` or fix the glob")
    records = [r for f in files for r in load_records(f)]
    if p.max_records is not None:
        records = records[: p.max_records]
    splits = split_records(records, (p.train_fraction, p.val_fraction, p.test_fraction), params.seed)
    write_splits(splits, args.out)
    counts = {k: len(v) for k, v in splits.items()}
    if args.metrics:
        write_json(args.metrics, {"records": len(records), **counts, "files": [f.name for f in files]})
    print(f"instructions: {len(records)} records -> " + ", ".join(f"{k} {v}" for k, v in counts.items()) + f" in {args.out}")


def _fetch_checkpoint(args: argparse.Namespace) -> None:
    from gptlab.convert.download_checkpoint import download_checkpoint
    from gptlab.params import load_params

    params = load_params(args.params)
    s = download_checkpoint(params.convert, params.download, args.out)
    print(f"download_checkpoint: {params.convert.source}: {len(s['files'])} files, {sum(f['bytes'] for f in s['files'].values()):,} bytes -> {args.out}")


def _convert(args: argparse.Namespace) -> None:
    if args.model:  # one model to another format
        from gptlab.checkpoint import save_model

        if not args.to or not args.out:
            raise GptlabError("convert --model DIR needs --to {gptlab,hf,openai-tf} and --out DIR")
        from gptlab.lora import load_merged

        model, _ = load_merged(args.model, args.adapter)
        if args.to == "hf":
            from gptlab.convert.hf import export_hf

            export_hf(model, args.out)
        elif args.to == "openai-tf":
            from gptlab.convert.openai_tf import export_openai_tf

            export_openai_tf(model, args.out)
        else:
            save_model(args.out, model)
        print(f"convert: {args.model} -> {args.to} {args.out} ({model.num_parameters():,} parameters)")
        return
    from gptlab.convert.base import build_base
    from gptlab.params import load_params

    params = load_params(args.params)
    m = build_base(params.convert, args.checkpoint, args.pretrained, args.out or "models/base", args.metrics)
    print(f"convert: {m['source']} -> {args.out or 'models/base'}: {m['parameters']:,} parameters, {m['seconds']} s, peak {m['peak_memory_mib']} MiB")


def _finetune(args: argparse.Namespace) -> None:
    from gptlab.params import load_params
    from gptlab.train.finetune import finetune, publish_finetuned

    params = load_params(args.params)
    p = _loop_params(params.finetune, args.max_steps)
    result = finetune(args.base, args.splits, p, params.seed, live_dir=args.metrics_dir)
    if int(os.environ.get("RANK", "0")) == 0:
        publish_finetuned(result, args.out)
        s = result.train.summary
        print(f"finetune: {s['method']}, {s['steps']} steps, val loss {s['base_val_loss']} -> {s['val_loss']} -> {args.out}")


def _respond(args: argparse.Namespace) -> None:
    from gptlab.data.instructions import load_records
    from gptlab.generate import respond, sampling_config
    from gptlab.io import write_json
    from gptlab.params import load_params
    from gptlab.train.runtime import Distributed, pick_device

    params = load_params(args.params)
    device = pick_device(params.generate.device, Distributed())
    from gptlab.lora import load_merged

    model, tok = load_merged(args.model, args.adapter, str(device))
    records = load_records(args.test)
    out = respond(model, tok, records, sampling_config(params.generate, params.seed), params.generate.batch_size, params.finetune.prompt_style)
    write_json(args.out, out)
    empty = sum(1 for r in out if not r["response"])
    print(f"generate: {len(out)} responses ({empty} empty) -> {args.out}")


def _score(args: argparse.Namespace) -> None:
    from gptlab.params import load_params
    from gptlab.score.report import score_responses

    params = load_params(args.params)
    engines = {"gptlab": (args.responses, args.model)}
    if params.litgpt.enabled:
        engines["litgpt"] = (args.litgpt_responses, None)
    m = score_responses(engines, params.score, args.out, args.metrics, params.finetune.prompt_style)
    for engine in engines:
        s = m[engine]
        judge = f", judge {s['judge_score']} ({s['judge_scored']} scored, {s['judge_unscored']} unscored)" if "judge_score" in s else ""
        loss = f", loss {s['loss']:.4f}" if s.get("loss") is not None else ""
        print(f"score: {engine}: {s['records']} records, F1 {s['token_f1']:.3f}, ROUGE-L {s['rouge_l_f1']:.3f}{loss}{judge}")


def _litgpt(args: argparse.Namespace) -> None:
    from gptlab.litgpt.track import run_litgpt_track
    from gptlab.params import load_params

    params = load_params(args.params)
    s = run_litgpt_track(params.litgpt, params.download, args.splits, args.models, args.responses, params.seed)
    if args.metrics:
        from gptlab.io import write_json

        write_json(args.metrics, s)
    if not s["enabled"]:
        print(f"litgpt: off (litgpt.enabled: false); wrote an empty {args.responses}")
    else:
        print(f"litgpt: {s['responses']} responses -> {args.responses} (fine-tune {s['finetune_seconds']} s)")


def _serve(args: argparse.Namespace) -> None:
    from gptlab.serve import serve

    serve(args.model, args.adapter, args.host, args.port, args.name, threads=args.threads)


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
    p.add_argument("--adapter", default=None, help="a LoRA adapter folder (finetune's models/finetuned/adapter) merged into --model")
    p.set_defaults(fn=_generate)

    p = sub.add_parser("instructions", help="split the Alpaca-format records into train/val/test JSON")
    p.add_argument("--params", default="params.yaml")
    p.add_argument("--raw", default="data/raw/instructions")
    p.add_argument("--out", default="data/instructions")
    p.add_argument("--metrics", default="metrics/instructions.json")
    p.set_defaults(fn=_instructions)

    p = sub.add_parser("download-checkpoint", help="fetch the files of convert.source (OpenAI GPT-2, a Hugging Face folder)")
    p.add_argument("--params", default="params.yaml")
    p.add_argument("--out", default="data/checkpoint")
    p.set_defaults(fn=_fetch_checkpoint)

    p = sub.add_parser(
        "convert",
        help="build models/base from convert.source, or convert one model: --model DIR --to {gptlab,hf,openai-tf} --out DIR",
    )
    p.add_argument("--params", default="params.yaml")
    p.add_argument("--checkpoint", default="data/checkpoint", help="fetched source files (stage form)")
    p.add_argument("--pretrained", default="models/pretrained", help="our pretrained model (stage form)")
    p.add_argument("--metrics", default="metrics/convert.json")
    p.add_argument("--model", default=None, help="a gptlab, Hugging Face or OpenAI TensorFlow GPT-2 folder to convert")
    p.add_argument("--adapter", default=None, help="a LoRA adapter merged into --model first")
    p.add_argument("--to", choices=["gptlab", "hf", "openai-tf"], default=None)
    p.add_argument("--out", default=None)
    p.set_defaults(fn=_convert)

    p = sub.add_parser("finetune", help="instruction fine-tuning (LoRA or full) on the instruction splits")
    p.add_argument("--params", default="params.yaml")
    p.add_argument("--base", default="models/base")
    p.add_argument("--splits", default="data/instructions")
    p.add_argument("--out", default="models/finetuned")
    p.add_argument("--metrics-dir", default="metrics/finetune")
    p.add_argument("--max-steps", type=int, default=None, help="override finetune.max_steps")
    p.set_defaults(fn=_finetune)

    p = sub.add_parser("respond", help="answer every instruction of a split with a model (the generate stage)")
    p.add_argument("--params", default="params.yaml")
    p.add_argument("--model", default="models/finetuned")
    p.add_argument("--adapter", default=None)
    p.add_argument("--test", default="data/instructions/test.json")
    p.add_argument("--out", default="data/responses.json")
    p.set_defaults(fn=_respond)

    p = sub.add_parser("score", help="score responses: offline metrics and an optional LLM judge (params score)")
    p.add_argument("--params", default="params.yaml")
    p.add_argument("--responses", default="data/responses.json")
    p.add_argument("--litgpt-responses", default="data/responses_litgpt.json")
    p.add_argument("--model", default="models/finetuned", help="gptlab model for the reference-output loss")
    p.add_argument("--out", default="data/scores.csv")
    p.add_argument("--metrics", default="metrics/score.json")
    p.set_defaults(fn=_score)

    p = sub.add_parser("litgpt", help="the litgpt track: SmolLM2 from GGUF, litgpt finetune_lora, responses (params litgpt)")
    p.add_argument("--params", default="params.yaml")
    p.add_argument("--splits", default="data/instructions")
    p.add_argument("--models", default="models/litgpt")
    p.add_argument("--responses", default="data/responses_litgpt.json")
    p.add_argument("--metrics", default="metrics/litgpt.json")
    p.set_defaults(fn=_litgpt)

    p = sub.add_parser("serve", help="serve a model over Ollama- and OpenAI-compatible HTTP APIs")
    p.add_argument("--model", required=True, help="a gptlab (or Hugging Face GPT-2) model folder")
    p.add_argument("--adapter", default=None, help="a LoRA adapter folder merged into --model")
    p.add_argument("--host", default="127.0.0.1", help="bind address (loopback by default; there is no authentication)")
    p.add_argument("--port", type=int, default=11434)
    p.add_argument("--name", default=None, help="model name clients ask for (default: the folder name)")
    p.add_argument("--threads", type=int, default=None, help="torch threads (1 is fastest for small models)")
    p.set_defaults(fn=_serve)

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
