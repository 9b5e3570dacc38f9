"""A folder laid out like Common Crawl's bucket, built from the real records in the development data.

`crawl-data/CC-MAIN-2025-33/` gets `warc.paths.gz` and `wet.paths.gz`; one WARC file holds the three real
gzip members (as Common Crawl served them) concatenated, a second one the same with a corrupt member in
the middle, and a WET file is built here with warcio from the responses' text (the development data has no
WET file). `cdx.jsonl` holds the real CDX records of the three records, their offsets moved to where
the members lie in the concatenated file.
"""

from __future__ import annotations

import gzip
import io
import json
import re
from pathlib import Path

DUMP = "CC-MAIN-2025-33"
SEGMENT = f"crawl-data/{DUMP}/segments/1754151279781.29"
WARC = f"{SEGMENT}/warc/CC-MAIN-20250804083340-20250804113340-00340.warc.gz"
DAMAGED = f"{SEGMENT}/warc/CC-MAIN-20250804083340-20250804113340-00341.warc.gz"
WET = f"{SEGMENT}/wet/CC-MAIN-20250804083340-20250804113340-00340.warc.wet.gz"


def real_members(shared: Path) -> list[tuple[str, bytes, dict]]:
    """(name, gzip member, its real CDX record) of each Common Crawl record in the development data."""
    cdx = [json.loads(line) for line in (shared / "commoncrawl" / "cdx_records.jsonl").read_text().splitlines()]
    out = []
    for path in sorted((shared / "commoncrawl" / "warc").glob("*.warc.gz")):
        stem, offset = re.fullmatch(r"(.+)\.offset-(\d+)\.warc\.gz", path.name).groups()
        record = next(r for r in cdx if r["filename"].endswith(f"/{stem}.warc.gz") and r["offset"] == offset)
        out.append((path.name, path.read_bytes(), record))
    return out


def _wet_file(members: list[bytes]) -> tuple[bytes, list[dict]]:
    """A WET file (warcinfo, then one `conversion` record a response, each its own gzip member) and the
    (url, text, refers_to) written for each response."""
    from warcio.archiveiterator import ArchiveIterator
    from warcio.warcwriter import WARCWriter

    out = io.BytesIO()
    writer = WARCWriter(out, gzip=True)
    writer.write_record(writer.create_warcinfo_record("wet.warc.gz", {"software": "llmpipe tests"}))
    written = []
    for member in members:
        record = next(iter(ArchiveIterator(io.BytesIO(member))))
        html = record.content_stream().read().decode("utf-8", "replace")
        text = " ".join(re.sub(r"<[^>]+>", " ", re.sub(r"(?s)<(script|style).*?</\1>", " ", html)).split())
        text = text or "(no text)"
        headers = record.rec_headers
        refers = headers.get_header("WARC-Record-ID")
        url = headers.get_header("WARC-Target-URI")
        writer.write_record(writer.create_warc_record(
            url, "conversion", payload=io.BytesIO(text.encode("utf-8")),
            warc_headers_dict={"WARC-Date": headers.get_header("WARC-Date"), "WARC-Refers-To": refers,
                               "Content-Type": "text/plain"}))
        written.append({"url": url, "text": text, "refers_to": refers})
    return out.getvalue(), written


def build(shared: Path, root: Path) -> dict:
    """Write the layout under `root`; returns what a test checks against: member offsets and lengths,
    the WET texts, and the corrupt member's offset."""
    members = real_members(shared)
    blobs = [m[1] for m in members]
    offsets = [sum(len(b) for b in blobs[:i]) for i in range(len(blobs))]
    files = {WARC: b"".join(blobs)}
    corrupt = bytearray(blobs[1])
    corrupt[len(corrupt) // 2: len(corrupt) // 2 + 64] = b"\x00" * 64  # deflate data damaged, header intact
    files[DAMAGED] = blobs[0] + bytes(corrupt) + blobs[2]
    files[WET], wet_texts = _wet_file(blobs)
    files[f"crawl-data/{DUMP}/warc.paths.gz"] = gzip.compress(f"{WARC}\n{DAMAGED}\n".encode())
    files[f"crawl-data/{DUMP}/wet.paths.gz"] = gzip.compress(f"{WET}\n".encode())
    cdx = [dict(m[2], filename=WARC, offset=str(off)) for m, off in zip(members, offsets)]
    files["cdx.jsonl"] = "".join(json.dumps(r) + "\n" for r in cdx).encode()
    for rel, data in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(data)
    return {"members": [(name, off, len(b)) for (name, _, _), off, b in zip(members, offsets, blobs)],
            "urls": [m[2]["url"] for m in members], "wet": wet_texts, "corrupt_at": len(blobs[0]),
            "cdx": cdx}
