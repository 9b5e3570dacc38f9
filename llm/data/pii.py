"""PII scrubbing: e-mail addresses, public IP addresses, phone numbers, payment cards, IBANs, US social
security numbers and secrets, each replaced by a typed placeholder (`<EMAIL>`) or a keyed pseudonym
(`<EMAIL_1a2b3c4d>`), with a count per type stored on the document (`pii_email`, ...).

Speed: every type has an RE2 pattern that runs over the whole batch first. E-mail addresses and secrets
need nothing more and are replaced and counted by Arrow kernels (e-mail only in the documents holding
an "@"); the other types need a check a regular expression cannot make (is the address public or a
version, does the Luhn or IBAN checksum hold, is it a dialable number: `llm.data.phones`), so only the
documents whose pre-filter matched go through Python for that check, and for IP addresses only the
stretches of text an address can lie in (`pii_windows`).
Originals are never returned, stored or logged: only the scrubbed text and the counts leave here.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import json
import re
from dataclasses import dataclass
from typing import Callable

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from llm.config import PiiConfig
from llm.errors import UserError
from llm.data.filtering import applies_to, scatter, with_columns
from llm.data.phones import phone_spans
from llm.data.pii_versions import version_context
from llm.data.pii_windows import ip_windows
from llm.data.steps import StepOutput, empty_quarantine, rejected_rows

# Patterns are written in the common subset of RE2 and Python `re`, so one text serves both.
# Local parts take RFC 5322's atext that real addresses use: VERP return paths encode the recipient
# after `=` (`list-bounce-jm=example.org@host`), and `$ ! # & ~ ^` occur in generated ones.
EMAIL = r"[A-Za-z0-9._%+\-=$!#&~^]+@(?:[A-Za-z0-9](?:[A-Za-z0-9\-]{0,61}[A-Za-z0-9])?\.)+[A-Za-z]{2,24}\b"
SECRET = "|".join([
    r"-----BEGIN [A-Z ]*PRIVATE KEY(?: BLOCK)?-----[\s\S]*?-----END [A-Z ]*PRIVATE KEY(?: BLOCK)?-----",
    r"\b(?:AKIA|ASIA|AGPA|AIDA|AROA)[0-9A-Z]{16}\b",  # AWS access key ids
    r"\bgh[pousr]_[A-Za-z0-9]{36,255}\b", r"\bgithub_pat_[A-Za-z0-9_]{22,255}\b",  # GitHub
    r"\bxox[abposr]-[A-Za-z0-9\-]{10,}",  # Slack
    r"\b[rs]k_live_[0-9A-Za-z]{24,}\b",  # Stripe
    r"\bAIza[0-9A-Za-z_\-]{35}",  # Google API keys
    r"\bsk-(?:proj-)?[A-Za-z0-9_\-]{32,}",  # OpenAI-style keys
    r"\bglpat-[A-Za-z0-9_\-]{20}\b",  # GitLab
    r"\beyJ[A-Za-z0-9_\-]{8,}\.eyJ[A-Za-z0-9_\-]{8,}\.[A-Za-z0-9_\-]{8,}",  # JWT
])
IPV4 = r"\b(?:\d{1,3}\.){3}\d{1,3}\b"
IPV6 = r"(?:[0-9A-Fa-f]{0,4}:){2,7}[0-9A-Fa-f]{0,4}(?:%\w+)?"
CARD = r"\b\d(?:[ \-]?\d){11,18}\b"
IBAN = r"\b[A-Z]{2}\d{2}(?: ?[A-Z0-9]){11,30}\b"
SSN = r"\b\d{3}-\d{2}-\d{4}\b"
PHONE_HINT = r"(?:\+|\b)\d[\d\-. ()/]{5,}\d"

PLACEHOLDER = {"email": "<EMAIL>", "ip": "<IP>", "phone": "<PHONE>", "card": "<CARD>", "iban": "<IBAN>",
               "ssn": "<SSN>", "secret": "<SECRET>"}
# Order matters: secrets and e-mails first (they contain digits and dots), IBANs before cards (an IBAN
# printed in groups of four holds runs of digits that can pass Luhn), phones last (any other number
# left could look like one).
ORDER = ["secret", "email", "ip", "iban", "card", "ssn", "phone"]
def _public_ipv4(m: re.Match) -> bool:
    if version_context(m.string, m.start(), m.end()):
        return False
    try:
        addr = ipaddress.IPv4Address(m.group(0))
    except ValueError:
        return False
    return addr.is_global and not addr.is_multicast


def _public_ipv6(m: re.Match) -> bool:
    text, start = m.string, m.start()
    if start and (text[start - 1].isalnum() or text[start - 1] in "_:."):
        return False  # the end of a word: reST ".. versionadded::", C++ "std::"
    value = m.group(0).split("%")[0]
    if value.count(":") < 2 or len(value.replace(":", "")) < 4 or sum(1 for g in value.split(":") if g) < 2:
        return False  # times ("10:30:45"), bare colons and reST's "2004::" are no addresses
    try:
        addr = ipaddress.IPv6Address(value)
    except ValueError:
        return False
    return addr.is_global and not addr.is_multicast


def luhn_ok(digits: str) -> bool:
    total, double = 0, False
    for ch in reversed(digits):
        d = ord(ch) - 48
        if double:
            d = d * 2 - 9 if d > 4 else d * 2
        total += d
        double = not double
    return total % 10 == 0


# Issuer ranges (first digits, low to high) and the lengths each network issues in them.
_CARD_RANGES = [
    ("4", "4", (13, 16, 19)),  # Visa
    ("51", "55", (16,)), ("2221", "2720", (16,)),  # Mastercard
    ("34", "34", (15,)), ("37", "37", (15,)),  # American Express
    ("6011", "6011", range(16, 20)), ("644", "649", range(16, 20)), ("65", "65", range(16, 20)),  # Discover
    # JCB: 3528-3589 issued, the whole of 35 as common validators take it; its old 15-digit 1800 and 2131
    ("35", "35", range(16, 20)), ("1800", "1800", (15,)), ("2131", "2131", (15,)),
    ("300", "305", range(14, 20)), ("3095", "3095", range(14, 20)), ("36", "36", range(14, 20)),
    ("38", "39", range(14, 20)),  # Diners Club
    ("62", "62", range(16, 20)),  # UnionPay
    ("50", "50", range(12, 20)), ("56", "69", range(12, 20)),  # Maestro
    ("2200", "2204", range(16, 20)),  # Mir
    ("60", "60", (16,)), ("81", "82", (16,)), ("508", "508", (16,)),  # RuPay (its 65 is Discover's)
    ("9792", "9792", (16,)),  # Troy
]
_CARD_LENGTHS: dict[str, set[int]] = {}
for _low, _high, _lengths in _CARD_RANGES:
    for _p in range(int(_low), int(_high) + 1):
        _CARD_LENGTHS.setdefault(str(_p), set()).update(_lengths)
# Product codes print like cards: a 12- or 13-digit number that passes the GTIN (UPC/EAN) check digit is
# taken for one unless printed in groups of four (13-digit Visa numbers are no longer issued; one such
# card in ten also passes the GTIN check).
_PRODUCT_CODE_BEFORE = re.compile(r"(?:\b(?:ISBN|ISSN|EAN|GTIN|UPC|barcode|SKU)[\w\-]*[:#]?\s*|id\W{0,4}|\d\.)\Z", re.I)


def gtin_ok(digits: str) -> bool:
    """The GS1 check digit (UPC-A, EAN-13): weights 3 and 1 alternating from the right, sum mod 10."""
    total = sum((3 if i % 2 == 0 else 1) * (ord(c) - 48) for i, c in enumerate(reversed(digits[:-1])))
    return (10 - total % 10) % 10 == ord(digits[-1]) - 48


def _card(m: re.Match) -> bool:
    digits = re.sub(r"\D", "", m.group(0))
    # A Luhn check alone passes one random number in ten; card numbers also start with an issuer's range
    # and have one of the lengths that issuer uses.
    n = len(digits)
    if not any(n in _CARD_LENGTHS.get(digits[:k], ()) for k in range(1, 5)) or not luhn_ok(digits):
        return False
    # A product code, unless printed in a card's groups of four ("4348 7972 2378 0").
    return not (n in (12, 13) and gtin_ok(digits) and not re.match(r"\d{4}[ \-]\d{4}[ \-]", m.group(0)))


def _card_context(m: re.Match) -> bool:
    """False for digits that cannot hold a card at all, not even in part: after "+" (a phone number's
    country code), a product-code or id label ("EAN", "'id': ", "videoId=") or "0." (decimals)."""
    start = m.start()
    return not (start and m.string[start - 1] == "+") and not _PRODUCT_CODE_BEFORE.search(
        m.string[max(0, start - 20):start])


def iban_ok(value: str) -> bool:
    s = value.replace(" ", "")
    if not 15 <= len(s) <= 34:
        return False
    rearranged = s[4:] + s[:4]
    try:
        return int("".join(str(int(c, 36)) for c in rearranged)) % 97 == 1
    except ValueError:
        return False


def _ssn(m: re.Match) -> bool:
    area, group, serial = m.group(0).split("-")
    return area not in ("000", "666") and area[0] != "9" and group != "00" and serial != "0000"


@dataclass(frozen=True)
class Detector:
    """One PII type: a batch pre-filter (RE2), a Python pattern and the check a match must pass."""

    kind: str
    pattern: str
    check: Callable[[re.Match], bool] | None = None
    context: Callable[[re.Match], bool] | None = None  # False: not this kind, not even a part of the match
    literal: str | None = None  # text every match holds: documents without it are skipped (a C-speed search)

    @property
    def compiled(self) -> re.Pattern:
        return _compile(self.pattern)


_COMPILED: dict[str, re.Pattern] = {}


def _compile(pattern: str) -> re.Pattern:
    if pattern not in _COMPILED:
        _COMPILED[pattern] = re.compile(pattern)
    return _COMPILED[pattern]


DETECTORS = {
    "secret": Detector("secret", SECRET),
    "email": Detector("email", EMAIL, literal="@"),
    "ip": Detector("ip", IPV4 + "|" + IPV6, lambda m: _public_ipv6(m) if ":" in m.group(0) else _public_ipv4(m)),
    "card": Detector("card", CARD, _card, _card_context),
    "iban": Detector("iban", IBAN, lambda m: iban_ok(m.group(0))),
    "ssn": Detector("ssn", SSN, _ssn),
}


# Kinds whose pattern allows spaces or dashes between digit groups: a match can run on into a
# neighbouring number ("ref 12 4111 1111 1111 1111", "DE89 3704 0044 0532 0130 00 2024"), fail its
# checksum as a whole and still hold a valid value.
_SPLITTABLE = {"card", "iban"}
_PART_LENGTHS = {"card": (13, 19), "iban": (15, 34)}  # characters other than separators


def _valid_part(det: Detector, value: str) -> tuple[int, int] | None:
    """(start, end) of the longest run of whole digit groups inside a failed match that matches the
    pattern on its own and passes the check; None when there is none."""
    pieces = [(p.start(), p.end()) for p in re.finditer(r"[^ \-]+", value)]
    # Only runs of a length the kind has are tried. 12 digits cut from a longer number are as often a
    # random Luhn pass as a Maestro card, so a card part holds 13 or more.
    least, most = _PART_LENGTHS[det.kind]
    sums = [0]
    for start, end in pieces:
        sums.append(sums[-1] + end - start)
    spans = sorted(((pieces[i][0], pieces[j][1]) for i in range(len(pieces)) for j in range(i, len(pieces))
                    if (i, j) != (0, len(pieces) - 1) and least <= sums[j + 1] - sums[i] <= most),
                   key=lambda se: se[0] - se[1])
    for start, end in spans:
        m = det.compiled.fullmatch(value[start:end])
        if m is not None and (det.check is None or det.check(m)):
            return start, end
    return None


PSEUDONYM_KEY_ENV = "LLMPIPE_PSEUDONYM_KEY"  # also read by `llm.secrets`


def _replace_all(text: pa.Array, det: Detector) -> tuple[pa.Array, np.ndarray]:
    """Every match replaced by the placeholder and counted, by Arrow over the whole batch (no check
    needed), or over the documents holding the detector's literal when it has one."""
    rows = None
    if det.literal is not None and len(text):
        rows = np.flatnonzero(pc.fill_null(pc.match_substring(text, det.literal), False).to_numpy(zero_copy_only=False))
        if len(rows) == len(text):
            rows = None
    part = text if rows is None else text.take(pa.array(rows, pa.int64()))
    found = pc.fill_null(pc.count_substring_regex(part, det.pattern), 0).to_numpy(zero_copy_only=False).astype(np.int64)
    replaced = pc.replace_substring_regex(part, det.pattern, PLACEHOLDER[det.kind])
    if rows is None:
        return replaced, found
    counts = np.zeros(len(text), np.int64)
    counts[rows] = found
    if not len(rows):
        return text, counts
    return _put_rows(text, rows, replaced), counts


