"""Evaluation: held-out perplexity and sampled generations of a trained checkpoint."""

from llm.eval.generate import sample_completions
from llm.eval.perplexity import EvalResult, evaluate

__all__ = ["EvalResult", "evaluate", "sample_completions"]
