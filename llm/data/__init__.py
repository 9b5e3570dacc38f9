"""Documents, readers, crawler, extraction, per-document steps, dedup, shards and tokenization."""
