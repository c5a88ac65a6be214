"""`golf pack`: fill the artifact format (``stages/artifact``) with quantized weights and the shipped
code; codec choice, byte shuffle and the size gate."""
