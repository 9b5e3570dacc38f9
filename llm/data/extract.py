"""Payload decoding and HTML-to-text extraction, with per-document limits.

`ExtractStep` turns raw documents (`schema.RAW_SCHEMA`) into documents (`schema.DOC_SCHEMA` plus the
`extractor` column): HTML is decoded and extracted, plain text is decoded, anything else is dropped
with its content type as the reason. Undecodable input and extraction failures, or documents past a
limit, are quarantined with the error.

Extraction runs in two tiers (`extract.extractor: auto`). resiliparse's main-content pass (C++, a few
milliseconds a page) goes first; where it is unsure, trafilatura (pure Python over lxml, ten times
slower, better at telling an article from the boilerplate around it) extracts the page instead. Unsure
means the fast pass kept under `min_main_share` of the page's visible words, so the page is mostly
boilerplate and the main-content guess decides what is kept, or under `min_main_words` words.

Extraction is bounded by the CPU time it uses, not by the time it takes: on a busy machine a page
takes longer but needs the same CPU, so whether a page is kept never depends on the load. A much
larger wall-clock limit is the backstop for a document that stalls without computing.
"""

from __future__ import annotations

import codecs
import json
import logging
import signal
import threading
import time
from contextlib import contextmanager
from typing import Iterator

import pyarrow as pa
import trafilatura
from resiliparse.extract.html2text import extract_plain_text
from resiliparse.parse.html import HTMLTree
from trafilatura.settings import use_config

from llm.config import ExtractConfig
from llm.data import schema
from llm.data.steps import StepOutput, rejected_rows

log = logging.getLogger(__name__)

# Binary sniffing looks at this much of a payload; more adds time without changing the verdict.
_SNIFF_BYTES = 64 * 1024
_MAX_NUL_SHARE = 0.01  # text, in any 8-bit or UTF-8 encoding, has no NUL bytes at all
_MAX_CONTROL_SHARE = 0.05  # C0 controls other than \t \n \r \f \v in decoded text
_MAX_REPLACED_SHARE = 0.01  # UTF-8 with this share of bad bytes is damaged UTF-8, not another charset
_CONTROL_BYTES = bytes(range(0x00, 0x09)) + bytes(range(0x0E, 0x20))

# One fixed configuration so extraction never depends on a user's trafilatura settings file.
# EXTRACTION_TIMEOUT is trafilatura's own (CLI-only) alarm; 0 keeps it away from our timers.
_TRAFILATURA_CONFIG = use_config()
_TRAFILATURA_CONFIG.set("DEFAULT", "EXTRACTION_TIMEOUT", "0")


class ExtractionLimitExceeded(BaseException):
    """A document went past an extraction limit; the message says which one.

    A BaseException, like KeyboardInterrupt, because it is raised asynchronously from a signal
    handler: trafilatura wraps its parsing in `except Exception` and would swallow it otherwise.
    """


# ------------------------------------------------------------------------------------------ decode


def decode_payload(payload: bytes, charset: str | None) -> str:
    """Bytes to text: the declared charset, then UTF-8, then detection (charset_normalizer).

    UTF-8 with a few damaged bytes is decoded as UTF-8 with U+FFFD for the damage (detection would
    turn the whole document into mojibake). Raises `ValueError` for binary content or bytes no
    charset fits. The result never holds lone surrogates (Arrow strings must be valid UTF-8).
    """
    if not payload:
        return ""
    text = _decode_declared(payload, charset)
    if text is None:
        text = _decode_guessed(payload)
    if text.startswith("\ufeff"):
        text = text[1:]
    _check_not_binary(text)
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:  # a lone surrogate from an exotic codec (utf-7 can produce them)
        text = text.encode("utf-8", "replace").decode("utf-8")
    return text


