"""The MinHash stage in-process on a planted near-duplicate corpus built from real text: recall,
precision and no chaining against brute-force Jaccard; accounting, determinism, resume, keeper rules,
URL dedup, incremental runs and the memory bound."""

import json
import tracemalloc
from pathlib import Path

import numpy as np
import pytest

from llm.config import MinHashConfig, ShardConfig
from llm.data import schema
from llm.data.minhash.clusters import connected_components
from llm.data.minhash.shingles import jaccard, word_shingles
from llm.data.inspect import format_stats, stats
from llm.data.minhash.stage import run_minhash_dedup
from llm.executor import LocalExecutor
from tests.unit.data.minhash.conftest import rejected, removals, write_dataset
from tests.trees import output_tree

SHARD = ShardConfig()


def _run(root: Path, cfg: MinHashConfig, name: str = "out", src: str = "in", executor=None) -> dict:
    return run_minhash_dedup(str(root / src), str(root / name), cfg, SHARD, executor or LocalExecutor())




def test_recall_precision_and_no_chaining_on_planted_duplicates(tmp_path, planted):
    ids = write_dataset(str(tmp_path / "in"), planted.texts, shards=5)
    manifest = _run(tmp_path, MinHashConfig(keeper="first"))
    removed = removals(str(tmp_path / "out"), ids)

    c = manifest["totals"]["counts"]
    assert c["read"] == len(ids) == c["kept"] + sum(c["dropped"].values())
    assert c["dropped"] == {"near_duplicate": len(removed)}

    truth = [p for p, j in planted.truth.items() if j >= 0.8]
    assert len(truth) > 250
    caught = sum(1 for i, j in truth if i in removed or j in removed)
    assert caught / len(truth) >= 0.95, caught / len(truth)

    # Precision on every pair the clusters imply: each removed document with its keeper.
    implied = [(d, k) for d, (k, _) in removed.items()]
    good = [planted.jaccard(d, k) >= 0.8 for d, k in implied]
    assert sum(good) / len(good) >= 0.95 and all(good)  # exact verification: none below
    for d, (k, row) in removed.items():
        assert k not in removed  # a keeper is kept
        assert row["value"] == pytest.approx(planted.jaccard(d, k), abs=1e-6) and row["threshold"] == 0.8
        assert json.loads(row["detail"])["cluster"] in ids

    # The corpus does chain: connected components of the true pairs would remove documents in favour
    # of a keeper they are not similar to.
    a, b = np.array([p[0] for p in truth]), np.array([p[1] for p in truth])
    label = connected_components(a, b)
    chained = [n for n, root in label.items() if n != root and planted.jaccard(n, root) < 0.8]
    assert len(chained) >= 5

    stats = manifest["minhash"]
    assert stats["s_curve"]["0.8"] == pytest.approx(1 - (1 - 0.8**8) ** 14)
    assert sum(stats["cluster_size_hist"].values()) == len({k for _, (k, _) in removed.items()})
    assert stats["verified_pairs"] <= stats["candidate_pairs"]

    # Estimated verification (112 signature values, standard error ~0.04) lets pairs just under the
    # threshold through; it is the cheap mode, exact verification is the one that meets the bar.
    est = _run(tmp_path, MinHashConfig(keeper="first", verify="estimate"), name="est")
    pairs = [(d, k) for d, (k, _) in removals(str(tmp_path / "est"), ids).items()]
    assert est["totals"]["counts"]["read"] == len(ids)
    assert sum(planted.jaccard(d, k) >= 0.7 for d, k in pairs) / len(pairs) >= 0.95


def test_disabled_passes_every_document_through(tmp_path, planted):
    write_dataset(str(tmp_path / "in"), planted.texts[:100], shards=2)
    m = _run(tmp_path, MinHashConfig(enabled=False))
    assert m["totals"]["counts"] == {"read": 100, "kept": 100, "dropped": {}, "quarantined": 0}
    assert not (tmp_path / "out" / "rejected").exists() and not (tmp_path / "out" / "_work").exists()


def test_same_clusters_every_run_and_after_a_killed_run(tmp_path, planted):
    write_dataset(str(tmp_path / "in"), planted.texts[:400], shards=4)
    cfg = MinHashConfig(keeper="longest", min_buckets=3)
    first = _run(tmp_path, cfg, "a")
    _run(tmp_path, cfg, "b")
    tree = output_tree(tmp_path / "a")
    assert first["totals"]["counts"]["dropped"] and tree == output_tree(tmp_path / "b")
    # A run killed after two shards: their records stay, the rest is gone, work files half written.
    for name in ("in-00002", "in-00003"):
        for rel in (f"_shards/{name}.json", f"{name}.parquet", f"rejected/{name}.parquet", f"_index/{name}.npz"):
            (tmp_path / "b" / rel).unlink(missing_ok=True)
    (tmp_path / "b" / "_work" / "h" / "signed").mkdir(parents=True)
    (tmp_path / "b" / "_manifest.json").unlink()
    _run(tmp_path, cfg, "b")
    assert output_tree(tmp_path / "b") == tree


