"""Fixtures of the training tests: the word-level shards they train on."""

import pytest

from tests.helpers.shards import word_shards


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    """Word-level shards of a small repetitive corpus (vocabulary of ~40), built once per module."""
    return word_shards(tmp_path_factory.mktemp("train"), docs=6)
