"""`golf pack`: the artifact container, the shipped code bundle and the size gate."""
