"""Readers on malformed input: a seeded generator writes damaged WARC, JSONL, Parquet and code files,
knowing for each how many records it holds and how many of them are readable (or that the count
cannot be known from the file), and every record must come out exactly once, with no exception."""

from __future__ import annotations

import gzip
import io
import json
import os
import random
import zlib
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from llm.config import PipelineConfig, SourceConfig
from llm.data import schema, text_readers
from llm.data.ingest import _total, build_steps, process_unit
from llm.data.readers import is_quarantine, plan_inputs, read_unit
from llm.errors import InputNotFound, UserError

SEED = 20261128
WORDS = ("garden river stone window morning letter village harbour lantern meadow orchard bridge "
         "candle forest valley summer winter story market kitchen").split()


@dataclass
class Case:
    """One generated file: `good` records read as documents, `bad` records in quarantine entries (None
    where the split depends on the decoder, the total still being exact). `whole_file` marks a file
    that cannot be split into records: one entry of unknown count covering the whole file."""

    name: bytes  # file name (bytes: some are not UTF-8)
    data: bytes | None  # None: not a regular file (made by `setup`)
    good: int
    bad: int | None
    total: int
    whole_file: bool | None = False  # None: either way
    setup: str | None = None  # "dangling-link", "folder"


def _case(name: str | bytes, data: bytes, good: int, bad: int | None, total: int | None = None,
          whole_file: bool | None = False) -> Case:
    name = name.encode() if isinstance(name, str) else name
    return Case(name, data, good, bad, good + bad if total is None else total, whole_file)


def _words(rng: random.Random, n: int) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(n))


# ------------------------------------------------------------------------------------------- WARC


def _warc_record(rng: random.Random, i: int, kind: str = "response", uri: bytes | None = None) -> tuple[bytes, int]:
    """(record bytes, length of its header + content block, i.e. without the trailing blank lines)."""
    uri = uri if uri is not None else b"http://example.com/page/%d" % i
    if kind == "response":
        body = f"<html><body><p>{_words(rng, rng.randint(8, 30))}.</p></body></html>".encode()
        block = b"HTTP/1.1 200 OK\r\nContent-Type: text/html; charset=utf-8\r\nContent-Length: %d\r\n\r\n%s" % (
            len(body), body)
    else:
        block = b"GET /page/%d HTTP/1.1\r\nHost: example.com\r\n\r\n" % i
    head = (b"WARC/1.0\r\nWARC-Type: %s\r\nWARC-Target-URI: %s\r\nWARC-Date: 2024-01-01T00:00:00Z\r\n"
            b"WARC-Record-ID: <urn:uuid:00000000-0000-0000-0000-%012d>\r\n"
            b"Content-Type: application/http; msgtype=%s\r\nContent-Length: %d\r\n\r\n"
            % (kind.encode(), uri, i, kind.encode(), len(block)))
    return head + block + b"\r\n\r\n", len(head) + len(block)


@dataclass
class Warc:
    """A generated archive: its bytes and, per record, (start, end of content, end, is a response)."""

    data: bytes
    spans: list[tuple[int, int, int, bool]]

    def responses(self, indexes) -> int:
        return sum(self.spans[i][3] for i in indexes)


def _warc(rng: random.Random, gz: bool, n: int | None = None, kinds: list[str] | None = None,
          uris: dict[int, bytes] | None = None) -> Warc:
    n = n or rng.randint(2, 5)
    kinds = kinds or ["response"] + [rng.choice(["response"] * 4 + ["request"]) for _ in range(n - 1)]
    rng.shuffle(kinds)
    data, spans = b"", []
    for i, kind in enumerate(kinds):
        rec, content = _warc_record(rng, i, kind, (uris or {}).get(i))
        stored = gzip.compress(rec, mtime=0) if gz else rec
        # a gzip member is whole or damaged; a plain record is whole once its content is
        spans.append((len(data), len(data) + (len(stored) if gz else content), len(data) + len(stored),
                      kind == "response"))
        data += stored
    return Warc(data, spans)


