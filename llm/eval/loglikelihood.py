"""Log-likelihoods of continuations, of whole texts, and greedy continuations, from the project's model.

The same three questions lm-evaluation-harness asks a model, answered the way its Hugging Face model
answers them, so the project's own task scores and lm-eval's agree on the same checkpoint:

- a (context, continuation) pair is encoded whole and cut where the context's own encoding ends
  (trailing whitespace of the context moves to the continuation first); the context starts with the
  begin-of-document token, as every training document did; when the pair is longer than the model's
  context, its oldest tokens are dropped;
- a whole text is scored in windows of `context_length` predicted tokens, the first after the
  begin-of-document token, each later one after the last token of the window before, the last one
  with a full context (lm-eval's rolling windows; but for the last, the windows the validation loss
  uses);
- greedy decoding stops at the end-of-document token, at a stop string, or after `max_new_tokens`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from llm.model.gpt import GPT
from llm.tokenizer.base import Tokenizer


@dataclass(frozen=True)
class ContinuationScore:
    """Sum of the continuation tokens' log-probabilities (nats), their count, and whether each of them
    was the model's most likely next token (the continuation is the greedy one)."""

    loglikelihood: float
    tokens: int
    is_greedy: bool


class LogLikelihoodScorer:
    """Scores text with a loaded model and its tokenizer; `batch_size` rows per forward pass."""

    def __init__(self, model: GPT, tokenizer: Tokenizer, batch_size: int = 16):
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.batch_size = batch_size
        self.context_length = model.cfg.context_length
        self.device = next(model.parameters()).device

    def encode_pair(self, context: str, continuation: str) -> tuple[list[int], list[int]]:
        """(context ids after the begin-of-document token, continuation ids), cut from the pair's whole
        encoding; a context's trailing whitespace belongs to the continuation, as in lm-eval."""
        spaces = len(context) - len(context.rstrip())
        if spaces:
            context, continuation = context[:-spaces], context[-spaces:] + continuation
        whole = self.tokenizer.encode(context + continuation)
        context_ids = self.tokenizer.encode(context) if context else []
        return [self.tokenizer.bos_id, *context_ids], whole[len(context_ids):]

    @torch.no_grad()
    def score_pairs(self, pairs: list[tuple[str, str]]) -> list[ContinuationScore]:
        """One score per (context, continuation), in order."""
        rows = []
        for context, continuation in pairs:
            context_ids, continuation_ids = self.encode_pair(context, continuation)
            if not continuation_ids:
                raise ValueError(f"continuation {continuation!r} encodes to no tokens")
            # Keep the newest context_length + 1 tokens: inputs are all but the last, targets all but the first.
            whole = (context_ids + continuation_ids)[-(self.context_length + 1):]
            rows.append((whole, min(len(continuation_ids), len(whole) - 1)))
        scores: list[ContinuationScore] = []
        for start in range(0, len(rows), self.batch_size):
            scores += self._score_rows(rows[start:start + self.batch_size])
        return scores

    def _score_rows(self, rows: list[tuple[list[int], int]]) -> list[ContinuationScore]:
        width = max(len(ids) for ids, _ in rows) - 1
        # Padding goes on the right: a causal model's earlier positions never see it.
        inputs = torch.full((len(rows), width), self.tokenizer.pad_id, dtype=torch.long)
        for i, (ids, _) in enumerate(rows):
            inputs[i, :len(ids) - 1] = torch.tensor(ids[:-1])
        logits, _ = self.model(inputs.to(self.device))
        logprobs = F.log_softmax(logits.float(), dim=-1)
        out = []
        for i, (ids, n) in enumerate(rows):
            end = len(ids) - 1
            row = logprobs[i, end - n:end]
            targets = torch.tensor(ids[-n:], device=row.device)
            picked = row.gather(1, targets[:, None]).squeeze(1)
            greedy = bool((row.argmax(dim=-1) == targets).all())
            out.append(ContinuationScore(float(picked.double().sum()), n, greedy))
        return out

    @torch.no_grad()
    def rolling_loglikelihood(self, text: str) -> tuple[float, int]:
        """(sum of log-probabilities of every token of `text`, token count), scored in rolling windows."""
        ids = self.tokenizer.encode(text)
        if not ids:
            return 0.0, 0
        window = self.context_length
        sequence = [self.tokenizer.bos_id, *ids]  # sequence[i + 1] is ids[i]
        rows = []
        for first in range(0, len(ids), window):
            last = min(first + window, len(ids))  # predicts ids[first:last] ...
            # ... from the `window` tokens before the last of them (a short last window sees older ones too).
            rows.append((sequence[max(0, last - window):last + 1], last - first))
        total = 0.0
        for start in range(0, len(rows), self.batch_size):
            total += sum(s.loglikelihood for s in self._score_rows(rows[start:start + self.batch_size]))
        return total, len(ids)

    @torch.no_grad()
    def greedy_continuation(self, context: str, stop: list[str], max_new_tokens: int) -> str:
        """The most likely continuation of `context`, cut before the first stop string; it also ends at
        the end-of-document token or after `max_new_tokens` tokens."""
        ids = [self.tokenizer.bos_id, *(self.tokenizer.encode(context) if context else [])]
        new: list[int] = []
        text = ""
        for _ in range(max_new_tokens):
            window = torch.tensor([(ids + new)[-self.context_length:]], dtype=torch.long, device=self.device)
            logits, _ = self.model(window)
            next_id = int(logits[0, -1].argmax())
            if next_id == self.tokenizer.eos_id:
                break
            new.append(next_id)
            text = self.tokenizer.decode(new)
            if any(s and s in text for s in stop):
                break
        return cut_at_stop(text, stop)


def cut_at_stop(text: str, stop: list[str]) -> str:
    """`text` up to the earliest occurrence of any stop string (all of it when none occurs)."""
    cut = min((text.find(s) for s in stop if s and s in text), default=len(text))
    return text[:cut]
