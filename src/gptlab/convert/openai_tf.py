"""OpenAI's original GPT-2 TensorFlow checkpoints, in and out.

OpenAI published GPT-2 (124M, 355M, 774M, 1558M) as seven files per size: ``checkpoint``,
``encoder.json``, ``hparams.json``, ``model.ckpt.data-00000-of-00001``, ``model.ckpt.index``,
``model.ckpt.meta`` and ``vocab.bpe``. The weights are TensorFlow v1 variables named
``model/wte``, ``model/wpe``, ``model/h{i}/{ln_1,attn/c_attn,attn/c_proj,ln_2,mlp/c_fc,mlp/c_proj}/{g,b,w}``
and ``model/ln_f/{g,b}``; linear layers are 1x1 convolutions with ``w`` of shape [1, in, out],
the transpose of ``nn.Linear``'s (out, in). One name map (:func:`openai_name_map`) serves the
reader and the writer, so the two cannot drift apart.

TensorFlow (``pip install 'gptlab[openai]'``, i.e. ``tensorflow-cpu``) is imported only inside
:func:`load_openai_tf` and :func:`export_openai_tf`.

Limits of the layout: GPT-2's head is the token embedding (``tie_embeddings: true``) and its
qkv projection has biases (``qkv_bias: true``); dropout is not stored. The layout pairs the
weights with GPT-2's BPE (``encoder.json``, ``vocab.bpe``), so :func:`export_openai_tf` writes
only models with GPT-2's 50,257-token vocabulary; other models go out with ``--to hf``.
The reader accepts any ``n_vocab`` in ``hparams.json``.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

import numpy as np
import torch

from gptlab.config import GPTConfig
from gptlab.errors import GptlabError
from gptlab.io import atomic_dir, read_json, write_json
from gptlab.model import GPT, unpadded
from gptlab.progress import progress
from gptlab.tokenizer import gpt2_bpe_dir

OPENAI_BASE_URL = "https://openaipublic.blob.core.windows.net/gpt-2/models"
OPENAI_FILES = (
    "checkpoint",
    "encoder.json",
    "hparams.json",
    "model.ckpt.data-00000-of-00001",
    "model.ckpt.index",
    "model.ckpt.meta",
    "vocab.bpe",
)
# convert.source -> the folder name under OPENAI_BASE_URL (source names are also GPTConfig presets)
OPENAI_SIZES = {"gpt2-124M": "124M", "gpt2-355M": "355M", "gpt2-774M": "774M", "gpt2-1558M": "1558M"}
# Size of model.ckpt.data-00000-of-00001 in MB (10^6 bytes): parameters x 4 bytes (fp32), wte
# counted once (tied head). E.g. 124M: 124,439,808 x 4 = 497,759,232 bytes. The other six files add
# about 2-4 MB (encoder.json 1.0 MB, vocab.bpe 0.5 MB, model.ckpt.meta 0.5-2 MB).
OPENAI_DATA_MB = {"124M": 498, "355M": 1419, "774M": 3096, "1558M": 6230}
GPT2_VOCAB_SIZE = 50257
HPARAMS_KEYS = ("n_vocab", "n_ctx", "n_embd", "n_head", "n_layer")
CHECKPOINT_PREFIX = "model.ckpt"


@dataclass(frozen=True)
class TFVar:
    """One OpenAI variable and the gptlab parameter it holds.

    ``conv``: True for a linear layer, stored by OpenAI as [1, in, out] (a 1x1 conv) where
    gptlab's ``nn.Linear`` weight is (out, in); False where both shapes are equal.
    """

    tf_name: str
    ours: str
    conv: bool = False

    def tf_shape(self, our_shape: tuple[int, ...] | torch.Size) -> list[int]:
        """Return the shape OpenAI stores for a gptlab parameter of ``our_shape``."""
        return [1, int(our_shape[1]), int(our_shape[0])] if self.conv else [int(d) for d in our_shape]

    def to_torch(self, array: np.ndarray) -> torch.Tensor:
        """Return the OpenAI ``array`` as a float32 tensor in gptlab's shape (a view where it can be)."""
        t = torch.from_numpy(np.asarray(array, dtype=np.float32))
        return t[0].t() if self.conv else t

    def to_numpy(self, tensor: torch.Tensor) -> np.ndarray:
        """Return a gptlab parameter as a contiguous float32 array in OpenAI's shape."""
        t = tensor.detach().to("cpu", torch.float32)
        return (t.t().unsqueeze(0) if self.conv else t).contiguous().numpy()


