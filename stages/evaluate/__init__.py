"""`golf eval`: exact bits per byte, evaluation windows and the eval stage."""
