"""PII precision and recall per type on labelled sets built from real mail.

Phone numbers are labelled in the real mails by rules independent of the scrubber's phone library
(a phone keyword before a number, the North American layout, or a `+country` prefix). Cards, IBANs,
SSNs and secrets are rare in real mail, so valid values are generated with the checksum algorithms and
planted at random word boundaries of real mail bodies, together with near misses that must survive
(Luhn-invalid numbers, wrong IBAN checksums, SSN areas 000/666/9xx, versions, private IPs, dates, order
numbers, public keys, hashes). Everything is generated from a fixed seed at test time; only figures are
reported, never a value. These values share the detectors' own formats, so they guard the checksums and
layouts; the figures for independent values are in `test_pii_faker.py`.
"""

from __future__ import annotations

import base64
import json
import random
import re
import string

import pyarrow as pa
import pytest

from llm.config import PiiConfig
from llm.data.pii import Scrubber, iban_ok, luhn_ok

from .test_pii import Quiet, evaluate

SEED = 20240611

# --- phone labels on real mail ------------------------------------------------------------------------

_PHONE_RULES = [
    # a phone keyword, then within 40 characters of the same line a run of digits and separators
    r"(?i:\b(?:tel|telephone|phone|fax|mobile|cell|call|ph|voice|toll[- ]free)\b[^\n\d]{0,40}?)"
    r"(\+?\(?\d[\d\-. ()/]{5,}\d)",
    r"((?:\b1[-. ])?\(?\b[2-9]\d{2}\)?[-. ]\d{3}[-. ]\d{4}\b)",  # North American layout
    r"(\+\d{1,3}(?:[ .\-]\(?\d{1,5}\)?){2,5})",  # international, explicit country code
    r"(\+\d{8,15})\b",  # international, no separators
]


def phone_units(shared_data) -> list[dict]:
    """Each real mail with the phone numbers the rules above find in it (overlapping finds merged,
    the longest kept). As in the step, phones are looked for after the other types are scrubbed, so
    the digits of addresses and host names are no longer there to be mistaken for phone numbers."""
    mails = [json.loads(line)["text"] for line in
             (shared_data / "mail_dev.jsonl").read_text(encoding="utf-8").splitlines()]
    others = [k for k in PiiConfig().types if k != "phone"]
    scrubbed, _ = Scrubber(PiiConfig(types=others)).scrub(pa.array(mails))
    units = []
    for text in scrubbed.to_pylist():
        spans: list[tuple[int, int]] = []
        for rule in _PHONE_RULES:
            for m in re.finditer(rule, text):
                if 7 <= len(re.sub(r"\D", "", m.group(1))) <= 15:
                    spans.append(m.span(1))
        merged: list[tuple[int, int]] = []
        for s, e in sorted(spans, key=lambda se: (se[0], -se[1])):
            if merged and s < merged[-1][1]:
                merged[-1] = (merged[-1][0], max(e, merged[-1][1]))
            else:
                merged.append((s, e))
        units.append({"text": text, "kind": "phone", "gold": [text[s:e] for s, e in merged]})
    return units


# --- generated values --------------------------------------------------------------------------------

def _digits(rng: random.Random, n: int) -> str:
    return "".join(rng.choice(string.digits) for _ in range(n))


def luhn_complete(body: str) -> str:
    """`body` with the check digit that makes it pass the Luhn check."""
    for d in string.digits:
        if luhn_ok(body + d):
            return body + d
    raise AssertionError("no Luhn digit")  # unreachable: one digit in ten always fits


# issuer prefix, length, grouping of the printed number
ISSUERS = [("4", 16, (4, 4, 4, 4)), ("51", 16, (4, 4, 4, 4)), ("55", 16, (4, 4, 4, 4)),
           ("2221", 16, (4, 4, 4, 4)), ("34", 15, (4, 6, 5)), ("37", 15, (4, 6, 5)),
           ("6011", 16, (4, 4, 4, 4)), ("65", 16, (4, 4, 4, 4)), ("3528", 16, (4, 4, 4, 4)),
           ("36", 14, (4, 6, 4)), ("62", 16, (4, 4, 4, 4))]


def _grouped(number: str, groups: tuple[int, ...], sep: str) -> str:
    out, i = [], 0
    for g in groups:
        out.append(number[i:i + g])
        i += g
    return sep.join(out)


def card(rng: random.Random) -> str:
    prefix, length, groups = rng.choice(ISSUERS)
    number = luhn_complete(prefix + _digits(rng, length - len(prefix) - 1))
    return _grouped(number, groups, rng.choice(["", " ", "-"]))


def bad_card(rng: random.Random) -> str:
    """A 16-digit number with a card prefix that fails Luhn, or a Luhn-valid one with no issuer prefix."""
    if rng.random() < 0.5:
        good = luhn_complete("4" + _digits(rng, 14))
        return good[:-1] + str((int(good[-1]) + rng.randint(1, 9)) % 10)
    return luhn_complete(rng.choice("179") + _digits(rng, 14))


