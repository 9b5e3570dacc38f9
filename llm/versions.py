"""Dataset versions: a new identity writes a new version beside the old ones, then moves the pointer.

A dataset root (local folder or s3:// prefix) holds:

    _versions/<version>.json      the manifest of every version ever completed (files relative to the root)
    _versions/<version>.run.json  when that version was made and how long it took (kept apart from the
                                  manifest, so manifests of two runs over the same input are byte-identical)
    _manifest.json                the current version's manifest: the pointer, replaced atomically (a
                                  rename locally, one PUT on S3) once the new version is complete

Shard files are named by their shard key, so versions share every shard they have in common and a new
version never overwrites a file an older one reads. `root@version` names one version for readers that
must not see the pointer move (stages record the versions they read). `llmpipe gc` removes what no kept
version references.
"""

from __future__ import annotations

import json
import time
from datetime import datetime, timezone
from typing import Any

from llm import storage
from llm.errors import InputNotFound
from llm.lineage import Identity

MANIFEST = "_manifest.json"
VERSIONS = "_versions"
CACHE = "_cache"
LOCK = "_lock.json"


def _dumps(data: Any) -> str:
    return json.dumps(data, sort_keys=True, indent=1, ensure_ascii=False) + "\n"


def split(uri: str) -> tuple[str, str | None]:
    """`root@version` -> (root, version); a plain root -> (root, None)."""
    head, sep, tail = uri.rpartition("@")
    if sep and tail and "/" not in tail:
        return head, tail
    return uri, None


def pinned(root: str, version: str) -> str:
    return f"{root}@{version}"


def version_file(root: str, version: str) -> str:
    return storage.join(root, VERSIONS, f"{version}.json")


def read(uri: str) -> dict:
    """The manifest of `root@version`, or of the current version of `root`."""
    root, version = split(uri)
    path = version_file(root, version) if version else storage.join(root, MANIFEST)
    try:
        return json.loads(storage.read_text(path))
    except (FileNotFoundError, NotADirectoryError):  # NotADirectoryError: `root` is a file
        what = f"version {version} of {root}" if version else f"{root}: no {MANIFEST}"
        raise InputNotFound(f"{what}; has the stage that writes it run?") from None


def current(root: str) -> str | None:
    """The current version of `root`, None when it has none."""
    try:
        return read(root).get("version")
    except FileNotFoundError:
        return None


def referenced(manifest: dict) -> set[str]:
    """Paths (relative to the root) a version needs: its shards' files and records, its own files, and
    the folders it owns wholesale (`owned`, e.g. a training run's checkpoints)."""
    out = {storage.join(VERSIONS, f"{manifest['version']}.json")}
    for shard in manifest.get("shards", []):
        out.update(shard.get("files", {}).values())
        if shard.get("key"):
            out.add(storage.join("_shards", f"{shard['key']}.json"))
    out.update(v for v in manifest.get("files", {}).values() if isinstance(v, str))
    return out


def complete(root: str, manifest: dict) -> bool:
    """True when every file the version names still exists (gc or a user may have removed some). On
    S3 one listing answers for all of them (a request per file would cost seconds per stage)."""
    needed = referenced(manifest)
    if storage.is_s3(root):
        present = {storage.relative(uri, root) for uri in storage.list_files(root)}
        return needed <= present
    return all(storage.exists(storage.join(root, rel)) for rel in sorted(needed))


def reuse(root: str, ident: Identity) -> dict | None:
    """The complete version with this identity, made current; None when it has to be made."""
    path = version_file(root, ident.version)
    if not storage.exists(path):
        return None
    manifest = json.loads(storage.read_text(path))
    if not complete(root, manifest):
        return None
    if current(root) != ident.version:
        storage.write_text(storage.join(root, MANIFEST), _dumps(manifest))
    # A run killed after writing the version (while it moved the pointer, say) left its temporary
    # files; `publish`, which removes them, does not run again for a version that is complete.
    storage.remove_temp_files(root)
    manifest["reused"] = True
    return manifest


def publish(root: str, ident: Identity, manifest: dict, parents: dict[str, str], started: float,
            run: dict | None = None) -> dict:
    """Stamp the manifest with its version, identity and parents, write it as a version, then move the
    pointer to it. `parents` maps an input role to the pinned URI (`root@version`) that was read; `run`
    (how much was made and how much reused) goes beside the manifest with the times, since it depends
    on what earlier runs left, not on the inputs."""
    manifest = {
        **manifest,
        "stage": ident.stage,
        "version": ident.version,
        "config_hash": ident.config_hash,
        "identity": ident.to_json(),
        "parents": {role: _parent(uri, root) for role, uri in sorted(parents.items())},
    }
    manifest.pop("reused", None)
    storage.write_text(version_file(root, ident.version), _dumps(manifest))
    finished = time.time()
    storage.write_text(storage.join(root, VERSIONS, f"{ident.version}.run.json"), _dumps({
        "started": _iso(started), "finished": _iso(finished), "seconds": round(finished - started, 3), **(run or {})}))
    storage.write_text(storage.join(root, MANIFEST), _dumps(manifest))
    storage.remove_temp_files(root)  # half-written files of a killed earlier attempt
    return manifest


def _parent(uri: str, root: str) -> dict:
    parent_root, version = split(uri)
    return {"uri": storage.relative(parent_root, root), "version": version}


def parent_uri(root: str, entry: dict) -> str:
    """The pinned URI of a parent entry of a manifest at `root`."""
    uri = entry["uri"]
    if not storage.is_s3(uri) and not uri.startswith("/"):
        if storage.is_s3(root):
            import posixpath

            bucket_key = root[len("s3://"):]
            uri = "s3://" + posixpath.normpath(posixpath.join(bucket_key, uri))
        else:
            uri = storage.absolute(storage.join(root, uri))
    return pinned(uri, entry["version"]) if entry.get("version") else uri


def run_info(root: str, version: str) -> dict:
    path = storage.join(root, VERSIONS, f"{version}.run.json")
    return json.loads(storage.read_text(path)) if storage.exists(path) else {}


def list_versions(root: str) -> list[dict]:
    """Every completed version of `root`, oldest first: id, when made, current or not."""
    now = current(root)
    out = []
    for path in storage.list_files(storage.join(root, VERSIONS), ".json", recursive=False):
        name = path.rsplit("/", 1)[-1]
        if name.endswith(".run.json"):
            continue
        version = name[: -len(".json")]
        out.append({"version": version, **run_info(root, version), "current": version == now})
    return sorted(out, key=lambda v: (v.get("finished", ""), v["version"]))


def _iso(t: float) -> str:
    return datetime.fromtimestamp(t, timezone.utc).isoformat(timespec="seconds")