def _truncated(w: Warc, cut: int, gz: bool) -> tuple[int, int, bool | None]:
    """(good, bad, whole_file) of `w` cut at `cut`: records wholly before it, and the one it cuts."""
    good = bad = 0
    whole = False
    for i, (start, complete, _end, response) in enumerate(w.spans):
        if start >= cut:
            break
        if cut >= complete:
            good += response
        else:
            bad += 1
            # a gzip file cut in its first member holds nothing readable; a plain one cut in the
            # first header may still show that it was a record
            whole = (i == 0) if gz else (None if i == 0 else False)
    return good, bad, whole


def _flip(data: bytes, rng: random.Random, lo: int, hi: int, flips: int) -> bytes:
    out = bytearray(data)
    for at in rng.sample(range(lo, hi), min(flips, hi - lo)):
        out[at] ^= rng.randint(1, 255)
    return bytes(out)


def _same_member(before: bytes, after: bytes, start: int, end: int) -> bool:
    """True when the gzip member at [start, end) still decompresses, whole, to what it held."""
    try:
        decomp = zlib.decompressobj(16 + zlib.MAX_WBITS)
        return decomp.decompress(after[start:end]) == gzip.decompress(before[start:end]) and decomp.eof
    except zlib.error:
        return False


def _arc(rng: random.Random, n: int) -> tuple[bytes, list[int]]:
    """A plain ARC file of `n` pages; returns its bytes and where each page's content ends."""
    desc = b"1 0 test\nURL IP-address Archive-date Content-type Archive-length\n"
    data = b"filedesc://test.arc 0.0.0.0 20240101000000 text/plain %d\n%s\n" % (len(desc), desc)
    ends = []
    for i in range(n):
        body = f"<html><body><p>{_words(rng, 12)}</p></body></html>".encode()
        block = b"HTTP/1.0 200 OK\r\nContent-Type: text/html\r\n\r\n" + body
        data += b"http://example.com/arc/%d 127.0.0.1 20240101000000 text/html %d\n" % (i, len(block)) + block
        ends.append(len(data))
        data += b"\n"
    return data, ends


def warc_cases(rng: random.Random) -> list[Case]:
    cases: list[Case] = []
    for gz in (True, False):
        ext = "warc.gz" if gz else "warc"
        w = _warc(rng, gz)
        cases.append(_case(f"clean.{ext}", w.data, w.responses(range(len(w.spans))), 0))
        cases.append(_case(f"padded.{ext}", w.data + b"\x00" * rng.randint(1, 64), w.responses(range(len(w.spans))), 0))
        for t in range(5):  # truncation at random offsets
            w = _warc(rng, gz)
            cut = rng.randrange(1, len(w.data))
            good, bad, whole = _truncated(w, cut, gz)
            cases.append(_case(f"cut{t}.{ext}", w.data[:cut], good, bad, whole_file=whole))
        cases.append(_case(f"empty.{ext}", b"", 0, 1, whole_file=True))
        cases.append(_case(f"noise.{ext}", rng.randbytes(rng.randint(50, 3000)), 0, 1, whole_file=True))
        cases.append(_case(f"text.{ext}", _words(rng, 200).encode(), 0, 1, whole_file=True))
        w = _warc(rng, gz, kinds=["request", "request"])
        cases.append(_case(f"requests.{ext}", w.data, 0, 1, whole_file=True))
        # header values that are not UTF-8 (warcio reads them as Latin-1) or encode a lone surrogate
        w = _warc(rng, gz, n=3, kinds=["response"] * 3, uris={0: b"http://example.com/\xff\xfe", 1: b"http://x/\xed\xa0\x80"})
        cases.append(_case(f"bad-uri.{ext}", w.data, 3, 0))
    # gzip: garbage after the magic bytes; flipped bytes inside members; junk between members
    cases.append(_case("magic-noise.warc.gz", b"\x1f\x8b" + rng.randbytes(rng.randint(10, 3000)), 0, 1, whole_file=True))
    cases.append(_case("gzipped-noise.warc.gz", gzip.compress(rng.randbytes(500), mtime=0), 0, 1))
    for t in range(5):
        w = _warc(rng, True, n=rng.randint(2, 5))
        hit = sorted(rng.sample(range(len(w.spans)), rng.randint(1, len(w.spans))))
        data = w.data
        for i in hit:  # past the 10-byte gzip header, whose date and OS bytes nobody checks
            start, _, end, _ = w.spans[i]
            data = _flip(data, rng, start + 10, end, rng.randint(1, 3))
        # a flip in the padding bits after the last deflate block changes nothing
        hit = [i for i in hit if not _same_member(w.data, data, *w.spans[i][::2])]
        good = w.responses(i for i in range(len(w.spans)) if i not in hit)
        cases.append(_case(f"flipped{t}.warc.gz", data, good, len(hit), whole_file=len(w.spans) == 1))
    w = _warc(rng, True, n=4, kinds=["response"] * 4)
    at = w.spans[2][0]
    cases.append(_case("junk-between.warc.gz", w.data[:at] + rng.randbytes(300) + w.data[at:], 4, 1))
    # plain: flipped bytes inside page bodies leave every record readable
    for t in range(3):
        w = _warc(rng, False, kinds=["response"] * 3)
        data = w.data
        for start, content_end, _, _ in w.spans:
            data = _flip(data, rng, content_end - 40, content_end - 20, 3)
        cases.append(_case(f"flipped{t}.warc", data, 3, 0))
    arc, ends = _arc(rng, 3)
    cases.append(_case("pages.arc", arc, 3, 0))
    cut = rng.randrange(ends[0] + 100, ends[1] - 5)  # inside the second page's content
    cases.append(_case("cut.arc", arc[:cut], 1, 1))
    cases.append(_case("pages.arc.gz", gzip.compress(arc, mtime=0), 3, 0))
    return cases


