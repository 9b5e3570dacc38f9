"""Errors a user can fix: a config field, an input path, a glob, a credential, a server address.

`llmpipe` prints these as one line naming what to fix and exits with status 2; anything else is a
bug and keeps its traceback. Code in `llm/` raises `UserError` (or a subclass) only when the cause is
the user's input, never for its own invariants.
"""

from __future__ import annotations


class UserError(ValueError):
    """A problem with what the user gave (config, inputs, environment); the message says what to fix.

    A `ValueError`, so callers that caught `ValueError` before keep working."""


def user_cause(exc: BaseException) -> BaseException | None:
    """The user-caused error behind `exc` (a `UserError`, or an OS error about a path: `PATH_ERRORS`),
    looking through the wrappers that Ray puts around a task's exception and through causes and
    contexts, nearest first (Prefect re-raises a task's own exception); None when there is none.

    Behind an implicit context (an error raised while another was being handled) only a `UserError`
    counts: a bug in the handler of a missing file is still a bug."""
    seen: set[int] = set()
    stack: list[tuple[BaseException | None, bool]] = [(exc, False)]
    while stack:
        err, implicit = stack.pop(0)
        if err is None or id(err) in seen:
            continue
        seen.add(id(err))
        wrapped = _wrapped(err)
        if wrapped:
            # A Ray wrapper's own text is the remote traceback: the error inside it is the message.
            stack[:0] = [(e, implicit) for e in wrapped]
            continue
        if isinstance(err, UserError) or (isinstance(err, PATH_ERRORS) and not implicit):
            return err
        stack += [(err.__cause__, implicit), (err.__context__, True)]
    return None


# OS errors about a path (missing, unreadable, a file where a folder was expected or the reverse): the
# path is one the user gave or can fix (a config file, the work directory, an input), and the error
# names it.
PATH_ERRORS = (FileNotFoundError, PermissionError, IsADirectoryError, NotADirectoryError)


def _wrapped(err: BaseException) -> list[BaseException]:
    """The exceptions a Ray wrapper holds: RayTaskError's `cause` (also behind the subclass that
    `as_instanceof_cause` builds), Ray Train's `worker_failures` (rank -> the worker's exception)."""
    cause = getattr(err, "cause", None)
    if isinstance(cause, BaseException):
        return [cause]
    failures = getattr(err, "worker_failures", None)
    if isinstance(failures, dict):
        return [e for _, e in sorted(failures.items()) if isinstance(e, BaseException)]
    return []


def without_password(url: str) -> str:
    """`url` with the password of a `user:password@host` part masked, for messages."""
    from urllib.parse import urlsplit, urlunsplit

    try:
        parts = urlsplit(url)
        if parts.password is None:
            return url
    except ValueError:  # not a URL that parses: shown as given, it has no password part to find
        return url
    host = parts.netloc.rsplit("@", 1)[-1]
    return urlunsplit(parts._replace(netloc=f"{parts.username}:***@{host}"))


class InputNotFound(UserError, FileNotFoundError):
    """An input the user named (a source's file or folder, a dataset, a checkpoint, a document id) does
    not exist.

    Also a `FileNotFoundError`, so callers that test for a missing path keep working."""
