"""Fixtures local to the litgpt tests go here; the instruction records are shared, in tests/helpers/records.py."""