# ------------------------------------------------------------------------------------------ JSONL


def _jsonl_line(rng: random.Random, i: int) -> tuple[bytes, bool]:
    """(line without its end, is good)."""
    kind = rng.choice(["good"] * 6 + ["malformed", "list", "no-text", "int-text", "deep", "url-surrogate",
                                      "id-surrogate", "nul", "bad-utf8", "big-int", "text-surrogate", "escaped-nul"])
    text = _words(rng, rng.randint(3, 25))
    good = {"text": text, "doc": f"d{i}", "url": f"http://example.com/{i}"}
    if kind == "good":
        return json.dumps(good).encode(), True
    if kind == "text-surrogate":  # one unreadable character in a text: the record is kept
        return b'{"text": "%s \\ud800 end", "doc": "d%d"}' % (text.encode(), i), True
    if kind == "escaped-nul":
        return b'{"text": "%s\\u0000%s"}' % (text.encode(), text.encode()), True
    return {
        "malformed": b'{"text": "%s", ' % text.encode(),
        "list": json.dumps([text, i]).encode(),
        "no-text": json.dumps({"body": text}).encode(),
        "int-text": json.dumps({"text": i}).encode(),
        "deep": b'{"text": "x", "doc": ' + b"[" * rng.randint(6000, 9000) + b"]" * 10,
        "url-surrogate": b'{"text": "%s", "url": "http://x/\\ud800"}' % text.encode(),
        "id-surrogate": b'{"text": "%s", "doc": "a\\udfff"}' % text.encode(),
        "nul": b'{"text": "a\x00b"}',
        "bad-utf8": b'{"text": "caf\xe9 %s"}' % text.encode(),
        "big-int": b'{"text": "x", "doc": ' + b"9" * 5000 + b"}",
    }[kind], False


@dataclass
class Jsonl:
    data: bytes
    lines: list[tuple[int, int, int, bool | None]]  # start, end of content, end, is good (None: blank)


def _jsonl(rng: random.Random, n: int, ends: tuple[bytes, ...] = (b"\n", b"\r\n", b"\r")) -> Jsonl:
    data, lines = b"", []
    for i in range(n):
        if rng.random() < 0.1:
            line, good = rng.choice([b"", b"   ", b"\t"]), None
        else:
            line, good = _jsonl_line(rng, i)
        end = rng.choice(ends)
        lines.append((len(data), len(data) + len(line), len(data) + len(line) + len(end), good))
        data += line + end
    return Jsonl(data, lines)


def _counts(lines) -> tuple[int, int]:
    good = sum(g is True for *_, g in lines)
    return good, sum(g is False for *_, g in lines)