_TOP = (
    TFVar("model/wte", "tok_emb.weight"),
    TFVar("model/wpe", "pos_emb.weight"),
)
_BLOCK = (
    TFVar("ln_1/g", "norm1.weight"),
    TFVar("ln_1/b", "norm1.bias"),
    TFVar("attn/c_attn/w", "attn.qkv.weight", conv=True),
    TFVar("attn/c_attn/b", "attn.qkv.bias"),
    TFVar("attn/c_proj/w", "attn.proj.weight", conv=True),
    TFVar("attn/c_proj/b", "attn.proj.bias"),
    TFVar("ln_2/g", "norm2.weight"),
    TFVar("ln_2/b", "norm2.bias"),
    TFVar("mlp/c_fc/w", "mlp.fc.weight", conv=True),
    TFVar("mlp/c_fc/b", "mlp.fc.bias"),
    TFVar("mlp/c_proj/w", "mlp.proj.weight", conv=True),
    TFVar("mlp/c_proj/b", "mlp.proj.bias"),
)
_FINAL = (
    TFVar("model/ln_f/g", "final_norm.weight"),
    TFVar("model/ln_f/b", "final_norm.bias"),
)


def openai_name_map(config: GPTConfig) -> list[TFVar]:
    """Return every OpenAI variable of a model shaped by ``config``, in checkpoint order
    (embeddings, blocks 0..n_layers-1, final norm): 2 + 12 x n_layers + 2 entries."""
    blocks = [TFVar(f"model/h{i}/{v.tf_name}", f"blocks.{i}.{v.ours}", v.conv) for i in range(config.n_layers) for v in _BLOCK]
    return [*_TOP, *blocks, *_FINAL]


def openai_urls(size: str) -> dict[str, str]:
    """Return {file name: URL} of the seven files of OpenAI's GPT-2 ``size``
    (``"124M"`` or the source name ``"gpt2-124M"``)."""
    folder = OPENAI_SIZES.get(size, size)
    if folder not in OPENAI_SIZES.values():
        raise GptlabError(f"unknown GPT-2 size {size!r}; allowed: {', '.join([*OPENAI_SIZES, *OPENAI_SIZES.values()])}")
    return {name: f"{OPENAI_BASE_URL}/{folder}/{name}" for name in OPENAI_FILES}


def config_from_hparams(hparams: dict) -> GPTConfig:
    """Return the GPTConfig of an OpenAI ``hparams.json`` dict (n_vocab, n_ctx, n_embd, n_head,
    n_layer): qkv biases, tied head, no dropout."""
    missing = [k for k in HPARAMS_KEYS if k not in hparams]
    unknown = sorted(set(hparams) - set(HPARAMS_KEYS))
    if missing or unknown:
        raise GptlabError(f"hparams.json: missing keys {missing}, unknown keys {unknown}; OpenAI's GPT-2 hparams are exactly {', '.join(HPARAMS_KEYS)}")
    bad = [k for k in HPARAMS_KEYS if not isinstance(hparams[k], int) or isinstance(hparams[k], bool)]
    if bad:
        raise GptlabError(f"hparams.json: {', '.join(f'{k}={hparams[k]!r}' for k in bad)} must be integers")
    try:
        return GPTConfig(
            vocab_size=hparams["n_vocab"],
            context_length=hparams["n_ctx"],
            emb_dim=hparams["n_embd"],
            n_heads=hparams["n_head"],
            n_layers=hparams["n_layer"],
            drop_rate=0.0,
            qkv_bias=True,
            tie_embeddings=True,
        )
    except GptlabError as e:
        raise GptlabError(f"hparams.json: {e}") from e


def config_to_hparams(config: GPTConfig) -> dict[str, int]:
    """Return the ``hparams.json`` dict of ``config`` (the five shape keys, in OpenAI's order)."""
    return {"n_vocab": config.vocab_size, "n_ctx": config.context_length, "n_embd": config.emb_dim, "n_head": config.n_heads, "n_layer": config.n_layers}


