"""Fixtures of the ``gptlab serve`` tests: one torch thread, a tiny checkpoint and a server of it."""

import pytest

from gptlab.checkpoint import save_model
from gptlab.serve import build_app, running_server
from tests.helpers.models import tiny_gpt2


@pytest.fixture(scope="module", autouse=True)
def _one_thread(one_torch_thread):
    """Every serve test runs with one torch thread."""


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    """A folder with a tiny random GPT-2-shaped checkpoint (sharpened, so samples vary)."""
    return save_model(tmp_path_factory.mktemp("serve") / "tiny", tiny_gpt2(sharpen=True))


@pytest.fixture(scope="module")
def url(model_dir):
    """The base URL of a running server of :func:`model_dir`'s model, named ``tiny``."""
    with running_server(build_app(model_dir, model_name="tiny")) as base:
        yield base
