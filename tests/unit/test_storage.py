import hashlib

import pyarrow as pa
import pytest

from llm import conditional_writes, storage


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


def test_s3_without_credentials_names_them(monkeypatch, no_aws_credentials, tmp_path):
    try:
        with pytest.raises(storage.StorageError, match="AWS_ACCESS_KEY_ID"):
            storage.read_bytes("s3://bucket/key")
    finally:
        storage._s3_client.cache_clear()


def _tree(root) -> dict[str, bytes]:
    """Every file under `root`, by relative path."""
    from pathlib import Path

    root = Path(root)
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _folder(root, files: dict[str, bytes]):
    for rel, data in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    return root


OLD = {"a.bin": b"old a", "only-old.txt": b"gone soon", "sub/c.txt": b"old c"}
NEW = {"a.bin": b"new a", "sub/d.txt": b"new d"}


def test_download_dir_replaces_an_existing_folder_whole(tmp_path):
    src = _folder(tmp_path / "src", NEW)
    dest = _folder(tmp_path / "dest", OLD)
    storage.download_dir(str(src), str(dest))
    assert _tree(dest) == NEW  # files the source does not have are gone too
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dest", "src"]  # no temp or aside left
    storage.download_dir(str(src), str(tmp_path / "fresh" / "copy"))  # missing parents are made
    assert _tree(tmp_path / "fresh" / "copy") == NEW


def test_download_dir_that_fails_half_way_leaves_the_old_folder(tmp_path):
    src = _folder(tmp_path / "src", NEW)
    (src / "zz-broken").symlink_to(tmp_path / "nowhere")  # listed, sorted last, unreadable
    dest = _folder(tmp_path / "dest", OLD)
    with pytest.raises(FileNotFoundError):
        storage.download_dir(str(src), str(dest))
    assert _tree(dest) == OLD
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dest", "src"]


def test_replace_dir_local_swaps_in_the_new_content(tmp_path):
    new = _folder(tmp_path / "new", NEW)
    dest = _folder(tmp_path / "out" / "final", OLD)
    storage.replace_dir(str(new), str(dest))
    assert _tree(dest) == NEW and _tree(new) == NEW  # the source is copied, not moved
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["final"]
    storage.replace_dir(str(new), str(tmp_path / "other" / "final"))  # nothing there yet
    assert _tree(tmp_path / "other" / "final") == NEW
    with pytest.raises(FileNotFoundError, match="not a folder"):
        storage.replace_dir(str(tmp_path / "missing"), str(dest))
    assert _tree(dest) == NEW


def test_replace_dir_local_that_fails_while_copying_keeps_the_old_content(tmp_path):
    import shutil

    new = _folder(tmp_path / "new", NEW)
    (new / "zz-broken").symlink_to(tmp_path / "nowhere")
    dest = _folder(tmp_path / "out" / "final", OLD)
    with pytest.raises(shutil.Error):
        storage.replace_dir(str(new), str(dest))
    assert _tree(dest) == OLD
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["final"]


def test_a_crash_between_the_two_renames_is_recovered(tmp_path):
    out = tmp_path / "out"
    new = _folder(tmp_path / "new", NEW)
    # The state a kill between "old aside" and "new in" leaves: no folder, the old one aside.
    _folder(out / ".final.replaced", OLD)
    assert storage.recover_dir(str(out / "final")) is True
    assert _tree(out / "final") == OLD and [p.name for p in out.iterdir()] == ["final"]
    assert storage.recover_dir(str(out / "final")) is False  # nothing left to do

    # A kill after "new in" but before the old copy was deleted: the new folder stays.
    _folder(out / ".final.replaced", OLD)
    (out / "final" / "marker").write_bytes(b"new")
    assert storage.recover_dir(str(out / "final")) is False
    assert (out / "final" / "marker").exists() and [p.name for p in out.iterdir()] == ["final"]

    # replace_dir repairs first by itself.
    import shutil

    shutil.rmtree(out / "final")
    _folder(out / ".final.replaced", OLD)
    storage.replace_dir(str(new), str(out / "final"))
    assert _tree(out / "final") == NEW and [p.name for p in out.iterdir()] == ["final"]


def test_create_exclusive_local_creates_once(tmp_path):
    uri = str(tmp_path / "claims" / "x.json")
    assert conditional_writes.create_exclusive(uri, b"first") is True
    assert conditional_writes.create_exclusive(uri, b"second") is False
    assert storage.read_bytes(uri) == b"first"
    assert [p.name for p in (tmp_path / "claims").iterdir()] == ["x.json"]


def test_remove_temp_files_takes_only_what_a_killed_writer_left(tmp_path):
    (tmp_path / "sub").mkdir()
    left = tmp_path / "sub" / ".part.parquet.0a1b2c3d.tmp"
    left.write_bytes(b"half")
    keep = [tmp_path / ".hidden", tmp_path / "sub" / "data.tmp", tmp_path / "sub" / "part.parquet"]
    for p in keep:
        p.write_bytes(b"x")
    assert storage.remove_temp_files(str(tmp_path)) == 1
    assert not left.exists() and all(p.exists() for p in keep)
