"""The ``gptlab`` command: the pipeline's stages by name, plus a few tools.

``gptlab <stage>`` (download, tokenize, pretrain, instructions, download_checkpoint, convert,
finetune, generate, generate_base, reference_loss, reference_loss_base, litgpt, score) runs ``stages/<stage>.py`` of the project in the current
folder, exactly as ``dvc repro`` does (``--params FILE``, ``-S key=value`` overrides). The
tools: ``sample`` (continue a prompt, streaming), ``chat`` (talk to a model), ``convert --model`` (one model into another
format), ``serve``, ``compare`` (experiments with their score intervals), ``encode``, ``clean``.

Bad input ends the command with one line ``gptlab: error: ...`` on stderr and exit code 2;
anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

from gptlab.chat import Conversation, chat_loop, prompt_style_of, single_turn_ids, stream_answer
from gptlab.checkpoint import save_model
from gptlab.convert.export import export_model
from gptlab.convert.model_card import CARD_KEY, export_card, finetuned_card, read_card
from gptlab.convert.openai_tf import export_openai_tf
from gptlab.errors import GptlabError
from gptlab.inference import WEIGHTS, prepare
from gptlab.litgpt.checkpoint import export_litgpt
from gptlab.lora import load_merged
from gptlab.params import load_params
from gptlab.pipeline import STAGES, HelpFormatter, load_stage, run_cli, stage_main
from gptlab.sampling import NonFiniteLogits, SamplingConfig
from gptlab.score.compare import compare
from gptlab.tokenizer import load_tokenizer
from gptlab.train.retention import clean_checkpoints

STAGE_HELP = {
    "download": "fetch the raw data sources named in params.yaml into data/raw/",
    "tokenize": "encode the corpus into train/val token shards",
    "pretrain": "pretrain a GPT on the token shards (torchrun for several processes)",
    "instructions": "split the Alpaca-format records into train/val/test JSON",
    "download_checkpoint": "fetch the files of convert.source (OpenAI GPT-2, SmolLM2, a Hugging Face folder)",
    "convert": "build models/base from convert.source; or, with --model, convert one model to another format",
    "finetune": "instruction fine-tuning (LoRA or full) of models/base",
    "generate": "answer every test instruction with the fine-tuned model (data/responses.json)",
    "generate_base": "answer every test instruction with the base model, in the fine-tuning prompt style (data/responses_base.json)",
    "reference_loss": "the fine-tuned model's loss on each test reference output (data/reference_loss.json)",
    "reference_loss_base": "the base model's loss on each test reference output (data/reference_loss_base.json)",
    "litgpt": "the litgpt track: the same split fine-tuned and answered by litgpt (params litgpt)",
    "score": "score the responses: offline metrics with bootstrap intervals, fine-tuned minus base, an optional LLM judge (params score)",
}


def _encode(args: argparse.Namespace) -> None:
    tok = load_tokenizer(args.tokenizer)
    print(json.dumps(tok.encode(args.text, allowed_special="all")))


def _sample(args: argparse.Namespace) -> None:
    model, tok = load_merged(args.model, args.adapter, args.device)
    model = prepare(model, args.weights, args.compile)
    cfg = SamplingConfig(args.max_new_tokens, args.temperature, args.top_k, args.top_p, args.seed)
    style = None if args.raw else prompt_style_of(args.model, tok)
    try:
        _, interrupted = stream_answer(model, tok, single_turn_ids(tok, args.prompt, style), cfg, use_cache=not args.no_cache)
    except NonFiniteLogits as e:
        raise GptlabError(f"{args.model}: {e}") from None
    sys.stdout.write("\n")
    if interrupted:
        raise KeyboardInterrupt


def _chat(args: argparse.Namespace) -> None:
    try:
        import readline  # noqa: F401  line editing and history for input() where the platform has it
    except ImportError:
        pass
    model, tok = load_merged(args.model, args.adapter, args.device)
    model = prepare(model, args.weights, args.compile)
    style = prompt_style_of(args.model, tok) or "alpaca"
    cfg = SamplingConfig(args.max_new_tokens, args.temperature, args.top_k, args.top_p, args.seed)
    print(f"chat: {args.model} ({style} prompts); /reset starts over, /exit or Ctrl-D leaves, Ctrl-C stops an answer", flush=True)
    chat_loop(model, tok, Conversation(tok, style, model.config.context_length, args.max_new_tokens, args.system), cfg)


def _compare(args: argparse.Namespace) -> None:
    sys.stdout.write(compare(args.experiments))


def _sampling_options(p: argparse.ArgumentParser, max_new_tokens: int, temperature: float) -> None:
    """Add the sampling options ``sample`` and ``chat`` share."""
    p.add_argument("--max-new-tokens", type=int, default=max_new_tokens, help="tokens to generate at most (per answer)")
    p.add_argument("--temperature", type=float, default=temperature, help="0 = greedy")
    p.add_argument("--top-k", type=int, default=None, help="keep the k most likely tokens (none: all)")
    p.add_argument("--top-p", type=float, default=None, help="nucleus sampling threshold (none: off)")
    p.add_argument("--seed", type=int, default=None, help="sampling seed (none: random)")
    p.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    p.add_argument("--adapter", default=None, help="a LoRA adapter folder (finetune's models/finetuned/adapter) merged into --model")
    _inference_options(p)


def _inference_options(p: argparse.ArgumentParser) -> None:
    """Add the options of :func:`gptlab.inference.prepare` that ``sample``, ``chat`` and ``serve`` share."""
    p.add_argument("--weights", choices=WEIGHTS, default="fp32", help="weights to answer with, made at load time: fp32 (as stored), bf16, int8 (weight-only)")
    p.add_argument(
        "--compile",
        choices=["auto", "true", "false"],
        default="auto",
        help="torch.compile the one-token decode step (auto: on CUDA only; the first tokens pay the compilation)",
    )


def _convert_model(args: argparse.Namespace) -> None:
    model, tok = load_merged(args.model, args.adapter)
    n = model.num_parameters()
    card = read_card(args.model, n)
    if args.adapter:  # the merged model is a LoRA fine-tune of --model
        card = finetuned_card(card, "lora")
    card = export_card(card, n, Path(str(args.model).removeprefix("hf:")).resolve().name, args.name, args.license)
    if args.to == "openai-tf":
        out = export_openai_tf(model, args.out)
    elif args.to == "gptlab":
        out = save_model(args.out, model, tok, {CARD_KEY: card})
    elif args.to == "litgpt":
        try:
            out = export_litgpt(model, tok, args.out)
        except ModuleNotFoundError as e:  # litgpt is an optional extra
            if not (e.name or "").startswith("litgpt"):
                raise
            raise GptlabError(f"--to litgpt needs litgpt ({e.name} is missing); pip install 'gptlab[litgpt]'") from None
    else:
        out = export_model(model, tok, args.out, args.to, args.dtype, card)
    print(f"convert: {args.model} -> {args.to} {out or args.out} ({model.num_parameters():,} parameters)")


def _serve(args: argparse.Namespace) -> None:
    from gptlab.serve import serve  # fastapi/uvicorn: the optional `serve` extra

    serve(
        args.model,
        args.adapter,
        args.host,
        args.port,
        args.name,
        threads=args.threads,
        allowed_hosts=args.allow_host,
        allowed_origins=args.allow_origin,
        grace_s=args.grace,
        max_batch=args.max_batch,
        weights=args.weights,
        compile=args.compile,
    )


def _clean(args: argparse.Namespace) -> None:
    params = load_params(args.params)
    for section in (params.pretrain, params.finetune):
        removed = clean_checkpoints(section.checkpoint_dir, args.keep if args.keep is not None else section.keep_runs)
        for path in removed:
            print(f"clean: removed {path}")
        print(f"clean: {section.checkpoint_dir}: {len(removed)} old run(s) removed")


def build_parser() -> argparse.ArgumentParser:
    """Return the argument parser of the ``gptlab`` command (the stages parse their own options)."""
    parser = argparse.ArgumentParser(prog="gptlab", description=__doc__, formatter_class=HelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in STAGES:
        if name != "convert":
            sub.add_parser(name, help=f"stage: {STAGE_HELP[name]} (`gptlab {name} --help` for its options)", add_help=False)

    p = sub.add_parser("convert", help=f"stage: {STAGE_HELP['convert']}", formatter_class=HelpFormatter, description=STAGE_HELP["convert"])
    p.add_argument("--model", default=None, help="tool form: a gptlab, Hugging Face or OpenAI TensorFlow folder to convert (without it: the stage)")
    p.add_argument("--adapter", default=None, help="a LoRA adapter folder merged into --model first")
    p.add_argument("--to", choices=["gptlab", "hf", "gguf", "litgpt", "openai-tf"], default="gptlab", help="the format to write")
    p.add_argument("--dtype", choices=["f32", "f16", "q8_0"], default="f32", help="tensor type of a GGUF file (--to gguf)")
    p.add_argument("--out", default=None, help="the folder to write (required with --model)")
    p.add_argument(
        "--name", default=None, help="the model's name in the export (GGUF general.name; default: the name recorded from its source, else the folder's)"
    )
    p.add_argument("--license", default=None, help="the model's license in the export (GGUF general.license; default: the one recorded from its source)")
    p.set_defaults(fn=_convert_model)

    p = sub.add_parser("sample", help="continue a prompt with a model, streaming tokens as they come", formatter_class=HelpFormatter)
    p.add_argument("--model", required=True, help="a gptlab checkpoint folder (or a Hugging Face GPT-2 folder)")
    p.add_argument(
        "--prompt", required=True, help="the text to continue; a chat model (a chat template or a fine-tuning prompt style) gets it as one user turn"
    )
    p.add_argument("--raw", action="store_true", help="give a chat model the prompt text as is (no chat template or prompt style)")
    _sampling_options(p, 64, 0.8)
    p.add_argument("--no-cache", action="store_true", help="recompute the whole prefix each step (for comparison)")
    p.set_defaults(fn=_sample)

    p = sub.add_parser("chat", help="talk to a model, multi-turn, streaming (its chat template or fine-tuning prompt style)", formatter_class=HelpFormatter)
    p.add_argument("--model", required=True, help="a model folder (gptlab, Hugging Face or OpenAI), e.g. models/finetuned")
    p.add_argument("--system", default=None, help="a system message opening the conversation")
    _sampling_options(p, 256, 0.7)
    p.set_defaults(fn=_chat)

    p = sub.add_parser("serve", help="serve a model over Ollama- and OpenAI-compatible HTTP APIs", formatter_class=HelpFormatter)
    p.add_argument("--model", required=True, help="a gptlab (or Hugging Face GPT-2) model folder")
    p.add_argument("--adapter", default=None, help="a LoRA adapter folder merged into --model")
    p.add_argument("--host", default="127.0.0.1", help="bind address (loopback by default; there is no authentication)")
    p.add_argument("--port", type=int, default=11434, help="TCP port")
    p.add_argument("--name", default=None, help="model name clients ask for (default: the folder name)")
    p.add_argument("--threads", type=int, default=None, help="torch threads (1 is fastest for small models; default: torch's)")
    p.add_argument(
        "--allow-host",
        action="append",
        default=None,
        metavar="NAME",
        help="also answer this Host name (repeatable; '*' any); default: loopback names only, or any when --host is not loopback",
    )
    p.add_argument(
        "--allow-origin",
        action="append",
        default=None,
        metavar="URL",
        help="let web pages from this origin call the server, e.g. http://localhost:3000 (repeatable; '*' any); default: none",
    )
    p.add_argument("--grace", type=float, default=10.0, metavar="S", help="on SIGTERM/Ctrl-C, seconds requests in flight may run on before they are ended")
    p.add_argument(
        "--max-batch", type=int, default=8, metavar="N", help="requests generated together at most; newcomers join at the next token, more wait in order"
    )
    _inference_options(p)
    p.set_defaults(fn=_serve)

    p = sub.add_parser(
        "compare",
        help="experiments side by side (dvc exp show): changed params, F1/ROUGE-L/loss with intervals, * where fine-tuned - base excludes 0",
        formatter_class=HelpFormatter,
    )
    p.add_argument("experiments", nargs="*", metavar="EXP", help="experiment names or baseline branches (none: the workspace and its baseline)")
    p.set_defaults(fn=_compare)

    p = sub.add_parser("encode", help="print the token ids of a text", formatter_class=HelpFormatter)
    p.add_argument("text", help="the text to encode")
    p.add_argument("--tokenizer", default="gpt2", help="'gpt2' or a tokenizer.json (e.g. data/shards/tokenizer.json)")
    p.set_defaults(fn=_encode)

    p = sub.add_parser("clean", help="remove old runs from the training checkpoint folders (keeps the newest)", formatter_class=HelpFormatter)
    p.add_argument("--params", default="params.yaml", help="the params file (pretrain/finetune checkpoint_dir and keep_runs)")
    p.add_argument("--keep", type=int, default=None, help="runs to keep per folder (default: each section's keep_runs)")
    p.set_defaults(fn=_clean)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``gptlab`` command; returns the exit code."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in STAGES and not (argv[0] == "convert" and "--model" in argv):
        name = argv[0]
        try:
            module = load_stage(name)
        except GptlabError as e:
            print(f"gptlab: error: {e}", file=sys.stderr)
            return 2
        return stage_main(module.run, module.__doc__, argv[1:], prog=f"gptlab {name}")
    args = build_parser().parse_args(argv)
    if args.command == "convert" and not args.out:
        print("gptlab: error: convert --model DIR needs --out DIR (and --to gptlab|hf|gguf|litgpt|openai-tf)", file=sys.stderr)
        return 2
    return run_cli(lambda: args.fn(args))


if __name__ == "__main__":
    sys.exit(main())
