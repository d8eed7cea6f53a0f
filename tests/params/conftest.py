"""Fixtures local to the params tests go here."""
