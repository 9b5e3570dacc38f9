"""Prefect tasks: one module per stage. Each wraps an `llm` call, runs its work on Ray, records a
nested MLflow run and returns a small summary (URIs, counts, digests), never documents or tensors."""
