"""URL normalization of the cheap first dedup pass: tracking parameters go, parameters that can change
the page stay."""

from __future__ import annotations

from llm.data.minhash.urls import normalize_url, url_hashes


def test_tracking_parameters_are_removed():
    base = normalize_url("https://example.com/post?id=7")
    for tracking in ("utm_source=feed", "UTM_Campaign=x", "ref=hn", "ref_src=twsrc", "referrer=news",
                     "fbclid=abc", "gclid=1", "msclkid=2", "mc_cid=3", "mc_eid=4", "sessionid=5", "PHPSESSID=6"):
        assert normalize_url(f"https://www.example.com/post/?{tracking}&id=7#top") == base, tracking


def test_parameters_that_only_start_like_tracking_ones_are_kept():
    # `reference` and `refresh` name content or behaviour of the page, not where a visitor came from.
    for kept in ("reference=ISO-8601", "refresh=1", "refs=main", "references=2", "sessionid_hint=1"):
        url = normalize_url(f"https://example.com/doc?{kept}")
        assert url == f"http://example.com/doc?{kept}", kept
    hashes, ok = url_hashes(["https://example.com/doc?reference=a", "https://example.com/doc?reference=b"])
    assert ok.all() and hashes[0] != hashes[1]
