"""Where a pretrain step's time goes: `torch.profiler` over training steps of the pretrain
configuration of params.yaml, on the CPU, split into

- ``embedding_head``: token/position embeddings and the LM head with its (fused) cross-entropy;
- ``attention``: qkv and output projections, scaled-dot-product attention, RoPE;
- ``mlp``: fc, activation, proj;
- ``norms_elementwise``: norms, residual adds, other elementwise operators;
- ``optimizer``: gradient clipping, AdamW step, zero_grad;
- ``data``: drawing and gathering the batch from the shards, ``.to(device)``;
- ``overhead``: what is left: Python between operators, the autograd engine's bookkeeping,
  the loss ``.item()``, and the wall time no profiled event covers ("unattributed").

Forward AND backward are attributed. Forward operators fall in the scope of the module that
ran them (forward hooks open a ``record_function`` per module; the head scope runs from the
final norm to the end of ``GPT.forward``); a backward operator goes where the forward operator
that created its autograd node was (the profiler's sequence numbers link the two), gradient
accumulation by the parameter's shape. Operators outside every scope fall back to a rule on
their input shapes (vocabulary => head, MLP width => MLP, qkv width or 4-D head layout =>
attention); the time so classified is printed. Shares are of the measured wall time of the
profiled steps, so they sum to 100% with the unattributed remainder inside ``overhead``.

The step mirrors `gptlab.train.loop.train_loop`'s (one process, the batches drawn by
`ShardBatches` as the pretrain stage draws them, lr schedule, clipping, the loss's ``.item()``),
minus the progress bar (eager: ``compile`` and ``activation_checkpointing`` are not applied).
``--steps`` steps are also timed without the profiler, to show what profiling itself costs. On a
shared machine, run it alone: with another busy process on the cores, multi-threaded operators
wait for descheduled threads and the small ones (norms, optimizer) look many times costlier.

    python bench/profile_step.py [--params params.yaml] [--shards data/shards] [--steps 5] [--threads 2]
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import time
from collections import defaultdict
from contextlib import nullcontext
from pathlib import Path

os.environ.setdefault("GPTLAB_QUIET", "1")

import torch  # noqa: E402
from torch.autograd.profiler import record_function  # noqa: E402
from torch.profiler import ProfilerActivity, profile  # noqa: E402

import gptlab.model as gptlab_model  # noqa: E402
from gptlab.data.shards import TokenShards, shards_vocab_size  # noqa: E402
from gptlab.device import pick_precision  # noqa: E402
from gptlab.io import write_json  # noqa: E402
from gptlab.model import GPT, GPTConfig  # noqa: E402
from gptlab.params import load_params  # noqa: E402
from gptlab.train.optim import lr_at, make_optimizer  # noqa: E402
from gptlab.train.pretrain import ShardBatches  # noqa: E402

CATEGORIES = ("embedding_head", "attention", "mlp", "norms_elementwise", "optimizer", "data", "overhead")
LABELS = {
    "embedding_head": "embedding + LM head (fused CE)",
    "attention": "attention (qkv, sdpa, proj, rope)",
    "mlp": "MLP (fc, act, proj)",
    "norms_elementwise": "norms + residual + elementwise",
    "optimizer": "optimizer (clip, AdamW, zero_grad)",
    "data": "data (draw, gather, .to)",
    "overhead": "other/overhead (python, autograd)",
}
SCOPE = "gptlab::"  # module scopes: gptlab::<category>
DATA, FWD_BWD, OPTIM, LOOP, STEP = "phase::data", "phase::forward_backward", "phase::optimizer", "phase::loop", "phase::step"
PHASE_CATEGORY = {DATA: "data", OPTIM: "optimizer", LOOP: "overhead", STEP: "overhead"}
BACKWARD_NODE = "autograd::engine::evaluate_function: "
ACCUMULATE_GRAD = "torch::autograd::AccumulateGrad"


def module_category(name: str) -> str:
    """The category of the operators a module (by its name in ``GPT``) runs itself."""
    last = name.rsplit(".", 1)[-1]
    if last in ("tok_emb", "pos_emb", "head"):
        return "embedding_head"
    if ".attn" in f".{name}":
        return "attention"
    if ".mlp" in f".{name}":
        return "mlp"
    return "norms_elementwise"  # norms, blocks (residual adds), the model (position add, dropout)


class ModuleScopes:
    """Forward hooks that wrap each module of interest in ``record_function(gptlab::<category>)``;
    the LM head + loss (the fused path calls no head module) gets a scope from the end of the
    final norm to the end of ``GPT.forward``. RoPE tables (computed in ``GPT.forward``) are
    scoped as attention by wrapping ``gptlab.model.rope_cos_sin``."""

    def __init__(self, model: GPT):
        self.stack: list = []
        self.handles = []
        wanted = {"tok_emb", "pos_emb", "attn", "mlp", "norm1", "norm2", "final_norm"}
        for name, module in model.named_modules():
            last = name.rsplit(".", 1)[-1]
            if last in wanted or (name.startswith("blocks.") and last.isdigit()):
                self.handles.append(module.register_forward_pre_hook(lambda m, a, cat=module_category(name): self._open(cat)))
                self.handles.append(module.register_forward_hook(lambda m, a, o: self._close()))
        # the model's own operators (position add, dropout, slicing); its scope closes the head's too
        self.handles.append(model.register_forward_pre_hook(lambda m, a: self._open("norms_elementwise", root=True)))
        self.handles.append(model.register_forward_hook(lambda m, a, o: self._close(to_root=True)))
        self.handles.append(model.final_norm.register_forward_hook(lambda m, a, o: self._open("embedding_head")))
        self._rope = gptlab_model.rope_cos_sin

        def rope_cos_sin(*args, **kwargs):
            with record_function(SCOPE + "attention"):
                return self._rope(*args, **kwargs)

        gptlab_model.rope_cos_sin = rope_cos_sin

    def _open(self, category: str, root: bool = False) -> None:
        rf = record_function(SCOPE + category)
        rf.__enter__()
        self.stack.append((root, rf))

    def _close(self, to_root: bool = False) -> None:
        while self.stack:
            root, rf = self.stack.pop()
            rf.__exit__(None, None, None)
            if root or not to_root:
                return

    def remove(self) -> None:
        for h in self.handles:
            h.remove()
        gptlab_model.rope_cos_sin = self._rope


class ShapeRules:
    """Fallback classification of an operator by its name and input shapes."""

    def __init__(self, model: GPT):
        c: GPTConfig = model.config
        self.vocab, self.hidden = c.vocab_size, c.hidden_dim
        self.mlp_widths = {c.hidden_dim, 2 * c.hidden_dim if c.mlp == "swiglu" else c.hidden_dim}
        self.qkv_width = (c.n_heads + 2 * c.kv_heads) * c.head_dim
        self.emb_dim = c.emb_dim
        seen, by_shape = set(), defaultdict(set)
        for name, q in model.named_parameters(remove_duplicate=False):
            if id(q) in seen:
                continue
            seen.add(id(q))
            by_shape[tuple(q.shape)].add(module_category(name.rsplit(".", 1)[0]))
        # a shape shared by parameters of two categories (e.g. (d,): norms and biases) is ambiguous
        self.param = {shape: cats.pop() if len(cats) == 1 else "norms_elementwise" for shape, cats in by_shape.items()}

    def op(self, name: str, shapes: list) -> str:
        if "scaled_dot_product" in name or "flash_attention" in name or "attention" in name:
            return "attention"
        dims = {d for s in shapes if isinstance(s, (list, tuple)) for d in s if isinstance(d, int)}
        if self.vocab in dims and self.vocab != self.emb_dim:
            return "embedding_head"
        if dims & self.mlp_widths and self.hidden != self.emb_dim:
            return "mlp"
        if self.qkv_width in dims and self.qkv_width != self.emb_dim:
            return "attention"
        if any(isinstance(s, (list, tuple)) and len(s) == 4 for s in shapes):
            return "attention"  # (batch, heads, seq, head_dim)
        return "norms_elementwise"

    def grad(self, shapes: list) -> str:
        shape = tuple(shapes[0]) if shapes and isinstance(shapes[0], (list, tuple)) else ()
        return self.param.get(shape, "norms_elementwise")


@dataclasses.dataclass
class Attribution:
    """Self CPU time (µs) per category, with its provenance."""

    per_category: dict = dataclasses.field(default_factory=lambda: dict.fromkeys(CATEGORIES, 0.0))
    by_shape_rule: float = 0.0  # operators classified by the fallback rule
    overhead_parts: dict = dataclasses.field(default_factory=lambda: defaultdict(float))
    ops: dict = dataclasses.field(default_factory=lambda: defaultdict(float))  # (category, name) -> µs

    @property
    def total(self) -> float:
        return sum(self.per_category.values())


def attribute(events, rules: ShapeRules) -> Attribution:
    """Classify every profiled event's self CPU time (see the module docstring)."""
    out = Attribution()
    seq_category: dict[int, str] = {}  # forward autograd sequence number -> its module's category

    def visit(e, phase: str | None, module: str | None, backward: str | None, in_backward: bool) -> None:
        name = e.name
        if name in PHASE_CATEGORY or name == FWD_BWD:
            phase = name
        elif name.startswith(SCOPE):
            module = name[len(SCOPE) :]
        elif name.startswith(BACKWARD_NODE):
            in_backward = True
            backward = seq_category.get(e.sequence_nr)
        elif name == ACCUMULATE_GRAD:
            in_backward = True
            backward = rules.grad(e.input_shapes)
        if phase == FWD_BWD and not in_backward and module and e.sequence_nr >= 0:
            seq_category[e.sequence_nr] = module
        us = e.self_cpu_time_total
        if phase in PHASE_CATEGORY:
            cat = PHASE_CATEGORY[phase]
            if cat == "overhead":
                out.overhead_parts["loop (lr, loss .item())" if phase == LOOP else "step python"] += us
        elif phase == FWD_BWD and name.startswith("aten::"):
            cat = module if module and not in_backward else backward
            if cat is None:
                cat = rules.op(name, e.input_shapes)
                out.by_shape_rule += us
        else:
            cat = "overhead"
            out.overhead_parts["autograd engine + python in forward/backward" if phase == FWD_BWD else "outside the phases"] += us
        out.per_category[cat] += us
        out.ops[cat, name] += us
        for child in sorted(e.cpu_children, key=lambda c: c.time_range.start):
            visit(child, phase, module, backward, in_backward)

    roots = sorted((e for e in events if e.cpu_parent is None), key=lambda e: e.time_range.start)
    for root in roots:
        visit(root, None, None, None, False)
    return out


