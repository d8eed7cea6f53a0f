"""Fixtures local to the convert tests go here; the export tests share their model families and tokenizer from test_hf_export."""
