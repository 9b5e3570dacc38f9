"""A git repository through the system `git`: open a local one or clone a URL, resolve a ref, list a
commit's files and read their blobs through one `git cat-file --batch` process, with no checkout.

git runs with an explicit `--git-dir`, so a folder that is not a repository is never mistaken for the
repository around it, and it never prompts: a URL that needs credentials the user's git does not have
fails instead of waiting for a password. A URL with a password or an HTTP user name (where hosts take
tokens) is refused, since a source's URI is stored with the run's config; URLs are still shown without
any user part, and git's messages are cleaned of them, so a credential never reaches a log or MLflow.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

from llm.errors import InputNotFound, UserError

_ENV = {"GIT_TERMINAL_PROMPT": "0", "GIT_ASKPASS": "true", "SSH_ASKPASS": "true", "LC_ALL": "C"}
_SCP_LIKE = re.compile(r"^[\w.-]+@[\w.-]+:")  # git@host:owner/repo
_MIRROR_REFS = "+refs/*:refs/*"  # a fetch keeps every branch and tag as the remote has them
_TIMEOUT_S = 3600  # a clone of a large repository over a slow link; never forever


class RepositoryError(UserError):
    """A repository that cannot be opened, cloned or resolved; the message names it and the ref."""


class RepositoryMissing(RepositoryError, InputNotFound):
    """A local repository location that does not exist or holds no repository (a folder without `.git`
    that is not a bare repository either): what `git.if_missing: skip` leaves out."""


class BlobUnreadable(Exception):
    """One object of the repository cannot be read (missing or corrupt); the message says why."""


@dataclass(frozen=True)
class TreeEntry:
    """One file of a commit: its path, mode (`100644`, `100755`, `120000` for a symlink), blob and size
    (-1 when git cannot read the object)."""

    path: str
    mode: str
    blob: str
    size: int


def is_url(uri: str) -> bool:
    """Whether `uri` is something to clone (`https://`, `ssh://`, `file://`, `git@host:path`)."""
    return "://" in uri or bool(_SCP_LIKE.match(uri))


def shown_location(uri: str) -> str:
    """`uri` without the user and password a URL may carry (`https://user:token@host/...`); a local path
    made absolute, so that workers in another folder (Ray's) open the repository planning opened."""
    if not is_url(uri):
        return str(Path(uri).expanduser().resolve())
    if "://" not in uri:
        return uri
    parts = urlsplit(uri)
    host = parts.netloc.rsplit("@", 1)[-1]
    return urlunsplit((parts.scheme, host, parts.path, parts.query, parts.fragment))


def refuse_credentials(uri: str) -> None:
    """Stop on a URL that carries a password or an HTTP user (a token as user name is how many hosts take
    one): a source's URI is stored with the run's config, so a secret in it would reach manifests and
    MLflow. git's credential helpers and SSH keys supply credentials without that."""
    if "://" not in uri:
        return
    parts = urlsplit(uri)
    if parts.password is not None or (parts.username and parts.scheme in ("http", "https", "ftp", "ftps")):
        raise UserError(f"repository {shown_location(uri)}: the URL carries credentials; give them to git "
                        "(a credential helper, an SSH key) instead, as the URI is stored with the run's config")


def _run(git_dir: str | None, args: list[str], shown: str, check: bool = True) -> subprocess.CompletedProcess:
    cmd = ["git"] + ([f"--git-dir={git_dir}"] if git_dir else []) + args
    try:
        done = subprocess.run(cmd, capture_output=True, timeout=_TIMEOUT_S, env={**os.environ, **_ENV})
    except FileNotFoundError:
        raise UserError("`git` sources need the `git` command, which is not installed") from None
    except subprocess.TimeoutExpired:
        raise RepositoryError(f"repository {shown}: git {args[0]} took over {_TIMEOUT_S} s") from None
    if check and done.returncode != 0:
        raise RepositoryError(f"repository {shown}: git {args[0]} failed: {_message(done.stderr)}")
    return done


def _message(stderr: bytes) -> str:
    """git's own message, one line, with any credential-carrying URL replaced by its shown form."""
    text = " ".join(stderr.decode("utf-8", "replace").split())
    text = re.sub(r"[a-z][a-z0-9+.-]*://[^\s/@]+@", lambda m: m.group(0).split("//")[0] + "//", text)
    return text or "no message"


def open_repository(uri: str, clone_dir: str | None, fetch: bool = True) -> str:
    """The git dir to read `uri` from: the repository itself when local (a work tree's `.git`, or a bare
    repository), else a bare mirror clone under `clone_dir`, updated first when `fetch` is set."""
    if is_url(uri):
        return _clone(uri, clone_dir, fetch)
    path = Path(uri).expanduser().resolve()
    if not path.exists():
        raise RepositoryMissing(f"repository {uri}: {path} does not exist")
    has_dot_git = (path / ".git").exists()  # a folder, or a file naming it (a worktree, a submodule)
    git_dir = path / ".git" if has_dot_git else path
    done = _run(str(git_dir), ["rev-parse", "--git-dir"], str(path), check=False)
    if done.returncode != 0 and has_dot_git:  # a `.git` git cannot open is damaged, not missing
        raise RepositoryError(f"repository {path}: its `.git` cannot be opened: {_message(done.stderr)}")
    if done.returncode != 0:
        raise RepositoryMissing(f"repository {path}: not a git repository (no `.git` in it and not a bare "
                                f"repository): {_message(done.stderr)}")
    return str(git_dir)


def _clone(url: str, clone_dir: str | None, fetch: bool) -> str:
    shown = shown_location(url)
    root = Path(clone_dir or os.path.join(tempfile.gettempdir(), "llmpipe-git")).expanduser().resolve()
    # Named by the URL as shown, so one repository has one clone whichever token reaches it.
    name = re.sub(r"[^A-Za-z0-9._-]", "_", shown.rstrip("/").rsplit("/", 1)[-1])[:40]
    target = root / f"{name}-{hashlib.blake2b(shown.encode(), digest_size=8).hexdigest()}"
    if target.exists():
        if fetch:
            _run(str(target), ["fetch", "--quiet", "--prune", "--", url, _MIRROR_REFS], shown)
        return str(target)
    root.mkdir(parents=True, exist_ok=True)
    # Cloned beside the target and renamed into place: a clone cut off halfway is never used, and two
    # workers cloning at once both end with one complete clone.
    partial = Path(tempfile.mkdtemp(prefix=f".{name}-", dir=root))
    try:
        _run(None, ["clone", "--mirror", "--quiet", "--", url, str(partial)], shown)
        # The clone remembers the URL as shown: a token in it is used, never stored on disk.
        _run(str(partial), ["config", "remote.origin.url", shown], shown)
        try:
            partial.rename(target)
        except OSError:  # another worker's clone got there first
            pass
    finally:
        shutil.rmtree(partial, ignore_errors=True)
    return str(target)


def has_commit(git_dir: str, sha: str) -> bool:
    return _run(git_dir, ["cat-file", "-e", f"{sha}^{{commit}}"], git_dir, check=False).returncode == 0


def resolve(git_dir: str, ref: str, shown: str) -> str:
    """The commit `ref` (a branch, tag, commit or `HEAD`) points at; a clear error when there is none."""
    if ref.startswith("-"):
        raise RepositoryError(f"repository {shown}: ref {ref!r} is not a branch, tag or commit")
    done = _run(git_dir, ["rev-parse", "--verify", "--quiet", f"{ref}^{{commit}}"], shown, check=False)
    if done.returncode == 0:
        return done.stdout.decode().strip()
    if not done.stderr.strip():  # --quiet: a ref that does not exist says nothing
        raise RepositoryError(f"repository {shown}: ref {ref!r} not found (no such branch, tag or commit; "
                              "set `git.ref`)")
    raise RepositoryError(f"repository {shown}: ref {ref!r} cannot be read (a damaged repository?): "
                          f"{_message(done.stderr)}")


def list_files(git_dir: str, sha: str, shown: str) -> list[TreeEntry]:
    """Every file of commit `sha`, sorted by path. Submodules (links to other repositories' commits)
    hold no content here and are not listed."""
    out = _run(git_dir, ["ls-tree", "-r", "-l", "-z", "--full-tree", sha], shown).stdout
    entries = []
    for item in out.split(b"\0"):
        if not item:
            continue
        info, _, path = item.partition(b"\t")
        mode, kind, blob, size = info.decode("ascii").split()
        if kind == "blob":  # git lists a damaged object's size as `BAD`: -1, the reader quarantines it
            entries.append(TreeEntry(path.decode("utf-8", "surrogateescape"), mode, blob,
                                     int(size) if size.isdigit() else -1))
    return sorted(entries, key=lambda e: e.path)


def read_blob(git_dir: str, blob: str, shown: str) -> bytes:
    """One blob's bytes (for the few files planning reads: licence files)."""
    return _run(git_dir, ["cat-file", "blob", blob], shown).stdout


class BlobReader:
    """Blobs by id from one `git cat-file --batch` process. A process that dies on a damaged object is
    started again for the next blob, so one bad object costs one file."""

    def __init__(self, git_dir: str):
        self.git_dir = git_dir
        self._proc: subprocess.Popen | None = None

    def __enter__(self) -> "BlobReader":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def read(self, blob: str) -> bytes:
        proc = self._process()
        try:
            proc.stdin.write(blob.encode("ascii") + b"\n")
            proc.stdin.flush()
            header = proc.stdout.readline()
        except BrokenPipeError:
            header = b""
        if not header:  # git stopped: a damaged object (its message is on stderr)
            raise BlobUnreadable(f"git cat-file failed on object {blob}: {self._stop()}")
        fields = header.split()
        if len(fields) == 2 and fields[1] == b"missing":
            raise BlobUnreadable(f"object {blob} is missing from the repository")
        size = int(fields[2])
        data = proc.stdout.read(size)
        proc.stdout.read(1)  # the newline after each object
        if len(data) != size:
            raise BlobUnreadable(f"object {blob}: {len(data)} of {size} bytes read: {self._stop()}")
        return data

    def _process(self) -> subprocess.Popen:
        if self._proc is None:
            self._proc = subprocess.Popen(["git", f"--git-dir={self.git_dir}", "cat-file", "--batch"],
                                          stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                          env={**os.environ, **_ENV})
        return self._proc

    def _stop(self) -> str:
        """Stop the process and return what it said on stderr."""
        proc, self._proc = self._proc, None
        if proc is None:
            return "no message"
        try:
            proc.stdin.close()  # git ends at the end of its input
        except OSError:
            pass
        try:
            err = proc.stderr.read()
            proc.wait(timeout=30)
        except (OSError, subprocess.TimeoutExpired):
            proc.kill()
            proc.wait()
            err = b""
        proc.stdout.close()
        proc.stderr.close()
        return _message(err)

    def close(self) -> None:
        self._stop()
