"""`train.resume_from`: after a refresh grew the token dataset, pretraining continues from the last run's
checkpoint (weights, optimizer, step) on the new token shards only, and the run is recorded as a new
pretraining version whose lineage names the one it continued."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from llm import storage, versions
from llm.config import build_config, stable_hash
from llm.layout import Layout
from llm.train.data import write_token_dataset
from tests.unit.train.tiny import VOCAB, counting_docs

pytestmark = [pytest.mark.integration, pytest.mark.slow]

_TINY = ["model.layers=1", "model.hidden_size=32", "model.attention_heads=2", "model.context_length=32",
         "train.num_workers=1", "train.batch_size=8", "train.micro_batch_size=8", "train.warmup_steps=2",
         "train.eval_every=4", "train.eval_batches=2", "train.checkpoint_every=4", "train.log_every=2",
         "train.learning_rate=0.01", "tracking.enabled=false", "train.registered_model=", "ray.num_cpus=2"]


def _grow(tokens: str) -> str:
    """A new version of the token dataset: the old training part plus a new one (a refresh)."""
    manifest = versions.read(tokens)
    extra = np.array([t for d in counting_docs(150, 7) for t in d], dtype="<u2")
    starts = np.r_[0, np.cumsum([len(d) for d in counting_docs(150, 7)])].astype("<i8")
    storage.write_bytes(storage.join(tokens, "train/part-00001.bin"), extra.tobytes())
    storage.write_bytes(storage.join(tokens, "train/part-00001.idx"), starts.tobytes())
    manifest["tokens"]["splits"]["train"].append({"bin": "train/part-00001.bin", "idx": "train/part-00001.idx",
                                                   "tokens": int(len(extra)), "docs": 150})
    manifest.pop("version")
    manifest["version"] = stable_hash(manifest)
    text = json.dumps(manifest, indent=2)
    storage.write_text(storage.join(tokens, "_versions", f"{manifest['version']}.json"), text)
    storage.write_text(storage.join(tokens, "_manifest.json"), text)
    return manifest["version"]


def test_resume_from_last_continues_on_the_new_token_shards_only(ray_local, tmp_path):
    from llm.train.checkpoint import load_model_state
    from llm.train.loop import ResumeState, checkpoint_to, train
    from tasks.train import pretrain

    work = tmp_path / "work"
    layout = Layout.for_work_dir(str(work))
    write_token_dataset(layout.tokens, {"train": counting_docs(200, 0), "val": counting_docs(40, 1)}, vocab_size=VOCAB)
    first_cfg = build_config({}, _TINY + [f"work_dir={work}", "train.max_steps=4"])
    first = pretrain.fn(first_cfg)
    assert first["steps"] == 4

    grown = _grow(layout.tokens)
    cfg = build_config({}, _TINY + [f"work_dir={work}", "train.max_steps=8", "train.resume_from=last"])
    second = pretrain.fn(cfg)
    manifest = versions.read(layout.train)
    assert second["steps"] == 8 and second["version"] != first["version"]
    assert manifest["seen_parts"] == 1
    assert manifest["parents"]["resume"]["version"] == first["version"]
    assert manifest["identity"]["inputs"] == {"tokens": grown, "resume": first["version"]}
    again = pretrain.fn(cfg)  # nothing new: the continued run is current, not continued from itself
    assert again["reused"] and again["version"] == second["version"]

    # The same continuation in this process: the first run's checkpoint, the new part only.
    model_cfg = cfg.model.model_copy(update={"vocab_size": VOCAB})
    reference = str(tmp_path / "reference")
    train(model_cfg, cfg.train, versions.pinned(layout.tokens, grown),
          resume=ResumeState.load(first["checkpoint_uri"]), report=checkpoint_to(reference),
          seen_parts=frozenset({"train/part-00000.bin"}))
    ours, ref = load_model_state(second["checkpoint_uri"]), load_model_state(reference)
    assert all(torch.allclose(ours[k], ref[k], atol=1e-6) for k in ref)
    # ... and it is not what training on every part would give
    everything = str(tmp_path / "everything")
    train(model_cfg, cfg.train, versions.pinned(layout.tokens, grown),
          resume=ResumeState.load(first["checkpoint_uri"]), report=checkpoint_to(everything))
    other = load_model_state(everything)
    assert not all(torch.allclose(ours[k], other[k], atol=1e-6) for k in other)

    # A different tokenizer behind the tokens is refused, naming the setting
    data = versions.read(layout.tokens)
    data["parents"] = {"tokenizer": {"uri": "../tokenizer", "version": "other"}}
    data["version"] = "retrained"
    storage.write_text(storage.join(layout.tokens, "_versions", "retrained.json"), json.dumps(data))
    storage.write_text(storage.join(layout.tokens, "_manifest.json"), json.dumps(data))
    with pytest.raises(ValueError, match="tokenizer.on_new_data"):
        pretrain.fn(cfg)
