"""llmpipe's library: every computation of the pipeline. Never imports Prefect."""

__version__ = "0.1.0"