def _jcase(name: str, data: bytes, good: int, bad: int, whole_file: bool | None = False) -> Case:
    """A JSONL case; a file without a single record (only blank lines) is one entry for the file."""
    if good + bad == 0:
        return _case(name, data, 0, 1, whole_file=True)
    return _case(name, data, good, bad, whole_file=whole_file)


def jsonl_cases(rng: random.Random) -> list[Case]:
    cases: list[Case] = []
    for t in range(4):
        j = _jsonl(rng, rng.randint(5, 25))
        cases.append(_jcase(f"mixed{t}.jsonl", j.data, *_counts(j.lines)))
        cases.append(_jcase(f"mixed{t}.jsonl.gz", gzip.compress(j.data, mtime=0), *_counts(j.lines)))
    j = _jsonl(rng, 3, ends=(b"\r",))
    cases.append(_jcase("cr-only.jsonl", j.data, *_counts(j.lines)))
    for t in range(4):  # a plain file cut at a random offset: its last line is what is left of it
        j = _jsonl(rng, rng.randint(3, 12))
        cut = rng.randrange(1, len(j.data))
        whole = [ln for ln in j.lines if ln[2] <= cut]
        good, bad = _counts(whole)
        part = [ln for ln in j.lines if ln[0] < cut < ln[2]]
        if part and part[0][3] is not None and j.data[part[0][0]:cut].strip():
            complete = cut >= part[0][1]  # only its line end is gone
            good, bad = good + (complete and part[0][3]), bad + (not (complete and part[0][3]))
        cases.append(_jcase(f"cut{t}.jsonl", j.data[:cut], good, bad))
    for t in range(4):  # a gzip file cut at a random offset: lines decompressed whole count, the rest is one entry
        j = _jsonl(rng, rng.randint(3, 40))
        packed = gzip.compress(j.data, mtime=0)
        cut = rng.randrange(1, len(packed))
        seen = zlib.decompressobj(16 + zlib.MAX_WBITS).decompress(packed[:cut])
        done = [ln for ln in j.lines if ln[1] < len(seen)]  # the first byte of its line end came through
        good, bad = _counts(done)
        cases.append(_case(f"cut{t}.jsonl.gz", packed[:cut], good, bad + 1, whole_file=good + bad == 0))
    j = _jsonl(rng, 6)
    good, bad = _counts(j.lines)
    cases.append(_case("trailing-junk.jsonl.gz", gzip.compress(j.data, mtime=0) + rng.randbytes(40), good, bad + 1))
    cases.append(_case("not-gzip.jsonl.gz", j.data, 0, 1, whole_file=True))
    cases.append(_case("empty.jsonl", b"", 0, 1, whole_file=True))
    cases.append(_case("blank.jsonl", b"\n  \r\n\t\r\n", 0, 1, whole_file=True))
    cases.append(_case("nuls.jsonl", b"\x00" * 64, 0, 1))
    cases.append(_case("garbage.jsonl", bytes(rng.randint(0x21, 0xFF) for _ in range(500)), 0, 1))
    return cases


# ---------------------------------------------------------------------------------------- Parquet


def _strings(values: list[bytes | None]) -> pa.Array:
    """A string array holding exactly these bytes, valid UTF-8 or not (pyarrow checks nothing here)."""
    binary = pa.array(values, pa.binary())
    return pa.Array.from_buffers(pa.string(), len(binary), binary.buffers(), binary.null_count)


def _parquet(table: pa.Table, **kwargs) -> bytes:
    buf = io.BytesIO()
    pq.write_table(table, buf, **kwargs)
    return buf.getvalue()


