"""`golf pack`: fill the artifact format (``stages/artifact``, whose writer builds the bytes) with
quantized weights and the shipped code; the choice of codecs and layout, the codec comparison and
the size gate."""
