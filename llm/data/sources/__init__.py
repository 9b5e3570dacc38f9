"""Readers of single source formats (one module a format), registered in `llm.data.readers`."""
