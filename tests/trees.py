"""Comparing output trees in tests: what two runs wrote, less what records when and how long."""

from __future__ import annotations

from pathlib import Path


def output_tree(root: Path) -> dict[str, bytes]:
    """Every file under `root` by relative path, except the per-version timing records
    (`_versions/*.run.json`: start, finish, seconds, shards made or reused), which say when a version
    was made, not what it holds."""
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(Path(root).rglob("*"))
            if p.is_file() and not p.name.endswith(".run.json")}
