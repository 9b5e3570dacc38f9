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


# --- Distinct real texts -------------------------------------------------------------------------------
#
# `planted_corpus` cuts every base document from one shared word pool, so two unrelated bases can share
# whole windows of it. `distinct_corpus` instead cuts its bases as non-overlapping slices of distinct
# source texts (each text read once, exact repeats dropped), and makes its copies by word edits at known
# rates, with single words drawn from the vocabulary (never windows of other text).

EDITS = ("substitute", "delete", "insert", "mixed", "chain")


def real_texts(data_dir: Path) -> list[tuple[str, list[str]]]:
    """(source, words) of every distinct real text of the development data: the books, the papers'
    LaTeX and BibTeX files, the documentation pages' reST sources, the e-mails, the news articles, and
    the chat responses (one text per language, each distinct response once). Exact repeats are dropped
    (a text whose words equal an earlier one's)."""
    import hashlib
    import tarfile

    out: list[tuple[str, list[str]]] = []
    seen: set[bytes] = set()

    def add(source: str, text: str) -> None:
        words = text.split()
        digest = hashlib.sha1(" ".join(words).encode("utf-8", "replace")).digest()
        if words and digest not in seen:
            seen.add(digest)
            out.append((source, words))

    for path in sorted((data_dir / "books").glob("*.txt")):
        add(f"books/{path.name}", path.read_text(encoding="utf-8", errors="replace"))
    for path in sorted((data_dir / "papers").glob("*.tar.gz")):
        with tarfile.open(path) as tar:
            for member in sorted(tar.getmembers(), key=lambda m: m.name):
                if member.isfile() and member.name.endswith((".tex", ".bib")):
                    data = tar.extractfile(member).read().decode("utf-8", "replace")
                    add(f"papers/{path.name}/{member.name}", data)
    for name, key in (("html_dev.jsonl", "rst_source"), ("mail_dev.jsonl", "text")):
        with open(data_dir / name, encoding="utf-8") as fh:
            for n, line in enumerate(fh):
                add(f"{name}:{n}", json.loads(line).get(key) or "")
    for path in sorted((data_dir / "news" / "articles" / "txt").glob("*.txt")):
        add(f"news/{path.name}", path.read_text(encoding="utf-8", errors="replace"))
    responses: dict[str, list[str]] = {}
    done: set[str] = set()
    with open(data_dir / "sft_dev.jsonl", encoding="utf-8") as fh:
        for line in fh:
            row = json.loads(line)
            text = (row.get("response") or "").strip()
            if text and text not in done:
                done.add(text)
                responses.setdefault(row.get("label") or "", []).append(text)
    for label in sorted(responses):
        add(f"sft_dev.jsonl:{label}", "\n".join(responses[label]))
    return out


def slices(texts: list[tuple[str, list[str]]], words: int, min_words: int) -> list[tuple[str, list[str]]]:
    """Consecutive non-overlapping slices of `words` words of each text (a last piece of at least
    `min_words` words is kept): (source and word offset, words)."""
    out = []
    for source, ws in texts:
        for start in range(0, len(ws), words):
            piece = ws[start:start + words]
            if len(piece) >= min_words:
                out.append((f"{source}@{start}", piece))
    return out


@dataclass
class DistinctCorpus:
    """Texts; the family each belongs to (its base's number); how each was made (`base` or an entry
    of `EDITS`), the edit rate drawn for it, and the base slice's source."""

    texts: list[str] = field(default_factory=list)
    family: list[int] = field(default_factory=list)
    kind: list[str] = field(default_factory=list)
    rate: list[float] = field(default_factory=list)
    source: list[str] = field(default_factory=list)
    doc_words: int = 0


def _edit_words(words: list[str], rng: np.random.Generator, vocab: list[str], sub: float, dele: float,
                ins: float) -> list[str]:
    """Each word independently: deleted with probability `dele`, else replaced by a random vocabulary
    word with probability `sub`; after each word, a random vocabulary word is inserted with probability
    `ins`."""
    out: list[str] = []
    draws = rng.random((len(words), 3))
    picks = rng.integers(0, len(vocab), (len(words), 2))
    for w, (d, s, i), (p, q) in zip(words, draws.tolist(), picks.tolist()):
        if d >= dele:
            out.append(vocab[p] if s < sub else w)
        if i < ins:
            out.append(vocab[q])
    return out


def distinct_corpus(data_dir: Path, docs: int, dup_share: float = 0.4, doc_words: int = 200,
                    min_doc_words: int = 30, max_rate: float = 0.15, seed: int = 0) -> DistinctCorpus:
    """About `docs` documents, `dup_share` of them planted copies, bases being distinct slices of real
    text. Each family has a base and 1-4 copies of one kind: `substitute`, `delete` or `insert` (that edit
    alone, at a rate drawn uniformly in [0, max_rate]), `mixed` (all three, each at a third of the drawn
    rate) or `chain` (each copy a `mixed` edit of the previous one, rate in [0, max_rate / 3]).

    The bases are `doc_words`-word slices, shortened (down to `min_doc_words`) when the real text has too
    few slices of that length for the bases wanted; past that, the corpus is smaller than `docs` (see
    `len(texts)`). Lines of ~20 words keep the text looking like text."""
    rng = np.random.default_rng(seed)
    texts = real_texts(data_dir)
    total = sum(len(ws) for _, ws in texts)
    bases_wanted = max(1, round(docs * (1 - dup_share)))
    words = max(min_doc_words, min(doc_words, total // bases_wanted))
    # Slices of a text never overlap; shortening `words` until there are enough of them.
    pieces = slices(texts, words, max(min_doc_words, words // 2))
    while len(pieces) < bases_wanted and words > min_doc_words:
        words = max(min_doc_words, int(words * 0.9))
        pieces = slices(texts, words, max(min_doc_words, words // 2))
    order = rng.permutation(len(pieces))[:bases_wanted]
    vocab = sorted({w for _, ws in texts for w in ws})
    corpus = DistinctCorpus(doc_words=words)

    def add(ws: list[str], fam: int, kind: str, rate: float, source: str) -> None:
        corpus.texts.append("\n".join(" ".join(ws[k:k + 20]) for k in range(0, len(ws), 20)))
        corpus.family.append(fam)
        corpus.kind.append(kind)
        corpus.rate.append(rate)
        corpus.source.append(source)

    copy_prob = dup_share / (1 - dup_share) / 2.5  # families average 2.5 copies
    for fam, k in enumerate(order.tolist()):
        source, base = pieces[k]
        add(base, fam, "base", 0.0, source)
        if rng.random() >= copy_prob:
            continue
        kind = EDITS[int(rng.integers(0, len(EDITS)))]
        prev = base
        for _ in range(int(rng.integers(1, 5))):
            if kind == "chain":
                rate = float(rng.uniform(0.0, max_rate / 3))
                prev = _edit_words(prev, rng, vocab, rate / 3, rate / 3, rate / 3)
                add(prev, fam, kind, rate, source)
                continue
            rate = float(rng.uniform(0.0, max_rate))
            sub, dele, ins = {"substitute": (rate, 0, 0), "delete": (0, rate, 0), "insert": (0, 0, rate),
                              "mixed": (rate / 3, rate / 3, rate / 3)}[kind]
            add(_edit_words(base, rng, vocab, sub, dele, ins), fam, kind, rate, source)
    shuffle = rng.permutation(len(corpus.texts))
    return DistinctCorpus(*([getattr(corpus, f)[i] for i in shuffle] for f in
                            ("texts", "family", "kind", "rate", "source")), doc_words=words)
