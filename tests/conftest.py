import os

import pytest
import torch

os.environ.setdefault("GPTLAB_QUIET", "1")


@pytest.fixture
def corpus_dir(tmp_path):
    """A tiny corpus of five documents with varied whitespace and punctuation."""
    folder = tmp_path / "corpus"
    folder.mkdir()
    texts = {
        "a.txt": "First Citizen:\nBefore we proceed any further, hear me speak.\n\nAll:\nSpeak, speak.\n",
        "b.txt": "HAMLET.\nTo be, or not to be, that is the question:\n  Whether 'tis nobler in the mind to suffer\n",
        "c.txt": "It's 1603; the play's the thing -- wherein I'll catch the conscience of the king.\r\n",
        "d.txt": "Now is the winter of our discontent\nMade glorious summer by this sun of York;\n\n\n",
        "e.txt": "O Romeo, Romeo! wherefore art thou Romeo?\tDeny thy father and refuse thy name;\n",
    }
    for name, text in texts.items():
        (folder / name).write_text(text, encoding="utf-8")
    return folder


PLAY_LINES = [
    "ROMEO: But soft, what light through yonder window breaks?",
    "JULIET: O Romeo, Romeo, wherefore art thou Romeo?",
    "HAMLET: To be, or not to be, that is the question.",
    "MACBETH: Tomorrow, and tomorrow, and tomorrow, creeps in this petty pace.",
]


def word_shards(root, docs: int, lines: int = len(PLAY_LINES)):
    """Word-level shards (vocabulary of ~40) of ``docs`` repetitive documents built from the first
    ``lines`` of :data:`PLAY_LINES`, in ``root/shards``; return that folder."""
    from gptlab.data.tokenize import tokenize_corpus
    from gptlab.params import TokenizeParams

    corpus = root / "corpus"
    corpus.mkdir()
    for i in range(docs):
        (corpus / f"doc{i}.txt").write_text("\n".join(PLAY_LINES[(i + j) % lines] for j in range(60)) + "\n")
    tokenize_corpus(TokenizeParams(tokenizer="simple", val_fraction=0.2, workers=1), corpus, root / "shards", seed=0)
    return root / "shards"


@pytest.fixture(scope="module")
def one_torch_thread():
    """One intra-op thread for a module: tiny models are ~25x faster so on a shared 2-core machine."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