# country, BBAN layout: n digits, a upper-case letters, c alphanumerics
IBAN_LAYOUTS = {"DE": "18n", "GB": "4a14n", "FR": "10n11c2n", "ES": "20n", "NL": "4a10n", "IT": "1a10n12c",
                "CH": "5n12c", "BE": "12n", "AT": "16n", "PL": "24n"}


def _bban(rng: random.Random, layout: str) -> str:
    pools = {"n": string.digits, "a": string.ascii_uppercase, "c": string.ascii_uppercase + string.digits}
    return "".join("".join(rng.choice(pools[kind]) for _ in range(int(n)))
                   for n, kind in re.findall(r"(\d+)([nac])", layout))


def iban_check(country: str, bban: str) -> str:
    """The two ISO 13616 check digits: 98 minus the mod-97 of BBAN + country + '00' in base 36."""
    number = int("".join(str(int(c, 36)) for c in bban + country + "00"))
    return f"{98 - number % 97:02d}"


def iban(rng: random.Random) -> str:
    country = rng.choice(sorted(IBAN_LAYOUTS))
    bban = _bban(rng, IBAN_LAYOUTS[country])
    value = country + iban_check(country, bban) + bban
    return " ".join(value[i:i + 4] for i in range(0, len(value), 4)) if rng.random() < 0.5 else value


def bad_iban(rng: random.Random) -> str:
    country = rng.choice(sorted(IBAN_LAYOUTS))
    bban = _bban(rng, IBAN_LAYOUTS[country])
    check = iban_check(country, bban)
    return country + f"{(int(check) + rng.randint(1, 9)) % 100:02d}" + bban


def ssn(rng: random.Random) -> str:
    area = rng.choice([a for a in range(1, 900) if a != 666])
    return f"{area:03d}-{rng.randint(1, 99):02d}-{rng.randint(1, 9999):04d}"


def bad_ssn(rng: random.Random) -> str:
    area = rng.choice(["000", "666", f"9{rng.randint(0, 99):02d}"])
    return f"{area}-{rng.randint(1, 99):02d}-{rng.randint(1, 9999):04d}"


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def _alnum(rng: random.Random, n: int, alphabet: str = string.ascii_letters + string.digits) -> str:
    return "".join(rng.choice(alphabet) for _ in range(n))


def secret(rng: random.Random) -> str:
    kind = rng.randrange(9)
    if kind == 0:
        return rng.choice(["AKIA", "ASIA"]) + _alnum(rng, 16, string.ascii_uppercase + string.digits)
    if kind == 1:
        return "ghp_" + _alnum(rng, 36)
    if kind == 2:
        return "github_pat_" + _alnum(rng, 22) + "_" + _alnum(rng, 59)
    if kind == 3:
        return f"xoxb-{_digits(rng, 12)}-{_digits(rng, 13)}-{_alnum(rng, 24)}"
    if kind == 4:
        return "sk_live_" + _alnum(rng, 24)
    if kind == 5:
        return "AIza" + _alnum(rng, 35, string.ascii_letters + string.digits + "_-")
    if kind == 6:
        return "glpat-" + _alnum(rng, 20)
    if kind == 7:
        header = _b64url(json.dumps({"alg": "HS256", "typ": "JWT"}).encode())
        payload = _b64url(json.dumps({"sub": _digits(rng, 8), "iat": rng.randint(10**9, 2 * 10**9)}).encode())
        return f"{header}.{payload}.{_b64url(rng.randbytes(32))}"
    body = base64.b64encode(rng.randbytes(120)).decode()
    lines = "\n".join(body[i:i + 64] for i in range(0, len(body), 64))
    label = rng.choice(["RSA ", "EC ", "OPENSSH ", ""])
    return f"-----BEGIN {label}PRIVATE KEY-----\n{lines}\n-----END {label}PRIVATE KEY-----"


def bad_secret(rng: random.Random) -> str:
    """Look-alikes that are not credentials: hashes, UUIDs, public keys, truncated prefixes."""
    kind = rng.randrange(5)
    if kind == 0:
        return _alnum(rng, 40, "0123456789abcdef")  # commit hash
    if kind == 1:
        h = _alnum(rng, 32, "0123456789abcdef")
        return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"
    if kind == 2:
        body = base64.b64encode(rng.randbytes(60)).decode()
        return f"-----BEGIN PUBLIC KEY-----\n{body}\n-----END PUBLIC KEY-----"
    if kind == 3:
        return "AKIA" + _alnum(rng, 8, string.ascii_uppercase)  # too short for an access key id
    return "ghp_" + _alnum(rng, 12)