def _import_tensorflow(purpose: str) -> ModuleType:
    """Return the ``tensorflow`` module, or raise GptlabError saying how to install it."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # keep TensorFlow's start-up chatter off the console
    try:
        import tensorflow as tf
    except ImportError as e:
        raise GptlabError(f"{purpose} needs TensorFlow, which is not installed ({e}); run `pip install 'gptlab[openai]'` (it installs tensorflow-cpu)") from e
    return tf


def _checkpoint_prefix(folder: Path, tf: ModuleType) -> str:
    """Return the checkpoint prefix in ``folder``: what its ``checkpoint`` file names, else ``model.ckpt``."""
    prefix = None
    if (folder / "checkpoint").exists():
        try:
            prefix = tf.train.latest_checkpoint(str(folder))
        except Exception:  # an unreadable `checkpoint` file: fall back to OpenAI's fixed name
            prefix = None
    if prefix is None:
        prefix = str(folder / CHECKPOINT_PREFIX)
    if not Path(prefix + ".index").exists():
        raise GptlabError(
            f"{folder}: no TensorFlow checkpoint ({Path(prefix).name}.index not found); the folder needs OpenAI's seven files: {', '.join(OPENAI_FILES)}"
        )
    return prefix


def _empty_model(config: GPTConfig) -> GPT:
    """Return a GPT of ``config`` with uninitialised CPU weights (no random-init cost)."""
    with torch.device("meta"):
        model = GPT(config)
    model = model.to_empty(device="cpu")
    if config.tie_embeddings:  # to_empty gives every parameter its own storage: tie again
        model.head.weight = model.tok_emb.weight
    return model


def _is_slot(name: str, known: set[str]) -> bool:
    """True for an optimizer slot of a known variable, e.g. ``model/wte/Adam`` (fine-tuning tools save them)."""
    parts = name.split("/")
    return any("/".join(parts[:n]) in known for n in range(1, len(parts)))


def load_openai_tf(folder: str | Path) -> GPT:
    """Return a GPT (CPU, float32, eval mode) holding OpenAI's GPT-2 TensorFlow checkpoint in ``folder``.

    Reads ``hparams.json`` for the shape, then the checkpoint one variable at a time, each copied
    into the already-allocated parameter and dropped, so peak memory stays near one model plus
    its largest tensor (``model/wte``). Every variable's shape is checked before any is read;
    missing variables and unknown ``model/`` variables fail naming them. Variables outside
    ``model/`` (``global_step``, ``beta1_power``) and optimizer slots of known variables
    (``model/wte/Adam``) are bookkeeping and ignored.
    """
    folder = Path(folder)
    hparams_path = folder / "hparams.json"
    if not hparams_path.exists():
        raise GptlabError(f"{hparams_path}: not found; OpenAI's GPT-2 folders hold {', '.join(OPENAI_FILES)}")
    hparams = read_json(hparams_path, "OpenAI's hparams.json: download it again")
    if not isinstance(hparams, dict):
        raise GptlabError(f"{hparams_path}: expected a JSON object with {', '.join(HPARAMS_KEYS)}")
    config = config_from_hparams(hparams)
    tf = _import_tensorflow(f"reading OpenAI's TensorFlow checkpoint in {folder}")
    prefix = _checkpoint_prefix(folder, tf)
    try:
        reader = tf.train.load_checkpoint(prefix)  # what tf.train.load_variable opens per call; opened once here
        shapes = reader.get_variable_to_shape_map()
    except Exception as e:
        raise GptlabError(f"{prefix}: TensorFlow cannot read this checkpoint ({type(e).__name__}: {e}); download it again") from e

    model = _empty_model(config)
    params = dict(model.named_parameters())  # the tied head is the same parameter as tok_emb: listed once
    entries = openai_name_map(config)
    if {e.ours for e in entries} != set(params):  # a programming error, not bad input
        raise AssertionError(f"openai_name_map does not cover GPT's parameters: {sorted(set(params) ^ {e.ours for e in entries})}")
    known = {e.tf_name for e in entries}
    missing = [e.tf_name for e in entries if e.tf_name not in shapes]
    if missing:
        raise GptlabError(
            f"{prefix}: missing variables {missing[:8]}{' ...' if len(missing) > 8 else ''} ({len(missing)} of {len(entries)}) "
            f"for the shape in hparams.json {config_to_hparams(config)}; the checkpoint and hparams.json do not belong together"
        )
    unknown = sorted(n for n in shapes if n.startswith("model/") and n not in known and not _is_slot(n, known))
    if unknown:
        raise GptlabError(
            f"{prefix}: unknown model variables {unknown[:8]}{' ...' if len(unknown) > 8 else ''}; "
            f"hparams.json {config_to_hparams(config)} describes a GPT-2 without them (is n_layer right?)"
        )
    for e in entries:
        expected = e.tf_shape(params[e.ours].shape)
        if list(shapes[e.tf_name]) != expected:
            raise GptlabError(f"{prefix}: variable {e.tf_name} has shape {list(shapes[e.tf_name])}, hparams.json {config_to_hparams(config)} needs {expected}")

    with torch.no_grad():
        for e in progress(entries, desc=f"convert {folder.name}", unit="tensor"):
            array = reader.get_tensor(e.tf_name)
            params[e.ours].copy_(e.to_torch(array))
            del array
    return model.eval()


def export_openai_tf(model: GPT, folder: str | Path) -> Path:
    """Write ``model`` in OpenAI's seven-file GPT-2 layout in ``folder`` (atomically); return the folder.

    ``checkpoint`` (naming ``model.ckpt``, relative), ``hparams.json``, ``model.ckpt.{data-00000-of-00001,
    index,meta}`` written by TensorFlow's v1 ``Saver`` under OpenAI's variable names, and GPT-2's
    ``encoder.json`` + ``vocab.bpe`` (from :func:`gptlab.tokenizer.gpt2_bpe_dir`). The model needs a
    tied head, qkv biases and GPT-2's 50,257-token vocabulary; anything else raises GptlabError.
    """
    model = unpadded(model)  # the true vocabulary, whatever vocab_pad trained with
    config = model.config
    folder = Path(folder)
    problems = []
    if not config.tie_embeddings:
        problems.append("tie_embeddings=false (OpenAI's layout has no separate output head)")
    if not config.qkv_bias:
        problems.append("qkv_bias=false (OpenAI's layout always has attn/c_attn/b)")
    if config.vocab_size != GPT2_VOCAB_SIZE:
        problems.append(
            f"vocab_size={config.vocab_size} (the layout ships GPT-2's BPE, encoder.json + vocab.bpe, {GPT2_VOCAB_SIZE} tokens; "
            "this model was trained with another tokenizer)"
        )
    if problems:
        raise GptlabError(f"{folder}: OpenAI's GPT-2 layout cannot hold this model: {'; '.join(problems)}; export it with --to hf instead")
    bpe_dir = gpt2_bpe_dir()
    for name in ("encoder.json", "vocab.bpe"):
        if not (bpe_dir / name).exists():
            raise GptlabError(f"{bpe_dir / name}: not found; set GPTLAB_GPT2_BPE_DIR to a folder with GPT-2's encoder.json and vocab.bpe")
    tf = _import_tensorflow(f"writing OpenAI's TensorFlow checkpoint to {folder}")

    params = dict(model.named_parameters())
    entries = openai_name_map(config)
    with atomic_dir(folder) as tmp:
        graph = tf.Graph()
        with graph.as_default():
            slots = []
            for e in entries:
                # zeros as the initial value keeps the graph (model.ckpt.meta) small; the real values are fed
                zeros = tf.zeros(e.tf_shape(params[e.ours].shape), tf.float32)
                var = tf.compat.v1.Variable(zeros, name=e.tf_name, use_resource=False)  # a v1 variable, as OpenAI's
                if var.op.name != e.tf_name:
                    raise AssertionError(f"TensorFlow renamed {e.tf_name} to {var.op.name}")
                slots.append((e, var, zeros))
            saver = tf.compat.v1.train.Saver(var_list={e.tf_name: var for e, var, _ in slots})
            with tf.compat.v1.Session(graph=graph) as sess:
                for e, var, zeros in progress(slots, desc=f"export {folder.name}", unit="tensor"):
                    sess.run(var.initializer, feed_dict={zeros: e.to_numpy(params[e.ours])})
                saver.save(sess, str(tmp / CHECKPOINT_PREFIX), write_state=False)
        # OpenAI's `checkpoint` file, with a relative path (Saver would write the temporary folder's absolute path)
        (tmp / "checkpoint").write_text(f'model_checkpoint_path: "{CHECKPOINT_PREFIX}"\nall_model_checkpoint_paths: "{CHECKPOINT_PREFIX}"\n')
        write_json(tmp / "hparams.json", config_to_hparams(config))
        for name in ("encoder.json", "vocab.bpe"):
            shutil.copyfile(bpe_dir / name, tmp / name)
    return folder
