"""OpenAI's TensorFlow GPT-2 layout: read against transformers' GPT-2, refuse bad checkpoints, round trip.

The reference checkpoint is written here, independently of gptlab's exporter, from the tensors
of a random ``transformers.GPT2LMHeadModel`` with TensorFlow's v1 ``Saver`` under OpenAI's
variable names (HF's Conv1D weight (in, out) is OpenAI's ``w[0]``).
"""

import json
import sys

import numpy as np
import pytest
import torch

from gptlab.config import GPTConfig
from gptlab.convert.openai_tf import (
    OPENAI_DATA_MB,
    OPENAI_FILES,
    OPENAI_SIZES,
    config_from_hparams,
    export_openai_tf,
    load_openai_tf,
    openai_name_map,
    openai_urls,
)
from gptlab.errors import GptlabError
from gptlab.model import GPT
from tests.helpers.models import TINY_GPT2

transformers = pytest.importorskip("transformers")

HP = {"n_vocab": 257, "n_ctx": 64, "n_embd": 32, "n_head": 4, "n_layer": 2}


@pytest.fixture(scope="module")
def tf():
    """TensorFlow, imported once for the module (a few seconds)."""
    return pytest.importorskip("tensorflow")


@pytest.fixture(scope="module")
def hf_model():
    torch.manual_seed(0)
    cfg = transformers.GPT2Config(
        vocab_size=HP["n_vocab"], n_positions=HP["n_ctx"], n_embd=HP["n_embd"], n_layer=HP["n_layer"], n_head=HP["n_head"],
        resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, initializer_range=0.2, bos_token_id=0, eos_token_id=0,
    )  # fmt: skip
    model = transformers.GPT2LMHeadModel(cfg).eval()
    with torch.no_grad():  # random (not zero/one) biases and norms, so a swapped g/b or w/b would show
        for name, p in model.named_parameters():
            if name.endswith(".bias") or ".ln_" in name:
                p.add_(torch.randn_like(p) * 0.1)
    return model


def openai_variables(hf) -> dict[str, np.ndarray]:
    """OpenAI's variables from a transformers GPT-2, by the published naming (not gptlab's map)."""
    sd = {k.removeprefix("transformer."): v.detach().numpy() for k, v in hf.state_dict().items()}
    out = {"model/wte": sd["wte.weight"], "model/wpe": sd["wpe.weight"], "model/ln_f/g": sd["ln_f.weight"], "model/ln_f/b": sd["ln_f.bias"]}
    for i in range(hf.config.n_layer):
        for ln in ("ln_1", "ln_2"):
            out[f"model/h{i}/{ln}/g"] = sd[f"h.{i}.{ln}.weight"]
            out[f"model/h{i}/{ln}/b"] = sd[f"h.{i}.{ln}.bias"]
        for layer in ("attn/c_attn", "attn/c_proj", "mlp/c_fc", "mlp/c_proj"):
            hf_name = f"h.{i}.{layer.replace('/', '.')}"
            out[f"model/h{i}/{layer}/w"] = sd[f"{hf_name}.weight"][None]  # Conv1D (in, out) -> [1, in, out]
            out[f"model/h{i}/{layer}/b"] = sd[f"{hf_name}.bias"]
    return out


def write_checkpoint(tf, folder, variables: dict[str, np.ndarray], hparams: dict) -> None:
    """Write ``variables`` with TF's v1 Saver as model.ckpt.* plus hparams.json and a `checkpoint` file."""
    folder.mkdir(parents=True)
    graph = tf.Graph()
    with graph.as_default():
        tf_vars = {name: tf.compat.v1.Variable(value, name=name, use_resource=False) for name, value in variables.items()}
        saver = tf.compat.v1.train.Saver(var_list=tf_vars)
        with tf.compat.v1.Session(graph=graph) as sess:
            sess.run(tf.compat.v1.global_variables_initializer())
            saver.save(sess, str(folder / "model.ckpt"), write_state=False)
    (folder / "checkpoint").write_text('model_checkpoint_path: "model.ckpt"\nall_model_checkpoint_paths: "model.ckpt"\n')
    (folder / "hparams.json").write_text(json.dumps(hparams))


@pytest.fixture(scope="module")
def reference_dir(tf, hf_model, tmp_path_factory):
    folder = tmp_path_factory.mktemp("openai") / "ref"
    write_checkpoint(tf, folder, openai_variables(hf_model), HP)
    return folder


@pytest.mark.slow  # shares the module's TensorFlow import (5-10 s, paid by the first)
def test_logits_match_transformers(reference_dir, hf_model):
    ours = load_openai_tf(reference_dir)
    assert ours.config == config_from_hparams(HP)
    assert ours.head.weight is ours.tok_emb.weight
    assert not ours.training
    torch.manual_seed(1)
    for batch, seq in [(1, 1), (3, 17), (2, 64)]:
        idx = torch.randint(0, HP["n_vocab"], (batch, seq))
        with torch.no_grad():
            ref = hf_model(idx).logits
            got, _ = ours(idx)
        assert got.shape == ref.shape == (batch, seq, HP["n_vocab"])
        assert torch.allclose(got, ref, atol=1e-5, rtol=0), (got - ref).abs().max()


@pytest.mark.slow
def test_bookkeeping_slots_and_stale_checkpoint_file_are_handled(tf, hf_model, tmp_path):
    variables = openai_variables(hf_model)
    variables["global_step"] = np.array(7, dtype=np.int64)
    variables["model/wte/Adam"] = np.zeros_like(variables["model/wte"])
    write_checkpoint(tf, tmp_path / "ckpt", variables, HP)
    # a `checkpoint` file naming where the folder was written, not where it is: falls back to model.ckpt
    (tmp_path / "ckpt" / "checkpoint").write_text('model_checkpoint_path: "/elsewhere/model.ckpt"\n')
    ours = load_openai_tf(tmp_path / "ckpt")
    assert torch.equal(ours.tok_emb.weight, hf_model.transformer.wte.weight)


