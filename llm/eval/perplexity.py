"""Evaluation of a checkpoint: held-out loss, perplexity and bits per byte, and sampled continuations.

The loss is measured on the test split, which neither training nor early stopping reads, so it is not
biased by the choice of checkpoint. A token dataset made without a test split is scored on validation
instead, with a warning and `eval_split=val` on the MLflow run.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
from dataclasses import dataclass, field

import torch

from llm.config import EvalConfig
from llm.errors import UserError
from llm.eval.generate import sample_completions
from llm.tokenizer.base import load_tokenizer
from llm.tracking import RunTarget
from llm.train.checkpoint import load_model
from llm.train.data import TokenDataset
from llm.train.validation import held_out_score

SAMPLES_ARTIFACT = "samples.json"
log = logging.getLogger(__name__)


@dataclass
class EvalResult:
    """Held-out loss (nats per token) on `split`, perplexity = exp(loss), tokens scored, and samples.

    `eval_bpb`: the loss in bits per byte of the text scored, loss * tokens / (ln 2 * `bytes_evaluated`),
    which does not depend on the tokenizer; None for token datasets that record no bytes per token."""

    val_loss: float
    perplexity: float
    tokens_evaluated: int
    split: str = "test"
    samples: list[dict[str, str]] = field(default_factory=list)
    eval_bpb: float | None = None
    bytes_evaluated: int | None = None


def eval_split(dataset: TokenDataset) -> str:
    """'test' when the dataset has a test split with tokens, else 'val' (with a warning): token datasets
    made before the test split existed, or with `tokenize.test_fraction: 0`, have none."""
    if any(int(e["tokens"]) for e in dataset.manifest.splits.get("test", [])):
        return "test"
    log.warning("%s: no test split (made before tokenize.test_fraction existed, or with it 0): evaluation "
                "falls back to the validation split, which early stopping selected the checkpoint on, so its "
                "loss is optimistic; rerun the tokenize stage for a test split", dataset.uri)
    return "val"


def evaluate(
    checkpoint_uri: str,
    tokens_uri: str,
    tokenizer_uri: str,
    cfg: EvalConfig,
    run_target: RunTarget | None = None,
    seed: int = 0,
    device: str | None = None,
) -> EvalResult:
    """Score a checkpoint on the test split and sample a continuation of each prompt.

    Uses `cfg.batches` batches of the training micro-batch size, from the start of the test split (the
    windows the training loop validates on, taken from the test split instead; see `eval_split` for
    datasets without one). With `run_target`, the param `eval_split` (the split scored) and the metrics
    `eval_loss`, `eval_perplexity`, `eval_tokens` (and `eval_bpb`, `eval_bytes` where the dataset records
    bytes per token) are logged and the samples saved as `samples.json`.
    `device`: `cuda`, `cpu`, ...; None takes a GPU when one is visible.
    """
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    model, state = load_model(checkpoint_uri, device)
    batch_size = int(state["train_config"]["micro_batch_size"])
    dataset = TokenDataset(tokens_uri)
    name = eval_split(dataset)
    split = dataset.split(name)
    context = model.cfg.context_length
    if name == "test" and len(split) < context + 1:
        raise UserError(f"test split has {len(split)} tokens, fewer than one window of {context + 1} "
                        "(model.context_length + 1): raise tokenize.test_fraction or lower model.context_length")
    if not split.has_bytes:
        log.warning("%s: the %s split records no bytes of text per token (made before the tokenize stage wrote "
                    "them): eval_bpb is not measured; rerun the tokenize stage for it", dataset.uri, name)
    score = held_out_score(model, split, context, batch_size, cfg.batches, device)
    tokenizer = load_tokenizer(tokenizer_uri)
    samples = sample_completions(model, tokenizer, cfg.prompts, cfg.max_new_tokens, cfg.temperature, cfg.top_k, seed)
    result = EvalResult(val_loss=score.loss, perplexity=score.perplexity, tokens_evaluated=score.tokens, split=name,
                        samples=samples, eval_bpb=score.bits_per_byte, bytes_evaluated=score.bytes)
    if run_target is not None:
        run_target.client().log_param(run_target.run_id, "eval_split", name)
        metrics = {"eval_loss": score.loss, "eval_perplexity": score.perplexity, "eval_tokens": score.tokens}
        if result.eval_bpb is not None:
            metrics.update(eval_bpb=result.eval_bpb, eval_bytes=score.bytes)
        run_target.log_metrics(metrics, step=int(state["step"]))
        with tempfile.TemporaryDirectory(prefix="llmpipe-eval-") as folder:
            path = os.path.join(folder, SAMPLES_ARTIFACT)
            with open(path, "w", encoding="utf-8") as fh:
                json.dump(samples, fh, indent=2, ensure_ascii=False)
            run_target.log_artifact(path)
    return result
