"""Parallel strategies applied to a plain GPT from the outside (the model file knows none of this)."""

from llm.train.parallel.context import ParallelContext, all_reduce_sum, world
from llm.train.parallel.grad_norm import clip_grads, global_grad_norm
from llm.train.parallel.runner import ParallelModel

__all__ = ["ParallelContext", "ParallelModel", "all_reduce_sum", "clip_grads", "global_grad_norm", "world"]
