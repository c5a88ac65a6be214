"""Token shards in the challenge format, document sources and the train/val split."""
