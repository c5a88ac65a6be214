"""`golf train`: presets, optimizers, schedule and the training loop."""