def parquet_cases(rng: random.Random) -> list[Case]:
    cases: list[Case] = []
    for t in range(3):
        n = rng.randint(3, 30)
        texts = [_words(rng, rng.randint(3, 20)).encode() for _ in range(n)]
        bad_rows = set(rng.sample(range(n), rng.randint(0, 3)))
        ids = [f"k{i}".encode() for i in range(n)]
        urls = [f"http://example.com/{i}".encode() for i in range(n)]
        for i in bad_rows:  # invalid UTF-8 in the text, the id or the url; or a null text
            column = rng.choice([texts, ids, urls, None])
            if column is None:
                texts[i] = None
            else:
                column[i] = column[i][:2] + b"\xff\xfe" + column[i][2:]
        table = pa.table({"text": _strings(texts), "doc": _strings(ids), "url": _strings(urls)})
        data = _parquet(table, row_group_size=rng.randint(2, 10))
        cases.append(_case(f"mixed{t}.parquet", data, n - len(bad_rows), len(bad_rows)))
        cut = rng.randrange(1, len(data))  # the footer is at the end: nothing is readable
        cases.append(_case(f"cut{t}.parquet", data[:cut], 0, 1, whole_file=True))
    n = rng.randint(2, 9)
    cases.append(_case("no-text.parquet", _parquet(pa.table({"body": ["x"] * n})), 0, n))
    cases.append(_case("no-text-no-rows.parquet", _parquet(pa.table({"body": pa.array([], pa.string())})), 0, 1,
                       whole_file=True))
    cases.append(_case("no-rows.parquet", _parquet(pa.table({"text": pa.array([], pa.string())})), 0, 1,
                       whole_file=True))
    cases.append(_case("int-text.parquet", _parquet(pa.table({"text": list(range(n))})), 0, n))
    cases.append(_case("list-text.parquet", _parquet(pa.table({"text": [["a"], None, ["b", "c"]]})), 0, 3))
    cases.append(_case("binary-text.parquet", _parquet(pa.table({"text": [b"\xff\xfe raw", b"ok"], "doc": [1, 2],
                                                                  "url": [3, 4]})), 2, 0))
    cases.append(_case("empty.parquet", b"", 0, 1, whole_file=True))
    cases.append(_case("garbage.parquet", b"PAR1" + rng.randbytes(300) + b"PAR1", 0, 1, whole_file=True))
    # garbage over one row group's text column chunk: that group's rows are lost, the others read
    groups, per = 4, 5
    table = pa.table({"text": [_words(rng, 6) for _ in range(groups * per)]})
    data = bytearray(_parquet(table, row_group_size=per, compression="zstd"))
    chunk = pq.ParquetFile(io.BytesIO(bytes(data))).metadata.row_group(2).column(0)
    start = chunk.dictionary_page_offset or chunk.data_page_offset
    data[start:start + chunk.total_compressed_size] = rng.randbytes(chunk.total_compressed_size)
    cases.append(_case("damaged-group.parquet", bytes(data), (groups - 1) * per, per))
    return cases


# ------------------------------------------------------------------------------------------- code


def code_cases(rng: random.Random) -> list[Case]:
    return [
        _case("plain.py", b"x = 1\n", 1, 0),
        _case(b"caf\xe9-latin1-name.py", b"name = 'not a UTF-8 file name'\n", 1, 0),
        _case(b"bad\xff\xfe.py", b"y = 2\n", 1, 0),
        _case("empty.py", b"", 1, 0),
        _case("nul.py", b"a = 1\x00\x00\nb = 2\n", 1, 0),
        _case("binary.py", rng.randbytes(400), 1, 0),
        _case("latin1.py", b"# -*- coding: latin-1 -*-\ns = '\xe9'\n", 1, 0),
        _case("bad-utf8.py", b"s = '\xff\xfe'\n", 1, 0),
        Case(b"dangling.py", None, 0, 1, 1, None, setup="dangling-link"),
        Case(b"folder.py", None, 0, 0, 0, None, setup="folder"),  # a folder named like a file is not read
    ]


# -------------------------------------------------------------------------------------------- run


GENERATORS = {"warc": warc_cases, "jsonl": jsonl_cases, "parquet": parquet_cases, "code": code_cases}


def _write(folder: Path, cases: list[Case]) -> None:
    folder.mkdir(parents=True)
    for case in cases:
        path = os.path.join(os.fsencode(folder), case.name)
        if case.setup == "dangling-link":
            os.symlink(os.path.join(os.fsencode(folder), b"missing-target"), path)
        elif case.setup == "folder":
            os.mkdir(path)
        else:
            with open(path, "wb") as fh:
                fh.write(case.data)