def test_graph_rounds_give_the_same_clusters_as_one_task(tmp_path, planted, monkeypatch):
    from llm.data.minhash import stage

    write_dataset(str(tmp_path / "in"), planted.texts[:600], shards=3)
    cfg = MinHashConfig(keeper="longest", min_buckets=3)
    phases = []

    class Recording(LocalExecutor):
        def map(self, fn, items, desc=""):
            phases.append(desc)
            return super().map(fn, items, desc)

    one = _run(tmp_path, cfg, "one", executor=Recording())
    assert "minhash: clusters" in phases and "minhash: large-star" not in phases
    phases.clear()
    monkeypatch.setattr(stage, "_EDGE_BYTES", 1 << 40)  # no graph fits: partitions and rounds
    rounds = _run(tmp_path, cfg, "rounds", executor=Recording())
    assert "minhash: clusters" not in phases and {"minhash: large-star", "minhash: stars"} <= set(phases)
    assert one["totals"]["counts"]["dropped"]["near_duplicate"] > 20
    assert one == rounds and output_tree(tmp_path / "one") == output_tree(tmp_path / "rounds")


def test_keeper_rules(tmp_path, words):
    base = " ".join(words[1000:1300])
    texts = [base, base + " a short tail", base.replace(words[1100], "changed", 1)]
    created = ["2024-05-01T00:00:00", "2021-01-01T00:00:00Z", None]
    ids = write_dataset(str(tmp_path / "in"), texts, shards=1, created=created)

    def kept(cfg):
        name = cfg.keeper
        _run(tmp_path, cfg, name)
        return sorted(set(ids) - {r["id"] for r in rejected(str(tmp_path / name))})

    assert kept(MinHashConfig(keeper="first")) == [ids[0]]
    assert kept(MinHashConfig(keeper="longest")) == [ids[1]]
    assert kept(MinHashConfig(keeper="oldest")) == [ids[1]]


def test_url_duplicates_go_first_and_never_count_twice(tmp_path, words):
    texts = [" ".join(words[i * 400:(i + 1) * 400]) for i in range(4)]
    urls = ["https://Example.com/a/?utm_source=x&b=2", "http://www.example.com/a?b=2#top", None,
            "https://example.com/other"]
    texts[3] = texts[0]  # a near copy under another URL
    ids = write_dataset(str(tmp_path / "in"), texts, shards=2, urls=urls)
    m = _run(tmp_path, MinHashConfig())
    got = {ids.index(d[0]): (d[1], d[2]) for d in
           [(r["id"], r["rule"], json.loads(r["detail"])["keeper"]) for r in rejected(str(tmp_path / "out"))]}
    assert got == {1: ("url_duplicate", ids[0]), 3: ("near_duplicate", ids[0])}
    assert m["totals"]["counts"]["dropped"] == {"near_duplicate": 1, "url_duplicate": 1}
    # `llmpipe stats` shows the run's removal rate, S-curve and cluster sizes
    data = stats(str(tmp_path / "out"))["minhash"]
    assert data["removal_rate"] == 0.5 and data["url_duplicates"] == 1 and data["cluster_size_hist"] == {"2": 1}
    text = format_stats(stats(str(tmp_path / "out")))
    assert "removal rate 50.00%, 1 URL duplicates" in text and "14 bands x 8 rows" in text
    assert "0.8: 0.924" in text and "\n2                     1" in text