class Trainer:
    """The pretrain stage's model, optimizer and batches, and one training step of the loop."""

    def __init__(self, params_path: str, shards: str):
        params = load_params(params_path)
        self.config = params.model.to_config(tokenizer_vocab=shards_vocab_size(shards))
        self.p = params.pretrain
        self.device = torch.device("cpu")
        torch.manual_seed(params.seed)
        self.model = GPT(self.config).to(self.device).train()
        self.optimizer = make_optimizer(self.model, self.p, self.device)
        ctx = self.config.context_length
        self.source = ShardBatches(TokenShards.from_folder(shards, "train"), self.p.batch_size, ctx, self.p.tokens_per_step // ctx, params.seed)
        self.accum = self.p.tokens_per_step // (self.p.batch_size * ctx)
        if self.accum < 1 or self.p.tokens_per_step % (self.p.batch_size * ctx):
            raise SystemExit(f"pretrain.tokens_per_step={self.p.tokens_per_step} is not a multiple of batch_size x context_length")
        amp = pick_precision(self.p.precision, self.device)
        self.autocast = torch.autocast("cpu", dtype=amp) if amp else nullcontext()
        self.precision = str(amp or torch.float32).removeprefix("torch.")
        self.step_index = 0

    def step(self) -> float:
        """One optimizer step as `train_loop` takes it (one process, no grad scaler); returns the loss."""
        model, opt, accum, device = self.model, self.optimizer, self.accum, self.device
        with record_function(LOOP):
            lr = lr_at(self.step_index, self.p)
            for group in opt.param_groups:
                group["lr"] = lr
            loss_sum = torch.zeros((), device=device)
        batches = self.source.step_batches(accum, 0, 1)
        for _ in range(accum):
            with record_function(DATA):
                x, y = next(batches)
                x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            with record_function(FWD_BWD):
                with self.autocast:
                    _, loss = model(x, y)
                    scaled = loss / accum
                scaled.backward()
                loss_sum += loss.detach()
        with record_function(OPTIM):
            if self.p.grad_clip > 0:
                torch.nn.utils.clip_grad_norm_([q for q in model.parameters() if q.requires_grad], self.p.grad_clip)
        with record_function(LOOP):
            step_loss = (loss_sum / accum).item()
        with record_function(OPTIM):
            opt.step()
            opt.zero_grad(set_to_none=True)
        self.step_index += 1
        return step_loss


def run_steps(trainer: Trainer, steps: int) -> list[float]:
    """Wall seconds of each of ``steps`` steps, each inside a ``phase::step`` scope."""
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        with record_function(STEP):
            trainer.step()
        times.append(time.perf_counter() - start)
    return times


def profile_steps(params_path: str, shards: str, steps: int, warmup: int) -> dict:
    """Warm up, time ``steps`` steps without then with the profiler; return the figures."""
    trainer = Trainer(params_path, shards)
    run_steps(trainer, warmup)
    plain = run_steps(trainer, steps)
    scopes = ModuleScopes(trainer.model)
    try:
        with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
            walls = run_steps(trainer, steps)
    finally:
        scopes.remove()
    att = attribute(prof.events(), ShapeRules(trainer.model))
    wall_us = sum(walls) * 1e6
    remainder = wall_us - att.total
    per_step = {cat: us / steps / 1e3 for cat, us in att.per_category.items()}
    per_step["overhead"] += remainder / steps / 1e3
    tokens = trainer.p.tokens_per_step
    c = trainer.config
    top = sorted(att.ops.items(), key=lambda kv: -kv[1])[:12]
    return {
        "config": f"{c.n_layers} layers x {c.emb_dim} wide, {c.n_heads} heads, context {c.context_length}, vocab {c.vocab_size}, {c.norm}/{c.positions}/{c.mlp}",
        "batch": f"{trainer.p.batch_size} x {c.context_length}, accumulation {trainer.accum}, {tokens} tokens/step, {trainer.precision}",
        "threads": torch.get_num_threads(),
        "steps": steps,
        "ms_per_step": round(sum(walls) / steps * 1e3, 2),
        "ms_per_step_unprofiled": round(sum(plain) / steps * 1e3, 2),
        "tokens_per_s": round(tokens * steps / sum(walls), 1),
        "tokens_per_s_unprofiled": round(tokens * steps / sum(plain), 1),
        "ms": {cat: round(v, 3) for cat, v in per_step.items()},
        "share_pct": {cat: round(100 * v * steps * 1e3 / wall_us, 2) for cat, v in per_step.items()},
        "unattributed_ms_per_step": round(remainder / steps / 1e3, 3),
        "unattributed_pct": round(100 * remainder / wall_us, 2),
        "shape_rule_pct": round(100 * att.by_shape_rule / wall_us, 2),
        "overhead_parts_ms": {k: round(v / steps / 1e3, 3) for k, v in sorted(att.overhead_parts.items())},
        "top_ops": [{"category": cat, "op": name, "ms_per_step": round(us / steps / 1e3, 3), "pct": round(100 * us / wall_us, 2)} for (cat, name), us in top],
    }


def print_report(r: dict) -> None:
    print(f"# {r['config']}; batch {r['batch']}; {r['threads']} threads; {r['steps']} profiled steps")
    print(f"{'where':<38} {'ms/step':>9} {'share':>7}")
    for cat in CATEGORIES:
        print(f"{LABELS[cat]:<38} {r['ms'][cat]:>9.1f} {r['share_pct'][cat]:>6.1f}%")
    print(f"{'total (measured wall time)':<38} {r['ms_per_step']:>9.1f} {sum(r['share_pct'].values()):>6.1f}%")
    print(f"  of overhead: unattributed (no profiled event) {r['unattributed_ms_per_step']:.2f} ms/step ({r['unattributed_pct']:.2f}%)", end="")
    for part, ms in r["overhead_parts_ms"].items():
        print(f"; {part} {ms:.2f} ms", end="")
    print()
    print(f"  classified by the shape rule (no module/backward link): {r['shape_rule_pct']:.2f}% of the step")
    print("top operators (self time):")
    for op in r["top_ops"]:
        print(f"  {op['op']:<52} {op['category']:<18} {op['ms_per_step']:>8.2f} ms {op['pct']:>6.2f}%")
    print(f"ms_per_step: {r['ms_per_step']} (unprofiled {r['ms_per_step_unprofiled']})")
    print(f"tokens_per_s: {r['tokens_per_s']} (unprofiled {r['tokens_per_s_unprofiled']})")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--shards", default="data/shards")
    ap.add_argument("--steps", type=int, default=5, help="profiled steps (and as many timed without the profiler)")
    ap.add_argument("--warmup", type=int, default=3, help="steps before any timing")
    ap.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    ap.add_argument("--json", default="metrics/bench_profile_step.json")
    args = ap.parse_args(argv)
    if not (Path(args.shards) / "meta.json").exists():
        print(f"{args.shards}: no shards; run `dvc repro tokenize` first", file=sys.stderr)
        return 2
    if args.threads:
        torch.set_num_threads(args.threads)
    report = profile_steps(args.params, args.shards, max(1, args.steps), max(0, args.warmup))
    print_report(report)
    if args.json:
        write_json(args.json, report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
