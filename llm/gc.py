"""`llmpipe gc`: remove the dataset versions nothing references, and the files only they used.

Kept: the current version of every dataset under the work directory and every version upstream of one
(its lineage), so what the current model was trained on stays readable. Everything else under a dataset
root is garbage except the pointer, the version records kept, `_cache/` (digests and hashes that only
save work) and the lock. A dry run (the default) lists what would go and how many bytes.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from llm import storage, versions
from llm.errors import InputNotFound
from llm.layout import Layout
from llm.lineage_chain import chain


@dataclass
class GcPlan:
    """What a collection keeps and removes."""

    kept_versions: dict[str, list[str]] = field(default_factory=dict)  # root -> versions
    removed_versions: dict[str, list[str]] = field(default_factory=dict)
    files: list[str] = field(default_factory=list)  # URIs to delete
    bytes: int = 0


def _protected(rel: str) -> bool:
    top = rel.split("/", 1)[0]
    return rel == versions.MANIFEST or top == versions.CACHE or rel.startswith(versions.LOCK)


def plan_gc(work_dir: str) -> GcPlan:
    """Decide what to remove under `work_dir` (nothing is deleted here)."""
    layout = Layout.for_work_dir(work_dir)
    roots = [r for r in layout.dataset_roots() if versions.current(r)]
    keep: dict[str, set[str]] = {}
    for root in roots:
        for entry in chain(root):
            if not entry.get("missing"):
                keep.setdefault(entry["uri"], set()).add(entry["version"])
    plan = GcPlan()
    for root in roots:
        kept = keep.get(root, set())
        every = {v["version"] for v in versions.list_versions(root)}
        plan.kept_versions[root] = sorted(kept)
        plan.removed_versions[root] = sorted(every - kept)
        needed = set()
        for v in kept:
            manifest = versions.read(versions.pinned(root, v))
            needed |= versions.referenced(manifest)
            needed.add(f"{versions.VERSIONS}/{v}.run.json")
            needed.update(manifest.get("owned", []))
        for uri in storage.list_files(root):
            rel = storage.relative(uri, root)
            if _protected(rel) or rel in needed or any(rel.startswith(p.rstrip("/") + "/") for p in needed):
                continue
            plan.files.append(uri)
            plan.bytes += storage.size(uri)
    return plan


def run_gc(work_dir: str, apply: bool = False) -> GcPlan:
    """Plan, and with `apply` delete, under the work directory's lock."""
    from llm.workdir_lock import WorkDirLock

    # Checked before the lock, which would create the folder.
    if not storage.is_s3(work_dir) and not storage.exists(work_dir):
        raise InputNotFound(f"work directory {work_dir} does not exist")
    with WorkDirLock(work_dir, description="llmpipe gc"):
        plan = plan_gc(work_dir)
        if apply:
            for uri in plan.files:
                storage.delete(uri)
    return plan


def format_gc(plan: GcPlan, applied: bool) -> str:
    lines = []
    for root, removed in plan.removed_versions.items():
        lines.append(f"{root}: keep {len(plan.kept_versions[root])} version(s), "
                     f"{'removed' if applied else 'would remove'} {len(removed)}"
                     + (f" ({', '.join(removed)})" if removed else ""))
    verb = "removed" if applied else "would remove"
    lines.append(f"{verb} {len(plan.files)} files, {plan.bytes:,} bytes")
    if not applied and plan.files:
        lines.append("dry run: add --apply to delete them")
    return "\n".join(lines)
