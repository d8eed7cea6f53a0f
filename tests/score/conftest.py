"""Fixtures of the score tests: a tiny checkpoint to score with and to serve as a judge."""

import dataclasses

import pytest
import torch

from gptlab.checkpoint import save_model
from gptlab.model import GPT
from tests.helpers.models import TINY_GPT2


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    """A folder with a tiny random GPT-2-shaped checkpoint whose context (1,024 tokens) holds a
    judge prompt: `gptlab serve` refuses prompts longer than the context."""
    torch.manual_seed(0)
    return save_model(tmp_path_factory.mktemp("score") / "tiny", GPT(dataclasses.replace(TINY_GPT2, context_length=1024)))