def _decode_declared(payload: bytes, charset: str | None) -> str | None:
    if payload.startswith((codecs.BOM_UTF32_LE, codecs.BOM_UTF32_BE)):
        charset = "utf-32"
    elif payload.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        charset = "utf-16"
    elif payload.startswith(codecs.BOM_UTF8):
        charset = "utf-8-sig"
    if not charset:
        return None
    try:
        return payload.decode(codecs.lookup(charset.strip().strip("\"'")).name)
    except (LookupError, UnicodeDecodeError):  # unknown name, or the page lies about its charset
        return None


_WESTERN_PUNCT = set("\u2018\u2019\u201c\u201d\u2013\u2014\u2026\u20ac\u00a0\u00a9\u00ae\u00b0\u00ab\u00bb\u00b7\u00a3\u00a7")


def _as_western_text(payload: bytes) -> str | None:
    """windows-1252 text when the bytes are mostly (3/4) ASCII and every other byte decodes to a Latin
    letter or common typography: then that reading is near certain, while statistical detection on
    a handful of accented letters is a coin toss between a dozen 8-bit charsets."""
    ascii_share = sum(1 for b in payload if b < 0x80) / len(payload)
    if ascii_share < 0.75:
        return None
    try:
        text = payload.decode("cp1252")
    except UnicodeDecodeError:
        return None
    for ch in text:
        if ord(ch) > 0x7F and not (("\u00c0" <= ch <= "\u024f" and ch.isalpha()) or ch in _WESTERN_PUNCT):
            return None
    return text


def _decode_guessed(payload: bytes) -> str:
    head = payload[:_SNIFF_BYTES]
    nul_share = head.count(0) / len(head)
    if nul_share > _MAX_NUL_SHARE:
        raise ValueError(f"binary content: {nul_share:.0%} NUL bytes and no UTF-16/32 byte-order mark")
    try:
        return payload.decode("utf-8")
    except UnicodeDecodeError:
        pass
    damaged = payload.decode("utf-8", errors="replace")
    replaced = damaged.count("\ufffd")
    non_ascii_ok = sum(1 for ch in damaged if ord(ch) > 0x7F) - replaced
    if replaced <= _MAX_REPLACED_SHARE * len(damaged) and non_ascii_ok >= replaced:
        return damaged
    western = _as_western_text(payload)
    if western is not None:
        return western
    from charset_normalizer import from_bytes  # imported lazily: rarely needed, slow to import

    matches = list(from_bytes(payload))
    if not matches:
        raise ValueError("undecodable: not UTF-8 and no character set fits the bytes")
    best = matches[0]
    # Short texts leave detection a coin toss between many 8-bit charsets that all fit equally well.
    # Among the near-ties prefer windows-1252, the web's fallback for undeclared pages (WHATWG).
    for match in matches:
        near_tie = match.chaos <= best.chaos + 0.1 and match.coherence >= best.coherence - 0.05
        if near_tie and match.encoding == "cp1252":
            best = match
            break
    return str(best)


def _check_not_binary(text: str) -> None:
    head = text[:_SNIFF_BYTES]
    # The controls are single bytes in UTF-8 and never part of another character's bytes, so deleting
    # them from the encoded head counts them at C speed (a regex search over the text is ~10x slower).
    raw = head.encode("utf-8", "surrogatepass")
    controls = len(raw) - len(raw.translate(None, _CONTROL_BYTES))
    if controls and controls / len(head) > _MAX_CONTROL_SHARE:
        raise ValueError(f"binary content: {controls / len(head):.0%} control characters after decoding")


# ----------------------------------------------------------------------------------------- limits


_warned_no_signals = False
_EPSILON_S = 1e-3  # timers fire at tick granularity: this close to a deadline counts as reached


def cpu_limit_message(seconds: float) -> str:
    """The quarantine error of a document past the CPU time limit."""
    return f"extraction CPU time limit ({seconds:g} s) exceeded"


def wall_limit_message(seconds: float) -> str:
    """The quarantine error of a document past the wall-clock limit."""
    return f"extraction wall-clock limit ({seconds:g} s) exceeded"