@pytest.mark.slow
def test_missing_variable_is_named(tf, hf_model, tmp_path):
    variables = openai_variables(hf_model)
    del variables["model/h1/mlp/c_fc/b"]
    write_checkpoint(tf, tmp_path / "ckpt", variables, HP)
    with pytest.raises(GptlabError, match=r"missing variables \['model/h1/mlp/c_fc/b'\]"):
        load_openai_tf(tmp_path / "ckpt")


@pytest.mark.slow
def test_wrong_shape_is_named(tf, hf_model, tmp_path):
    variables = openai_variables(hf_model)
    variables["model/h0/attn/c_attn/w"] = variables["model/h0/attn/c_attn/w"][:, :, :64]
    write_checkpoint(tf, tmp_path / "ckpt", variables, HP)
    with pytest.raises(GptlabError, match=r"variable model/h0/attn/c_attn/w has shape \[1, 32, 64\].*needs \[1, 32, 96\]"):
        load_openai_tf(tmp_path / "ckpt")


@pytest.mark.slow
def test_unknown_model_variable_is_named(tf, hf_model, tmp_path):
    variables = openai_variables(hf_model)
    variables["model/h2/ln_1/g"] = variables["model/h1/ln_1/g"]  # a third layer that hparams.json does not have
    write_checkpoint(tf, tmp_path / "ckpt", variables, HP)
    with pytest.raises(GptlabError, match=r"unknown model variables \['model/h2/ln_1/g'\]"):
        load_openai_tf(tmp_path / "ckpt")


def test_bad_hparams_are_named(tmp_path):
    with pytest.raises(GptlabError, match=r"missing keys \['n_head'\]"):
        config_from_hparams({k: v for k, v in HP.items() if k != "n_head"})
    with pytest.raises(GptlabError, match="n_heads=5 does not divide emb_dim=32"):
        config_from_hparams({**HP, "n_head": 5})
    with pytest.raises(GptlabError, match="hparams.json: not found"):
        load_openai_tf(tmp_path)


@pytest.mark.slow
def test_missing_checkpoint_files_are_named(reference_dir, tmp_path):
    (tmp_path / "hparams.json").write_text(json.dumps(HP))
    with pytest.raises(GptlabError, match=r"model.ckpt.index not found"):
        load_openai_tf(tmp_path)


def test_missing_tensorflow_says_how_to_install(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "tensorflow", None)  # `import tensorflow` now raises ImportError
    (tmp_path / "hparams.json").write_text(json.dumps(HP))
    with pytest.raises(GptlabError, match=r"pip install 'gptlab\[openai\]'.*tensorflow-cpu"):
        load_openai_tf(tmp_path)
    model = GPT(GPTConfig(context_length=16, emb_dim=16, n_heads=2, n_layers=1))
    with pytest.raises(GptlabError, match=r"needs TensorFlow"):
        export_openai_tf(model, tmp_path / "out")
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
def test_round_trip_is_bit_identical(tf, tmp_path):
    torch.manual_seed(2)
    model = GPT(TINY_GPT2)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p))
    out = export_openai_tf(model, tmp_path / "gpt2")
    assert sorted(p.name for p in out.iterdir()) == sorted(OPENAI_FILES)
    assert json.loads((out / "hparams.json").read_text()) == {"n_vocab": 50257, "n_ctx": 64, "n_embd": 32, "n_head": 4, "n_layer": 2}
    assert (out / "checkpoint").read_text().startswith('model_checkpoint_path: "model.ckpt"')
    names = dict(tf.train.list_variables(str(out / "model.ckpt")))
    assert names == {e.tf_name: e.tf_shape(model.get_parameter(e.ours).shape) for e in openai_name_map(model.config)}
    assert names["model/h0/attn/c_attn/w"] == [1, 32, 96]
    back = load_openai_tf(out)
    assert back.config == model.config
    for (name, a), (_, b) in zip(model.state_dict().items(), back.state_dict().items(), strict=True):
        assert torch.equal(a, b), name


def test_export_refuses_what_the_layout_cannot_hold(tmp_path):
    small = dict(context_length=16, emb_dim=16, n_heads=2, n_layers=1)
    for config, needle in [
        (GPTConfig(**small, tie_embeddings=False), "tie_embeddings=false"),
        (GPTConfig(**small, qkv_bias=False), "qkv_bias=false"),
        (GPTConfig(**small, vocab_size=300), "vocab_size=300"),
    ]:
        with pytest.raises(GptlabError, match=needle):
            export_openai_tf(GPT(config), tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_urls_and_download_sizes():
    urls = openai_urls("gpt2-355M")
    assert list(urls) == list(OPENAI_FILES)
    assert urls["model.ckpt.index"] == "https://openaipublic.blob.core.windows.net/gpt-2/models/355M/model.ckpt.index"
    assert openai_urls("124M")["vocab.bpe"].endswith("/124M/vocab.bpe")
    with pytest.raises(GptlabError, match="unknown GPT-2 size 'gpt2-7B'"):
        openai_urls("gpt2-7B")
    for source, size in OPENAI_SIZES.items():  # the data file is fp32 parameters, the tied head counted once
        with torch.device("meta"):
            n_params = GPT(GPTConfig.preset(source)).num_parameters()
        assert abs(n_params * 4 / 1e6 - OPENAI_DATA_MB[size]) < 1, source
