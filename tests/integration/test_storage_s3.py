import pyarrow as pa
import pytest

from llm import storage

pytestmark = pytest.mark.integration


def test_s3_roundtrip_list_parquet_delete(s3_endpoint, tmp_path):
    base = "s3://llmpipe-test/run1"
    storage.write_text(storage.join(base, "x/_manifest.json"), "{}")
    storage.write_bytes(storage.join(base, "x/b.bin"), b"\x00\x01")
    table = pa.table({"id": ["a"], "text": ["t"]})
    storage.write_parquet(storage.join(base, "x/p.parquet"), table)
    assert storage.exists(storage.join(base, "x/b.bin"))
    assert not storage.exists(storage.join(base, "x/none"))
    assert storage.list_files(base, ".parquet") == [f"{base}/x/p.parquet"]
    assert storage.read_parquet(f"{base}/x/p.parquet").equals(table)
    with storage.local_copy(f"{base}/x/b.bin") as path:
        assert open(path, "rb").read() == b"\x00\x01"
    local = tmp_path / "f.txt"
    local.write_text("up")
    storage.upload_file(str(local), f"{base}/up/f.txt")
    assert storage.read_text(f"{base}/up/f.txt") == "up"
    with pytest.raises(FileNotFoundError):
        storage.read_bytes(f"{base}/missing")
    storage.delete(base)
    assert storage.list_files(base) == []


def test_missing_bucket_is_named(s3_endpoint):
    with pytest.raises(storage.StorageError, match="bucket does not exist"):
        storage.write_bytes("s3://no-such-bucket/k", b"1")
