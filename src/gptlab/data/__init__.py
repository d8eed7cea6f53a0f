"""Data: raw downloads, token shards, instruction records."""
