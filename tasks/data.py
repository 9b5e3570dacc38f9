"""Data stage tasks: crawl, ingest (extract + normalize), exact dedup, MinHash dedup, shard, tokenizer, tokenize."""

from __future__ import annotations

from llm import storage
from llm.config import PipelineConfig
from llm.tracking import log_dict
from tasks.runtime import stage, stage_task


def _secret_block(name: str | None) -> str | None:
    """The value of the Prefect Secret block `name` (None when no block is named)."""
    if name is None:
        return None
    from prefect.blocks.system import Secret

    from llm.errors import UserError

    try:
        return str(Secret.load(name).get())
    except ValueError as exc:  # Prefect: no block document of that name
        raise UserError(f"data.pii.pseudonym_key_secret: no Prefect Secret block named {name!r} ({exc})") from None


@stage_task("crawl")
def crawl(cfg: PipelineConfig, parent_run_id: str | None = None, refresh: bool = False) -> dict:
    """Crawl the configured site (default: a local pydoc server) into WARC files. `refresh`: recrawl with
    conditional requests and add only new and changed pages. The crawl is one Ray task (one CPU); a
    current crawl is reused without starting Ray."""
    from llm.data.crawl_stage import COUNTERS, crawl_stage, reused_crawl
    from llm.executor import run_task

    with stage(cfg, parent_run_id, "crawl") as ctx:
        out = ctx.layout.crawl
        manifest = reused_crawl(cfg.data.crawl, out, refresh)
        if manifest is None:
            manifest = run_task(crawl_stage, cfg.data.crawl, out, refresh=refresh, progress=True,
                                ray_config=cfg.ray)
        extra = {k: manifest[k] for k in COUNTERS if k in manifest}
        extra.update({f"refresh_{k}": v for k, v in manifest.get("refresh", {}).items()})
        return ctx.report(manifest, out, extra)


@stage_task("ingest")
def ingest(cfg: PipelineConfig, parent_run_id: str | None = None) -> dict:
    """Read every source, extract, normalize, scrub PII and filter by language, quality and content, one
    fused pass per input shard."""
    from llm.data.ingest import run_ingest
    from llm.secrets import with_pseudonym_key

    with stage(cfg, parent_run_id, "ingest") as ctx:
        cfg = with_pseudonym_key(cfg, ctx.layout.work_dir, _secret_block(cfg.data.pii.pseudonym_key_secret))
        manifest = run_ingest(cfg, ctx.layout.crawl, ctx.layout.docs, ctx.executor)
        ctx.log_data_stats(ctx.layout.docs, manifest)
        skipped = {name: s["skipped"] for name, s in manifest.get("sources", {}).items() if "skipped" in s}
        return ctx.report(manifest, ctx.layout.docs, {"skipped_sources": skipped} if skipped else None)


@stage_task("exact_dedup")
def exact_dedup(cfg: PipelineConfig, parent_run_id: str | None = None) -> dict:
    """Drop exact duplicates of the normalized text, keeping the first copy in input order."""
    from llm.data.exact_dedup import run_exact_dedup

    with stage(cfg, parent_run_id, "exact_dedup") as ctx:
        manifest = run_exact_dedup(ctx.layout.docs, ctx.layout.dedup, cfg.data.exact_dedup, cfg.data.shard,
                                   ctx.executor)
        return ctx.report(manifest, ctx.layout.dedup)


@stage_task("minhash_dedup")
def minhash_dedup(cfg: PipelineConfig, parent_run_id: str | None = None) -> dict:
    """Drop near-duplicates by MinHash LSH with verified pairs and no chaining, after repeated URLs."""
    from llm.data.minhash.stage import removal_rate, run_minhash_dedup

    with stage(cfg, parent_run_id, "minhash_dedup") as ctx:
        manifest = run_minhash_dedup(ctx.layout.dedup, ctx.layout.near_dedup, cfg.data.minhash, cfg.data.shard,
                                     ctx.executor)
        stats = manifest.get("minhash", {})
        if ctx.run is not None and "s_curve" in stats and not manifest.get("reused"):
            # The S-curve as a metric series (step = similarity in percent) so MLflow plots it.
            for s, p in stats["s_curve"].items():
                ctx.run.log_metrics({"minhash.p_candidate": p}, step=round(float(s) * 100))
            for i, n in enumerate(stats.get("candidate_jaccard_hist", [])):
                ctx.run.log_metrics({"minhash.candidates_by_jaccard": n}, step=i * 5)
            log_dict(ctx.run, stats, "minhash_stats.json")
        extra = {"removal_rate": removal_rate(manifest)}
        extra.update({k: stats[k] for k in ("candidate_pairs", "verified_pairs", "url_duplicates") if k in stats})
        return ctx.report(manifest, ctx.layout.near_dedup, extra)


@stage_task("shard")
def shard(cfg: PipelineConfig, parent_run_id: str | None = None) -> dict:
    """Cut the cleaned corpus into Parquet shards of the configured size."""
    from llm.data.reshard import run_reshard

    with stage(cfg, parent_run_id, "shard") as ctx:
        manifest = run_reshard(ctx.layout.near_dedup, ctx.layout.shards, cfg.data.shard, ctx.executor)
        return ctx.report(manifest, ctx.layout.shards)


@stage_task("tokenizer")
def tokenizer(cfg: PipelineConfig, parent_run_id: str | None = None) -> dict:
    """Train the tokenizer on a sample of the shards and log it and its card to MLflow."""
    from llm.tokenizer.card import ARTIFACT_NAMES, card_metrics, read_card
    from llm.tokenizer.stage import run_tokenizer_training

    with stage(cfg, parent_run_id, "tokenizer") as ctx:
        out = ctx.layout.tokenizer
        manifest = run_tokenizer_training(ctx.layout.shards, out, cfg.tokenizer, ctx.executor)
        card = read_card(out, manifest)
        if ctx.run is not None:
            import tempfile
            from pathlib import Path

            # Under their usual names (spm.model and spm.vocab, or tokenizer.json): the run holds one tokenizer.
            usual = {"model": "tokenizer.json"} if manifest.get("library") == "hf" else {}
            with tempfile.TemporaryDirectory() as tmp:
                for role, rel in manifest["files"].items():
                    path = Path(tmp) / (ARTIFACT_NAMES.get(role) or usual.get(role) or f"spm.{role}")
                    path.write_bytes(storage.read_bytes(storage.join(out, rel)))
                    ctx.run.log_artifact(str(path), "tokenizer")
        return ctx.report(manifest, out, {"vocab_size": manifest["vocab_size"],
                                          "library": manifest.get("library", "sentencepiece"),
                                          "model_type": manifest.get("model_type"),
                                          "sample_documents": manifest["sample"]["documents"],
                                          "held_out_documents": card["overall"]["documents"] if card else 0,
                                          **(card_metrics(card) if card else {})})


@stage_task("tokenize")
def tokenize(cfg: PipelineConfig, parent_run_id: str | None = None) -> dict:
    """Encode the shards into token files with document indexes, split into train, validation and test."""
    from llm.tokenizer.tokenize import run_tokenize

    with stage(cfg, parent_run_id, "tokenize") as ctx:
        manifest = run_tokenize(ctx.layout.shards, ctx.layout.tokenizer, ctx.layout.tokens, cfg.tokenize,
                                ctx.executor)
        totals = manifest["tokens"]["totals"]
        return ctx.report(manifest, ctx.layout.tokens, {"train_tokens": totals.get("train", 0),
                                                         "val_tokens": totals.get("val", 0),
                                                         "test_tokens": totals.get("test", 0),
                                                         "dtype": manifest["tokens"]["dtype"]})
