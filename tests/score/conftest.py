"""Fixtures of the score tests: a tiny checkpoint to score with and to serve as a judge."""

import pytest

from gptlab.checkpoint import save_model
from tests.helpers.models import tiny_gpt2


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    """A folder with a tiny random GPT-2-shaped checkpoint."""
    return save_model(tmp_path_factory.mktemp("score") / "tiny", tiny_gpt2())