def _put_rows(text: pa.Array, rows: np.ndarray, values) -> pa.Array:
    """`text` with the entries at `rows` (ascending) replaced by `values` (strings or a string array)."""
    if len(rows) == len(text):
        return values if isinstance(values, pa.Array) else pa.array(values, text.type)
    mask = np.zeros(len(text), bool)
    mask[rows] = True
    new = values if isinstance(values, pa.Array) else pa.array(values, pa.string())
    return pc.replace_with_mask(text, pa.array(mask), new.cast(text.type))


class Scrubber:
    """Replaces the configured PII types in a batch of texts; returns new texts and counts per type."""

    def __init__(self, cfg: PiiConfig):
        self.cfg = cfg
        self.kinds = [k for k in ORDER if k in cfg.types]
        self._key = b""
        if cfg.replacement == "pseudonym":
            if cfg.pseudonym_key is None:
                raise UserError("data.pii.pseudonym_key: pseudonyms need a key; run through the pipeline "
                                f"(which generates one under the work directory) or set {PSEUDONYM_KEY_ENV}")
            self._key = cfg.pseudonym_key.get_secret_value().encode("utf-8", "surrogatepass")

    def token(self, kind: str, value: str) -> str:
        if self.cfg.replacement == "placeholder":
            return PLACEHOLDER[kind]
        digest = hmac.new(self._key, f"{kind}\x1f{value}".encode("utf-8", "surrogatepass"), hashlib.sha256)
        return f"{PLACEHOLDER[kind][:-1]}_{digest.hexdigest()[:8]}>"

    def scrub(self, text: pa.Array) -> tuple[pa.Array, dict[str, np.ndarray]]:
        counts: dict[str, np.ndarray] = {}
        for kind in self.kinds:
            if kind == "phone":
                text, counts[kind] = self._scrub_phones(text)
            elif DETECTORS[kind].check is None and self.cfg.replacement == "placeholder":
                text, counts[kind] = _replace_all(text, DETECTORS[kind])
            else:
                text, counts[kind] = self._scrub_checked(text, DETECTORS[kind])
        return text, counts

    def _candidates(self, text: pa.Array, pattern: str) -> np.ndarray:
        return np.flatnonzero(pc.fill_null(pc.match_substring_regex(text, pattern), False).to_numpy(
            zero_copy_only=False))

    def _scrub_checked(self, text: pa.Array, det: Detector) -> tuple[pa.Array, np.ndarray]:
        counts = np.zeros(len(text), np.int64)
        rows = self._candidates(text, det.pattern)
        if not len(rows):
            return text, counts
        picked = text.take(pa.array(rows, pa.int64()))
        # Where in each candidate an address can be: RE2 picks the documents, the windows the stretches.
        windows = ip_windows(picked) if det.kind == "ip" else None
        values = picked.to_pylist()
        pattern = det.compiled
        for k, r in enumerate(rows.tolist()):
            found = 0

            def replace(m: re.Match) -> str:
                nonlocal found
                value = m.group(0)
                if det.context is not None and not det.context(m):
                    return value
                if det.check is not None and not det.check(m):
                    part = _valid_part(det, value) if det.kind in _SPLITTABLE else None
                    if part is None:
                        return value
                    found += 1
                    start, end = part
                    return value[:start] + self.token(det.kind, value[start:end]) + value[end:]
                found += 1
                return self.token(det.kind, value)

            values[k] = _sub_in(pattern, replace, values[k], None if windows is None else windows.get(k, []))
            counts[r] = found
        return _put_rows(text, rows, values), counts

    def _scrub_phones(self, text: pa.Array) -> tuple[pa.Array, np.ndarray]:
        counts = np.zeros(len(text), np.int64)
        rows = self._candidates(text, PHONE_HINT)
        if not len(rows):
            return text, counts
        values = text.take(pa.array(rows, pa.int64())).to_pylist()
        regions = tuple(r.upper() for r in self.cfg.phone_regions)
        for k, r in enumerate(rows.tolist()):
            value = values[k]
            spans = phone_spans(value, regions)
            for start, end in reversed(spans):
                value = value[:start] + self.token("phone", value[start:end]) + value[end:]
            values[k] = value
            counts[r] = len(spans)
        return _put_rows(text, rows, values), counts


