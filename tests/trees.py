"""Comparing output trees in tests: what two runs wrote, less what records when and how long."""

from __future__ import annotations

from pathlib import Path


def output_tree(root: Path) -> dict[str, bytes]:
    """Every file under `root` by relative path, except the per-version timing records
    (`_versions/*.run.json`: start, finish, seconds, shards made or reused), which say when a version
    was made, not what it holds, and ingest's cache of input file digests (`_cache/file_digests.json`,
    keyed by each file's absolute path and modification time), which says where and when the input
    files were written."""
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(Path(root).rglob("*"))
            if p.is_file() and not p.name.endswith(".run.json") and not _is_digest_cache(p)}


def _is_digest_cache(path: Path) -> bool:
    return path.name == "file_digests.json" and path.parent.name == "_cache"