def _file_of(record: dict) -> bytes:
    """The printable file name a record or entry belongs to, as bytes to compare with a case's name."""
    if is_quarantine(record):
        name = record["location"].split("#", 1)[0].rsplit("/", 1)[-1]
    else:
        name = json.loads(record["meta"])["path"]
    return name.encode("utf-8")


def _printable(name: bytes) -> bytes:
    return name.decode("utf-8", "backslashreplace").encode("utf-8")


@pytest.fixture(scope="module")
def generated(tmp_path_factory) -> dict[str, tuple[Path, list[Case]]]:
    rng = random.Random(SEED)
    root = tmp_path_factory.mktemp("malformed")
    out = {}
    for kind, generate in GENERATORS.items():
        cases = generate(rng)
        _write(root / kind, cases)
        out[kind] = (root / kind, cases)
    return out


def _source(kind: str, folder: Path) -> SourceConfig:
    return SourceConfig(kind=kind, name=kind, uri=str(folder), id_field="doc", files_per_shard=4)


def test_generator_writes_enough_files(generated) -> None:
    assert sum(len(cases) for _, cases in generated.values()) >= 60
    assert {len(cases) >= 8 for _, cases in generated.values()} == {True}


@pytest.mark.parametrize("kind", list(GENERATORS))
def test_every_record_of_every_malformed_file_is_accounted_for(generated, kind: str) -> None:
    folder, cases = generated[kind]
    units = plan_inputs([_source(kind, folder)], "/unused")
    records = [r for unit in units for r in read_unit(unit)]
    pa.Table.from_pylist([r for r in records if not is_quarantine(r)], schema.RAW_SCHEMA)
    pa.Table.from_pylist([r for r in records if is_quarantine(r)], schema.QUARANTINE_SCHEMA)
    assert len({r["id"] for r in records}) == len(records), "ids must be unique"
    by_file: dict[bytes, list[dict]] = defaultdict(list)
    for r in records:
        by_file[_file_of(r)].append(r)
    assert set(by_file) <= {_printable(c.name) for c in cases}
    for case in cases:
        got = by_file.get(_printable(case.name), [])
        docs = [r for r in got if not is_quarantine(r)]
        entries = [r for r in got if is_quarantine(r)]
        quarantined = sum(r["records"] for r in entries)
        where = f"{kind}/{case.name!r}: {[(r['location'].rsplit('#')[-1], r['error']) for r in entries]}"
        assert len(docs) + quarantined == case.total, where
        assert len(docs) == case.good, where
        if case.bad is not None:
            assert quarantined == case.bad, where
        for r in entries:
            assert r["records"] >= 1 and r["error"], where
            if case.data:
                assert r["size"] > 0, where
        if case.whole_file is not None:
            whole = len(entries) == 1 and not docs and not entries[0]["records_known"] \
                and entries[0]["size"] == len(case.data or b"")
            assert whole == case.whole_file, where


@pytest.mark.parametrize("kind", list(GENERATORS))
def test_ingest_accounts_for_every_malformed_record(generated, kind: str) -> None:
    """Through the fused pass: per unit, read = kept + dropped + quarantined, and read is the number of
    records the generator wrote."""
    folder, cases = generated[kind]
    expected = {_printable(c.name): c.total for c in cases}
    steps = build_steps(PipelineConfig())
    units = plan_inputs([_source(kind, folder)], "/unused")
    for unit in units:
        kept, rejected, quarantined, step_counts = process_unit(unit, steps)
        total = _total(step_counts)
        total.check(unit.shard)
        assert total.kept == kept.num_rows and total.dropped_total == rejected.num_rows
        names = {_printable(os.fsencode(unit.relative(f))) for f in unit.files}
        assert total.read == sum(expected[n] for n in names), names


# ------------------------------------------------------------------------------------ named cases


def _read(tmp_path: Path, kind: str, name: str | bytes, data: bytes, **source) -> list[dict]:
    folder = os.fsencode(tmp_path / kind)
    os.makedirs(folder, exist_ok=True)
    with open(os.path.join(folder, name.encode() if isinstance(name, str) else name), "wb") as fh:
        fh.write(data)
    src = SourceConfig(kind=kind, name=kind, uri=str(tmp_path / kind), **source)
    return [r for unit in plan_inputs([src], "/unused") for r in read_unit(unit)]


