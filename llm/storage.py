"""All file I/O of the project, behind URIs: local paths (or file://) and s3://bucket/key.

Every write is atomic: local files go to a temporary name in the same folder and are renamed; S3
objects become visible only when the PUT (or multipart upload) completes. S3 goes through boto3 and
honours the usual environment (`AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, `AWS_DEFAULT_REGION`,
`AWS_ENDPOINT_URL` / `AWS_ENDPOINT_URL_S3` for S3-compatible stores).
"""

from __future__ import annotations

import hashlib
import io
import os
import shutil
import tempfile
import uuid
from contextlib import contextmanager
from functools import lru_cache
from pathlib import Path
from typing import Iterator

import pyarrow as pa
import pyarrow.parquet as pq


class StorageError(OSError):
    """A storage problem a user can fix (missing credentials, missing bucket, unreadable path)."""


def is_s3(uri: str) -> bool:
    return uri.startswith("s3://")


def _local(uri: str) -> Path:
    return Path(uri[len("file://"):] if uri.startswith("file://") else uri)


def _split_s3(uri: str) -> tuple[str, str]:
    rest = uri[len("s3://"):]
    bucket, _, key = rest.partition("/")
    if not bucket:
        raise StorageError(f"{uri}: no bucket in S3 URI")
    return bucket, key


def join(base: str, *parts: str) -> str:
    """Join URI parts with `/` (works for local paths and s3://)."""
    out = base.rstrip("/")
    for part in parts:
        part = str(part).strip("/")
        if part:
            out = f"{out}/{part}"
    return out


def relative(uri: str, base: str) -> str:
    """`uri` relative to the folder `base` when both are on the same filesystem or bucket (so records
    do not depend on where the work directory lives), else `uri` unchanged."""
    import posixpath

    if is_s3(uri) != is_s3(base):
        return uri
    if is_s3(uri):
        (b1, k1), (b2, k2) = _split_s3(uri), _split_s3(base)
        return posixpath.relpath(k1 or "/", k2 or "/") if b1 == b2 else uri
    return os.path.relpath(absolute(uri), absolute(base))


def absolute(uri: str) -> str:
    """Make a local path absolute (so Ray workers in other folders see the same file); S3 unchanged."""
    return uri if is_s3(uri) else str(_local(uri).resolve())


@lru_cache(maxsize=None)
def _s3_client():
    try:
        import boto3
        from botocore.config import Config
    except ImportError as exc:  # pragma: no cover - boto3 is a core dependency
        raise StorageError("s3:// paths need boto3 (pip install boto3)") from exc
    session = boto3.session.Session()
    if session.get_credentials() is None:
        raise StorageError(
            "s3:// path used but no AWS credentials found: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY "
            "(or AWS_PROFILE), and AWS_ENDPOINT_URL for an S3-compatible store"
        )
    return session.client("s3", config=Config(retries={"max_attempts": 5, "mode": "standard"}))


def _s3_call(fn, uri: str, *args, **kwargs):
    from botocore.exceptions import ClientError, EndpointConnectionError, NoCredentialsError

    try:
        return fn(*args, **kwargs)
    except NoCredentialsError:
        raise StorageError(f"{uri}: no AWS credentials: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY") from None
    except EndpointConnectionError as exc:
        raise StorageError(f"{uri}: cannot reach the S3 endpoint ({exc})") from None
    except ClientError as exc:
        code = exc.response.get("Error", {}).get("Code", "")
        if code in ("NoSuchKey", "404", "NotFound"):
            raise FileNotFoundError(uri) from None
        if code == "NoSuchBucket":
            raise StorageError(f"{uri}: bucket does not exist") from None
        raise StorageError(f"{uri}: S3 error {code}: {exc}") from None


# ---------------------------------------------------------------------------------------- queries


def exists(uri: str) -> bool:
    if is_s3(uri):
        bucket, key = _split_s3(uri)
        try:
            _s3_call(_s3_client().head_object, uri, Bucket=bucket, Key=key)
            return True
        except FileNotFoundError:
            return False
    return _local(uri).exists()


