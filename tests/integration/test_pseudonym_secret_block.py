"""The pseudonym key from a Prefect Secret block (how a deployment gets it), on a real temporary Prefect
API with a home of its own: the block's value becomes the key, and a missing block is one line naming
the config field."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]

SCRIPT = """
import json, sys
from prefect.blocks.system import Secret
from llm.config import build_config
from llm.errors import UserError
from llm.secrets import with_pseudonym_key
from tasks.data import _secret_block

Secret(value="from-the-block-0123456789").save("llmpipe-pseudonym-key")
cfg = build_config({"data": {"pii": {"replacement": "pseudonym", "pseudonym_key_secret": "llmpipe-pseudonym-key"}}})
resolved = with_pseudonym_key(cfg, sys.argv[1], _secret_block(cfg.data.pii.pseudonym_key_secret))
try:
    _secret_block("no-such-block")
    missing = None
except UserError as exc:
    missing = str(exc)
print(json.dumps({"key": resolved.data.pii.pseudonym_key.get_secret_value(),
                  "dumped": json.dumps(resolved.model_dump(mode="json")), "missing": missing}))
"""


def test_key_comes_from_the_named_secret_block(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_API_URL", "LLMPIPE_PSEUDONYM"))}
    env.update(PREFECT_HOME=str(tmp_path / "prefect"), PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS="300",
               PYTHONPATH=str(REPO))
    out = subprocess.run([sys.executable, "-c", SCRIPT, str(tmp_path / "work")], env=env, cwd=tmp_path,
                         capture_output=True, text=True, timeout=240)
    assert out.returncode == 0, out.stderr[-2000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["key"] == "from-the-block-0123456789"
    assert "from-the-block" not in result["dumped"]  # the config carries only the fingerprint
    assert not (tmp_path / "work" / "_secrets").exists()  # nothing generated when a key is given
    assert "data.pii.pseudonym_key_secret" in result["missing"] and "no-such-block" in result["missing"]