def test_deeply_nested_json_is_one_quarantined_record(tmp_path: Path) -> None:
    records = _read(tmp_path, "jsonl", "deep.jsonl", b'{"text": "ok"}\n{"text": ' + b"[" * 6000 + b"]" * 6000 + b"}\n")
    assert [is_quarantine(r) for r in records] == [False, True]
    assert "nested too deeply" in records[1]["error"] and records[1]["location"].endswith("#line=2")


def test_lone_surrogate_in_a_field_names_the_field(tmp_path: Path) -> None:
    lines = [b'{"text": "a", "url": "http://x/\\ud800"}', b'{"text": "b", "doc": "\\udc00"}',
             b'{"text": "one bad \\ud800 character"}']
    records = _read(tmp_path, "jsonl", "s.jsonl", b"\n".join(lines), id_field="doc")
    assert [r.get("error") for r in records[:2]] == ["invalid Unicode (lone surrogate) in field 'url'",
                                                     "invalid Unicode (lone surrogate) in field 'doc'"]
    assert records[2]["payload"] == "one bad \ufffd character".encode()  # in a text it is repaired


def test_file_name_that_is_not_utf8_is_read_with_a_printable_path(tmp_path: Path) -> None:
    first = _read(tmp_path, "code", b"m\xff.py", b"x = 1\n")
    again = [r for unit in plan_inputs([SourceConfig(kind="code", name="code", uri=str(tmp_path / "code"))], "/x")
             for r in read_unit(unit)]
    assert len(first) == 1 and not is_quarantine(first[0])
    assert json.loads(first[0]["meta"])["path"] == "m\\xff.py" and first[0]["url"].endswith("/m%FF.py")
    assert first[0]["id"] == again[0]["id"]


def test_gzip_magic_then_noise_is_one_entry_for_the_whole_file(tmp_path: Path) -> None:
    data = b"\x1f\x8b" + random.Random(4).randbytes(2000)
    records = _read(tmp_path, "warc", "noise.warc.gz", data)
    assert len(records) == 1 and is_quarantine(records[0])
    assert records[0]["records_known"] is False and records[0]["size"] == len(data)


def test_damaged_member_in_the_middle_of_a_gzip_warc(tmp_path: Path) -> None:
    rng = random.Random(5)
    w = _warc(rng, True, kinds=["response"] * 4)
    data = _flip(w.data, rng, w.spans[1][0] + 10, w.spans[1][2], 2)
    records = _read(tmp_path, "warc", "hole.warc.gz", data)
    bad = [r for r in records if is_quarantine(r)]
    assert sum(not is_quarantine(r) for r in records) == 3 and len(bad) == 1
    assert bad[0]["location"].endswith(f"#offset={w.spans[1][0]}") and bad[0]["records_known"]
    assert bad[0]["size"] == w.spans[1][2] - w.spans[1][0]


def test_parquet_file_level_entries_count_its_rows(tmp_path: Path) -> None:
    records = _read(tmp_path, "parquet", "a.parquet", _parquet(pa.table({"body": ["x"] * 4})))
    assert len(records) == 1 and records[0]["records"] == 4 and records[0]["records_known"]
    data = _parquet(pa.table({"text": ["a" * 100] * 4}))
    records = _read(tmp_path, "parquet", "a.parquet", data[:-30])
    assert len(records) == 1 and not records[0]["records_known"] and records[0]["size"] == len(data) - 30


def test_one_invalid_utf8_value_costs_only_its_row(tmp_path: Path) -> None:
    table = pa.table({"text": _strings([b"good", b"\xff\xfe", b"good2"]), "doc": _strings([b"a", b"b", b"\xc3"])})
    records = _read(tmp_path, "parquet", "a.parquet", _parquet(table), id_field="doc")
    assert [r.get("error") for r in records] == [None, "invalid UTF-8 in field 'text'", "invalid UTF-8 in field 'doc'"]


def test_cr_line_ends_split_jsonl_records(tmp_path: Path) -> None:
    records = _read(tmp_path, "jsonl", "mac.jsonl", b'{"text":"a"}\r{"text":"b"}\r\n{"text":"c"}\r')
    assert [r["payload"] for r in records] == [b"a", b"b", b"c"]
    assert [json.loads(r["meta"])["line"] for r in records] == [1, 2, 3]


