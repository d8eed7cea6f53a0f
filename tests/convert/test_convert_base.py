"""The convert stage's library: fetch the source named by convert.source, build models/base."""

import json

import pytest
import torch

from gptlab.checkpoint import load_model, save_model
from gptlab.cli import main
from gptlab.config import GPTConfig
from gptlab.convert.base import build_base
from gptlab.convert.download_checkpoint import checkpoint_sources, download_checkpoint
from gptlab.convert.hf import export_hf
from gptlab.errors import GptlabError
from gptlab.model import GPT
from gptlab.params import ConvertParams, DownloadParams, SourceParams

TINY = GPTConfig(vocab_size=50257, context_length=32, emb_dim=16, n_heads=2, n_layers=2)


def download_params(tmp_path) -> DownloadParams:
    return DownloadParams(sources={"unused": SourceParams(uri="file:///dev/null")}, timeout_s=2, retries=0, cache_dir=str(tmp_path / "cache"))


def same_logits(a: GPT, b: GPT) -> bool:
    x = torch.randint(0, TINY.vocab_size, (2, 12))
    with torch.no_grad():
        return torch.allclose(a.eval()(x)[0], b.eval()(x)[0], atol=1e-6)


def test_pretrained_source_is_copied_as_is(tmp_path):
    torch.manual_seed(0)
    model = GPT(TINY)
    save_model(tmp_path / "pretrained", model)
    p = ConvertParams(source="pretrained")
    assert checkpoint_sources(p) == {}
    summary = download_checkpoint(p, download_params(tmp_path), tmp_path / "checkpoint")
    assert summary == {"source": "pretrained", "files": {}}
    m = build_base(p, tmp_path / "checkpoint", tmp_path / "pretrained", tmp_path / "base", tmp_path / "convert.json", tmp_path / "provenance.json")
    assert (tmp_path / "base" / "model.safetensors").read_bytes() == (tmp_path / "pretrained" / "model.safetensors").read_bytes()
    # metrics: the figure to compare; provenance: the rest (hash, which weights), nothing that differs per run
    assert json.loads((tmp_path / "convert.json").read_text()) == {"parameters": model.num_parameters()}
    provenance = json.loads((tmp_path / "provenance.json").read_text())
    assert provenance["sha256"] == m["sha256"] and len(m["sha256"]) == 64 and m["peak_memory_mib"] > 0 and provenance["weights"] == "final"
    assert "seconds" not in provenance and "peak_memory_mib" not in provenance  # a DVC out: the same bytes for the same inputs


@pytest.mark.slow
def test_gpt2_source_from_a_file_mirror(tmp_path):
    """OpenAI's seven-file layout served from a file:// mirror, the way an offline machine gets it."""
    pytest.importorskip("tensorflow")
    from gptlab.convert.openai_tf import export_openai_tf

    torch.manual_seed(1)
    model = GPT(TINY)
    export_openai_tf(model, tmp_path / "mirror" / "124M")
    p = ConvertParams(source="gpt2-124M", mirror=(tmp_path / "mirror").as_uri())
    urls = [s.uri for s in checkpoint_sources(p).values()]
    assert len(urls) == 7 and all(u.startswith((tmp_path / "mirror" / "124M").as_uri()) for u in urls)
    summary = download_checkpoint(p, download_params(tmp_path), tmp_path / "checkpoint")
    assert sorted(summary["files"]) == sorted(f.name for f in (tmp_path / "mirror" / "124M").iterdir())
    m = build_base(p, tmp_path / "checkpoint", tmp_path / "missing", tmp_path / "base")
    base, _ = load_model(tmp_path / "base")
    assert m["source"] == "gpt2-124M" and m["parameters"] == model.num_parameters()
    assert same_logits(model, base)


def test_hf_source(tmp_path):
    torch.manual_seed(2)
    model = GPT(TINY)
    export_hf(model, tmp_path / "hf")
    p = ConvertParams(source=f"hf:{tmp_path / 'hf'}")
    download_checkpoint(p, download_params(tmp_path), tmp_path / "checkpoint")
    build_base(p, tmp_path / "checkpoint", tmp_path / "missing", tmp_path / "base")
    base, _ = load_model(tmp_path / "base")
    assert same_logits(model, base)


