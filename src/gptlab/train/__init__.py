"""Training: the runtime (device, precision, processes), the one loop, and its two recipes
(pretrain from token shards, finetune on instruction records)."""
