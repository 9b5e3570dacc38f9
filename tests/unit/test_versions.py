"""Dataset versions after a killed run: a complete version is made current and its leftovers go."""

from __future__ import annotations

import time

from llm import versions
from llm.lineage import identity


def test_reuse_finishes_what_a_run_killed_while_publishing_left(tmp_path):
    root = str(tmp_path / "ds")
    ident = identity("exact_dedup", {"enabled": True})
    (tmp_path / "ds" / "_shards").mkdir(parents=True)
    (tmp_path / "ds" / "_shards" / "k.json").write_text("{}")
    versions.publish(root, ident, {"shards": [{"key": "k", "files": {}}]}, {}, time.time())
    # killed while moving the pointer: the version is written, the pointer is not, a temp file is left
    (tmp_path / "ds" / "_manifest.json").unlink()
    left = tmp_path / "ds" / "._manifest.json.0123abcd.tmp"
    left.write_text('{"half": ')

    manifest = versions.reuse(root, ident)
    assert manifest["reused"] and versions.current(root) == ident.version
    assert not left.exists()
    # a file that only looks like one stays
    kept = tmp_path / "ds" / "notes.tmp"
    kept.write_text("mine")
    versions.reuse(root, ident)
    assert kept.exists()
