"""Everything that needs the ``[litgpt]`` extra: the runner (``litgpt finetune_lora`` and
generation through litgpt's API) and the track (the ``litgpt`` stage: fetch, convert,
fine-tune, answer the test split)."""
