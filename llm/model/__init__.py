"""The decoder-only transformer (plain PyTorch; parallelism is applied from `llm.train`)."""

from llm.model.gpt import GPT

__all__ = ["GPT"]
