"""`golf quantize`: weight quantizers and the quantize stage."""
