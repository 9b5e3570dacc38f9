"""The crawl as a versioned stage: a first crawl, and refreshes that append only new and changed pages.

A crawl version lists its WARC files (every earlier file it still includes, then the new ones) and, per
page, the validators, digest and links that the next refresh sends and follows. Pages are keyed by
their path on the site, not the full URL, so the local documentation server (a new port every run)
is recognised as the same site.

- `crawl_stage(..., refresh=False)`: reuse the current version when it was made by the same code and
  config for the same site; else crawl from scratch into files of a new prefix.
- `refresh=True` (the nightly refresh): conditional requests against the current version; pages that
  answer 304 or come back unchanged are not written; if nothing is new the version stays as it is, so
  every stage after it is skipped too.
"""

from __future__ import annotations

import platform
import time
from contextlib import contextmanager
from typing import Iterator
from urllib.parse import urlsplit

from llm import storage, versions
from llm.config import CrawlConfig, stable_hash
from llm.lineage import identity

COUNTERS = ("pages_fetched", "pages_failed", "robots_disallowed", "not_modified", "unchanged", "changed", "new")


@contextmanager
def _site(cfg: CrawlConfig) -> Iterator[str]:
    from llm.data.crawl import pydoc_server

    if cfg.start_url:
        yield cfg.start_url
    else:
        with pydoc_server() as url:
            yield url


def _site_name(cfg: CrawlConfig) -> str:
    # The documentation server serves this Python's documentation: another Python is another site.
    return cfg.start_url or f"pydoc:{platform.python_version()}"


def _origin(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}"


def _to_paths(pages: dict[str, dict], origin: str) -> dict[str, dict]:
    def rel(u: str) -> str:
        return u[len(origin):] or "/" if u.startswith(origin) else u

    return {rel(u): {**e, "links": [rel(x) for x in e.get("links", [])]} for u, e in sorted(pages.items())}


def _to_urls(pages: dict[str, dict], origin: str) -> dict[str, dict]:
    def full(p: str) -> str:
        return origin + p if p.startswith("/") else p

    return {full(p): {**e, "links": [full(x) for x in e.get("links", [])]} for p, e in pages.items()}


def _current(cfg: CrawlConfig, out_uri: str):
    """(config, identity, current version's manifest or None, whether that version has this recipe)."""
    config = {"crawl": cfg.model_dump(mode="json"), "site": _site_name(cfg)}
    full = identity("crawl", config)
    previous = versions.read(out_uri) if versions.current(out_uri) else None
    return config, full, previous, previous is not None and previous["identity"]["recipe"] == full.recipe


def reused_crawl(cfg: CrawlConfig, out_uri: str, refresh: bool = False) -> dict | None:
    """What `crawl_stage` returns when it would reuse the current version without fetching anything
    (same code, config and site, no refresh); None when it would crawl. Cheap: reads one manifest, so a
    caller can skip starting a crawl elsewhere."""
    if refresh:
        return None
    _, _, previous, same_recipe = _current(cfg, out_uri)
    return {**previous, "reused": True} if same_recipe else None


def crawl_stage(cfg: CrawlConfig, out_uri: str, refresh: bool = False, progress: bool = False) -> dict:
    """Run the crawl stage into `out_uri`; returns the current version's manifest (`reused` set when
    nothing was written)."""
    from llm.data.crawl import crawl

    started = time.time()
    config, full, previous, same_recipe = _current(cfg, out_uri)
    if same_recipe and not refresh:
        return {**previous, "reused": True}
    base = previous if same_recipe else None
    prefix = f"crawl-{(base['version'] if base else full.version)[:12]}{'-r' if base else ''}"
    with _site(cfg) as url:
        origin = _origin(url)
        before = _to_urls(base["pages"], origin) if base else None
        result = crawl(cfg, url, out_uri, progress=progress, previous=before, file_prefix=prefix)
    new_files = [storage.relative(f, out_uri) for f in result.warc_files]
    if base is not None and not new_files:
        return {**base, "reused": True, "refresh": {k: getattr(result, k) for k in COUNTERS}}
    files = (base["warc_files"] if base else []) + new_files
    if base is None:
        ident = full
    else:
        ident = identity("crawl", config, {"previous": base["version"], "added": stable_hash(new_files)})
    manifest = {
        "warc_files": files,
        "files": {f"warc_{i:05d}": f for i, f in enumerate(files)},
        "pages": _to_paths(result.pages, origin),
        "bytes": sum(storage.size(storage.join(out_uri, f)) for f in files),
        **{k: getattr(result, k) for k in COUNTERS},
    }
    parents = {"previous": versions.pinned(out_uri, base["version"])} if base else {}
    return versions.publish(out_uri, ident, manifest, parents, started, {"new_files": len(new_files)})
