"""Data: the typed sample, dataset sources, shard schema and reader, augmentation and collate."""
