"""The tiny GPT-2-shaped model (GPT-2's 50257-token vocabulary) that the serve, score and convert tests share."""

import torch

from gptlab.config import GPTConfig
from gptlab.model import GPT

TINY_GPT2 = GPTConfig(vocab_size=50257, context_length=64, emb_dim=32, n_heads=4, n_layers=2)


def tiny_gpt2(sharpen: bool = False) -> GPT:
    """A :data:`TINY_GPT2` model with random weights drawn after ``torch.manual_seed(0)``;
    ``sharpen`` scales every weight by 8 so that samples vary."""
    torch.manual_seed(0)
    model = GPT(TINY_GPT2)
    if sharpen:
        with torch.no_grad():
            for p in model.parameters():
                p.mul_(8.0)
    return model
