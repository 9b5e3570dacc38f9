"""Corpora with planted near-duplicates, and brute-force ground truth, to measure deduplication.

Base documents are windows of real text; each duplicate family adds copies made by a known kind of
change (word edits, insertions, shuffled paragraphs, a boilerplate wrapper, or a chain of small edits
where each copy is an edit of the previous one). The strength of each change is drawn so the copies'
Jaccard similarities to their base spread over the whole S-curve. The truth is not the plan but the
exact Jaccard of the shingle sets, computed for every pair (`similar_pairs`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from llm.data.minhash.shingles import ShingleBatch

KINDS = ("edit", "insert", "shuffle", "wrap", "chain")


def word_pool(data_dir: Path) -> list[str]:
    """Words of the development data's real text (documentation sources, e-mails, chat responses)."""
    words: list[str] = []
    for name, key in (("html_dev.jsonl", "rst_source"), ("mail_dev.jsonl", "text"), ("sft_dev.jsonl", "response")):
        with open(data_dir / name, encoding="utf-8") as fh:
            for line in fh:
                words.extend((json.loads(line).get(key) or "").split())
    return words


@dataclass
class PlantedCorpus:
    """Texts, the family each belongs to (its base document's number) and how each copy was made."""

    texts: list[str] = field(default_factory=list)
    family: list[int] = field(default_factory=list)
    kind: list[str] = field(default_factory=list)


class _Maker:
    def __init__(self, words: list[str], rng: np.random.Generator, doc_words: int):
        self.words, self.rng, self.doc_words = words, rng, doc_words
        self.boilerplate = [self.window(40 + 10 * i) for i in range(6)]

    def window(self, n: int) -> list[str]:
        start = int(self.rng.integers(0, len(self.words) - n))
        return self.words[start:start + n]

    def base(self) -> list[list[str]]:
        n = int(self.rng.integers(self.doc_words // 2, self.doc_words * 3 // 2))
        paras, left = [], n
        while left > 0:
            size = min(left, int(self.rng.integers(20, 80)))
            paras.append(self.window(size))
            left -= size
        return paras

    def edit(self, paras: list[list[str]], rate: float) -> list[list[str]]:
        out = []
        for p in paras:
            p = list(p)
            for i in np.flatnonzero(self.rng.random(len(p)) < rate).tolist():
                p[i] = self.words[int(self.rng.integers(0, len(self.words)))]
            out.append(p)
        return out

    def insert(self, paras: list[list[str]], rate: float) -> list[list[str]]:
        out = []
        for p in paras:
            q: list[str] = []
            for w in p:
                q.append(w)
                if self.rng.random() < rate:
                    q.extend(self.window(int(self.rng.integers(1, 4))))
            out.append(q)
        return out

    def variant(self, paras: list[list[str]], kind: str) -> list[list[str]]:
        rng = self.rng
        if kind == "edit":
            return self.edit(paras, float(rng.uniform(0.0, 0.12)))
        if kind == "insert":
            return self.insert(paras, float(rng.uniform(0.0, 0.08)))
        if kind == "shuffle":
            return self.edit([paras[i] for i in rng.permutation(len(paras))], float(rng.uniform(0.0, 0.03)))
        if kind == "wrap":
            head, foot = rng.choice(len(self.boilerplate), 2, replace=False)
            return [self.boilerplate[head]] + self.edit(paras, float(rng.uniform(0.0, 0.03))) + [self.boilerplate[foot]]
        raise ValueError(kind)


def planted_corpus(words: list[str], docs: int, dup_share: float = 0.4, doc_words: int = 280,
                   seed: int = 0) -> PlantedCorpus:
    """About `docs` documents of ~`doc_words` words, `dup_share` of them planted copies."""
    rng = np.random.default_rng(seed)
    maker = _Maker(words, rng, doc_words)
    corpus = PlantedCorpus()

    def add(paras: list[list[str]], fam: int, kind: str) -> None:
        corpus.texts.append("\n\n".join(" ".join(p) for p in paras))
        corpus.family.append(fam)
        corpus.kind.append(kind)

    fam = 0
    while len(corpus.texts) < docs:
        paras = maker.base()
        add(paras, fam, "base")
        if rng.random() < dup_share / (1 - dup_share) / 2.5:  # families average 2.5 copies
            kind = KINDS[int(rng.integers(0, len(KINDS)))]
            copies = int(rng.integers(1, 5))
            prev = paras
            for _ in range(copies):
                if kind == "chain":  # each copy edits the previous one: far ends drift apart
                    prev = maker.edit(prev, float(rng.uniform(0.01, 0.04)))
                    add(prev, fam, kind)
                else:
                    add(maker.variant(paras, kind), fam, kind)
        fam += 1
    # Copies should not sit beside their base: shuffle document order (stable for a seed).
    order = rng.permutation(len(corpus.texts))
    return PlantedCorpus([corpus.texts[i] for i in order], [corpus.family[i] for i in order],
                         [corpus.kind[i] for i in order])


def similar_pairs(batch: ShingleBatch, min_jaccard: float) -> dict[tuple[int, int], float]:
    """Every pair (i < j) of documents with exact shingle-set Jaccard >= min_jaccard, by brute force: the
    sparse product of the document x shingle incidence matrix with itself counts every intersection."""
    from scipy import sparse

    docs = len(batch.offsets) - 1
    counts = batch.counts
    _, cols = np.unique(batch.hashes, return_inverse=True)
    rows = np.repeat(np.arange(docs), counts)
    x = sparse.csr_matrix((np.ones(len(cols), np.int32), (rows, cols)), shape=(docs, int(cols.max(initial=-1)) + 1))
    inter = sparse.triu(x @ x.T, k=1).tocoo()
    union = counts[inter.row] + counts[inter.col] - inter.data
    jac = inter.data / np.maximum(union, 1)
    sel = jac >= min_jaccard
    return {(int(i), int(j)): float(v) for i, j, v in zip(inter.row[sel], inter.col[sel], jac[sel])}
