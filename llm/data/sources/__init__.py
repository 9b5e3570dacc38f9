"""Readers of source kinds beyond the file formats of `llm.data.readers`, one module per kind."""
