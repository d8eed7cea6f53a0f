"""gptlab: a GPT-2-style language model built end to end as a reproducible DVC pipeline."""

__version__ = "0.1.0"
