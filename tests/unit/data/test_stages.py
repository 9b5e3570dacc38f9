"""Exact dedup, resharding, tokenizer training and tokenization over a small document dataset,
run in-process (LocalExecutor): accounting, determinism and resume."""

import numpy as np
import pyarrow as pa
import pytest

from llm import storage
from llm.config import ExactDedupConfig, ShardConfig, TokenizeConfig, TokenizerConfig
from llm.data import schema
from llm.data.dataset import Counts, read_manifest
from llm.data.exact_dedup import run_exact_dedup
from llm.data.dataset import write_shard
from llm.data.reshard import plan_cuts, run_reshard
from llm.tokenizer.tokenize import run_tokenize, split_of
from llm.executor import LocalExecutor
from llm.tokenizer import load_tokenizer
from llm.tokenizer.stage import run_tokenizer_training, tokenizer_uri
from tests.trees import output_tree

WORDS = ("alpha beta gamma delta epsilon zeta eta theta iota kappa lambda mu nu xi omicron pi rho sigma "
         "tau upsilon phi chi psi omega").split()


def _doc(i: int) -> str:
    rng = np.random.default_rng(i)
    return " ".join(rng.choice(WORDS, size=40 + i % 30)) + f"\ndef f{i}(x):\n    return x + {i}\n"


def make_docs_dataset(uri: str, shards: int = 3, per_shard: int = 20) -> list[str]:
    """Write a docs dataset; every 5th document of shard k>0 repeats a document of shard 0."""
    ids = []
    for s in range(shards):
        texts = [_doc(s * 1000 + i) if not (s and i % 5 == 0) else _doc(i) for i in range(per_shard)]
        rows = [{"id": schema.doc_id("t", s, i), "text": t, "source": "test", "url": None, "created": None,
                 "meta": "{}"} for i, t in enumerate(texts)]
        ids += [r["id"] for r in rows]
        table = pa.Table.from_pylist(rows, schema.DOC_SCHEMA)
        counts = Counts(read=per_shard, kept=per_shard)
        rec = write_shard(uri, f"in-{s:05d}", [f"in-{s}"], table, schema.reject_schema(schema.DOC_SCHEMA).empty_table(),
                          schema.QUARANTINE_SCHEMA.empty_table(), counts)
        from llm.data.dataset import write_record
        write_record(uri, rec)
    from llm.data.dataset import load_record, write_manifest
    write_manifest(uri, "fixture", [load_record(uri, f"in-{s:05d}") for s in range(shards)])
    return ids


def _pipeline(root: str) -> dict:
    ex = LocalExecutor()
    docs, dedup, shards, tok, tokens = (storage.join(root, n) for n in ["docs", "dedup", "shards", "tok", "tokens"])
    make_docs_dataset(docs)
    out = {"dedup": run_exact_dedup(docs, dedup, ExactDedupConfig(num_buckets=4), ShardConfig(), ex)}
    out["shards"] = run_reshard(dedup, shards, ShardConfig(target_bytes=4000), ex)
    out["tok"] = run_tokenizer_training(shards, tok, TokenizerConfig(vocab_size=300, sample_bytes=20000), ex)
    out["tokens"] = run_tokenize(shards, tok, tokens, TokenizeConfig(val_fraction=0.2, test_fraction=0.2), ex)
    return out





def test_exact_dedup_accounts_and_keeps_first_copy(tmp_path):
    out = _pipeline(str(tmp_path))
    totals = out["dedup"]["totals"]["counts"]
    # shards 1 and 2 each repeat 4 documents of shard 0
    assert totals == {"read": 60, "kept": 52, "dropped": {"exact_duplicate": 8}, "quarantined": 0}
    rejected = pa.concat_tables([storage.read_parquet(str(p)) for p in sorted((tmp_path / "dedup" / "rejected").glob("*.parquet"))])
    first = next(sh for sh in out["dedup"]["shards"] if sh["name"] == "in-00000")
    shard0 = storage.read_parquet(str(tmp_path / "dedup" / first["files"]["data"]))
    keepers = set(shard0.column("id").to_pylist())
    assert set(rejected.column("detail").to_pylist()) <= keepers  # keeper is always the shard-0 copy
    assert set(rejected.column("rule").to_pylist()) == {"exact_duplicate"}
    assert not (tmp_path / "dedup" / "_work").exists()


def test_reshard_respects_target_and_loses_nothing(tmp_path):
    out = _pipeline(str(tmp_path))
    m = out["shards"]
    assert m["totals"]["rows"] == 52 and m["totals"]["shards"] > 1
    for s in m["shards"][:-1]:
        assert s["extra"]["text_bytes"] >= 4000
    assert plan_cuts([("a", [5, 5, 5]), ("b", [5])], 10) == [[("a", 0, 2)], [("a", 2, 3), ("b", 0, 1)]]