@pytest.mark.parametrize("chunk", [1, 2, 3, 5, 7, 64])
def test_line_ends_split_the_same_whatever_the_reads(tmp_path: Path, monkeypatch, chunk) -> None:
    """Reads with and without a CR (two ways of finding line ends) and a CRLF cut between two reads."""
    monkeypatch.setattr(text_readers, "_RESYNC_CHUNK", chunk)
    data = b'{"text":"a"}\n{"text":"b"}\r\n\n{"text":"c"}\r{"text":"d"}\n{"text":"e"}'
    records = _read(tmp_path, "jsonl", f"mixed{chunk}.jsonl", data)
    assert [r["payload"] for r in records] == [b"a", b"b", b"c", b"d", b"e"]
    assert [json.loads(r["meta"])["line"] for r in records] == [1, 2, 4, 5, 6]


def test_line_longer_than_the_limit_is_quarantined_without_being_held(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(text_readers, "MAX_RECORD_BYTES", 1000)
    monkeypatch.setattr(text_readers, "_RESYNC_CHUNK", 256)  # the long line spans many reads
    long_line = b'{"text": "' + b"x" * 5000 + b'"}'
    records = _read(tmp_path, "jsonl", "long.jsonl", b'{"text":"a"}\n' + long_line + b'\r\n{"text":"b"}')
    assert [r["error"] if is_quarantine(r) else r["payload"] for r in records] == [
        b"a", "line longer than 1000 bytes", b"b"]
    assert records[1]["size"] == len(long_line) + 2  # its line end included
    assert long_line.startswith(records[1]["raw"]) and len(records[1]["raw"]) > 1000


def test_unreadable_file_is_one_entry(tmp_path: Path, monkeypatch) -> None:
    (tmp_path / "j").mkdir()
    (tmp_path / "j" / "a.jsonl").write_bytes(b'{"text": "a"}\n')
    real_open = open

    def refusing_open(path, *args, **kwargs):
        if str(path).endswith("a.jsonl"):
            raise PermissionError(13, "Permission denied", str(path))
        return real_open(path, *args, **kwargs)

    units = plan_inputs([SourceConfig(kind="jsonl", name="j", uri=str(tmp_path / "j"))], "/x")
    monkeypatch.setattr("builtins.open", refusing_open)
    records = [r for unit in units for r in read_unit(unit)]
    assert len(records) == 1 and "PermissionError" in records[0]["error"]
    assert records[0]["records_known"] is False and records[0]["size"] == 14


def test_planning_errors_are_user_errors(tmp_path: Path) -> None:
    with pytest.raises(InputNotFound, match="does not exist") as missing:
        plan_inputs([SourceConfig(kind="jsonl", name="j", uri=str(tmp_path / "nope"))], "/x")
    assert isinstance(missing.value, FileNotFoundError)
    with pytest.raises(UserError, match="no files matching"):
        plan_inputs([SourceConfig(kind="jsonl", name="j", uri=str(tmp_path))], "/x")


def test_ingest_writes_a_manifest_for_a_file_name_that_is_not_utf8(tmp_path: Path) -> None:
    from llm.config import build_config
    from llm.data.dataset import read_manifest
    from llm.data.ingest import run_ingest
    from llm.executor import LocalExecutor

    folder = tmp_path / "code"
    folder.mkdir()
    with open(os.path.join(os.fsencode(folder), b"n\xe9.py"), "wb") as fh:
        fh.write(b"def f(x):\n    return x + 1\n")
    cfg = build_config({}, [f"data.sources=[{{kind: code, name: code, uri: '{folder}'}}]",
                            f"work_dir={tmp_path / 'work'}", "tracking.enabled=false"])
    out = str(tmp_path / "docs")
    run_ingest(cfg, str(tmp_path / "no-crawl"), out, LocalExecutor())
    manifest = read_manifest(out)
    assert [s["inputs"] for s in manifest["shards"]] == [["n\\xe9.py"]]
    assert manifest["totals"]["counts"]["read"] == 1
