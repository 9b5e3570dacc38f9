"""Evaluation of a checkpoint: held-out loss and perplexity, and sampled continuations."""

from __future__ import annotations

import json
import math
import os
import tempfile
from dataclasses import dataclass, field

import torch

from llm.config import EvalConfig
from llm.eval.generate import sample_completions
from llm.tokenizer.spm import SentencePieceTokenizer
from llm.tracking import RunTarget
from llm.train.checkpoint import load_model
from llm.train.data import TokenDataset
from llm.train.validation import validation_loss

SAMPLES_ARTIFACT = "samples.json"


@dataclass
class EvalResult:
    """Validation loss (nats per token), perplexity = exp(loss), tokens scored, and samples."""

    val_loss: float
    perplexity: float
    tokens_evaluated: int
    samples: list[dict[str, str]] = field(default_factory=list)


def evaluate(
    checkpoint_uri: str,
    tokens_uri: str,
    tokenizer_uri: str,
    cfg: EvalConfig,
    run_target: RunTarget | None = None,
    seed: int = 0,
    device: str | None = None,
) -> EvalResult:
    """Score a checkpoint on the validation split and sample a continuation of each prompt.

    Uses `cfg.batches` batches of the training micro-batch size, from the start of the validation split
    (the same windows the training loop validates on, more of them). With `run_target`, the metrics
    `eval_loss`, `eval_perplexity`, `eval_tokens` are logged and the samples saved as `samples.json`.
    `device`: `cuda`, `cpu`, ...; None takes a GPU when one is visible.
    """
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    model, state = load_model(checkpoint_uri, device)
    batch_size = int(state["train_config"]["micro_batch_size"])
    split = TokenDataset(tokens_uri).split("val")
    loss, tokens = validation_loss(model, split, model.cfg.context_length, batch_size, cfg.batches, device)
    tokenizer = SentencePieceTokenizer.load(tokenizer_uri)
    samples = sample_completions(model, tokenizer, cfg.prompts, cfg.max_new_tokens, cfg.temperature, cfg.top_k, seed)
    result = EvalResult(val_loss=loss, perplexity=math.exp(loss), tokens_evaluated=tokens, samples=samples)
    if run_target is not None:
        run_target.log_metrics(
            {"eval_loss": loss, "eval_perplexity": result.perplexity, "eval_tokens": tokens}, step=int(state["step"])
        )
        with tempfile.TemporaryDirectory(prefix="llmpipe-eval-") as folder:
            path = os.path.join(folder, SAMPLES_ARTIFACT)
            with open(path, "w", encoding="utf-8") as fh:
                json.dump(samples, fh, indent=2, ensure_ascii=False)
            run_target.log_artifact(path)
    return result
