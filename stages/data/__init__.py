"""Token shards in the challenge format, the tokenizer file, document sources and the train/val split."""
