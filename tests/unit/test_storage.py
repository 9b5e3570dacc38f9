import hashlib

import pyarrow as pa
import pytest

from llm import storage


def test_local_roundtrip_and_atomic_write(tmp_path):
    uri = storage.join(str(tmp_path), "a", "b.bin")
    digest = storage.write_bytes(uri, b"hello")
    assert digest == hashlib.sha256(b"hello").hexdigest()
    assert storage.read_bytes(uri) == b"hello" and storage.exists(uri) and storage.size(uri) == 5
    # no temporary files left behind
    assert [p.name for p in (tmp_path / "a").iterdir()] == ["b.bin"]
    storage.write_bytes(uri, b"bye")
    assert storage.read_bytes(uri) == b"bye"


def test_list_files_sorted_and_filtered(tmp_path):
    for name in ["z.parquet", "a.parquet", "sub/m.parquet", "x.json"]:
        storage.write_bytes(storage.join(str(tmp_path), name), b"x")
    files = storage.list_files(str(tmp_path), ".parquet")
    assert [f.rsplit("/", 1)[-1] for f in files] == ["a.parquet", "m.parquet", "z.parquet"]
    assert storage.list_files(str(tmp_path / "missing")) == []


def test_parquet_bytes_are_deterministic(tmp_path):
    table = pa.table({"id": ["a", "b"], "text": ["x", "y"]})
    n1, d1 = storage.write_parquet(str(tmp_path / "1.parquet"), table)
    n2, d2 = storage.write_parquet(str(tmp_path / "2.parquet"), table)
    assert (n1, d1) == (n2, d2)
    assert storage.read_parquet(str(tmp_path / "1.parquet")).equals(table)


def test_delete_folder(tmp_path):
    storage.write_bytes(str(tmp_path / "d" / "f"), b"1")
    storage.delete(str(tmp_path / "d"))
    assert not (tmp_path / "d").exists()
    storage.delete(str(tmp_path / "never"))  # missing is fine


def test_s3_without_credentials_names_them(monkeypatch, tmp_path):
    for var in ["AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE"]:
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    storage._s3_client.cache_clear()
    try:
        with pytest.raises(storage.StorageError, match="AWS_ACCESS_KEY_ID"):
            storage.read_bytes("s3://bucket/key")
    finally:
        storage._s3_client.cache_clear()
