"""Conditional writes through storage: what a lock needs (create only if absent, replace or delete only
if unchanged). S3 has these as conditional PUTs (If-None-Match / If-Match, atomic on the server);
stores without them get a weaker emulation. Local paths use the file system's own exclusive create."""

from __future__ import annotations

import os
import time
import uuid

from llm.storage import StorageError, _local, _s3, _s3_call, _split_s3, is_s3, temp_beside

_PRECONDITION_CODES = ("PreconditionFailed", "412", "ConditionalRequestConflict", "409")
_UNSUPPORTED_CODES = ("NotImplemented", "501")
_conditional_support: dict[tuple[str, str], bool] = {}


class _ConditionFailed(Exception):
    pass


def _conditional(fn, uri: str, **kwargs):
    """`fn(**kwargs)` through `_s3_call`; None when the store refused the write's precondition."""
    from botocore.exceptions import ClientError

    def call():
        try:
            return fn(**kwargs)
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code", "") in _PRECONDITION_CODES:
                raise _ConditionFailed() from None
            raise

    try:
        return _s3_call(call, uri)
    except _ConditionFailed:
        return None


def conditional_writes(uri: str) -> bool:
    """Whether the S3 store behind `uri` honours conditional PUTs, found once per endpoint and bucket
    by a probe object beside `uri` (a store may reject the header, or worse, ignore it)."""
    from botocore.exceptions import ClientError

    bucket, key = _split_s3(uri)
    client = _s3(uri)
    cache_key = (client.meta.endpoint_url, bucket)
    if cache_key in _conditional_support:
        return _conditional_support[cache_key]
    probe = f"{key.rsplit('/', 1)[0] + '/' if '/' in key else ''}.llmpipe-probe-{uuid.uuid4().hex}"

    def create(body: bytes) -> str:
        try:
            client.put_object(Bucket=bucket, Key=probe, Body=body, IfNoneMatch="*")
            return "created"
        except ClientError as exc:
            code = exc.response.get("Error", {}).get("Code", "")
            if code in _PRECONDITION_CODES:
                return "refused"
            if code in _UNSUPPORTED_CODES or code == "InvalidArgument":
                return "unsupported"
            raise  # anything else (no bucket, no access) is the user's to fix: `_s3_call` names it

    try:
        first = _s3_call(create, uri, b"1")
        # A second create of the same key must be refused; if it succeeds the header was ignored.
        supported = first == "created" and _s3_call(create, uri, b"2") == "refused"
    finally:
        try:
            client.delete_object(Bucket=bucket, Key=probe)
        except ClientError:
            pass
    _conditional_support[cache_key] = supported
    return supported


def read_tagged(uri: str) -> tuple[bytes, str]:
    """S3 only: an object's bytes and its ETag (the version `put_conditional(if_match=...)` checks)."""
    bucket, key = _split_s3(uri)
    reply = _s3_call(_s3(uri).get_object, uri, Bucket=bucket, Key=key)
    return reply["Body"].read(), reply["ETag"]


def put_conditional(uri: str, data: bytes, *, if_none_match: bool = False, if_match: str | None = None) -> str | None:
    """S3 only: PUT `data` only if no object is at `uri` (`if_none_match`) or only if the object still
    has the ETag `if_match`; returns the new ETag, None when the condition did not hold.

    Atomic on stores with conditional writes (AWS S3, moto). Elsewhere it is emulated by check, write,
    pause, read back: it catches most races but not all, which is the best such a store allows."""
    if if_none_match == (if_match is not None):
        raise ValueError("put_conditional needs exactly one of if_none_match and if_match")
    bucket, key = _split_s3(uri)
    client = _s3(uri)
    if conditional_writes(uri):
        cond = {"IfNoneMatch": "*"} if if_none_match else {"IfMatch": if_match}
        try:
            reply = _conditional(client.put_object, uri, Bucket=bucket, Key=key, Body=data, **cond)
        except FileNotFoundError:  # If-Match on an object that is gone
            return None
        return None if reply is None else reply["ETag"]
    try:
        current = read_tagged(uri)[1]
    except FileNotFoundError:
        current = None
    if (current is not None) if if_none_match else (current != if_match):
        return None
    _s3_call(client.put_object, uri, Bucket=bucket, Key=key, Body=data)
    time.sleep(0.5)  # let a racing writer's PUT land before reading back who won
    try:
        body, etag = read_tagged(uri)
    except FileNotFoundError:
        return None
    return etag if body == data else None


def delete_if_match(uri: str, etag: str) -> bool:
    """S3 only: delete the object only if it still has the ETag `etag` (it is still the one this
    process wrote); True when deleted. Stores without conditional deletes: compare, then delete."""
    bucket, key = _split_s3(uri)
    client = _s3(uri)

    def plain() -> bool:
        try:
            if read_tagged(uri)[1] != etag:
                return False
        except FileNotFoundError:
            return False
        _s3_call(client.delete_object, uri, Bucket=bucket, Key=key)
        return True

    if not conditional_writes(uri):
        return plain()
    try:
        return _conditional(client.delete_object, uri, Bucket=bucket, Key=key, IfMatch=etag) is not None
    except FileNotFoundError:
        return False
    except StorageError as exc:
        if any(code in str(exc) for code in _UNSUPPORTED_CODES):
            return plain()
        raise


def create_exclusive(uri: str, data: bytes) -> bool:
    """Write `data` at `uri` only if nothing is there yet; True when this call created it, False
    when something already was (another writer won). For locks and claims.

    Local: the bytes go to a temporary file that is then hard-linked to `uri`; `link` fails on an
    existing name just as `O_CREAT|O_EXCL` does, but the file never exists half-written. S3: a
    conditional PUT (`put_conditional`)."""
    if is_s3(uri):
        return put_conditional(uri, data, if_none_match=True) is not None
    path = _local(uri)
    tmp = temp_beside(path, data)
    try:
        try:
            os.link(tmp, path)
        except FileExistsError:
            return False
        return True
    finally:
        tmp.unlink(missing_ok=True)