def _sub_in(pattern: re.Pattern, replace: Callable[[re.Match], str], text: str,
            windows: list[tuple[int, int]] | None) -> str:
    """`pattern.sub(replace, text)`, searching only the character ranges `windows` (all of the text
    when None): every match must lie inside one of them."""
    if windows is None:
        return pattern.sub(replace, text)
    pieces, done = [], 0
    for lo, hi in windows:
        for m in pattern.finditer(text, lo, hi):
            pieces += [text[done:m.start()], replace(m)]
            done = m.end()
    return "".join(pieces) + text[done:] if pieces else text


class PiiStep:
    """Scrubs PII in place and stores `pii_<type>` counts; it never drops a document."""

    name = "pii"

    def __init__(self, cfg: PiiConfig):
        self.cfg = cfg
        self.scrubber = Scrubber(cfg)

    @property
    def signal_fields(self) -> list[pa.Field]:
        return [pa.field(f"pii_{k}", pa.int64()) for k in self.scrubber.kinds]

    def apply(self, docs: pa.Table) -> StepOutput:
        rows = applies_to(docs, self.cfg.sources)
        n = docs.num_rows
        counts: dict[str, np.ndarray] = {}
        if len(rows):
            text = docs.column("text").take(pa.array(rows, pa.int64())).combine_chunks()
            scrubbed, counts = self.scrubber.scrub(text)
            docs = _set_rows(docs, "text", rows, scrubbed)
            docs = self._scrub_fields(docs, rows)
        docs = with_columns(docs, {f.name: scatter(counts.get(f.name[4:], np.zeros(0, np.int64)), rows, n, pa.int64())
                                   for f in self.signal_fields})
        return StepOutput(kept=docs, dropped=rejected_rows(docs.slice(0, 0), self.name, [], [], []),
                          quarantined=empty_quarantine())

    def scrub_table(self, docs: pa.Table) -> pa.Table:
        """`docs` with PII scrubbed from `text`, `url` and `meta` (no counts): for documents a step
        before this one dropped, so rejected shards hold no more PII than kept ones."""
        rows = applies_to(docs, self.cfg.sources)
        if not len(rows):
            return docs
        if "text" in docs.column_names:
            text = docs.column("text").take(pa.array(rows, pa.int64())).combine_chunks()
            docs = _set_rows(docs, "text", rows, self.scrubber.scrub(text)[0])
        return self._scrub_fields(docs, rows)

    def scrub_strings(self, values: list[str | None], sources: list[str]) -> list[str | None]:
        """`values` with PII scrubbed from those whose source the step applies to (quarantine fields)."""
        rows = [i for i, (v, src) in enumerate(zip(values, sources))
                if v and (self.cfg.sources is None or src in self.cfg.sources)]
        if not rows:
            return list(values)
        scrubbed = self.scrubber.scrub(pa.array([values[i] for i in rows], pa.string()))[0].to_pylist()
        out = list(values)
        for i, v in zip(rows, scrubbed):
            out[i] = v
        return out

    def _scrub_fields(self, docs: pa.Table, rows: np.ndarray) -> pa.Table:
        """Scrub the other text-bearing columns: `url` as text (`mailto:` links, addresses in query
        strings) and the string values inside the `meta` JSON (ids that are addresses, file paths), which
        are scrubbed value by value so the JSON stays valid and numbers such as offsets stay numbers."""
        take = pa.array(rows, pa.int64())
        if "url" in docs.column_names:
            urls = docs.column("url").take(take).combine_chunks()
            docs = _set_rows(docs, "url", rows, self.scrubber.scrub(urls)[0])
        if "meta" in docs.column_names:
            metas = docs.column("meta").take(take).to_pylist()
            docs = _set_rows(docs, "meta", rows, pa.array(self._scrub_meta(metas), pa.string()))
        return docs

    def _scrub_meta(self, metas: list[str | None]) -> list[str | None]:
        parsed: list = []
        strings: list[str] = []
        for meta in metas:
            try:
                obj = json.loads(meta) if meta else None
            except ValueError:  # not JSON: scrubbed as plain text
                obj = _Opaque(meta)
            parsed.append(obj)
            _collect_strings(obj, strings)
        if not strings:
            return metas
        scrubbed_all = self.scrubber.scrub(pa.array(strings, pa.string()))[0].to_pylist()
        if scrubbed_all == strings:
            return metas
        scrubbed = iter(scrubbed_all)
        out = []
        for meta, obj in zip(metas, parsed):
            if obj is None:
                out.append(meta)
            elif isinstance(obj, _Opaque):
                out.append(next(scrubbed))
            else:
                before = []
                _collect_strings(obj, before)
                mine = [next(scrubbed) for _ in before]
                changed = mine != before
                # Re-serialised only when a value changed, in the readers' own form.
                out.append(json.dumps(_replace_strings(obj, iter(mine)), sort_keys=True, ensure_ascii=False)
                           if changed else meta)
        return out


