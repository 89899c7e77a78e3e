"""Data: the typed sample, dataset sources, the synthetic world, shard schema and reader,
augmentation and collate."""
