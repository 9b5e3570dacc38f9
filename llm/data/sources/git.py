"""`git` sources: the files of a repository at one commit as code documents.

Planning opens the repository (cloning a URL into `git.clone_dir`), resolves `git.ref` to a commit, lists
its files with `git ls-tree` and detects the repository's licence; files are grouped into input units by
path (`files_per_shard`), each unit named by the commit and its files' blobs, so a new commit changes
the units whose files changed and every document's `meta.commit`. Reading takes the blobs through one
`git cat-file --batch` process, with no checkout.

Every file of the commit is one record: kept as a text document (meta: repository, path, commit, ref,
licence, language), or left out by a rule of `code_rules` (vendored, lock_file, generated, minified,
file_too_large, binary, max_line_length, mean_line_length, alnum_fraction, symlink) and then counted and
listed in `rejected/` by extraction under that rule (`schema.READER_DROP`), or quarantined with git's
error when its object cannot be read. Near-duplicate files are left to MinHash.
"""

from __future__ import annotations

from typing import Iterator

from llm.config import SourceConfig, stable_hash
from llm.data import schema
from llm.data.input_files import InputFile, content_groups
from llm.data.raw_records import InputUnit, SourceSkipped, _doc, _quarantine, printable
from llm.data.sources import git_repo
from llm.data.sources.code_rules import content_rule, language_of, path_rule
from llm.data.sources.licences import LICENCE_FILE, repository_licence, spdx_header
from llm.errors import UserError

_SYMLINK = "120000"
_MAX_LICENCE_BYTES = 256 << 10


def plan_repository(source: SourceConfig) -> list[InputUnit]:
    """The input units of one `git` source; a clear error naming the repository and ref when the
    repository cannot be opened or the ref does not resolve. A local repository that is not there raises
    `SourceSkipped` instead where `git.if_missing` is `skip`."""
    if not source.uri:
        raise UserError(f"source {source.name!r} (git): `uri` is required: a repository folder or a URL")
    shown = git_repo.shown_location(source.uri)
    try:
        git_repo.refuse_credentials(source.uri)
        git_dir = git_repo.open_repository(source.uri, source.git.clone_dir)
        commit = git_repo.resolve(git_dir, source.git.ref, shown)
        entries = git_repo.list_files(git_dir, commit, shown)
        licence = _repository_licence(git_dir, entries, shown)
    except UserError as exc:
        if isinstance(exc, git_repo.RepositoryMissing) and source.git.if_missing == "skip":
            raise SourceSkipped(f"source {source.name!r} (git) skipped (git.if_missing: skip): {exc}") from None
        raise type(exc)(f"source {source.name!r} (git): {exc}") from None
    if source.glob:
        from llm.data.readers import _matches

        entries = [e for e in entries if _matches(e.path, source.glob)]
    if source.max_files is not None:
        entries = entries[: source.max_files]
    if not entries:
        where = f" matching {source.glob}" if source.glob else ""
        raise UserError(f"source {source.name!r} (git): no files{where} at {source.git.ref!r} ({commit}) in {shown}")
    modes = {e.path: e.mode for e in entries}
    files = [InputFile(e.path, e.path, e.size, e.blob) for e in entries]
    head = ("repository", shown, commit, licence)
    units = []
    for group in content_groups(files, source.files_per_shard):
        fingerprint = (head, *((f.rel, f.size, f.digest, modes[f.rel]) for f in group))
        units.append(InputUnit(f"{source.name}-{stable_hash(list(fingerprint))[:12]}", source, (shown,),
                               shown.rsplit("/", 1)[0], fingerprint))
    return units


def _repository_licence(git_dir: str, entries: list[git_repo.TreeEntry], shown: str) -> str | None:
    texts = {e.path: git_repo.read_blob(git_dir, e.blob, shown).decode("utf-8", "replace")
             for e in entries if "/" not in e.path and LICENCE_FILE.match(e.path)
             and e.mode != _SYMLINK and e.size <= _MAX_LICENCE_BYTES}
    return repository_licence(texts)


def read_repository(unit: InputUnit, shown: str) -> Iterator[dict]:
    """Every file of the unit as a raw document, a document marked dropped by its rule, or a quarantine
    entry (an object git cannot read)."""
    source = unit.source
    _, _, commit, licence = unit.fingerprint[0]
    # On a worker that has not cloned the repository yet (or whose clone is older) this clones or fetches.
    # A local repository by the absolute path planning resolved: `uri` may be relative to another folder.
    location = source.uri if git_repo.is_url(source.uri) else shown
    git_dir = git_repo.open_repository(location, source.git.clone_dir, fetch=False)
    if not git_repo.has_commit(git_dir, commit):
        git_dir = git_repo.open_repository(location, source.git.clone_dir, fetch=True)
    with git_repo.BlobReader(git_dir) as blobs:
        for path, size, blob, mode in unit.fingerprint[1:]:
            meta = {"repository": shown, "path": printable(path), "commit": commit, "ref": source.git.ref,
                    "licence": licence, "language": language_of(path), "size": size}
            drop = ("symlink", None, None, None) if mode == _SYMLINK else path_rule(path, size, source.git)
            if drop is not None:
                yield _dropped(unit, path, meta, drop)
                continue
            try:
                payload = blobs.read(blob)
            except git_repo.BlobUnreadable as exc:
                yield _quarantine(unit, shown, path, printable(path), f"unreadable object: {exc}", where="path",
                                  size=max(size, 0))
                continue
            drop = content_rule(payload, source.git)
            if drop is not None:
                yield _dropped(unit, path, meta, drop)
                continue
            meta["licence"] = spdx_header(payload) or licence
            yield _doc(unit, path, 0, url=None, created=None, meta=meta, payload=payload, content_type="text",
                       charset="utf-8")


def _dropped(unit: InputUnit, path: str, meta: dict, drop: tuple) -> dict:
    """A file left out by `drop` = (rule, value, threshold, detail): no payload, the rule in content_type."""
    rule, value, threshold, detail = drop
    meta = {**meta, "drop": {"value": value, "threshold": threshold, "detail": detail}}
    return _doc(unit, path, 0, url=None, created=None, meta=meta, payload=b"",
                content_type=f"{schema.READER_DROP}{rule}", charset=None)
