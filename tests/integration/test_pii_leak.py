"""No personal data under the work directory: real mails, some of them damaged, go through the data
stages by the `llmpipe data` command, and every file the run wrote (Parquet contents, records,
manifests, logs, the MLflow store and its artifacts, the Prefect output it printed) is searched for
the mails' original e-mail addresses, public IP addresses and phone numbers, and for the pseudonym key.

The originals are found without the scrubber: addresses by the standard library's address parser,
IPs by `ipaddress`, phone numbers by a labelled-number pattern (`Phone:`, `Fax:`, `call` ...)."""

from __future__ import annotations

import email.utils
import gzip
import io
import ipaddress
import json
import random
import re
import stat
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import yaml
from warcio.statusandheaders import StatusAndHeaders
from warcio.warcwriter import WARCWriter

from flows import cli

pytestmark = [pytest.mark.integration, pytest.mark.slow]

_LABELLED_PHONE = re.compile(r"(?i)\b(?:phone|tel|fax|call(?: us)?(?: toll-free)?(?: at)?)\b[^0-9+\n]{0,12}"
                             r"(\+?\d[\d ().\-]{8,16}\d)")


def _originals(mails: list[str]) -> set[str]:
    """Addresses (with a local part and a dotted domain), global IPs in headers and labelled phone numbers."""
    found: set[str] = set()
    for text in mails:
        head = text.split("\n\n", 1)[0]
        for line in re.findall(r"(?im)^(?:from|to|cc|reply-to|return-path|sender|delivered-to):.*$", head):
            for _, addr in email.utils.getaddresses([line.split(":", 1)[1]]):
                if re.fullmatch(r"[^@\s]+@[\w-]+(?:\.[\w-]+)*\.[A-Za-z]{2,}", addr):
                    found.add(addr)
        # IPs where mails carry them, the header (a body's "v 1.1.1.2" or "A0::" only look like one)
        for tok in re.split(r"[\s\[\]()<>;,=@]+", head):
            try:
                if ipaddress.ip_address(tok).is_global:
                    found.add(tok)
            except ValueError:
                pass
        for number in _LABELLED_PHONE.findall(text):
            if len(re.sub(r"\D", "", number)) >= 10:
                found.add(number.strip())
    return found