def test_incremental_batch_checked_against_the_earlier_index(tmp_path, planted):
    old = planted.texts[:300]
    write_dataset(str(tmp_path / "old_in"), old, shards=2, tag="old")
    first = _run(tmp_path, MinHashConfig(keeper="first"), "old_out", src="old_in")
    new = [planted.texts[i] + " one more line" for i in range(0, 40)] + planted.texts[300:400]
    new_ids = write_dataset(str(tmp_path / "in"), new, shards=2, tag="new")
    m = _run(tmp_path, MinHashConfig(keeper="first", index_uri=str(tmp_path / "old_out")))
    import pyarrow.parquet as pq

    old_kept = set()
    for shard in first["shards"]:
        old_kept |= set(pq.read_table(tmp_path / "old_out" / shard["files"]["data"]).column("id").to_pylist())
    old_kept = sorted(old_kept)
    removed = removals(str(tmp_path / "out"), new_ids + old_kept)
    against_old = {d: (k, row) for d, (k, row) in removed.items() if k >= len(new)}
    # every new copy of a kept old document goes, in favour of an old document
    assert sum(1 for i in range(40) if i in against_old) >= 36
    assert all(k not in removed for k, _ in removed.values())
    assert m["totals"]["counts"]["read"] == len(new)
    # Verified exactly: the old keeper's text is re-shingled from the earlier output.
    old_text = {schema.doc_id("old", i): t for i, t in enumerate(old)}
    for d, (k, row) in against_old.items():
        exact = jaccard(*(word_shingles([new[d], old_text[old_kept[k - len(new)]]], 5).of(i) for i in (0, 1)))
        assert exact >= 0.8 and row["value"] == pytest.approx(exact, abs=1e-6)
    meta = json.loads((tmp_path / "out" / "_index" / "_meta.json").read_text())
    assert meta["parent"] == str(tmp_path / "old_out")
    assert [s["docs"] for s in meta["shards"]] == [r["extra"]["index_docs"] for r in m["shards"]]
    # The same batch again, against this run's index (and through its parent, the first run's): every
    # document is now a copy of one already indexed. An index made with other settings is refused.
    again = _run(tmp_path, MinHashConfig(keeper="first", index_uri=str(tmp_path / "out")), "again")
    assert again["totals"]["counts"]["dropped"] == {"near_duplicate": len(new)}
    with pytest.raises(ValueError, match="index_uri"):
        _run(tmp_path, MinHashConfig(keeper="first", ngram=4, index_uri=str(tmp_path / "out")), "bad")


class _PeakExecutor(LocalExecutor):
    """Runs items in-process and records, per phase, the peak of Python and numpy allocations of any
    one item."""

    def __init__(self):
        super().__init__()
        self.peaks: dict[str, int] = {}

    def map(self, fn, items, desc=""):
        def measured(item):
            tracemalloc.start()
            try:
                return fn(item)
            finally:
                self.peaks[desc] = max(self.peaks.get(desc, 0), tracemalloc.get_traced_memory()[1])
                tracemalloc.stop()
        return super().map(measured, items, desc)


def test_memory_of_every_task_stays_bounded_as_the_corpus_grows(tmp_path, planted):
    from llm.data.minhash.shingles import word_shingles

    budget = 1 << 20
    cfg = MinHashConfig(memory_mb=1, min_buckets=1)
    peaks, parts = [], []
    for docs in (300, 1500):
        src = f"in{docs}"
        write_dataset(str(tmp_path / src), planted.texts[:docs], shards=docs // 150)
        ex = _PeakExecutor()
        m = run_minhash_dedup(str(tmp_path / src), str(tmp_path / f"out{docs}"), cfg, SHARD, ex)
        peaks.append(ex.peaks)
        parts.append(m["minhash"]["partitions"])
    texts = planted.texts[:1500]
    # What holding the corpus at once would take: texts, shingle sets and signatures.
    whole = sum(len(t.encode()) for t in texts) + 8 * len(word_shingles(texts, 5).hashes) + 1500 * 112 * 8
    small, large = peaks
    assert parts[1] > parts[0] >= 1  # the corpus grew: more buckets, not bigger ones
    for phase, peak in large.items():
        if phase in ("minhash: signatures", "minhash: send", "minhash: verify", "minhash_dedup"):
            # one shard (150 docs) or two; shards differ in text length, hence the slack
            assert peak < 1.5 * small[phase], (phase, peak, small[phase])
        else:
            assert peak < budget, (phase, peak)  # one bucket or graph partition, sized by the budget
    assert max(large.values()) < whole / 2, (large, whole)


def test_index_keeps_band_hashes_only_and_an_estimated_refresh_still_finds_the_copies(tmp_path, planted):
    old = planted.texts[:300]
    old_ids = write_dataset(str(tmp_path / "old_in"), old, shards=2, tag="old")
    _run(tmp_path, MinHashConfig(keeper="first"), "old_out", src="old_in")
    for f in (tmp_path / "old_out" / "_index").glob("*.npz"):
        assert set(np.load(f).files) == {"bands", "id", "row"}  # no whole signatures: made again when needed
    new = [planted.texts[i] + " one more line" for i in range(0, 40)] + planted.texts[300:400]
    new_ids = write_dataset(str(tmp_path / "in"), new, shards=2, tag="new")
    for verify in ("estimate", "exact"):
        m = _run(tmp_path, MinHashConfig(keeper="first", verify=verify, index_uri=str(tmp_path / "old_out")), verify)
        removed = removals(str(tmp_path / verify), new_ids + old_ids)
        against_old = {d for d, (k, _) in removed.items() if k >= len(new)}
        assert sum(1 for i in range(40) if i in against_old) >= 36, verify
        assert m["totals"]["counts"]["read"] == len(new)
