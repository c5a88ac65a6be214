"""The GPT shared by train, quantize and eval (shipped inside every artifact)."""