def _damaged_lines(rows: list[dict], rng: random.Random) -> list[bytes]:
    """Ten kinds of broken JSONL line, each built from a real mail."""
    lines = []
    for i, row in enumerate(rows):
        line = json.dumps(row).encode()
        kind = i % 5
        if kind == 0:  # cut mid-record
            lines.append(line[: rng.randrange(len(line) // 3, len(line) - 2)])
        elif kind == 1:  # stray invalid UTF-8 bytes: not JSON any more, still mostly text
            at = rng.randrange(10, len(line) - 10)
            lines.append(line[:at] + b"\xff\xfe" + line[at:])
        elif kind == 2:  # the text as a list of lines, not a string
            lines.append(json.dumps({"id": row["id"], "text": row["text"].splitlines()}).encode())
        elif kind == 3:  # binary: the mail compressed
            lines.append(gzip.compress(row["text"].encode(), mtime=0).replace(b"\n", b"\x00"))
        else:  # a second JSON document glued on
            lines.append(line + b" " + line)
    return lines


def _warc(path: Path, mails: list[str]) -> None:
    """Mails served as text/plain pages at mailto: URLs, then a record cut short."""
    buf = io.BytesIO()
    writer = WARCWriter(buf, gzip=True)
    for text in mails:
        sender = re.search(r"(?m)^From:.*?([\w.+-]+@[\w.-]+)", text)
        uri = f"mailto:{sender.group(1) if sender else 'nobody@example.org'}"
        http = StatusAndHeaders("200 OK", [("Content-Type", "text/plain; charset=utf-8")], protocol="HTTP/1.1")
        writer.write_record(writer.create_warc_record(uri, "response", payload=io.BytesIO(text.encode()),
                                                      http_headers=http))
    data = buf.getvalue()
    path.write_bytes(data + data[: len(data) // 3])


def _scan_texts(root: Path) -> dict[str, str]:
    """Every file under `root` as text: Parquet as its values, gzip decompressed, the rest as bytes."""
    texts = {}
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        raw = path.read_bytes()
        if path.suffix == ".parquet":
            table = pq.read_table(path)
            texts[str(path)] = "\n".join(str(v) for col in table.columns for v in col.to_pylist())
            continue
        if raw[:2] == b"\x1f\x8b":
            try:
                raw = gzip.decompress(raw)
            except (OSError, EOFError):
                pass
        texts[str(path)] = raw.decode("utf-8", errors="replace")
    return texts


def test_no_original_address_reaches_the_work_dir_or_mlflow(tmp_path, shared_data, monkeypatch, capfd):
    monkeypatch.delenv("LLMPIPE_PSEUDONYM_KEY", raising=False)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.chdir(tmp_path)
    rng = random.Random(7)
    rows = [json.loads(line) for line in (shared_data / "mail_dev.jsonl").read_text(encoding="utf-8").splitlines()]
    inputs = tmp_path / "inputs"
    (inputs / "mail").mkdir(parents=True)
    (inputs / "web").mkdir()
    good, damaged, served = rows[:150], rows[150:190], rows[190:]
    with_ids = []
    for row in good:  # the sender's address as the id, a mailto: URL: both are text-bearing fields
        sender = re.search(r"(?m)^From:.*?([\w.+-]+@[\w.-]+\.\w+)", row["text"])
        with_ids.append({**row, "sender": sender.group(1) if sender else None,
                         "url": f"mailto:{sender.group(1)}" if sender else None})
    (inputs / "mail" / "good.jsonl").write_text("".join(json.dumps(r) + "\n" for r in with_ids))
    (inputs / "mail" / "damaged.jsonl").write_bytes(b"\n".join(_damaged_lines(damaged, rng)) + b"\n")
    _warc(inputs / "web" / "mail.warc.gz", [r["text"] for r in served])
    originals = _originals([r["text"] for r in rows])
    assert len(originals) > 500

    work = tmp_path / "work"
    config = {
        "name": "leak-scan", "work_dir": str(work),
        "data": {"sources": [
            {"kind": "jsonl", "name": "mail", "uri": str(inputs / "mail"), "id_field": "sender"},
            {"kind": "warc", "name": "web", "uri": str(inputs / "web")},
        ], "pii": {"replacement": "pseudonym"}, "langid": {"enabled": False}},
        "tokenizer": {"vocab_size": 512, "sample_bytes": 400_000},
    }
    (tmp_path / "leak.yaml").write_text(yaml.safe_dump(config))
    assert cli.main(["data", str(tmp_path / "leak.yaml")]) == 0
    printed = capfd.readouterr()

    docs = work / "datasets" / "docs"
    quarantine = pq.read_table(sorted((docs / "quarantine").glob("*.parquet"))).to_pylist()
    assert len(quarantine) >= 40  # every damaged line, and the cut WARC record
    assert any(q["text"] and "<EMAIL_" in q["text"] for q in quarantine)  # text kept, scrubbed
    assert any(q["text"] is None and q["digest"] and q["size"] > 0 for q in quarantine)  # binary: digest only
    assert all(q["raw"] is None for q in quarantine)
    assert list((work / "mlflow").rglob("*")), "the MLflow store lives under the work directory"
    assert not (tmp_path / "mlruns").exists()

    key_file = work / "_secrets" / "pseudonym_key"
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    key = key_file.read_text().strip()
    texts = _scan_texts(work)
    texts["<stdout>"], texts["<stderr>"] = printed.out, printed.err
    assert len(texts) > 20
    # An original counts where it stands alone: not inside a longer address, number or host name.
    pattern = re.compile(r"(?<![\w.@+-])(?:" + "|".join(re.escape(v) for v in sorted(originals, key=len, reverse=True))
                         + r")(?![\w@-]|\.\w)")
    leaks = {}
    for name, text in texts.items():
        if Path(name) == key_file:
            continue
        hits = len(pattern.findall(text)) + (key in text)
        if hits:
            leaks[name] = hits
    assert leaks == {}  # file -> number of originals found; the values themselves are never printed
