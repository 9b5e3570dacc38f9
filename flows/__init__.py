"""Prefect flows: the end-to-end pipeline, the data refresh, single stages; and the `llmpipe` CLI."""
