"""The lineage of a dataset version: it, the versions it was made from, theirs, and so on.

`chain(uri)` follows each manifest's `parents` from `uri` (`root` or `root@version`) back to the
sources; `format_lineage` prints it for `llmpipe lineage`, with every version of the dataset itself.
"""

from __future__ import annotations

import json

from llm import versions


def _entry(uri: str) -> dict:
    root, _ = versions.split(uri)
    manifest = versions.read(uri)
    ident = manifest.get("identity", {})
    totals = manifest.get("totals", {})
    return {
        "uri": root,
        "stage": manifest.get("stage"),
        "version": manifest.get("version"),
        "recipe": ident.get("recipe"),
        "code": ident.get("code"),
        "config_hash": ident.get("config_hash"),
        "config": ident.get("config"),
        "inputs": ident.get("inputs", {}),
        "parents": {role: versions.parent_uri(root, p) for role, p in manifest.get("parents", {}).items()},
        "counts": totals.get("counts"),
        "shards": totals.get("shards"),
        "rows": totals.get("rows"),
        **{k: v for k, v in versions.run_info(root, manifest.get("version", "")).items()},
    }


def chain(uri: str) -> list[dict]:
    """The version at `uri` and every version upstream of it, each once, nearest first. A parent whose
    manifest is gone (removed by hand) is listed with `missing: true`."""
    out: list[dict] = []
    seen: set[str] = set()
    todo = [uri]
    while todo:
        current = todo.pop(0)
        if current in seen:
            continue
        seen.add(current)
        try:
            entry = _entry(current)
        except FileNotFoundError:
            out.append({"uri": current, "missing": True})
            continue
        out.append(entry)
        todo.extend(p for p in entry["parents"].values() if p not in seen and versions.split(p)[0] != entry["uri"])
    return out


def format_lineage(uri: str) -> str:
    """What `llmpipe lineage` prints: the dataset's versions, then the chain behind the chosen one."""
    root, _ = versions.split(uri)
    versions.read(uri)  # not a dataset (or no such version): an error, not an empty listing
    lines = [f"versions of {root}:"]
    for v in versions.list_versions(root):
        mark = "*" if v["current"] else " "
        lines.append(f" {mark} {v['version']}  {v.get('finished', '?')}  {v.get('seconds', '?')} s"
                     f"  made {v.get('shards_made', '-')} / reused {v.get('shards_reused', '-')} shards")
    lines.append("")
    for i, e in enumerate(chain(uri)):
        if e.get("missing"):
            lines.append(f"{'  ' * i}{e['uri']}: manifest missing")
            continue
        counts = e.get("counts") or {}
        count_text = (f"read {counts['read']} kept {counts['kept']} dropped {sum(counts['dropped'].values())} "
                      f"quarantined {counts['quarantined']}") if counts else f"rows {e.get('rows')}"
        lines += [
            f"{e['stage']} {e['version']}  ({e['uri']})",
            f"  made      {e.get('finished', '?')} in {e.get('seconds', '?')} s",
            f"  code      {e['code']}   config {e['config_hash']}   recipe {e['recipe']}",
            f"  inputs    {', '.join(f'{k}={v}' for k, v in sorted(e['inputs'].items())) or '-'}",
            f"  parents   {', '.join(f'{k}={v}' for k, v in sorted(e['parents'].items())) or '-'}",
            f"  counts    {count_text}" + (f" in {e['shards']} shards" if e.get("shards") is not None else ""),
            f"  config    {json.dumps(e['config'], sort_keys=True, separators=(',', ':'))}",
        ]
    return "\n".join(lines)
