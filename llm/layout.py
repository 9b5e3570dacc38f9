"""Where every stage's output lives under the work directory (local path or s3:// prefix)."""

from __future__ import annotations

from dataclasses import dataclass

from llm import storage


@dataclass(frozen=True)
class Layout:
    """URIs of each stage's output under one work directory."""

    work_dir: str

    @classmethod
    def for_work_dir(cls, work_dir: str) -> "Layout":
        return cls(storage.absolute(work_dir))

    def _at(self, *parts: str) -> str:
        return storage.join(self.work_dir, *parts)

    @property
    def crawl(self) -> str:
        return self._at("raw", "crawl")

    @property
    def docs(self) -> str:
        return self._at("datasets", "docs")

    @property
    def dedup(self) -> str:
        return self._at("datasets", "dedup")

    @property
    def near_dedup(self) -> str:
        return self._at("datasets", "near_dedup")

    @property
    def shards(self) -> str:
        return self._at("datasets", "shards")

    @property
    def tokenizer(self) -> str:
        return self._at("tokenizer")

    @property
    def tokens(self) -> str:
        return self._at("tokens")

    @property
    def train(self) -> str:
        return self._at("train")

    @property
    def eval(self) -> str:
        return self._at("eval")

    @property
    def finetune(self) -> str:
        return self._at("finetune")

    def dataset_roots(self) -> list[str]:
        """Every versioned output under the work directory, upstream first."""
        return [self.crawl, self.docs, self.dedup, self.near_dedup, self.shards, self.tokenizer, self.tokens,
                self.train, self.eval, self.finetune]