def size(uri: str) -> int:
    if is_s3(uri):
        bucket, key = _split_s3(uri)
        return int(_s3_call(_s3_client().head_object, uri, Bucket=bucket, Key=key)["ContentLength"])
    return _local(uri).stat().st_size


def list_files(prefix: str, suffix: str = "", recursive: bool = True,
               skip_dirs: frozenset[str] = frozenset()) -> list[str]:
    """URIs of the files under a folder URI, sorted, optionally filtered by name suffix; folders named
    in `skip_dirs` are not descended into (a large site-packages under a stdlib folder, say)."""
    if is_s3(prefix):
        bucket, key = _split_s3(prefix)
        key = key.rstrip("/") + "/" if key else ""
        paginator = _s3_client().get_paginator("list_objects_v2")
        kwargs = {"Bucket": bucket, "Prefix": key}
        if not recursive:
            kwargs["Delimiter"] = "/"
        out = []
        for page in _s3_call(lambda: list(paginator.paginate(**kwargs)), prefix):
            for obj in page.get("Contents", []):
                parts = obj["Key"][len(key):].split("/")[:-1]
                if obj["Key"].endswith(suffix) and not skip_dirs.intersection(parts):
                    out.append(f"s3://{bucket}/{obj['Key']}")
        return sorted(out)
    root = _local(prefix)
    if not root.exists():
        return []
    if root.is_file():
        return [str(root)]
    if not recursive:
        return sorted(str(p) for p in root.iterdir() if p.is_file() and p.name.endswith(suffix))
    out = []
    for folder, dirs, files in os.walk(root):
        dirs[:] = [d for d in dirs if d not in skip_dirs]
        out.extend(os.path.join(folder, f) for f in files if f.endswith(suffix))
    return sorted(out)


# ------------------------------------------------------------------------------------------ reads


def read_bytes(uri: str) -> bytes:
    if is_s3(uri):
        bucket, key = _split_s3(uri)
        body = _s3_call(_s3_client().get_object, uri, Bucket=bucket, Key=key)["Body"]
        return body.read()
    return _local(uri).read_bytes()


def read_text(uri: str, encoding: str = "utf-8") -> str:
    return read_bytes(uri).decode(encoding)


@contextmanager
def open_read(uri: str) -> Iterator[io.BufferedIOBase]:
    """A binary file object; S3 objects are streamed, local files opened directly."""
    if is_s3(uri):
        bucket, key = _split_s3(uri)
        body = _s3_call(_s3_client().get_object, uri, Bucket=bucket, Key=key)["Body"]
        try:
            yield body
        finally:
            body.close()
    else:
        with open(_local(uri), "rb") as fh:
            yield fh


class _S3Range(io.RawIOBase):
    """A seekable read-only S3 object: each read is one ranged GET, so a Parquet reader fetches the
    footer and the column chunks it needs, not the whole object."""

    def __init__(self, uri: str):
        self.uri = uri
        self.bucket, self.key = _split_s3(uri)
        self.client = _s3_client()
        self.length = size(uri)
        self.pos = 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self.pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self.pos, io.SEEK_END: self.length}[whence]
        self.pos = max(0, base + offset)
        return self.pos

    def readinto(self, buffer) -> int:
        n = min(len(buffer), self.length - self.pos)
        if n <= 0:
            return 0
        body = _s3_call(self.client.get_object, self.uri, Bucket=self.bucket, Key=self.key,
                        Range=f"bytes={self.pos}-{self.pos + n - 1}")["Body"]
        data = body.read()
        buffer[:len(data)] = data
        self.pos += len(data)
        return len(data)


@contextmanager
def parquet_file(uri: str) -> Iterator[pq.ParquetFile]:
    """A Parquet file opened for selective reads (footer, statistics, single row groups and columns):
    local files through the OS, S3 objects through ranged GETs."""
    if not is_s3(uri):
        pf = pq.ParquetFile(str(_local(uri)))
        try:
            yield pf
        finally:
            pf.close()
        return
    with _S3Range(uri) as raw:
        pf = pq.ParquetFile(raw)
        try:
            yield pf
        finally:
            pf.close()


