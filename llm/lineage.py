"""Stage identity: what made an output, as a digest of the stage's code, its config and its inputs.

A stage's identity is the digest of three things:

- its code: the source files it runs (the module named for the stage and every `llm` module it imports,
  found by reading their imports), plus the versions of the third-party packages whose behaviour shapes
  its output (trafilatura's extraction, sentencepiece's training, ...). A package version alone would
  not do: the same version runs different code while it is being developed.
- its config section, as resolved (defaults included);
- the identities of its inputs: the versions of its input datasets, or for ingest the names, sizes and
  content digests (S3: ETags) of its input files.

Equal identities mean equal outputs, so a stage whose identity already has a complete version is
skipped, and a change anywhere upstream changes every identity below it. The version id of a dataset
is its identity's digest (`Identity.version`).
"""

from __future__ import annotations

import ast
import hashlib
import json
from dataclasses import dataclass, field
from functools import lru_cache
from importlib import metadata
from pathlib import Path
from typing import Any

from llm.config import stable_hash

# The module each stage runs, and the distributions (beyond this project) whose version changes what
# it writes. A stage's code digest covers these modules and every `llm` module they import.
STAGE_CODE: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "crawl": (("llm.data.crawl_stage",), ("warcio", "requests")),
    "ingest": (("llm.data.ingest", "llm.data.readers", "llm.data.extract", "llm.data.normalize", "llm.data.pii",
                "llm.data.langid", "llm.data.quality", "llm.data.content"),
               ("pyarrow", "trafilatura", "warcio", "py3langid", "numpy", "numba", "phonenumbers", "better-profanity")),
    "exact_dedup": (("llm.data.exact_dedup",), ("pyarrow",)),
    "minhash_dedup": (("llm.data.minhash.stage",), ("pyarrow", "numpy", "numba")),
    "shard": (("llm.data.reshard",), ("pyarrow",)),
    "tokenizer": (("llm.tokenizer.stage",), ("sentencepiece", "tokenizers", "pyarrow")),
    "tokenize": (("llm.tokenizer.tokenize",), ("sentencepiece", "tokenizers", "numpy")),
    "pretrain": (("llm.train.trainer",), ("torch",)),
    "evaluate": (("llm.eval",), ("torch",)),
    "finetune": (("llm.finetune.trainer", "llm.finetune.workload", "llm.finetune.export", "llm.finetune.doc_pairs"),
                 ("torch", "sentencepiece")),
}

# Config fields whose values are secrets: hashed into identities (they change outputs) but never shown.
SECRET_FIELDS = frozenset({"pseudonym_key"})
REDACTED = "<redacted>"


_PACKAGE_ROOT = Path(__file__).resolve().parent.parent  # the folder holding `llm/`


def _module_file(name: str) -> Path | None:
    """The source file of an `llm` module, found without importing it; None for a name that is not a
    module (`from llm.data.readers import plan_inputs` also yields llm.data.readers.plan_inputs)."""
    base = _PACKAGE_ROOT.joinpath(*name.split("."))
    for path in (base.with_suffix(".py"), base / "__init__.py"):
        if path.is_file():
            return path
    return None


def _imports_of(name: str, path: Path) -> set[str]:
    """`llm` modules imported anywhere in the file (function-level imports included: stages import
    their heavy parts lazily).

    Parsing a stage's two dozen files costs a process ~0.15 s before its first shard, so the answer is
    kept in the file's `__pycache__` under its content digest (a changed file is parsed again)."""
    source = path.read_bytes()
    cached = path.parent / "__pycache__" / f"{path.stem}.llm-imports-{hashlib.sha256(source).hexdigest()[:16]}.json"
    try:
        return set(json.loads(cached.read_bytes()))
    except (OSError, ValueError):
        pass
    found = _parse_imports(name, path, source)
    try:
        from llm import storage

        storage.write_bytes(str(cached), json.dumps(sorted(found)).encode(), durable=False)
    except OSError:  # a read-only install parses in each process
        pass
    return found


def _parse_imports(name: str, path: Path, source: bytes) -> set[str]:
    tree = ast.parse(source, filename=str(path))
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            found.add(module)
            found.update(f"{module}.{a.name}" for a in node.names)  # `from llm.data import schema`
    return {m for m in found if m == "llm" or m.startswith("llm.")}


