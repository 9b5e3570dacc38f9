"""The project's model as an lm-evaluation-harness model named `llmpipe`.

    llmpipe lm-eval --model llmpipe --model_args checkpoint=work/demo/train/runs/VERSION/final \\
        --tasks hellaswag --include_path my_tasks/

lm-eval 0.4 finds models only in its own registry: it reads no entry points and imports no outside
module for models (`--include_path` adds task folders only). So `llmpipe lm-eval` imports this module,
which registers the model, and then runs lm-eval's own command line with the arguments given. In
Python, importing this module is enough: `lm_eval.simple_evaluate(model="llmpipe", model_args=...)`.

Every answer comes from `LogLikelihoodScorer`, the code `llmpipe eval-tasks` scores with, so both
give the same numbers on the same task and checkpoint. Model arguments: `checkpoint` (required),
`tokenizer` (default: the one the checkpoint's state records), `device`, `batch_size`,
`max_gen_toks` (default 256).
"""

from __future__ import annotations

import logging
import os
import sys

from llm.errors import UserError

# Nothing may be fetched from the network: datasets are local files (`dataset_path: json`).
for _name in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE"):
    os.environ.setdefault(_name, "1")

try:
    import lm_eval.models  # noqa: F401  (its built-in models first: an empty registry would load them later)
    from lm_eval.api.model import LM
    from lm_eval.api.registry import register_model
except ImportError as exc:  # pragma: no cover - depends on the installation
    raise UserError("lm-evaluation-harness is not installed: pip install 'llmpipe[lm-eval]'") \
        from exc

log = logging.getLogger(__name__)
MODEL_NAME = "llmpipe"
DEFAULT_MAX_GEN_TOKS = 256


@register_model(MODEL_NAME)
class LlmpipeLM(LM):
    """An llmpipe checkpoint answering lm-eval's loglikelihood, loglikelihood_rolling and generate_until."""

    def __init__(self, checkpoint: str, tokenizer: str | None = None, device: str | None = None,
                 batch_size: int | str | None = 16, max_gen_toks: int | str = DEFAULT_MAX_GEN_TOKS, **_ignored):
        super().__init__()
        import torch

        from llm.eval.tasks import load_scorer

        # lm-eval's default device is cuda:0 even where there is none (its own models fall back too).
        if device and device.startswith("cuda") and not torch.cuda.is_available():
            log.warning("device %s: no CUDA device visible, scoring on the CPU", device)
            device = "cpu"

        # lm-eval passes `--batch_size auto` as a string; a fixed size is what this model supports.
        size = int(batch_size) if str(batch_size or "").isdigit() else 16
        self.scorer, self.state, self.tokenizer_uri = load_scorer(checkpoint, tokenizer, device, size)
        self._device = self.scorer.device
        self.max_gen_toks = int(max_gen_toks)

    def loglikelihood(self, requests, disable_tqdm: bool = False) -> list[tuple[float, bool]]:
        """(log-likelihood, is_greedy) of each request's (context, continuation)."""
        scores = self.scorer.score_pairs([tuple(req.args) for req in requests])
        return [(s.loglikelihood, s.is_greedy) for s in scores]

    def loglikelihood_rolling(self, requests, disable_tqdm: bool = False) -> list[float]:
        """Log-likelihood of each request's whole text."""
        return [self.scorer.rolling_loglikelihood(req.args[0])[0] for req in requests]

    def generate_until(self, requests, disable_tqdm: bool = False) -> list[str]:
        """Greedy continuation of each request's context, cut at its `until` strings."""
        out = []
        for req in requests:
            context, kwargs = req.args
            kwargs = dict(kwargs or {})
            until = kwargs.get("until") or []
            stop = [until] if isinstance(until, str) else list(until)
            max_new = int(kwargs.get("max_gen_toks", self.max_gen_toks))
            out.append(self.scorer.greedy_continuation(context, stop, max_new))
        return out

    @property
    def tokenizer_name(self) -> str:
        """Names the request cache: responses of another tokenizer are not reused."""
        return self.tokenizer_uri


def lm_eval_main(argv: list[str]) -> int:
    """Run lm-eval's command line (`lm-eval run ...`, `lm-eval ls tasks`, ...) with `llmpipe` registered;
    returns its exit status."""
    from lm_eval.__main__ import cli_evaluate

    saved = sys.argv
    sys.argv = ["lm-eval", *argv]  # lm-eval's parser reads sys.argv itself
    try:
        cli_evaluate()
    except SystemExit as exc:  # argparse's --help and errors
        return exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 2)
    except ValueError as exc:  # lm-eval's word for what it was given: tasks not found, bad arguments
        raise UserError(f"lm-eval: {exc}") from exc
    finally:
        sys.argv = saved
    return 0