def test_tokens_split_by_hash_and_index_is_consistent(tmp_path):
    out = _pipeline(str(tmp_path))
    meta = out["tokens"]["tokens"]
    assert meta["dtype"] == "uint16" and meta["vocab_size"] == out["tok"]["vocab_size"]
    tok = load_tokenizer(tokenizer_uri(str(tmp_path / "tok")))
    n_docs = 0
    for split, entries in meta["splits"].items():
        for e in entries:
            tokens = np.fromfile(tmp_path / "tokens" / e["bin"], dtype=np.uint16)
            idx = np.fromfile(tmp_path / "tokens" / e["idx"], dtype="<i8")
            assert len(idx) == e["docs"] + 1 and idx[-1] == len(tokens) == e["tokens"]
            starts = tokens[idx[:-1]]
            assert (starts == tok.bos_id).all() and (tokens[idx[1:] - 1] == tok.eos_id).all()
            first = tok.decode(tokens[idx[0] + 1: idx[1] - 1])
            assert split_of(schema.text_hash(first), 0.2, 0.2) == split
            n_docs += e["docs"]
    assert n_docs == 52
    assert meta["totals"]["val"] > 0 and meta["totals"]["train"] > meta["totals"]["val"]
    assert meta["totals"]["test"] > 0 and meta["totals"]["train"] > meta["totals"]["test"]


def _documents(root, entries) -> list[tuple[int, ...]]:
    docs = []
    for e in entries:
        tokens = np.fromfile(root / e["bin"], dtype=np.uint16)
        idx = np.fromfile(root / e["idx"], dtype="<i8")
        docs += [tuple(tokens[a:b].tolist()) for a, b in zip(idx[:-1], idx[1:])]
    return docs


def test_tokenize_writes_a_test_split_disjoint_from_train_and_val(tmp_path):
    _pipeline(str(tmp_path))
    tok = load_tokenizer(tokenizer_uri(str(tmp_path / "tok")))
    # the raw documents, exact copies across shards included: each copy lands where the original does
    out = tmp_path / "raw-tokens"
    meta = run_tokenize(str(tmp_path / "docs"), str(tmp_path / "tok"), str(out),
                        TokenizeConfig(val_fraction=0.2, test_fraction=0.2), LocalExecutor())["tokens"]
    assert set(meta["splits"]) == {"train", "val", "test"}
    assert meta["splits"]["test"] and all(e["bin"].startswith("test/") and (out / e["bin"]).exists()
                                          and (out / e["idx"]).exists() for e in meta["splits"]["test"])
    docs = {s: _documents(out, meta["splits"][s]) for s in ("train", "val", "test")}
    assert sum(len(d) for d in docs.values()) == 60
    assert meta["totals"]["test"] == sum(len(d) for d in docs["test"]) > 0
    test = set(docs["test"])
    assert len(docs["test"]) > len(test)  # some test documents have exact copies in other shards...
    assert not test & set(docs["train"]) and not test & set(docs["val"])  # ...and none went elsewhere
    assert not set(docs["train"]) & set(docs["val"])
    for split, ids in docs.items():
        for d in ids:
            assert split_of(schema.text_hash(tok.decode(list(d[1:-1]))), 0.2, 0.2) == split


def test_two_runs_are_byte_identical(tmp_path):
    _pipeline(str(tmp_path / "a"))
    _pipeline(str(tmp_path / "b"))
    a, b = output_tree(tmp_path / "a"), output_tree(tmp_path / "b")
    assert a.keys() == b.keys()
    assert [k for k in a if a[k] != b[k]] == []


class Boom(RuntimeError):
    pass


def test_resume_after_failure_skips_finished_shards(tmp_path, monkeypatch):
    ref = tmp_path / "ref"
    _pipeline(str(ref))
    root = tmp_path / "run"
    import llm.data.reshard as reshard

    real = reshard.write_shard
    calls = []

    def failing(dataset, name, *a, **k):
        calls.append(name)
        if len(calls) == 3:  # the third output shard
            raise Boom("injected")
        return real(dataset, name, *a, **k)

    monkeypatch.setattr(reshard, "write_shard", failing)
    with pytest.raises(Boom):
        _pipeline(str(root))
    assert not (root / "shards" / "_manifest.json").exists()
    monkeypatch.setattr(reshard, "write_shard", lambda *a, **k: (calls.append(a[1]), real(*a, **k))[1])
    calls.clear()
    _pipeline(str(root))
    names = [sh["name"] for sh in read_manifest(str(root / "shards"))["shards"]]
    assert names[0] not in calls and names[2] in calls  # finished shards were skipped
    a, b = output_tree(ref), output_tree(root)
    assert [k for k in a if a.get(k) != b.get(k)] == [] and a.keys() == b.keys()


def test_manifest_records_inputs_and_digests(tmp_path):
    _pipeline(str(tmp_path))
    m = read_manifest(str(tmp_path / "shards"))
    for s in m["shards"]:
        data = (tmp_path / "shards" / s["files"]["data"]).read_bytes()
        import hashlib
        assert hashlib.sha256(data).hexdigest() == s["sha256"] and len(data) == s["bytes"]
        assert s["inputs"] and s["config_hash"] == m["identity"]["config_hash"] and s["key"]
        assert s["files"]["data"] == f"{s['key']}.parquet"
    from llm.lineage import code_digest

    assert m["identity"]["code"] == code_digest("shard") and m["version"] == m["identity"]["version"]
    assert m["parents"]["docs"]["uri"] == "../dedup"


def test_too_small_vocabulary_is_a_clear_error():
    from llm.tokenizer import train_sentencepiece

    docs = ["".join(chr(0x4E00 + i) for i in range(k, k + 50)) for k in range(0, 2000, 50)]
    with pytest.raises(ValueError, match="raise tokenizer.vocab_size"):
        train_sentencepiece(docs, vocab_size=100, character_coverage=1.0)