@lru_cache(maxsize=None)
def module_closure(roots: tuple[str, ...]) -> tuple[str, ...]:
    """Every `llm` module reachable by imports from `roots` (parents included), sorted."""
    seen: set[str] = set()
    todo = list(roots)
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        path = _module_file(name)
        if path is None:  # `from llm.data import schema` also names the attribute llm.data.schema
            continue
        seen.add(name)
        parts = name.split(".")
        todo.extend(".".join(parts[:i]) for i in range(1, len(parts)))
        todo.extend(_imports_of(name, path) - seen)
    return tuple(sorted(seen))


@lru_cache(maxsize=None)
def _file_digest(path: str) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def _distribution_version(name: str) -> str:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return "absent"


def code_digest(stage: str) -> str:
    """Digest of the source files a stage runs and the versions of the packages that shape its output."""
    modules, distributions = STAGE_CODE[stage]
    files = {m: _file_digest(str(_module_file(m))) for m in module_closure(modules)}
    return stable_hash({"modules": files, "packages": {d: _distribution_version(d) for d in distributions}})


def redact(config: Any) -> Any:
    """The config with secret values replaced, for manifests, MLflow and printing."""
    if isinstance(config, dict):
        return {k: (REDACTED if k in SECRET_FIELDS and v else redact(v)) for k, v in config.items()}
    if isinstance(config, list):
        return [redact(v) for v in config]
    return config


@dataclass(frozen=True)
class Identity:
    """What a stage's output is made of: `version` is the digest of all of it.

    `inputs` maps an input's role (`docs`, `tokenizer`, a source name, ...) to that input's identity:
    the version of an input dataset, or a digest of an input file listing.
    """

    stage: str
    code: str
    config: dict
    inputs: dict[str, str] = field(default_factory=dict)
    upstream: dict[str, str] = field(default_factory=dict)  # role -> the input's recipe

    @property
    def config_hash(self) -> str:
        return stable_hash(self.config)

    @property
    def recipe(self) -> str:
        """The digest of how the output is made, whatever data went in: this stage's code and config
        and its inputs' recipes. Equal recipes with different data mean the data grew or shrank
        while the pipeline stayed the same (a refresh); the tokenizer keeps its vocabulary then."""
        return stable_hash({"stage": self.stage, "code": self.code, "config": self.config_hash,
                            "upstream": self.upstream})

    @property
    def version(self) -> str:
        return stable_hash({"stage": self.stage, "code": self.code, "config": self.config_hash,
                            "inputs": self.inputs})

    def shard_key(self, config: Any = None, **parts: Any) -> str:
        """Key of one output shard: the stage's code and config plus exactly what that shard reads
        (its input shards' keys, and any cross-shard decision it depends on). Equal keys mean equal
        files, so a new version reuses every shard whose key an earlier version already made. `config`
        narrows the config to the part the shard depends on (ingest: its own source's, not every
        source's)."""
        config_hash = self.config_hash if config is None else stable_hash(config)
        return stable_hash({"stage": self.stage, "code": self.code, "config": config_hash, **parts})

    def to_json(self) -> dict:
        return {"stage": self.stage, "version": self.version, "recipe": self.recipe, "code": self.code,
                "config_hash": self.config_hash, "config": redact(self.config),
                "inputs": dict(sorted(self.inputs.items())), "upstream": dict(sorted(self.upstream.items()))}


def identity(stage: str, config: Any, inputs: dict[str, str] | None = None,
             upstream: dict[str, str] | None = None) -> Identity:
    """The identity of running `stage` with `config` (a pydantic model, a dict or a list) on `inputs`
    (role -> input version or digest); `upstream` holds the inputs' recipes."""
    if hasattr(config, "model_dump"):
        config = config.model_dump(mode="json")
    return Identity(stage, code_digest(stage), config, dict(inputs or {}), dict(upstream or {}))


def of_input(manifest: dict) -> tuple[str, str]:
    """(version, recipe) of an input dataset's manifest; a dataset made outside a stage is its own
    recipe."""
    version = manifest["version"]
    return version, manifest.get("identity", {}).get("recipe", version)
