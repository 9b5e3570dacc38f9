"""Prefect pull steps: what a worker does before it loads a deployment's flow.

`use_project_root` is the step `prefect.yaml` names. It runs on the worker, at run time, so a deployment
holds no path of the machine it was deployed from: the flow run starts in the llmpipe project the
worker's Python has installed (the checkout behind `pip install -e .`, or /app in the worker image).
"""

from __future__ import annotations

import os
from pathlib import Path

_MARKERS = ("prefect.yaml", "flows/pipeline.py")


def project_root() -> Path:
    """The project this Python runs llmpipe from: `LLMPIPE_HOME` when set (a checkout elsewhere), else
    the folder holding the installed `flows` package. Raises FileNotFoundError naming what it tried."""
    tried = []
    home = os.environ.get("LLMPIPE_HOME")
    candidates = [Path(home).expanduser()] if home else []
    candidates.append(Path(__file__).resolve().parents[1])
    for root in candidates:
        if all((root / m).is_file() for m in _MARKERS):
            return root
        tried.append(str(root))
    raise FileNotFoundError(
        f"no llmpipe project found for this worker (looked for {' and '.join(_MARKERS)} in {', '.join(tried)}): "
        "install the project in the worker's Python (`pip install -e .` in a checkout) or set LLMPIPE_HOME "
        "to the checkout")


def use_project_root() -> dict:
    """Pull step: make the project root the flow run's working directory (so `flows/pipeline.py` and
    relative config paths such as `configs/demo.yaml` resolve there). Returns `{"directory": root}`."""
    root = project_root()
    os.chdir(root)
    return {"directory": str(root)}
