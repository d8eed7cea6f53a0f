"""Fixtures local to the data tests (download, corpus, shards, tokenize, instructions) go here; ``corpus_dir`` is shared, in tests/conftest.py."""
