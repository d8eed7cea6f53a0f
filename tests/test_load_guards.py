"""Loading refuses bad weight folders in one line, before anything big is built (issue 13.4, 13.10)."""

import json
import time

import pytest
import torch

from gptlab.checkpoint import save_model
from gptlab.config import GPTConfig
from gptlab.convert.hf import export_hf, load_hf_dir
from gptlab.convert.load_any import load_any
from gptlab.errors import GptlabError
from gptlab.model import GPT

TINY = GPTConfig(vocab_size=50257, context_length=16, emb_dim=16, n_heads=2, n_layers=2)


@pytest.fixture
def ours(tmp_path):
    torch.manual_seed(0)
    return save_model(tmp_path / "ours", GPT(TINY))


@pytest.fixture
def hf(tmp_path):
    torch.manual_seed(0)
    return export_hf(GPT(TINY), tmp_path / "hf")


def edit_config(folder, fn):
    path = folder / "config.json"
    data = json.loads(path.read_text())
    fn(data)
    path.write_text(json.dumps(data))


def one_line_error(fn, match):
    start = time.perf_counter()
    with pytest.raises(GptlabError, match=match) as info:
        fn()
    assert "\n" not in str(info.value)
    return time.perf_counter() - start


def test_good_folders_still_load(ours, hf):
    for folder in (ours, hf):
        model, _ = load_any(folder)
        assert model.config.n_layers == 2


def test_a_million_layers_in_a_gptlab_config_fails_fast(ours):
    edit_config(ours, lambda d: d["model"].update(n_layers=1_000_000))
    seconds = one_line_error(lambda: load_any(ours), r"ours/config.json: n_layers=1000000 but .*model.safetensors holds 2 layers")
    assert seconds < 2


def test_a_million_layers_in_an_hf_config_fails_fast(hf):
    edit_config(hf, lambda d: d.update(n_layer=1_000_000))
    for load in (lambda: load_hf_dir(hf), lambda: load_any(hf)):
        seconds = one_line_error(load, r"hf/config.json: n_layer=1000000 but .*model.safetensors holds 2 layers")
        assert seconds < 2


def test_a_shape_the_config_does_not_fit_names_the_tensor(ours, hf):
    edit_config(ours, lambda d: d["model"].update(emb_dim=4096, n_heads=1))
    one_line_error(lambda: load_any(ours), r"model.safetensors: tok_emb.weight has shape \(50257, 16\), the config needs \(50257, 4096\)")
    edit_config(hf, lambda d: d.update(n_positions=4096))
    one_line_error(lambda: load_hf_dir(hf), r"model.safetensors: pos_emb.weight has shape \(16, 16\), the config needs \(4096, 16\)")


@pytest.mark.parametrize("which", ["ours", "hf"])
def test_a_truncated_safetensors_file_is_refused_in_one_line(request, which):
    folder = request.getfixturevalue(which)
    weights = folder / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-100])
    one_line_error(lambda: load_any(folder), r"model.safetensors: is truncated or not a safetensors file \(.*\); copy, download or convert it again")


class Evil:
    def __reduce__(self):
        return (print, ("this pickle runs code",))


def test_a_pickle_with_code_is_refused_in_one_line(hf):
    state = {k: v for k, v in __import__("safetensors.torch", fromlist=["load_file"]).load_file(hf / "model.safetensors").items()}
    (hf / "model.safetensors").unlink()
    torch.save({**state, "evil": Evil()}, hf / "pytorch_model.bin")
    one_line_error(
        lambda: load_hf_dir(hf), r"pytorch_model.bin: refused: the pickle holds more than tensors \(torch.load weights_only=True: .*\); get model.safetensors"
    )
    torch.save(state, hf / "pytorch_model.bin")
    assert load_hf_dir(hf).config.n_layers == 2
