"""URL normalization for the cheap first pass: the same page reached by trivially different URLs."""

from __future__ import annotations

from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import numpy as np

# Query parameters that only track where a visitor came from; they never change the page.
_TRACKING = ("utm_", "fbclid", "gclid", "mc_cid", "mc_eid", "ref", "sessionid", "phpsessid")
_DEFAULT_PORTS = {"http": 80, "https": 443}


def normalize_url(url: str) -> str | None:
    """Canonical form: scheme folded to http, host lower-cased without `www.` and default port, no
    fragment, no tracking parameters, remaining parameters sorted, no trailing slash. None for text
    that is not an absolute http(s) URL (file URIs of code, say), which is never deduplicated."""
    try:
        parts = urlsplit(url.strip())
        port = parts.port
    except ValueError:
        return None
    scheme = parts.scheme.lower()
    if scheme not in _DEFAULT_PORTS or not parts.hostname:
        return None
    host = parts.hostname.lower().removeprefix("www.")
    if port and port != _DEFAULT_PORTS[scheme]:
        host = f"{host}:{port}"
    query = sorted((k, v) for k, v in parse_qsl(parts.query, keep_blank_values=True)
                   if not k.lower().startswith(_TRACKING))
    path = parts.path.rstrip("/") or ""
    return urlunsplit(("http", host, path, urlencode(query), ""))


def url_hashes(urls: list[str | None]) -> tuple[np.ndarray, np.ndarray]:
    """64-bit hashes of normalized URLs and a mask of the documents that have one."""
    import pandas as pd

    norm = [normalize_url(u) if u else None for u in urls]
    ok = np.array([u is not None for u in norm], dtype=bool)
    values = np.array([u if u is not None else "" for u in norm], dtype=object)
    hashes = pd.util.hash_array(values).astype(np.uint64) if len(values) else np.zeros(0, np.uint64)
    return hashes, ok