def test_gpt2_source_without_network_fails_naming_the_url(tmp_path, capsys):
    """No route to the server: one line naming the URL, the need for the internet and the mirror."""
    p = ConvertParams(source="gpt2-355M", mirror="http://127.0.0.1:9/gpt-2/models")  # port 9: nothing listens
    with pytest.raises(GptlabError) as e:
        download_checkpoint(p, download_params(tmp_path), tmp_path / "checkpoint")
    msg = str(e.value)
    assert "\n" not in msg
    assert msg.startswith("http://127.0.0.1:9/gpt-2/models/355M/") and "needs the internet" in msg and "convert.mirror" in msg and "file://" in msg
    assert not (tmp_path / "checkpoint").exists()


def test_default_source_names_openai(tmp_path):
    urls = [s.uri for s in checkpoint_sources(ConvertParams(source="gpt2-1558M")).values()]
    assert "https://openaipublic.blob.core.windows.net/gpt-2/models/1558M/model.ckpt.index" in urls


def test_bad_sources_are_named(tmp_path):
    with pytest.raises(GptlabError, match="source='gpt2-7B' is unknown"):
        ConvertParams(source="gpt2-7B")
    with pytest.raises(GptlabError, match="config.json not found"):
        checkpoint_sources(ConvertParams(source=f"hf:{tmp_path}"))
    with pytest.raises(GptlabError, match="run `dvc repro pretrain` first"):
        build_base(ConvertParams(), tmp_path, tmp_path / "nothing", tmp_path / "base")


def test_cli_converts_one_model_to_hf_and_back(tmp_path, capsys):
    torch.manual_seed(3)
    model = GPT(TINY)
    save_model(tmp_path / "ours", model)
    assert main(["convert", "--model", str(tmp_path / "ours"), "--to", "hf", "--out", str(tmp_path / "hf")]) == 0
    assert main(["convert", "--model", str(tmp_path / "hf"), "--to", "gptlab", "--out", str(tmp_path / "back")]) == 0
    back, _ = load_model(tmp_path / "back")
    assert same_logits(model, back)
    assert main(["convert", "--model", str(tmp_path / "ours"), "--to", "hf"]) == 2
    assert "needs --out" in capsys.readouterr().err


def test_pretrained_weights_best_or_final(tmp_path, capsys):
    torch.manual_seed(0)
    final, best = GPT(TINY), GPT(TINY)
    save_model(tmp_path / "pre", final, extra={"pretrain": {"step": 30}})
    save_model(tmp_path / "pre" / "best", best, extra={"pretrain": {"step": 20, "val_loss": 1.5}})
    default = build_base(ConvertParams(), tmp_path / "ck", tmp_path / "pre", tmp_path / "base", provenance_path=tmp_path / "prov.json")
    assert (tmp_path / "base" / "model.safetensors").read_bytes() == (tmp_path / "pre" / "best" / "model.safetensors").read_bytes()
    prov = json.loads((tmp_path / "prov.json").read_text())
    assert prov["weights"] == "best" and prov["step"] == 20 and prov["val_loss"] == 1.5 and prov["sha256"] == default["sha256"]
    assert "weights" not in default  # provenance, not a metric
    assert "the best pretrained weights (step 20)" in capsys.readouterr().out
    build_base(ConvertParams(weights="final"), tmp_path / "ck", tmp_path / "pre", tmp_path / "base2")
    assert (tmp_path / "base2" / "model.safetensors").read_bytes() == (tmp_path / "pre" / "model.safetensors").read_bytes()
    # best == final: models/base is the final folder's copy, byte for byte as before
    save_model(tmp_path / "pre" / "best", final, extra={"pretrain": {"step": 30, "val_loss": 1.2}})
    build_base(ConvertParams(), tmp_path / "ck", tmp_path / "pre", tmp_path / "base3")
    for name in ("model.safetensors", "config.json"):
        assert (tmp_path / "base3" / name).read_bytes() == (tmp_path / "pre" / name).read_bytes()
    with pytest.raises(GptlabError, match="weights='last' is unknown"):
        ConvertParams(weights="last")