def read_parquet(uri: str, columns: list[str] | None = None) -> pa.Table:
    if is_s3(uri):
        return pq.read_table(io.BytesIO(read_bytes(uri)), columns=columns)
    return pq.read_table(_local(uri), columns=columns)


@contextmanager
def local_copy(uri: str) -> Iterator[str]:
    """A local filesystem path holding the file's content (a download for S3; the file itself if local)."""
    if not is_s3(uri):
        yield str(_local(uri))
        return
    suffix = "".join(Path(uri).suffixes)
    fd, tmp = tempfile.mkstemp(suffix=suffix, prefix="llmpipe-")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(read_bytes(uri))
        yield tmp
    finally:
        os.unlink(tmp)


# ----------------------------------------------------------------------------------------- writes


def write_bytes(uri: str, data: bytes, durable: bool = True) -> str:
    """Atomically write bytes; returns the sha256 of what was written.

    `durable=False` is for scratch files of a run: no fsync and no digest (returns ""); the file still
    appears whole or not at all."""
    digest = hashlib.sha256(data).hexdigest() if durable else ""
    if is_s3(uri):
        bucket, key = _split_s3(uri)
        _s3_call(_s3_client().put_object, uri, Bucket=bucket, Key=key, Body=data)
        return digest
    path = _local(uri)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        with open(tmp, "wb") as fh:
            fh.write(data)
            if durable:
                fh.flush()
                os.fsync(fh.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return digest


def write_text(uri: str, text: str) -> str:
    return write_bytes(uri, text.encode("utf-8"))


def upload_file(local_path: str, uri: str) -> None:
    """Copy a local file to a URI atomically (multipart upload for large S3 objects)."""
    if is_s3(uri):
        bucket, key = _split_s3(uri)
        _s3_call(_s3_client().upload_file, uri, local_path, bucket, key)
        return
    dest = _local(uri)
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(f".{dest.name}.{uuid.uuid4().hex[:8]}.tmp")
    shutil.copyfile(local_path, tmp)
    os.replace(tmp, dest)


def upload_dir(local_dir: str, uri: str) -> None:
    for path in sorted(Path(local_dir).rglob("*")):
        if path.is_file():
            upload_file(str(path), join(uri, str(path.relative_to(local_dir))))


def download_dir(uri: str, local_dir: str) -> None:
    prefix = uri.rstrip("/")
    for file_uri in list_files(prefix):
        rel = file_uri[len(prefix):].lstrip("/")
        dest = Path(local_dir) / rel
        dest.parent.mkdir(parents=True, exist_ok=True)
        dest.write_bytes(read_bytes(file_uri))


def write_parquet(uri: str, table: pa.Table, row_group_rows: int = 1024, compression: str = "zstd") -> tuple[int, str]:
    """Atomically write a table as Parquet; returns (bytes written, sha256).

    Written into memory first: shards are bounded by configuration, and this makes the bytes (and so
    the digest) independent of the destination, which is what byte-identical reruns need.
    """
    buf = io.BytesIO()
    pq.write_table(
        table,
        buf,
        row_group_size=row_group_rows,
        compression=None if compression == "none" else compression,
        write_statistics=True,
    )
    data = buf.getvalue()
    return len(data), write_bytes(uri, data)


def delete(uri: str) -> None:
    """Remove a file or a whole folder (recursively); missing paths are fine."""
    if is_s3(uri):
        for file_uri in list_files(uri) + ([uri] if exists(uri) else []):
            bucket, key = _split_s3(file_uri)
            _s3_call(_s3_client().delete_object, file_uri, Bucket=bucket, Key=key)
        return
    path = _local(uri)
    if path.is_dir():
        shutil.rmtree(path)
    elif path.exists():
        path.unlink()


def makedirs(uri: str) -> None:
    if not is_s3(uri):
        _local(uri).mkdir(parents=True, exist_ok=True)