class _Limit:
    """One budget enforced by one interval timer, sharing that timer with an outer user.

    `spent` measures the budget (this thread's CPU time, or elapsed time); `timer_clock` is what the
    timer itself counts (the whole process's CPU time for ITIMER_PROF, elapsed time for ITIMER_REAL).
    They differ for CPU time: other threads' CPU makes ITIMER_PROF fire early, so on firing the rest
    of this thread's budget is re-armed, and only a spent budget raises. An outer timer (a test
    runner's timeout, a profiler) is kept: the timer is armed for the sooner deadline, the outer
    handler runs when its deadline comes first, and what is left of it is re-armed on exit.
    """

    def __init__(self, which: int, signum: int, budget_s: float, spent, timer_clock, message: str):
        self.which, self.signum, self.budget_s = which, signum, budget_s
        self.spent, self.timer_clock, self.message = spent, timer_clock, message
        self.done = False

    def arm(self) -> None:
        self.outer_left, self.outer_interval = signal.getitimer(self.which)  # (0.0, 0.0): none armed
        self.start_spent, self.start_timer = self.spent(), self.timer_clock()
        self.previous = signal.signal(self.signum, self._on_signal)
        self._set(self.budget_s)

    def disarm(self) -> None:
        self.done = True  # a signal already on its way finds the block finished
        signal.setitimer(self.which, 0)
        signal.signal(self.signum, self.previous)
        outer = self._outer_left()
        if outer is not None:
            signal.setitimer(self.which, max(outer, _EPSILON_S), self.outer_interval)
        elif self.outer_interval:  # a periodic outer timer that fired inside the block ticks on
            signal.setitimer(self.which, self.outer_interval, self.outer_interval)

    def _outer_left(self) -> float | None:
        if not self.outer_left:
            return None
        return self.outer_left - (self.timer_clock() - self.start_timer)

    def _set(self, ours: float) -> None:
        outer = self._outer_left()
        signal.setitimer(self.which, max(ours if outer is None else min(ours, outer), _EPSILON_S))

    def _on_signal(self, signum, frame) -> None:
        if self.done:
            return
        outer = self._outer_left()
        if outer is not None and outer <= _EPSILON_S:
            self.outer_left = 0.0  # it has fired: from here on the timer is ours alone
            if callable(self.previous):
                self.previous(signum, frame)  # the outer deadline came first: its handler decides
        left = self.budget_s - (self.spent() - self.start_spent)
        if left <= _EPSILON_S:
            raise ExtractionLimitExceeded(self.message)
        self._set(left)


@contextmanager
def extraction_limits(cpu_s: float, wall_s: float) -> Iterator[None]:
    """Raise `ExtractionLimitExceeded` in the block once it has used `cpu_s` seconds of this thread's
    CPU time (ITIMER_PROF, checked against `time.thread_time`) or `wall_s` seconds have passed
    (ITIMER_REAL); the message names the limit.

    Signals only reach the main thread, which is where Ray runs task code; in any other thread the
    block runs without limits and this is logged once. The exception surfaces when control is back
    in Python code, so one long call inside lxml finishes first.
    """
    global _warned_no_signals
    if not hasattr(signal, "setitimer") or threading.current_thread() is not threading.main_thread():
        if not _warned_no_signals:
            _warned_no_signals = True
            log.warning("extraction runs without its limits here: interval timers need the main thread")
        yield
        return

    limits = [
        _Limit(signal.ITIMER_PROF, signal.SIGPROF, cpu_s, time.thread_time, time.process_time,
               cpu_limit_message(cpu_s)),
        _Limit(signal.ITIMER_REAL, signal.SIGALRM, wall_s, time.monotonic, time.monotonic,
               wall_limit_message(wall_s)),
    ]
    armed: list[_Limit] = []
    try:
        for limit in limits:
            limit.arm()
            armed.append(limit)
        yield
    finally:
        for limit in reversed(armed):
            limit.disarm()


# ----------------------------------------------------------------------------------------- extract


