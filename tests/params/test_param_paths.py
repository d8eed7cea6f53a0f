"""Input globs stay inside the stage's declared input folder; an unknown key is named with the line to delete."""

import pytest

from gptlab.errors import ParamsError
from gptlab.params import InstructionsParams, TokenizeParams, load_params

MINIMAL = """seed: 7
download:
  sources:
    corpus: {uri: "file:///tmp/x.txt"}
tokenize:
  tokenizer: simple
"""


@pytest.mark.parametrize("glob", ["../secret/*.txt", "/etc/*.conf", "sub/../../x.txt", "**/../../*.txt", "C:/x/*.txt"])
def test_a_corpus_glob_that_leaves_the_corpus_folder_is_refused(tmp_path, glob):
    path = tmp_path / "params.yaml"
    path.write_text(MINIMAL + f"  corpus_glob: {glob!r}\n")
    with pytest.raises(ParamsError, match=r"params.yaml: tokenize.corpus_glob=.* leaves data/raw/corpus/, the stage's declared input: give a glob relative"):
        load_params(path)


def test_an_instructions_glob_that_leaves_its_folder_is_refused_and_inside_ones_pass():
    with pytest.raises(ParamsError, match=r"file_glob='\.\./corpus/\*\.txt' leaves data/raw/instructions/"):
        InstructionsParams(file_glob="../corpus/*.txt")
    with pytest.raises(ParamsError, match=r"file_glob is empty"):
        InstructionsParams(file_glob=" ")
    for glob in ("*.json", "sub/*.jsonl", "**/*.json", "a..b.json"):
        assert InstructionsParams(file_glob=glob).file_glob == glob
        assert TokenizeParams(corpus_glob=glob).corpus_glob == glob


def test_outputs_and_caches_may_lie_elsewhere(tmp_path):
    path = tmp_path / "params.yaml"
    path.write_text(MINIMAL.replace("download:\n", "download:\n  cache_dir: /var/cache/gptlab\n") + "pretrain:\n  checkpoint_dir: /scratch/ckpt\n")
    p = load_params(path)
    assert p.download.cache_dir == "/var/cache/gptlab" and p.pretrain.checkpoint_dir == "/scratch/ckpt"


def test_a_stray_key_left_by_dvc_names_the_line_to_delete(tmp_path):
    path = tmp_path / "params.yaml"
    # `dvc exp run -S +extra.lr=0.1` leaves a new top-level section at the end of params.yaml
    path.write_text(MINIMAL + "extra:\n  lr: 0.1\n")
    with pytest.raises(ParamsError) as e:
        load_params(path)
    msg = str(e.value)
    assert msg.startswith(f"{path}:7: unknown key extra; delete it (line 7: 'extra:' and the lines indented under it)"), msg
    assert "allowed keys: download, tokenize" in msg and "\n" not in msg


def test_a_stray_key_inside_a_section_and_in_a_flow_mapping(tmp_path):
    path = tmp_path / "params.yaml"
    path.write_text(MINIMAL.replace("  tokenizer: simple\n", "  tokenizer: simple\n  shard_size: 5\n"))
    with pytest.raises(ParamsError, match=rf"^{path}:7: unknown key tokenize.shard_size; delete it \(line 7: 'shard_size: 5'\), "):
        load_params(path)
    path.write_text(MINIMAL.replace('{uri: "file:///tmp/x.txt"}', '{uri: "file:///tmp/x.txt", size: 3}'))
    with pytest.raises(ParamsError, match=rf"^{path}:4: unknown key download.sources.corpus.size; delete it \(line 4: 'corpus: \{{uri"):
        load_params(path)


def test_an_unknown_key_from_an_override_keeps_the_plain_message(tmp_path):
    path = tmp_path / "params.yaml"
    path.write_text(MINIMAL)
    with pytest.raises(ParamsError, match=r"params.yaml \(with -S overrides\): unknown key tokenize.nope; allowed keys: "):
        load_params(path, overrides=["tokenize.nope=1"])
