"""Readers for source kinds with a format of their own (one module per kind)."""
