"""A run's checkpoints: ``latest/`` (the resumable training state, plain or sharded), ``best/``
(the weights of the lowest val loss), recovery of a folder a killed writer left half-renamed, and
retention of old run folders."""

from __future__ import annotations

from gptlab.checkpoint import read_config, save_model
from gptlab.config import GPTConfig
from gptlab.errors import GptlabError
from gptlab.io import fault_point, recover_dir
from gptlab.model import GPT
from gptlab.params import LoopParams
from gptlab.train.parallel import Parallel
from gptlab.train.retention import clean_checkpoints, mark_used
from gptlab.train.run import LoopRun
from gptlab.train.runtime import Distributed
from gptlab.train.state import LoopState


def config_differences(a: GPTConfig, b: GPTConfig) -> list[str]:
    """Return ``field: a -> b`` for each differing field."""
    return [f"{f}: {getattr(a, f)} -> {getattr(b, f)}" for f in dict.fromkeys((*a.to_dict(), "vocab_pad")) if getattr(a, f) != getattr(b, f)]


class Checkpointer:
    """Reads and writes ``run.run_dir/{latest,best}`` for one run; :attr:`saved_step` is the step
    ``latest/`` holds (None before the first save of a fresh run).

    A run that freezes part of the model (LoRA: :attr:`lean`) writes only the trained tensors
    (``trainable.safetensors``: the adapter, tens of MB for SmolLM2) beside the optimizer state,
    with the base's hash (``run.extra``'s ``base_sha256``) in ``config.json``; ``best/`` holds the
    adapter alone. Resuming loads them into the model the run built from its base."""

    def __init__(self, run: LoopRun, p: LoopParams, par: Parallel, ddp: Distributed, model: GPT, optimizer):
        self.run, self.p, self.par, self.ddp, self.model, self.optimizer = run, p, par, ddp, model, optimizer
        self.latest, self.best = run.run_dir / "latest", run.run_dir / "best"
        self.saved_step: int | None = None
        self.lean = not par.sharded and any(not q.requires_grad for q in model.parameters())

    def prepare(self) -> None:
        """Rank 0: finish or undo a killed writer's renames, mark the run folder used and remove
        the run folders beyond ``keep_runs`` (printing which)."""
        if not self.ddp.main:
            return
        recover_dir(self.latest)
        recover_dir(self.best)
        mark_used(self.run.run_dir)
        removed = clean_checkpoints(self.run.run_dir.parent, self.p.keep_runs, self.run.run_dir)
        if removed:
            print(
                f"{self.run.name}: removed {len(removed)} old run folder(s) from {self.run.run_dir.parent} (keep_runs={self.p.keep_runs}): {', '.join(r.name for r in removed)}"
            )

    def resume(self) -> LoopState | None:
        """With ``resume`` on and a ``latest/`` present: restore the weights, optimizer, RNG states
        and batch source, and return the loop state; else None. A checkpoint of another model is refused."""
        if not (self.p.resume and (self.latest / "state.json").exists()):
            return None
        config = self.model.config
        saved_cfg = GPTConfig.from_dict(read_config(self.latest)["model"])
        if saved_cfg != config:
            raise GptlabError(
                f"{self.latest}: the checkpoint's model differs from params.yaml ({'; '.join(config_differences(saved_cfg, config))}); remove it or restore the params"
            )
        self._check_base(read_config(self.latest).get(self.run.name) or {})
        saved = self.par.load(self.latest, self.model, self.optimizer)
        state = LoopState.from_json(saved)
        self.run.source.restore(saved["data_rng"])
        self.saved_step = state.step
        if self.ddp.main:
            print(f"{self.run.name}: resuming run {self.run.run_id} at step {state.step}/{self.p.max_steps} from {self.latest}")
        return state

    def save(self, state: LoopState, pending: bool) -> None:
        """Write ``latest/`` at ``state.step`` (rank 0; every rank under FSDP); ``pending``: that
        step's evaluation is still to be done (it is redone on resume)."""
        extra = {self.run.name: {"step": state.step, **self.run.extra}}
        state_json = state.to_json(self.run.run_id, self.run.source.state(), pending)
        self.par.save(self.latest, self.model, self.optimizer, self.run.tokenizer_spec, extra, state_json, trainable_only=self.lean)
        self.saved_step = state.step
        fault_point("after_save_latest")

    def save_best(self, model: GPT, step: int, val_loss: float) -> None:
        """Write ``best/``: ``model``'s weights at ``step`` (a :attr:`lean` run: its trained tensors) with its val loss (rank 0)."""
        extra = {self.run.name: {"step": step, "val_loss": val_loss, **self.run.extra}}
        save_model(self.best, model, self.run.tokenizer_spec, extra, trainable_only=self.lean)

    def _check_base(self, saved: dict) -> None:
        """GptlabError when ``latest/`` (its ``config.json`` entry ``saved``) was trained on another base than this run's."""
        want, got = self.run.extra.get("base_sha256"), saved.get("base_sha256")
        if want is not None and got is not None and want != got:
            raise GptlabError(
                f"{self.latest}: the checkpoint was trained on base {got[:16]}..., this run's base is {want[:16]}...; remove it or restore the base"
            )
