import json
import shutil
import subprocess
import sys
from pathlib import Path

GPTLAB = str(Path(sys.executable).parent / "gptlab")
ROOT = Path(__file__).resolve().parents[1]


def project(folder: Path) -> Path:
    """``folder`` with the project's stage files, as a clone has them."""
    shutil.copytree(ROOT / "stages", folder / "stages", ignore=shutil.ignore_patterns("__pycache__"))
    return folder


def run(*args, cwd=None):
    return subprocess.run([GPTLAB, *args], capture_output=True, text=True, cwd=cwd, timeout=120)


def test_encode_prints_gpt2_ids():
    r = run("encode", "Hello, world.")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout) == [15496, 11, 995, 13]


def test_bad_params_give_one_line_and_exit_2(tmp_path):
    (tmp_path / "params.yaml").write_text("download: {sources: {c: {uri: 'file:///x'}}}\ntokenize: {workers: -3}\n")
    r = run("tokenize", "--params", str(tmp_path / "params.yaml"), cwd=project(tmp_path))
    assert r.returncode == 2
    assert r.stderr.strip().splitlines() == [
        f"gptlab: error: {tmp_path / 'params.yaml'}: tokenize.workers=-3 is impossible: 0 means one per CPU core, else >= 1"
    ]


def test_download_then_tokenize_from_the_command_line(corpus_dir, tmp_path):
    (tmp_path / "params.yaml").write_text(f"download:\n  sources:\n    corpus: {{uri: '{corpus_dir.as_uri()}/a.txt'}}\ntokenize: {{val_fraction: 0.1}}\n")
    project(tmp_path)
    r = run("download", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "download: 1 files" in r.stdout
    # one document: train and val are cut from it at a line break
    r = run("tokenize", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    metrics = json.loads((tmp_path / "metrics" / "tokenize.json").read_text())
    assert metrics["tokens"]["train"] > 5 and metrics["tokens"]["val"] > 0
    assert "1+1 documents" in r.stdout


def test_sample_streams_the_same_text_as_the_library(tmp_path):
    import torch

    from gptlab.checkpoint import save_model
    from gptlab.config import GPTConfig
    from gptlab.model import GPT
    from gptlab.sampling import SamplingConfig, generate
    from gptlab.tokenizer import gpt2

    torch.manual_seed(0)
    model = GPT(GPTConfig.preset("gpt-tiny")).eval()
    save_model(tmp_path / "m", model)
    enc = gpt2()
    expected = generate(model, [enc.encode("To be, or not")], SamplingConfig(max_new_tokens=12, temperature=0), stop_tokens=[enc.eot_token])[0]
    r = run("sample", "--model", str(tmp_path / "m"), "--prompt", "To be, or not", "--max-new-tokens", "12", "--temperature", "0")
    assert r.returncode == 0, r.stderr
    assert r.stdout == enc.decode(expected) + "\n"
    r = run("sample", "--model", str(tmp_path / "nope"), "--prompt", "x")
    assert r.returncode == 2 and "config.json: not found" in r.stderr


def test_a_stage_outside_a_project_says_where_to_run_it(tmp_path):
    r = run("pretrain", cwd=tmp_path)
    assert r.returncode == 2
    assert r.stderr.strip().splitlines() == [
        f"gptlab: error: `gptlab pretrain` runs the stage of the project in the current folder, but {tmp_path}/stages/pretrain.py is missing; cd to the project root (with dvc.yaml)"
    ]


def test_overrides_and_help_show_defaults(tmp_path):
    (tmp_path / "params.yaml").write_text("download: {sources: {c: {uri: 'file:///x'}}}\n")
    r = run("tokenize", "-S", "tokenize.workers=-3", cwd=project(tmp_path))
    assert r.returncode == 2 and "tokenize.workers=-3 is impossible" in r.stderr
    r = run("tokenize", "-S", "tokenize.nope=1", cwd=tmp_path)
    assert r.returncode == 2 and "unknown key tokenize.nope" in r.stderr
    r = run("pretrain", "--help", cwd=tmp_path)
    assert r.returncode == 0 and "(default: params.yaml)" in r.stdout and "reads   data/shards/" in r.stdout
    r = run("sample", "--help")
    assert "(default: 64)" in r.stdout and "0 = greedy (default: 0.8)" in r.stdout


def test_every_option_has_help():
    from gptlab.cli import build_parser

    parser = build_parser()
    for name, sub in parser._subparsers._group_actions[0].choices.items():
        for action in sub._actions:
            if action.option_strings and action.dest != "help" or action.dest in ("text",):
                assert action.help, f"gptlab {name} {action.option_strings or action.dest} has no help"


def test_outputs_honour_the_umask(tmp_path):
    import os

    from gptlab.io import atomic_dir, write_json

    old = os.umask(0o022)
    try:
        with atomic_dir(tmp_path / "out") as tmp:
            (tmp / "sub").mkdir()
            (tmp / "sub" / "a.bin").write_bytes(b"x")
            os.chmod(tmp / "sub" / "a.bin", 0o600)  # as safetensors writes it
        write_json(tmp_path / "m.json", {})
    finally:
        os.umask(old)
    assert oct((tmp_path / "out").stat().st_mode & 0o777) == "0o755"
    assert oct((tmp_path / "out" / "sub").stat().st_mode & 0o777) == "0o755"
    assert oct((tmp_path / "out" / "sub" / "a.bin").stat().st_mode & 0o777) == "0o644"
    assert oct((tmp_path / "m.json").stat().st_mode & 0o777) == "0o644"


def test_convert_a_model_to_hf_and_gguf_from_the_command_line(tmp_path):
    import torch

    from gptlab.checkpoint import save_model
    from gptlab.config import GPTConfig
    from gptlab.convert.gguf import gguf_to_gptlab
    from gptlab.convert.load_any import load_any
    from gptlab.model import GPT

    torch.manual_seed(0)
    model = GPT(GPTConfig.preset("gpt-tiny")).eval()
    save_model(tmp_path / "m", model)
    r = run("convert", "--model", str(tmp_path / "m"), "--to", "hf", "--out", str(tmp_path / "hf"))
    assert r.returncode == 0, r.stderr
    assert {"config.json", "model.safetensors", "tokenizer.json", "vocab.json", "merges.txt", "generation_config.json"} <= {
        p.name for p in (tmp_path / "hf").iterdir()
    }
    back, tok = load_any(tmp_path / "hf")
    x = torch.tensor([tok.encode("Hello, world.")])
    assert torch.allclose(back(x)[0], model(x)[0], atol=1e-5)
    r = run("convert", "--model", str(tmp_path / "m"), "--to", "gguf", "--out", str(tmp_path / "m.gguf"))
    assert r.returncode == 0, r.stderr
    gguf_to_gptlab(tmp_path / "m.gguf", tmp_path / "from-gguf")
    again, _ = load_any(tmp_path / "from-gguf")
    assert torch.equal(again(x)[0], model(x)[0])
    r = run("convert", "--model", str(tmp_path / "m"), "--to", "gguf")
    assert r.returncode == 2 and "needs --out" in r.stderr
