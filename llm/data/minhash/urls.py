"""URL normalization for the cheap first pass: the same page reached by trivially different URLs."""

from __future__ import annotations

from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import numpy as np

# Query parameters that only track where a visitor came from or which session it is; they never change
# the page. Exact names (lower-cased), not prefixes: `reference=` or `refresh=` can change the page.
_TRACKING = frozenset({
    "ref", "ref_src", "ref_url", "referrer",  # referral links (Twitter's `ref_src`, many blogs' `ref`)
    "fbclid", "gclid", "dclid", "gbraid", "wbraid", "msclkid", "yclid", "igshid",  # ad and social click ids
    "mc_cid", "mc_eid",  # Mailchimp campaign and recipient
    "_ga", "_gl",  # Google Analytics cross-domain linker
    "sessionid", "phpsessid", "jsessionid",
})
_TRACKING_PREFIX = "utm_"  # Google's campaign parameters: utm_source, utm_medium, utm_campaign, ...
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
                   if not _is_tracking(k))
    path = parts.path.rstrip("/") or ""
    return urlunsplit(("http", host, path, urlencode(query), ""))


def _is_tracking(name: str) -> bool:
    name = name.lower()
    return name in _TRACKING or name.startswith(_TRACKING_PREFIX)


def url_hashes(urls: list[str | None]) -> tuple[np.ndarray, np.ndarray]:
    """64-bit hashes of normalized URLs and a mask of the documents that have one."""
    import pandas as pd

    norm = [normalize_url(u) if u else None for u in urls]
    ok = np.array([u is not None for u in norm], dtype=bool)
    values = np.array([u if u is not None else "" for u in norm], dtype=object)
    hashes = pd.util.hash_array(values).astype(np.uint64) if len(values) else np.zeros(0, np.uint64)
    return hashes, ok
