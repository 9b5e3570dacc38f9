"""Training stage tasks: pretrain (Ray Train) and evaluate, each a versioned output like the data stages:
skipped when its identity (code, config, the token dataset's and checkpoint's versions) is current."""

from __future__ import annotations

import time
from dataclasses import asdict

from llm import storage, versions
from llm.config import PipelineConfig
from llm.data.dataset import dumps, read_manifest
from llm.errors import UserError
from llm.lineage import identity, of_input
from llm.tokenizer.stage import tokenizer_uri
from tasks.runtime import stage, stage_task


def final_checkpoint(train_root: str) -> str:
    """The final checkpoint of the current pretraining version under `train_root`."""
    return storage.join(train_root, read_manifest(train_root)["checkpoint"])


def resume_point(cfg: PipelineConfig, train_root: str, tokens_version: str) -> dict | None:
    """Where `train.resume_from` continues from: the pretraining version, its final checkpoint and,
    with `resume_data: new`, the training-split parts that run already trained on. None when unset, or
    for `last` when there is no earlier run to continue."""
    wanted = cfg.train.resume_from
    if not wanted:
        return None
    version = wanted
    if wanted == "last":
        # The latest run on other tokens than these: a run already made on these tokens is this stage's
        # own earlier output (rerunning it must not continue from itself), so take what it continued.
        version = versions.current(train_root)
        if version is not None:
            made = versions.read(versions.pinned(train_root, version))["identity"]["inputs"]
            if made.get("tokens") == tokens_version:
                version = made.get("resume")
        if version is None:  # nothing to continue: the first run starts from random weights
            return None
    try:
        earlier = versions.read(versions.pinned(train_root, version))
    except FileNotFoundError:
        raise UserError(f"train.resume_from: no pretraining version {version!r} under {train_root} "
                         f"(`llmpipe lineage {train_root}` lists them)") from None
    old_tokens = versions.parent_uri(train_root, earlier["parents"]["tokens"])
    old_manifest, new_manifest = versions.read(old_tokens), read_manifest(versions.pinned(
        versions.split(old_tokens)[0], tokens_version))
    if old_manifest["tokens"]["vocab_size"] != new_manifest["tokens"]["vocab_size"] or \
            old_manifest.get("parents", {}).get("tokenizer") != new_manifest.get("parents", {}).get("tokenizer"):
        raise UserError("train.resume_from: the earlier run's tokens come from another tokenizer than these; "
                         "token ids would not mean the same (keep the tokenizer: tokenizer.on_new_data: keep)")
    seen = [e["bin"] for e in old_manifest["tokens"]["splits"].get("train", [])] \
        if cfg.train.resume_data == "new" else []
    return {"version": version, "checkpoint": storage.join(train_root, earlier["checkpoint"]), "seen_parts": seen}


@stage_task("pretrain")
def pretrain(cfg: PipelineConfig, parent_run_id: str | None = None) -> dict:
    """Pre-train the decoder-only transformer on the token files with Ray Train workers."""
    from llm.cluster import ensure_ray
    from llm.train.trainer import pretrain as run_pretrain

    with stage(cfg, parent_run_id, "pretrain") as ctx:
        started = time.time()
        tokens = ctx.layout.tokens
        tokens_version, tokens_recipe = of_input(read_manifest(tokens))
        ident = identity("pretrain", {"model": cfg.model.model_dump(mode="json"),
                                      "train": cfg.train.model_dump(mode="json")},
                         {"tokens": tokens_version}, {"tokens": tokens_recipe})
        root = ctx.layout.train
        resume = resume_point(cfg, root, tokens_version)
        if resume is not None:
            ident = identity("pretrain", ident.config, {**ident.inputs, "resume": resume["version"]},
                             ident.upstream)
        manifest = versions.reuse(root, ident)
        if manifest is None:
            if ctx.run is not None:
                from llm.tracking import flatten

                client = ctx.run.client()
                for key, value in sorted(flatten({"model": cfg.model.model_dump(mode="json"),
                                                  "train": cfg.train.model_dump(mode="json")}).items()):
                    client.log_param(ctx.run.run_id, key, value)
            ensure_ray(cfg.ray)
            run_dir = f"runs/{ident.version}"
            result = run_pretrain(cfg.model, cfg.train, versions.pinned(tokens, tokens_version),
                                  storage.join(root, run_dir), ctx.run,
                                  resume_from=resume["checkpoint"] if resume else None,
                                  seen_parts=frozenset(resume["seen_parts"]) if resume else frozenset(),
                                  tokenizer_uri=_tokens_tokenizer(tokens, tokens_version))
            summary = {k: v for k, v in asdict(result).items() if isinstance(v, (int, float, str))}
            summary["checkpoint_uri"] = storage.relative(result.checkpoint_uri, root)
            checkpoint = f"{run_dir}/final"
            manifest = versions.publish(root, ident, {
                "result": summary, "checkpoint": checkpoint, "owned": [run_dir],
                "files": {"model": f"{checkpoint}/model.pt", "state": f"{checkpoint}/state.json"},
                "seen_parts": len(resume["seen_parts"]) if resume else 0,
            }, {"tokens": versions.pinned(tokens, tokens_version),
                **({"resume": versions.pinned(root, resume["version"])} if resume else {})}, started)
        summary = {**manifest["result"], "checkpoint_uri": storage.join(root, manifest["checkpoint"])}
        return ctx.report(manifest, root, summary)


