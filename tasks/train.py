"""Training stage tasks: pretrain (Ray Train) and evaluate."""

from __future__ import annotations

from dataclasses import asdict

from prefect import task
from prefect.cache_policies import NONE

from llm import storage
from llm.config import PipelineConfig
from llm.tokenizer.stage import tokenizer_uri
from tasks.runtime import stage


@task(name="pretrain", cache_policy=NONE)
def pretrain(cfg: PipelineConfig, parent_run_id: str | None = None) -> dict:
    """Pre-train the decoder-only transformer on the token files with Ray Train workers."""
    from llm.train.trainer import pretrain as run_pretrain

    with stage(cfg, parent_run_id, "pretrain") as ctx:
        if ctx.run is not None:
            from llm.tracking import flatten

            client = ctx.run.client()
            for key, value in sorted(flatten({"model": cfg.model.model_dump(mode="json"),
                                              "train": cfg.train.model_dump(mode="json")}).items()):
                client.log_param(ctx.run.run_id, key, value)
        result = run_pretrain(cfg.model, cfg.train, ctx.layout.tokens, ctx.layout.train, ctx.run)
        summary = {k: v for k, v in asdict(result).items() if isinstance(v, (int, float, str))}
        return ctx.report({}, ctx.layout.train, summary)


@task(name="evaluate", cache_policy=NONE)
def evaluate(cfg: PipelineConfig, checkpoint_uri: str, parent_run_id: str | None = None) -> dict:
    """Held-out loss and perplexity of a checkpoint, plus sampled continuations of the prompts."""
    from llm.eval import evaluate as run_evaluate

    with stage(cfg, parent_run_id, "evaluate") as ctx:
        result = run_evaluate(checkpoint_uri, ctx.layout.tokens, tokenizer_uri(ctx.layout.tokenizer),
                              cfg.eval, ctx.run)
        data = asdict(result)
        storage.write_text(storage.join(ctx.layout.eval, "eval.json"), _dumps(data))
        summary = {k: v for k, v in data.items() if isinstance(v, (int, float, str))}
        return ctx.report({}, ctx.layout.eval, summary)


def _dumps(data: dict) -> str:
    from llm.data.dataset import dumps

    return dumps(data)