class _Opaque(str):
    """A `meta` value that is not JSON, scrubbed as one string."""


def _collect_strings(obj, out: list[str]) -> None:
    if isinstance(obj, str):
        out.append(obj)
    elif isinstance(obj, dict):
        for v in obj.values():
            _collect_strings(v, out)
    elif isinstance(obj, list):
        for v in obj:
            _collect_strings(v, out)


def _replace_strings(obj, scrubbed):
    """`obj` with each string replaced by the next of `scrubbed`, in `_collect_strings` order."""
    if isinstance(obj, str):
        return next(scrubbed)
    if isinstance(obj, dict):
        return {k: _replace_strings(v, scrubbed) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_replace_strings(v, scrubbed) for v in obj]
    return obj


def _set_rows(docs: pa.Table, column: str, rows: np.ndarray, values: pa.Array) -> pa.Table:
    """`docs` with `column`'s values at `rows` replaced by `values`."""
    idx = docs.schema.get_field_index(column)
    if len(rows) == docs.num_rows:
        full = values.cast(docs.schema.field(column).type)
    else:
        current = docs.column(column).to_pylist()
        for r, v in zip(rows.tolist(), values.to_pylist()):
            current[r] = v
        full = pa.array(current, docs.schema.field(column).type)
    return docs.set_column(idx, docs.schema.field(column), full)