@stage_task("evaluate")
def evaluate(cfg: PipelineConfig, checkpoint_uri: str, parent_run_id: str | None = None) -> dict:
    """Held-out loss and perplexity of a checkpoint on the test split (validation for token datasets
    without one), plus sampled continuations of the prompts; one Ray task holding a GPU with
    `eval.use_gpu`, else a CPU. It logs to the stage's run itself, by run id and tracking URI."""
    from llm.eval import evaluate as run_evaluate
    from llm.executor import run_task

    with stage(cfg, parent_run_id, "evaluate") as ctx:
        started = time.time()
        layout = ctx.layout
        tokens_version, tokens_recipe = of_input(read_manifest(layout.tokens))
        tok_version, _ = of_input(read_manifest(layout.tokenizer))
        inputs = {"tokens": tokens_version, "tokenizer": tok_version}
        parents = {"tokens": versions.pinned(layout.tokens, tokens_version),
                   "tokenizer": versions.pinned(layout.tokenizer, tok_version)}
        train_version = versions.current(layout.train)
        if train_version and storage.absolute(checkpoint_uri) == final_checkpoint(layout.train):
            inputs["train"] = train_version
            parents["train"] = versions.pinned(layout.train, train_version)
        else:  # a checkpoint from elsewhere: known by its state file's digest
            inputs["checkpoint"] = _digest(storage.join(checkpoint_uri, "state.json"))
        # Where it runs is not what it computes: `use_gpu` stays out of the identity.
        ident = identity("evaluate", cfg.eval.model_dump(mode="json", exclude={"use_gpu"}), inputs,
                         {"tokens": tokens_recipe})
        out = layout.eval
        manifest = versions.reuse(out, ident)
        if manifest is None:
            # Every path absolute (the layout's are): the task may run in another folder, or on another node.
            gpu = cfg.eval.use_gpu
            result = run_task(run_evaluate, storage.absolute(checkpoint_uri),
                              versions.pinned(layout.tokens, tokens_version), tokenizer_uri(parents["tokenizer"]),
                              cfg.eval, ctx.run, device="cuda" if gpu else "cpu", num_gpus=1 if gpu else 0,
                              ray_config=cfg.ray)
            data = asdict(result)
            rel = f"eval-{ident.version}.json"
            storage.write_text(storage.join(out, rel), dumps(data))
            # eval.json: the current results under a fixed name (each version's stay in eval-<version>.json)
            storage.write_text(storage.join(out, "eval.json"), dumps(data))
            summary = {k: v for k, v in data.items() if isinstance(v, (int, float, str))}
            manifest = versions.publish(out, ident, {"result": summary, "files": {"results": rel, "current": "eval.json"}},
                                        parents, started)
        else:  # an earlier version current again: its results become the current ones
            storage.write_text(storage.join(out, "eval.json"),
                               storage.read_text(storage.join(out, manifest["files"]["results"])))
        return ctx.report(manifest, out, manifest["result"])


def _tokens_tokenizer(tokens: str, tokens_version: str) -> str | None:
    """The .model file the token dataset's version was made with (None for tokens made outside a stage)."""
    parent = read_manifest(versions.pinned(tokens, tokens_version)).get("parents", {}).get("tokenizer")
    return tokenizer_uri(versions.parent_uri(tokens, parent)) if parent else None


def _digest(uri: str) -> str:
    import hashlib

    return hashlib.sha256(storage.read_bytes(uri)).hexdigest()[:16]