def extract_html(html: str, cfg: ExtractConfig) -> str:
    """Main text of an HTML page ("" when nothing is found), within `cfg.cpu_limit_s` of CPU time and
    `cfg.wall_limit_s` of elapsed time.

    Raises `ExtractionLimitExceeded` past either limit; the extractors' own errors propagate."""
    return extract_html_with(html, cfg)[0]


def extract_html_with(html: str, cfg: ExtractConfig) -> tuple[str, str]:
    """(main text, the extractor that produced it: `resiliparse` or `trafilatura`), under the limits of
    `extract_html`."""
    with extraction_limits(cfg.cpu_limit_s, cfg.wall_limit_s):
        if cfg.extractor == "trafilatura":
            return _trafilatura(html, cfg), "trafilatura"
        main, visible = _fast_pass(html, cfg)
        if cfg.extractor == "resiliparse" or fast_pass_is_sure(main, visible, cfg):
            return main, "resiliparse"
        return _trafilatura(html, cfg), "trafilatura"


def fast_pass_is_sure(main: str, visible: str, cfg: ExtractConfig) -> bool:
    """Whether the fast pass's main text can stand: enough words, and not a small part of the page."""
    kept = len(main.split())
    return kept >= cfg.min_main_words and kept >= cfg.min_main_share * len(visible.split())


def _fast_pass(html: str, cfg: ExtractConfig) -> tuple[str, str]:
    """(main content, all visible text) of the page by resiliparse, from one parse."""
    tree = HTMLTree.parse(html)
    skip = None if cfg.include_tables else ["table"]
    options = dict(alt_texts=False, links=False, form_fields=False, noscript=False, skip_elements=skip)
    main = extract_plain_text(tree, main_content=True, comments=cfg.include_comments, **options)
    if cfg.extractor == "resiliparse":
        return main, main
    return main, extract_plain_text(tree, main_content=False, **options)


def _trafilatura(html: str, cfg: ExtractConfig) -> str:
    text = trafilatura.extract(
        html,
        output_format="txt",
        include_comments=cfg.include_comments,
        include_tables=cfg.include_tables,
        favor_precision=cfg.favor_precision,
        favor_recall=cfg.favor_recall and not cfg.favor_precision,
        deduplicate=False,  # trafilatura's dedup keeps a process-wide cache: output would depend on order
        with_metadata=False,
        config=_TRAFILATURA_CONFIG,
    )
    return text or ""


def _reader_drop(kind: str, meta: str | None) -> tuple[str, float | None, float | None, str | None]:
    """(rule, value, threshold, detail) of a document its reader marked as dropped (`schema.READER_DROP`)."""
    drop = json.loads(meta or "{}").get("drop") or {}
    return kind[len(schema.READER_DROP):], drop.get("value"), drop.get("threshold"), drop.get("detail")


def _http_status(meta: str | None) -> int | None:
    if not meta or '"status"' not in meta:
        return None
    status = json.loads(meta).get("status")
    return int(status) if isinstance(status, (int, float)) else None


