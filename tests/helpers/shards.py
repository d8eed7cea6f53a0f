"""Tiny word-level token shards for training tests."""

from gptlab.data.tokenize import tokenize_corpus
from gptlab.params import TokenizeParams

PLAY_LINES = [
    "ROMEO: But soft, what light through yonder window breaks?",
    "JULIET: O Romeo, Romeo, wherefore art thou Romeo?",
    "HAMLET: To be, or not to be, that is the question.",
    "MACBETH: Tomorrow, and tomorrow, and tomorrow, creeps in this petty pace.",
]


def word_shards(root, docs: int, lines: int = len(PLAY_LINES)):
    """Word-level shards (vocabulary of ~40) of ``docs`` repetitive documents built from the first
    ``lines`` of :data:`PLAY_LINES`, in ``root/shards``; return that folder."""
    corpus = root / "corpus"
    corpus.mkdir()
    for i in range(docs):
        (corpus / f"doc{i}.txt").write_text("\n".join(PLAY_LINES[(i + j) % lines] for j in range(60)) + "\n")
    tokenize_corpus(TokenizeParams(tokenizer="simple", val_fraction=0.2, workers=1), corpus, root / "shards", seed=0)
    return root / "shards"
