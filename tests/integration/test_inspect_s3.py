"""Looking a document up in a shard on an S3 endpoint (moto_server on 127.0.0.1) with ranged reads."""

import pyarrow as pa
import pytest

from llm import storage
from llm.data.inspect import _columns, find_in_shard

pytestmark = pytest.mark.integration


def test_find_in_shard_on_s3(s3_endpoint):
    """`s3_endpoint` (tests/integration/conftest.py): moto_server with bucket `llmpipe-test`."""
    ids = [f"doc-{i:05d}" for i in range(3000)]
    table = pa.table({"id": ids, "text": [f"text of document {i}" for i in range(3000)], "lang": ["en"] * 3000})
    uri = "s3://llmpipe-test/docs/part-00000.parquet"
    storage.write_parquet(uri, table, row_group_rows=500)
    assert _columns(uri) == ["id", "text", "lang"]
    assert find_in_shard(uri, "doc-02345") == {"id": "doc-02345", "text": "text of document 2345", "lang": "en"}
    assert find_in_shard(uri, "doc-99999") is None  # past every row group's max: nothing but the footer read
    with storage.parquet_file(uri) as pf:
        assert pf.metadata.num_row_groups == 6 and pf.read_row_group(5, columns=["id"]).num_rows == 500
