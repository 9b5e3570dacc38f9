"""Fine-tuning on Ray Train: prepare the SFT examples once in the driver, train on the shared loop, then
measure and publish (response loss before and after, sample responses, the registered model).

Output folder (`output_uri`):
    examples.npz        the prepared, tokenized examples every worker reads
    quarantine.parquet  the records that could not be used, with their reasons (when there are any)
    ray/<run name>/     Ray Train's run folder: checkpoints, resumed from after a crash
    final/              the last checkpoint: adapter.pt (or model.pt for full) and state.json
    samples.json        responses to `finetune.sample_prompts` before and after

The Ray run is named after a hash of the fine-tune config, the base's weights digest and the examples,
so running it again after a crash continues from the latest checkpoint.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import time
from dataclasses import asdict, dataclass, field
from typing import Any

from llm import storage
from llm.config import FinetuneConfig, stable_hash
from llm.errors import UserError
from llm.finetune.methods import check_supported
from llm.finetune.sft_data import prepare_sft
from llm.finetune.workload import base_model_config, file_digest
from llm.tracking import RunTarget, log_dict
from llm.train.checkpoint import MODEL_FILE, load_model, read_state, tokenizer_record
from llm.train.trainer import check_parallel_fits, fit_on_ray

log = logging.getLogger(__name__)

EXAMPLES_FILE, QUARANTINE_FILE, SAMPLES_FILE = "examples.npz", "quarantine.parquet", "samples.json"


@dataclass
class FinetuneResult:
    """Outcome of `finetune`: response losses in nats per response token on the held-out examples."""

    method: str
    steps: int
    response_loss_before: float
    response_loss_after: float
    response_perplexity_before: float
    response_perplexity_after: float
    trainable_parameters: int
    total_parameters: int
    checkpoint_uri: str
    checkpoint_bytes: int
    base_bytes: int
    base_digest: str
    seconds: float
    examples: dict[str, Any] = field(default_factory=dict)
    samples: list[dict[str, str]] = field(default_factory=list)
    #: The response losses in bits per byte of response text (comparable across tokenizers); None for
    #: examples prepared without bytes per token.
    response_bpb_before: float | None = None
    response_bpb_after: float | None = None


def finetune(ft: FinetuneConfig, base_uri: str, tokenizer_uri: str, output_uri: str,
             run_target: RunTarget | None = None) -> FinetuneResult:
    """Fine-tune the checkpoint `base_uri` (a folder with model.pt and state.json) on `ft.data` with
    `ft.method`, tokenized with the tokenizer model at `tokenizer_uri`; outputs under `output_uri`."""
    from llm.tokenizer.base import load_tokenizer

    started = time.perf_counter()
    check_supported(ft)
    base_uri, output_uri = storage.absolute(base_uri), storage.absolute(output_uri)
    model_cfg = base_model_config(base_uri)
    check_parallel_fits(model_cfg, ft.train)
    tokenizer = load_tokenizer(tokenizer_uri)
    if tokenizer.vocab_size > model_cfg.vocab_size:
        raise UserError(f"the tokenizer's {tokenizer.vocab_size} tokens do not fit the base model's vocabulary of "
                        f"{model_cfg.vocab_size}: fine-tune with the tokenizer the base was trained with")
    examples = prepare_sft(ft.data, ft.template, tokenizer, model_cfg.context_length)
    counts = examples.counts
    log.info("finetune data: %d read, %d kept (%d train, %d held out), %d quarantined %s; %.1f%% of tokens trained on",
             counts["read"], counts["kept"], counts["train_examples"], counts["val_examples"], counts["quarantined"],
             counts["quarantined_by_reason"] or "", 100 * counts["trained_token_share"])
    if not counts["train_examples"] or not counts["val_examples"]:
        raise UserError(f"finetune.data: {counts['kept']} usable examples of {counts['read']} read "
                        f"({counts['quarantined_by_reason']}): need at least one to train on and one held out")
    examples_uri = storage.join(output_uri, EXAMPLES_FILE)
    examples.save(examples_uri)
    if examples.quarantine.num_rows:
        storage.write_parquet(storage.join(output_uri, QUARANTINE_FILE), examples.quarantine)
    base_bytes = storage.read_bytes(storage.join(base_uri, MODEL_FILE))
    base_digest = file_digest(base_bytes)
    examples_digest = hashlib.sha256(storage.read_bytes(examples_uri)).hexdigest()
    name = "finetune-" + stable_hash({"finetune": ft.model_dump(mode="json"), "base": base_digest,
                                      "examples": examples_digest})
    final_uri = fit_on_ray(
        {"finetune": ft.model_dump(mode="json"), "base_uri": base_uri, "base_digest": base_digest,
         "examples_uri": examples_uri, "run_target": run_target,
         "tokenizer": tokenizer_record(tokenizer_uri, tokenizer.model_bytes)},
        ft.train, name, output_uri,
    )
    state = read_state(final_uri)
    info = state["finetune"]
    weights_file = state.get("weights_file", MODEL_FILE)
    before, after = float(state["initial_val_loss"]), float(state["val_loss"])
    result = FinetuneResult(
        method=ft.method, steps=int(state["step"]),
        response_loss_before=before, response_loss_after=after,
        response_perplexity_before=math.exp(min(before, 50.0)), response_perplexity_after=math.exp(min(after, 50.0)),
        trainable_parameters=int(info["trainable_parameters"]), total_parameters=int(info["total_parameters"]),
        checkpoint_uri=final_uri, checkpoint_bytes=storage.size(storage.join(final_uri, weights_file)),
        base_bytes=len(base_bytes), base_digest=base_digest, seconds=0.0, examples=counts,
        response_bpb_before=state.get("initial_val_bpb"), response_bpb_after=state.get("val_bpb"),
    )
    result.samples = sample_responses(ft, base_uri, final_uri, tokenizer)
    storage.write_text(storage.join(output_uri, SAMPLES_FILE), json.dumps(result.samples, indent=2, ensure_ascii=False))
    log.info("finetune %s: response loss %.4f -> %.4f in %d steps; checkpoint %s of %s (%.2f%% of the base's %s)",
             ft.method, before, after, result.steps, weights_file, _mib(result.checkpoint_bytes),
             100 * result.checkpoint_bytes / result.base_bytes, _mib(result.base_bytes))
    if run_target is not None:
        publish(run_target, ft, result)
    result.seconds = time.perf_counter() - started
    return result


def _mib(n: int) -> str:
    return f"{n / 2**20:.2f} MiB"


def sample_responses(ft: FinetuneConfig, base_uri: str, final_uri: str, tokenizer) -> list[dict[str, str]]:
    """Greedy responses to `ft.sample_prompts` from the base and from the fine-tuned model."""
    from llm.finetune.respond import respond

    if not ft.sample_prompts:
        return []
    base, _ = load_model(base_uri)
    tuned, _ = load_model(final_uri)
    before = respond(base, tokenizer, ft.template, ft.sample_prompts, ft.sample_tokens)
    after = respond(tuned, tokenizer, ft.template, ft.sample_prompts, ft.sample_tokens)
    return [{"prompt": p, "before": b, "after": a} for p, b, a in zip(ft.sample_prompts, before, after)]


def publish(target: RunTarget, ft: FinetuneConfig, result: FinetuneResult) -> None:
    """Metrics, samples and the registered model in MLflow. Observability after the fact: a failure here
    is logged and does not lose the finished fine-tune."""
    from llm.train.publish import log_loss_curve, register_model

    try:
        target.log_metrics({
            "response_loss_before": result.response_loss_before, "response_loss_after": result.response_loss_after,
            "response_perplexity_before": result.response_perplexity_before,
            "response_perplexity_after": result.response_perplexity_after,
            "trainable_parameters": result.trainable_parameters, "total_parameters": result.total_parameters,
            "checkpoint_mib": result.checkpoint_bytes / 2**20, "base_mib": result.base_bytes / 2**20,
            "trained_token_share": result.examples.get("trained_token_share", 0.0),
            "examples_quarantined": result.examples.get("quarantined", 0),
            **{name: value for name, value in (("response_bpb_before", result.response_bpb_before),
                                               ("response_bpb_after", result.response_bpb_after)) if value is not None},
        }, step=result.steps)
        log_dict(target, {"samples": result.samples}, "finetune/samples.json")
        log_dict(target, {k: v for k, v in asdict(result).items() if k != "samples"}, "finetune/result.json")
        log_loss_curve(target)
        if ft.train.registered_model:
            version = register_model(target, result.checkpoint_uri, ft.train.registered_model,
                                     ft.train.registered_model_alias)
            log.info("registered %s version %s as @%s", ft.train.registered_model, version,
                     ft.train.registered_model_alias)
    except Exception as exc:
        log.warning("could not publish the fine-tune to MLflow: %s", exc)

