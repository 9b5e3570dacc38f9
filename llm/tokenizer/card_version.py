"""The card of a stored tokenizer version (`llmpipe tokenizer-card DIR[@version]`).

A version made with cards lists card-<version>.json in its files. One made before has none: its card
is computed here from the shards version it was trained on, with the sample it recorded (the
document-id hash at its `sample.fraction` and the config's seed, the only sampler such versions
used), and printed, not written (a published version is never changed).
"""

from __future__ import annotations

from llm import storage, versions
from llm.config import TokenizerConfig
from llm.data.dataset import read_manifest, shard_files
from llm.errors import InputNotFound, UserError
from llm.tokenizer.base import tokenizer_from_bytes
from llm.tokenizer.card import HeldOut, compute_card, read_card


def version_card(tokenizer_dir: str, executor=None) -> dict:
    """The card of the current version of `tokenizer_dir` (or of `dir@version`): the stored one, else
    computed from its input shards (a `UserError` saying why when they cannot be read)."""
    root = versions.split(tokenizer_dir)[0]
    manifest = read_manifest(tokenizer_dir)
    card = read_card(root, manifest)
    if card is not None:
        return card
    what = f"{tokenizer_dir} (version {manifest.get('version')}) has no card and"
    parent = manifest.get("parents", {}).get("shards")
    sample = manifest.get("sample") or {}
    if parent is None or "fraction" not in sample:
        raise UserError(f"{what} records no input shards or sample fraction to compute one from; retrain it "
                        "(`llmpipe tokenizer`) to get a card")
    shards_uri = versions.parent_uri(root, parent)
    try:
        shards = read_manifest(shards_uri)
    except InputNotFound as exc:
        raise UserError(f"{what} its input shards {shards_uri} are gone ({exc}; removed by `llmpipe gc`?): "
                        "retrain the tokenizer to get a card") from None
    files = shard_files(shards_uri)
    missing = [f for f in files if not storage.exists(f)]
    if missing:
        raise UserError(f"{what} {len(missing)} of its input shard files are gone (first: {missing[0]}): "
                        "retrain the tokenizer to get a card")
    config = manifest.get("identity", {}).get("config", {})
    defaults = TokenizerConfig()
    seed = int(config.get("seed", defaults.seed))
    card_bytes = int(config.get("card_bytes", defaults.card_bytes))
    total = sum(s["extra"].get("text_bytes", 0) for s in shards["shards"])
    from llm.tokenizer.sample import SamplePlan, selected, stratum
    from llm.tokenizer.stage import tokenizer_uri

    tok = tokenizer_from_bytes(storage.read_bytes(tokenizer_uri(tokenizer_dir)))
    if "strata" in sample:  # a stratified sample records each stratum's fraction
        plan = SamplePlan.from_manifest(sample)
        in_sample = lambda d, s, l: plan.in_sample(d, stratum(s, l))
    else:  # before stratified samples: one hash threshold for every document
        fraction = float(sample["fraction"])
        in_sample = lambda d, s, l: selected(d, seed, fraction)
    if sample.get("reserved_fraction"):  # the card's documents were held out before sampling
        held_out = HeldOut(seed, float(sample["reserved_fraction"]))
    else:  # a version made before that: a share of what the sample left
        held_out = HeldOut.bounded(seed, card_bytes, total - int(sample.get("bytes", 0)))
    if executor is None:
        from llm.executor import LocalExecutor

        executor = LocalExecutor(progress=True)
    return compute_card(tok, files, in_sample, held_out, executor, sample)
