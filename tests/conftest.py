"""Fixtures shared by the tests of several packages; each folder's conftest.py holds the fixtures local to its package."""

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


@pytest.fixture(scope="module")
def one_torch_thread():
    """One intra-op thread for a module: tiny models are ~25x faster so on a shared 2-core machine."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
