"""The fine-tuning stage task: a versioned output like every other stage, skipped when its identity (code,
the `finetune` config, the base model's and the tokenizer's versions, the SFT data's digest) is current."""

from __future__ import annotations

import hashlib
import time
from dataclasses import asdict

from llm import storage, versions
from llm.config import PipelineConfig
from llm.data.dataset import read_manifest
from llm.errors import UserError
from llm.lineage import identity, of_input
from llm.tokenizer.stage import tokenizer_uri
from llm.train.checkpoint import read_state
from tasks.runtime import stage, stage_task
from tasks.train import final_checkpoint

#: The demo's SFT set: built from the crawled documentation when `finetune.data.path` is empty.
DOC_PAIRS_FILE = "doc_pairs.jsonl"


def data_digest(path: str) -> str:
    """Digest of the SFT files' names and bytes: the data's identity."""
    from llm.finetune.sft_data import sft_files

    digest = hashlib.sha256()
    for uri in sft_files(path):
        digest.update(storage.relative(uri, path).encode() + b"\0")
        digest.update(hashlib.sha256(storage.read_bytes(uri)).digest())
    return digest.hexdigest()[:32]


def _base_input(cfg: PipelineConfig, layout) -> tuple[dict, dict, str | None]:
    """(inputs, parents, base checkpoint URI or None for a registered model fetched later)."""
    ref = cfg.finetune.base
    if ref is None:
        train_version = versions.current(layout.train)
        if train_version is None:
            raise UserError(f"finetune.base is empty and {layout.train} holds no pretraining run: run the pretrain "
                            "stage first, or point finetune.base at a checkpoint or a registered model")
        return ({"train": train_version}, {"train": versions.pinned(layout.train, train_version)},
                final_checkpoint(layout.train))
    from llm.finetune.base import is_registered, registered_version
    from llm.tracking import resolve_tracking_uri

    if is_registered(ref):
        name, version = registered_version(ref, resolve_tracking_uri(cfg.tracking, cfg.work_dir))
        return {"base": f"models:/{name}/{version}"}, {}, None
    model = storage.join(ref, "model.pt")
    if not storage.exists(model):
        raise UserError(f"finetune.base {ref}: no model.pt there (a checkpoint folder holds model.pt and state.json)")
    return {"base": hashlib.sha256(storage.read_bytes(model)).hexdigest()}, {}, storage.absolute(ref)


@stage_task("finetune")
def finetune(cfg: PipelineConfig, parent_run_id: str | None = None) -> dict:
    """Fine-tune the pretrained model (or `finetune.base`) on SFT pairs or chats with `finetune.method`."""
    from llm.cluster import ensure_ray
    from llm.finetune.trainer import finetune as run_finetune

    ft = cfg.finetune
    with stage(cfg, parent_run_id, "finetune") as ctx:
        started = time.time()
        layout = ctx.layout
        tok_version, _ = of_input(read_manifest(layout.tokenizer))
        inputs, parents, base_uri = _base_input(cfg, layout)
        inputs["tokenizer"] = tok_version
        parents["tokenizer"] = versions.pinned(layout.tokenizer, tok_version)
        if ft.data.path is None:  # the demo's pairs, from the current crawl's documentation pages
            crawl_version = versions.current(layout.crawl)
            if crawl_version is None:
                raise UserError("finetune.data.path is empty and there is no crawl to build pairs from: point it at "
                                "a JSONL file of prompt/response pairs or chats")
            inputs["crawl"] = crawl_version
            parents["crawl"] = versions.pinned(layout.crawl, crawl_version)
        else:
            inputs["data"] = data_digest(ft.data.path)
        ident = identity("finetune", ft, inputs)
        root = layout.finetune
        manifest = versions.reuse(root, ident)
        if manifest is None:
            run_dir = f"runs/{ident.version}"
            out = storage.join(root, run_dir)
            data_cfg = ft.data
            doc_pairs = None
            if data_cfg.path is None:
                from llm.finetune.doc_pairs import build_doc_pairs

                doc_pairs = build_doc_pairs(versions.pinned(layout.crawl, inputs["crawl"]), storage.join(out, DOC_PAIRS_FILE))
                data_cfg = data_cfg.model_copy(update={"path": storage.join(out, DOC_PAIRS_FILE)})
            if base_uri is None:
                from llm.finetune.base import fetch_registered
                from llm.tracking import resolve_tracking_uri

                base_uri = fetch_registered(ft.base, resolve_tracking_uri(cfg.tracking, cfg.work_dir),
                                            storage.join(out, "base"))
            if ctx.run is not None:
                from llm.tracking import flatten

                client = ctx.run.client()
                for key, value in sorted(flatten({"finetune": ft.model_dump(mode="json")}).items()):
                    client.log_param(ctx.run.run_id, key, value)
            ensure_ray(cfg.ray)
            result = run_finetune(ft.model_copy(update={"data": data_cfg}), base_uri,
                                  tokenizer_uri(parents["tokenizer"]), out, ctx.run)
            summary = {k: v for k, v in asdict(result).items() if isinstance(v, (int, float, str))}
            summary["checkpoint_uri"] = storage.relative(result.checkpoint_uri, root)
            summary.update({f"examples_{k}": v for k, v in result.examples.items() if isinstance(v, (int, float))})
            if doc_pairs is not None:
                summary.update({f"doc_pairs_{k}": v for k, v in doc_pairs.items() if isinstance(v, (int, float))})
            checkpoint = f"{run_dir}/final"
            weights = read_state(result.checkpoint_uri).get("weights_file", "model.pt")
            manifest = versions.publish(root, ident, {
                "result": summary, "checkpoint": checkpoint, "owned": [run_dir],
                "examples": result.examples, "samples": result.samples,
                "files": {"state": f"{checkpoint}/state.json", "weights": f"{checkpoint}/{weights}",
                          "samples": f"{run_dir}/samples.json"},
            }, parents, started)
        summary = {**manifest["result"], "checkpoint_uri": storage.join(root, manifest["checkpoint"])}
        return ctx.report(manifest, root, summary)
