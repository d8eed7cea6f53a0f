"""Converters between gptlab checkpoints and other formats."""
