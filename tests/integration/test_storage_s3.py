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


def _files(prefix: str) -> dict[str, bytes]:
    return {u[len(prefix) + 1:]: storage.read_bytes(u) for u in storage.list_files(prefix)}


def test_s3_replace_dir_and_download_dir(s3_endpoint, tmp_path):
    final = "s3://llmpipe-test/run/final"
    old = {"a.bin": b"old a", "only-old.txt": b"x", "sub/c.txt": b"old c"}
    for rel, data in old.items():
        storage.write_bytes(f"{final}/{rel}", data)
    storage.write_bytes("s3://llmpipe-test/run/final2/keep.txt", b"k")  # a neighbour sharing the prefix text
    new_dir = tmp_path / "new"
    (new_dir / "sub").mkdir(parents=True)
    (new_dir / "a.bin").write_bytes(b"new a")
    (new_dir / "sub" / "d.txt").write_bytes(b"new d")

    # An upload that fails half-way must not have deleted any of the old content.
    (new_dir / "zz-broken").symlink_to(tmp_path / "nowhere")
    with pytest.raises(OSError):
        storage.replace_dir(str(new_dir), final)
    assert old.keys() <= _files(final).keys()
    (new_dir / "zz-broken").unlink()

    storage.replace_dir(str(new_dir), final)
    assert _files(final) == {"a.bin": b"new a", "sub/d.txt": b"new d"}
    assert storage.read_bytes("s3://llmpipe-test/run/final2/keep.txt") == b"k"

    local = tmp_path / "copy"
    (local / "stale").mkdir(parents=True)
    (local / "stale" / "s.txt").write_bytes(b"s")
    storage.download_dir(final, str(local))
    assert sorted(str(p.relative_to(local)) for p in local.rglob("*") if p.is_file()) == ["a.bin", "sub/d.txt"]
    assert (local / "a.bin").read_bytes() == b"new a"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["copy", "moto.log", "new"]
