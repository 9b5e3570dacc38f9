"""Secrets the pipeline needs, from the environment or kept under the work directory.

The pseudonym key makes PII pseudonyms irreversible only while nobody else has it, so it has no
built-in value. Where none is given (`data.pii.pseudonym_key`, `LLMPIPE_PSEUDONYM_KEY`, or a Prefect
Secret block resolved by the task layer), a random key is generated once per work directory and kept in
`<work_dir>/_secrets/pseudonym_key`: owner-only on a local disk (0600 in a 0700 folder); on S3 the
bucket's access policy is what guards it. Reruns find it there, so pseudonyms stay stable.
"""

from __future__ import annotations

import os
import secrets

from pydantic import SecretStr

from llm import storage
from llm.config import PipelineConfig
from llm.data.pii import PSEUDONYM_KEY_ENV
from llm.errors import UserError

__all__ = ["PSEUDONYM_KEY_ENV", "with_pseudonym_key", "work_dir_key"]
SECRETS_DIR = "_secrets"
PSEUDONYM_KEY_FILE = "pseudonym_key"


def needs_pseudonym_key(cfg: PipelineConfig) -> bool:
    pii = cfg.data.pii
    return pii.enabled and pii.replacement == "pseudonym"


def with_pseudonym_key(cfg: PipelineConfig, work_dir: str, key: str | None = None) -> PipelineConfig:
    """`cfg` with `data.pii.pseudonym_key` set when pseudonyms are on: the config's own key, else `key`
    (from a Prefect Secret block), else the environment, else the work directory's generated key."""
    if not needs_pseudonym_key(cfg) or cfg.data.pii.pseudonym_key is not None:
        return cfg
    value = key or os.environ.get(PSEUDONYM_KEY_ENV) or work_dir_key(work_dir)
    pii = cfg.data.pii.model_copy(update={"pseudonym_key": SecretStr(value)})
    return cfg.model_copy(update={"data": cfg.data.model_copy(update={"pii": pii})})


def work_dir_key(work_dir: str) -> str:
    """The work directory's pseudonym key, generated on first use. Two runs starting at once agree on
    one key: it is created exclusively, and the loser reads the winner's."""
    uri = storage.join(work_dir, SECRETS_DIR, PSEUDONYM_KEY_FILE)
    if storage.is_s3(uri):
        from llm.conditional_writes import create_exclusive

        create_exclusive(uri, secrets.token_hex(32).encode())
        return _checked(storage.read_text(uri), uri)
    path = storage._local(uri)
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    os.chmod(path.parent, 0o700)
    if not path.exists():
        _create_local(path, secrets.token_hex(32))
    if path.stat().st_mode & 0o077:
        raise UserError(f"{path}: the pseudonym key is readable by other users; `chmod 600 {path}`")
    return _checked(path.read_text(encoding="ascii"), uri)


def _create_local(path, value: str) -> None:
    """Write the key beside `path` with mode 0600 and link it into place: never a half-written key, and
    an existing key (a concurrent start's) is kept."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.write(fd, value.encode("ascii"))
        os.fsync(fd)
    finally:
        os.close(fd)
    try:
        os.link(tmp, path)
    except FileExistsError:
        pass
    finally:
        os.unlink(tmp)


def _checked(value: str, uri: str) -> str:
    value = value.strip()
    if len(value) < 16:
        raise UserError(f"{uri}: the pseudonym key there is too short to be secret (under 16 characters)")
    return value
