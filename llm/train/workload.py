"""What a training run trains: its model, its batches, its held-out loss and what its checkpoints keep.

The loop in `llm.train.loop` (optimizer, schedule, parallelism, precision, clipping, bad-step guard,
early stopping, checkpoints, resume) is the same for pre-training and fine-tuning; a `Workload` is the
part that differs. `TokenWorkload` is pre-training on a token dataset; fine-tuning's lives in
`llm.finetune.workload`.
"""

from __future__ import annotations

import logging
from typing import Any, Protocol

import torch

from llm.config import ModelConfig, TrainConfig
from llm.errors import UserError
from llm.model.gpt import GPT
from llm.train.data import TokenDataset, TrainBatches
from llm.train.parallel import ParallelContext, ParallelModel, world
from llm.train.validation import HeldOutScore, held_out_score

log = logging.getLogger(__name__)

#: One micro-batch: (inputs, targets) or (inputs, targets, positions, segments), int64 tensors (B, T).
Batch = tuple[torch.Tensor, ...]


class StepBatches(Protocol):
    """This rank's micro-batches of each global step."""

    def step(self, step: int) -> tuple[list[Batch], list[float] | None]:
        """The micro-batches of global step `step` and their loss weights (None: equal weights)."""


class Workload(Protocol):
    """The parts of a training run that depend on what is trained."""

    #: The model's shape, with `vocab_size` resolved.
    model_cfg: ModelConfig
    #: Whether checkpoints gather sharded state into full files even under fsdp (small trainable state).
    gathered_checkpoints: bool
    #: Name of the weights file a checkpoint holds (`model.pt`, or `adapter.pt` for the method's weights).
    weights_file: str

    def build_model(self, device: torch.device) -> GPT:
        """The model to train, on `device`, before any strategy splits it (the torch seed is set)."""

    def load_weights(self, model: GPT, state: dict[str, torch.Tensor]) -> None:
        """Load a checkpoint's weights (what `checkpoint_weights` kept) into a model from `build_model`."""

    def checkpoint_weights(self, full_state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """What a checkpoint keeps of the model's full state dict."""

    def batches(self, ctx: ParallelContext) -> StepBatches:
        """This rank's training batches."""

    def held_out_score(self, parallel: ParallelModel, device: torch.device,
                       autocast_dtype: torch.dtype | None) -> HeldOutScore:
        """Held-out loss (nats per token), tokens and bytes of text scored; a collective: every rank calls it."""

    def checkpoint_metadata(self) -> dict[str, Any]:
        """Extra `state.json` entries that say what was trained on and from what."""


class _TokenBatches:
    def __init__(self, batches: TrainBatches):
        self._batches = batches

    def step(self, step: int) -> tuple[list[Batch], list[float] | None]:
        return list(self._batches.micro_batches(step)), None


class TokenWorkload:
    """Pre-training: next-token prediction over every token of a token dataset, from random weights."""

    gathered_checkpoints = False
    weights_file = "model.pt"

    def __init__(self, model_cfg: ModelConfig, train_cfg: TrainConfig, tokens_uri: str,
                 seen_parts: frozenset[str] = frozenset(), tokenizer: dict[str, str] | None = None):
        self.train_cfg = train_cfg
        self.tokenizer = tokenizer  # `tokenizer_record` of the tokens' tokenizer, kept in state.json
        self.dataset = TokenDataset(tokens_uri, seen_parts=seen_parts)
        if model_cfg.vocab_size is None:
            model_cfg = model_cfg.model_copy(update={"vocab_size": self.dataset.vocab_size})
        if model_cfg.vocab_size < self.dataset.vocab_size:
            raise UserError(
                f"model vocab_size {model_cfg.vocab_size} is smaller than the token dataset's {self.dataset.vocab_size}"
            )
        self.model_cfg = model_cfg
        self._warned_no_bytes = False

    def build_model(self, device: torch.device) -> GPT:
        return GPT(self.model_cfg).to(device)

    def load_weights(self, model: GPT, state: dict[str, torch.Tensor]) -> None:
        model.load_state_dict(state)

    def checkpoint_weights(self, full_state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return full_state

    def batches(self, ctx: ParallelContext) -> StepBatches:
        cfg = self.train_cfg
        return _TokenBatches(TrainBatches(self.dataset.split("train"), self.model_cfg.context_length, cfg.batch_size,
                                          cfg.micro_batch_size, cfg.seed, ctx.dp_rank, ctx.dp))

    def held_out_score(self, parallel: ParallelModel, device: torch.device,
                       autocast_dtype: torch.dtype | None) -> HeldOutScore:
        split = self.dataset.split("val")
        if not split.has_bytes and not self._warned_no_bytes and world()[0] == 0:
            self._warned_no_bytes = True
            log.warning("%s: the validation split records no bytes of text per token (made before the tokenize "
                        "stage wrote them): val_bpb is not measured; rerun the tokenize stage for it", self.dataset.uri)
        return held_out_score(
            parallel.module, split, self.model_cfg.context_length, self.train_cfg.micro_batch_size,
            self.train_cfg.eval_batches, device, autocast_dtype, parallel=parallel,
        )

    def checkpoint_metadata(self) -> dict[str, Any]:
        return {"tokenizer": self.tokenizer} if self.tokenizer else {}

