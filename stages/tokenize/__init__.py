"""`golf tokenize`: tokenizer training, shard export and the byte audit."""