class ExtractStep:
    """Raw documents to text documents; every input row ends kept, dropped or quarantined."""

    name = "extract"
    # Which extractor produced each document's text (null for plain text): where the fallback ran.
    signal_fields = [pa.field("extractor", pa.string())]

    def __init__(self, cfg: ExtractConfig):
        self.cfg = cfg

    def apply(self, raw: pa.Table) -> StepOutput:
        """`raw` follows `schema.RAW_SCHEMA`; `kept` has the `schema.DOC_SCHEMA` columns and `extractor`."""
        kept_idx: list[int] = []
        kept_text: list[str] = []
        kept_by: list[str | None] = []
        drop_idx: list[int] = []
        # (text, rule, value, threshold, detail) per dropped row
        drops: list[tuple[str, str, float | None, float | None, str | None]] = []
        bad: list[dict] = []
        payloads = raw.column("payload")
        kinds = raw.column("content_type").to_pylist()
        charsets = raw.column("charset").to_pylist()
        metas = raw.column("meta").to_pylist()
        statuses = [_http_status(m) for m in metas]
        for i, kind in enumerate(kinds):
            if kind.startswith(schema.READER_DROP):  # the reader's own rule (a vendored or generated file)
                drop_idx.append(i)
                drops.append(("", *_reader_drop(kind, metas[i])))
                continue
            payload = payloads[i].as_py()
            if statuses[i] is not None and not 200 <= statuses[i] < 300:
                # Error pages and redirect stubs are the server's boilerplate, not the page's content.
                drop_idx.append(i)
                drops.append(("", "http_status", float(statuses[i]), None, None))
                continue
            try:
                if kind == "html":
                    if len(payload) > self.cfg.max_html_bytes:
                        drop_idx.append(i)
                        drops.append(("", "html_too_large", float(len(payload)), float(self.cfg.max_html_bytes), None))
                        continue
                    text, by = extract_html_with(decode_payload(payload, charsets[i]), self.cfg)
                    if not text.strip():
                        drop_idx.append(i)
                        drops.append(("", "no_extractable_text", None, None, None))
                        continue
                elif kind == "text":
                    text, by = decode_payload(payload, charsets[i]), None
                else:
                    mime = kind.split(":", 1)[1] if kind.startswith("other:") else kind
                    drop_idx.append(i)
                    drops.append(("", "unsupported_content_type", None, None, mime))
                    continue
            except ExtractionLimitExceeded as exc:
                bad.append(self._quarantine(raw, i, payload, str(exc)))
                continue
            except Exception as exc:  # decoding error or a parser failure on this document only
                bad.append(self._quarantine(raw, i, payload, f"{type(exc).__name__}: {exc}"))
                continue
            kept_idx.append(i)
            kept_text.append(text)
            kept_by.append(by)

        kept = _with_text(raw.take(pa.array(kept_idx, pa.int64())), kept_text, kept_by)
        dropped = _with_text(raw.take(pa.array(drop_idx, pa.int64())), [d[0] for d in drops], [None] * len(drops))
        dropped = rejected_rows(
            dropped, self.name, [d[1] for d in drops], [d[2] for d in drops], [d[3] for d in drops],
            [d[4] for d in drops],
        )
        return StepOutput(kept=kept, dropped=dropped, quarantined=pa.Table.from_pylist(bad, schema.QUARANTINE_SCHEMA))

    def _quarantine(self, raw: pa.Table, i: int, payload: bytes, error: str) -> dict:
        doc_id = raw.column("id")[i].as_py()
        return {
            "id": doc_id,
            "source": raw.column("source")[i].as_py(),
            "location": _location(raw.column("meta")[i].as_py(), raw.column("url")[i].as_py(), doc_id),
            "stage": self.name,
            "error": error,
            "raw": payload[: schema.QUARANTINE_RAW_LIMIT],
            "size": len(payload),
        }


def _with_text(rows: pa.Table, texts: list[str], extractors: list[str | None]) -> pa.Table:
    """Raw rows to DOC_SCHEMA + `extractor`: payload/content_type/charset go, text comes in."""
    cols = {name: rows.column(name) for name in schema.DOC_SCHEMA.names if name != "text"}
    cols["text"] = pa.array(texts, pa.string())
    out = pa.table([cols[name] for name in schema.DOC_SCHEMA.names], schema=schema.DOC_SCHEMA)
    return out.append_column(ExtractStep.signal_fields[0], pa.array(extractors, pa.string()))


def _location(meta: str | None, url: str | None, doc_id: str) -> str:
    """Where the document came from: the reader's file + offset/line/row when meta says, else the URL."""
    try:
        info = json.loads(meta or "{}")
    except ValueError:
        info = {}
    path = info.get("path")
    if path:
        for key in ("offset", "line", "row"):
            if key in info:
                return f"{path}#{key}={info[key]}"
        return path
    return url or doc_id
