"""Checkpoints in other frameworks' formats: `hf` (a transformers GPT-2 folder, or a PEFT LoRA adapter)."""
