"""Fine-tuning as a `Workload` of the shared training loop: a base checkpoint plus a method, SFT batches.

Each worker rebuilds the model the same way: the plain GPT with the base weights (checked against the
digest the driver recorded, so every rank and every resume starts from the same base), then the method
applied with the run's seed. Checkpoints keep only what the method trains (`adapter.pt`), or every
weight for `full` (`model.pt`); both gather sharded state into full files, since fsdp shards of a
frozen base would make an adapter checkpoint as large as the model.
"""

from __future__ import annotations

import hashlib
import io
import logging
from typing import Any

import torch

from llm import storage
from llm.config import FinetuneConfig, ModelConfig
from llm.errors import UserError
from llm.finetune.methods import apply_method
from llm.finetune.packing import Batch, SftBatches, response_loss, val_batches, val_response_bytes
from llm.finetune.sft_data import SftExamples
from llm.model.gpt import GPT
from llm.model.peft import load_peft_state_dict, peft_state_dict
from llm.train.checkpoint import ADAPTER_FILE, MODEL_FILE, read_state
from llm.train.parallel import ParallelContext, ParallelModel, all_reduce_sum, world
from llm.train.validation import HeldOutScore
from llm.train.workload import StepBatches

log = logging.getLogger(__name__)

IGNORE = -100


def file_digest(data: bytes) -> str:
    """sha256 of a weights file's bytes: how a fine-tune names its base."""
    return hashlib.sha256(data).hexdigest()


def base_model_config(base_uri: str) -> ModelConfig:
    """The model shape of a base checkpoint folder; refuses a fine-tune's adapter-only checkpoint."""
    state = read_state(base_uri)
    if state.get("weights_file", MODEL_FILE) != MODEL_FILE:
        raise UserError(f"finetune.base {base_uri} holds a fine-tune's adapter weights only; start from its "
                        "merged export or from the base model it was trained on")
    return ModelConfig.model_validate(state["model_config"])


def load_base(base_uri: str, expected_digest: str | None) -> tuple[dict[str, torch.Tensor], str]:
    """The base checkpoint's weights and their digest; refuses weights whose digest is not `expected_digest`."""
    data = storage.read_bytes(storage.join(base_uri, MODEL_FILE))
    digest = file_digest(data)
    if expected_digest is not None and digest != expected_digest:
        raise UserError(f"the base model at {base_uri} is not the one this fine-tune was made from "
                        f"(weights digest {digest[:16]}, expected {expected_digest[:16]}): point finetune.base at "
                        "the original base")
    return torch.load(io.BytesIO(data), map_location="cpu", weights_only=True), digest


class _SftStepBatches:
    def __init__(self, batches: SftBatches):
        self._batches = batches

    def step(self, step: int) -> tuple[list[Batch], list[float] | None]:
        micro, weights = self._batches.step(step)
        return [tuple(b) for b in micro], weights


class FinetuneWorkload:
    """Supervised fine-tuning of a base checkpoint with `ft.method` on prepared SFT examples."""

    gathered_checkpoints = True

    def __init__(self, ft: FinetuneConfig, base_uri: str, base_digest: str, examples_uri: str,
                 tokenizer: dict[str, str] | None = None):
        self.ft, self.train_cfg = ft, ft.train
        self.tokenizer = tokenizer  # `tokenizer_record` of the tokenizer the examples were encoded with
        self.base_uri, self.base_digest = base_uri, base_digest
        self.model_cfg = base_model_config(base_uri)
        self.examples = SftExamples.load(examples_uri)
        if self.examples.context_length > self.model_cfg.context_length:
            raise UserError(f"the examples were prepared for context {self.examples.context_length}, more than the "
                            f"base model's {self.model_cfg.context_length}")
        self.weights_file = MODEL_FILE if ft.method == "full" else ADAPTER_FILE
        self.counts: tuple[int, int] | None = None
        self._method_names: list[str] = []

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> "FinetuneWorkload":
        """From a Ray Train worker's config: `finetune` (the section as JSON), `base_uri`, `base_digest`,
        `examples_uri`."""
        return cls(FinetuneConfig.model_validate(config["finetune"]), config["base_uri"], config["base_digest"],
                   config["examples_uri"], config.get("tokenizer"))

    def build_model(self, device: torch.device) -> GPT:
        state, _ = load_base(self.base_uri, self.base_digest)
        model = GPT(self.model_cfg)
        model.load_state_dict(state)
        del state
        self.counts = apply_method(model, self.ft)
        self._method_names = list(peft_state_dict(model))
        rank, _ = world()
        if rank == 0:
            trainable, total = self.counts
            log.info("finetune %s: %d trainable of %d parameters (%.3f%%)", self.ft.method, trainable, total,
                     100 * trainable / total)
        return model.to(device)

    def load_weights(self, model: GPT, state: dict[str, torch.Tensor]) -> None:
        if self.ft.method == "full":
            model.load_state_dict(state)
        else:
            load_peft_state_dict(model, state)

    def checkpoint_weights(self, full_state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        if self.ft.method == "full":
            return full_state
        # The method's entries only: names as the adapted model has them (`blocks.0.attn.qkv.lora_A`).
        return {name: full_state[name] for name in self._method_names}

    def batches(self, ctx: ParallelContext) -> StepBatches:
        cfg = self.train_cfg
        return _SftStepBatches(SftBatches(self.examples.train, self.model_cfg.context_length, cfg.batch_size,
                                          cfg.micro_batch_size, cfg.seed, ctx.dp_rank, ctx.dp,
                                          pack=self.ft.data.pack, pad_id=self.examples.pad_id))

    def held_out_score(self, parallel: ParallelModel, device: torch.device,
                       autocast_dtype: torch.dtype | None) -> HeldOutScore:
        """Mean loss over the held-out examples' response tokens (and the bytes of those responses'
        text, for bits per byte). Every rank runs the same number of forwards (fsdp gathers weights in
        each), padding its share with a batch that trains nothing."""
        cfg, ctx = self.train_cfg, parallel.ctx
        every = list(val_batches(self.examples.val, self.model_cfg.context_length, cfg.micro_batch_size,
                                 cfg.eval_batches, pack=self.ft.data.pack, pad_id=self.examples.pad_id))
        if not every:
            raise UserError("no held-out examples to measure the response loss on (raise finetune.data.val_fraction)")
        mine = every[ctx.dp_rank::ctx.dp]
        per_rank = -(-len(every) // ctx.dp)
        blank = Batch(every[0].inputs, torch.full_like(every[0].targets, IGNORE), every[0].positions,
                      every[0].segments)
        mine += [blank] * (per_rank - len(mine))
        loss_sum, tokens = response_loss(parallel.module, mine, device, autocast_dtype)
        loss_sum, tokens = all_reduce_sum([loss_sum, float(tokens)], device)
        # The same on every rank without communication: the bytes of the responses all ranks scored.
        nbytes = val_response_bytes(self.examples.val, self.model_cfg.context_length, cfg.micro_batch_size,
                                    cfg.eval_batches, pack=self.ft.data.pack)
        return HeldOutScore(loss_sum / tokens, int(tokens), nbytes)

    def checkpoint_metadata(self) -> dict[str, Any]:
        trainable, total = self.counts or (None, None)
        return {"finetune": {
            "method": self.ft.method,
            "base": self.base_uri,
            "base_digest": self.base_digest,
            "config": self.ft.model_dump(mode="json"),
            "trainable_parameters": trainable,
            "total_parameters": total,
            "trained_token_share": self.examples.counts.get("trained_token_share"),
        }, **({"tokenizer": self.tokenizer} if self.tokenizer else {})}