def other_near_miss(rng: random.Random) -> str:
    """Numbers that look like PII of some kind and are none: versions, private IPs, dates, order numbers."""
    version = f"{rng.randint(1, 9)}.{rng.randint(0, 20)}.{rng.randint(0, 20)}.{rng.randint(0, 99)}"
    # A bare four-part version is indistinguishable from a public address (1.2.3.4 is one), so the
    # version look-alikes carry what marks them: a prefix, a fifth part or a suffix.
    return rng.choice([
        rng.choice(["v", "version ", "release "]) + version, version + f".{rng.randint(0, 9)}", version + "-beta",
        f"10.{rng.randint(0, 255)}.{rng.randint(0, 255)}.{rng.randint(1, 254)}",
        f"192.168.{rng.randint(0, 255)}.{rng.randint(1, 254)}",
        f"{rng.randint(1990, 2030)}-{rng.randint(1, 12):02d}-{rng.randint(1, 28):02d}",
        f"#{_digits(rng, rng.randint(6, 12))}", f"order {_digits(rng, 10)}",
    ])


GENERATORS = {"card": (card, bad_card), "iban": (iban, bad_iban), "ssn": (ssn, bad_ssn),
              "secret": (secret, bad_secret)}


def planted_units(shared_data, seed: int = SEED) -> list[dict]:
    """Real mail bodies with 1-3 planted values and 2 near misses each, at random word boundaries: one
    unit per body and kind (each kind is scored on every body), its planted values as `gold`, the
    body's near misses as `misses`."""
    rng = random.Random(seed)
    bodies = []
    for line in (shared_data / "mail_dev.jsonl").read_text(encoding="utf-8").splitlines():
        body = json.loads(line)["text"].split("\n\n", 1)[-1]
        if len(body) > 200:
            bodies.append(body[:20_000])
    texts, gold, misses = [], [], []
    for body in bodies:
        plants = [(k, True) for k in rng.choices(sorted(GENERATORS), k=rng.randint(1, 3))]
        plants += [(rng.choice(sorted(GENERATORS) + ["other"]), False) for _ in range(2)]
        gaps = [m.start() for m in re.finditer(r"\s", body)]
        positions = sorted(rng.sample(gaps, min(len(plants), len(gaps))), reverse=True)
        unit_gold: list[tuple[str, str]] = []
        unit_misses: list[str] = []
        for (kind, positive), pos in zip(plants, positions):
            value = (GENERATORS[kind][0](rng) if positive else
                     other_near_miss(rng) if kind == "other" else GENERATORS[kind][1](rng))
            (unit_gold.append((kind, value)) if positive else unit_misses.append(value))
            body = body[:pos] + " " + value + " " + body[pos:]
        texts.append(body)
        gold.append(unit_gold)
        misses.append(unit_misses)
    units = [{"text": t, "kind": kind, "gold": [v for k, v in g if k == kind], "misses": m}
             for kind in GENERATORS for t, g, m in zip(texts, gold, misses)]
    return units


# --- tests -------------------------------------------------------------------------------------------

def test_generators_make_valid_and_invalid_values():
    rng = random.Random(1)
    for _ in range(200):
        assert luhn_ok(re.sub(r"\D", "", card(rng)))
        assert iban_ok(iban(rng)) and not iban_ok(bad_iban(rng))
        area = int(ssn(rng)[:3])
        assert 0 < area < 900 and area != 666 and int(bad_ssn(rng)[:3]) in {0, 666} | set(range(900, 1000))
    digits = [bad_card(rng) for _ in range(200)]
    assert all(not luhn_ok(d) or d[0] in "179" for d in digits)


@pytest.fixture(scope="module")
def planted(shared_data):
    return Quiet(planted_units(shared_data))


# Floors: the checks are exact (Luhn, mod-97, SSN ranges, fixed key layouts), so recall below 0.98 or
# precision below 0.95 on values planted at random word boundaries would mean a real detector defect.
@pytest.mark.parametrize("kind", sorted(GENERATORS))
def test_planted_values_precision_and_recall(planted, kind):
    precision, recall, n = evaluate(planted, kind)
    print(f"{kind}: precision {precision:.3f} recall {recall:.3f} on {n} planted values")
    assert n >= 50
    assert recall >= 0.98 and precision >= 0.95, (precision, recall)


def test_near_misses_survive(planted):
    units = [u for u in planted if u["kind"] == "card"]  # one unit per body
    out, _ = Scrubber(PiiConfig(types=["card", "iban", "ssn", "secret", "ip"])).scrub(
        pa.array([u["text"] for u in units]))
    total = survived = 0
    for unit, text in zip(units, out.to_pylist()):
        for miss in unit["misses"]:
            total += 1
            survived += miss in text
    print(f"near misses left alone: {survived} of {total}")
    assert total >= 300 and survived / total >= 0.98, (survived, total)


@pytest.fixture(scope="module")
def phones(shared_data):
    return Quiet(phone_units(shared_data))


# Floors: phone numbers are the loosest type (obfuscated digits, numbers split by markup, IDs in
# headers that are dialable somewhere); these floors sit just under the measured figures.
def test_phone_precision_and_recall_on_real_mail(phones):
    precision, recall, n = evaluate(phones, "phone")
    print(f"phone: precision {precision:.3f} recall {recall:.3f} on {n} labelled values")
    assert n >= 40
    assert recall >= 0.95 and precision >= 0.95, (precision, recall)
