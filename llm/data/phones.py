"""Phone numbers in running text, in international and national formats, for the PII step.

The phone library's own matcher parses every candidate once per region, in Python: about 1 MB/s of mail
for one region. Here one regular expression finds digit groups laid out like a phone number, cheap
checks put aside what is something else (dates, times, versions, decimals, thousands, dotted quads,
postcodes, ISBNs, digits joined to a word, a host name or an identifier), and only what is left is
parsed: once when it starts with "+" or "00", else once per configured region whose national layout
fits it (the trunk prefix "0" where the region dials one, a length the region uses). A number counts when the library
says it is a valid number, or, for "+" numbers and the North American layout "(212) 555-0123", when its
length is possible: that layout is evidence enough, and unassigned area codes still reach people.
"""

from __future__ import annotations

import re
from functools import lru_cache

import phonenumbers
from phonenumbers import PhoneMetadata

# A digit group is digits or an area code in parentheses; groups are joined by one separator (" ", ".",
# "-", "/", the last three with a space either side) or by a parenthesis ("+44(0)20 ...").
_GROUP = r"(?:\(\d{1,5}\)|\d+)"
NUMBER = re.compile(r"(?:\+ ?)?" + _GROUP + r"(?:(?: ?[\-/.] ?| )" + _GROUP + r"|\(\d{1,5}\)|(?<=\))\d+)*")
_EXTENSION = re.compile(r" ?(?:x|ext\.?|extension) ?\d{1,6}\b", re.I)
# Digits the phone library accepts that are part of something else.
_DOTTED_QUAD = re.compile(r"\d{1,3}(?:\.\d{1,3}){3}")
_JOINED_AFTER = re.compile(r"[A-Za-z0-9_@]|[.\-][A-Za-z0-9]|:\d")  # only ASCII letters: CJK text has no spaces
# A run that starts with a date is one ("24.07.2002 15:57", "02/09/23/125230"), unless it is all pairs of
# digits, as French numbers are written ("06.12.34.56.78").
_DATE = re.compile(r"(\d{4})[\-./](\d{1,2})[\-./](\d{1,2})\b|(\d{1,2})([\-./])(\d{1,2})\5(?:\d{4}|\d{2})\b")
_PAIRS = re.compile(r"\d\d(?:([ .\-])\d\d)(?:\1\d\d){3}")
_THOUSANDS = re.compile(r"\d{1,3}(?:\.\d{3})+")
_ZIP_PLUS_4 = re.compile(r"\d{5}-\d{4}|\d{5}-\d{3}|[1-9]\d-\d{7}")  # US ZIP+4, Brazilian CEP, US employer id
_ISBN10 = re.compile(r"\d{1,5}-\d{1,7}-\d{1,7}-\d")  # one ending in X is joined to a letter
# A phone keyword before a number written without separators; identifiers labelled as such are no phones.
_PHONE_WORD = re.compile(r"(?:\b(?:tel|tele?phone|phone|ph|fax|mobile?|cell(?:ular)?|call|voice|contact|whatsapp|sms"
                         r"|telefon|telefono|tel[eé]fono|t[eé]l[eé]phone|t[eé]l|portable|handy|telefoon|mobiel|cellulare"
                         r"|celular|m[oó]vil|komórka|telefonu?)\b|電話|☎|📞)[^\n\d]{0,20}\Z", re.I)
_ID_LABEL = re.compile(r"(?:\b(?:id|no|nr|num|number|order|ref|reference|invoice|ticket|isbn|issn|ean|sku|serial|"
                       r"account|acct|docid|pin|zip|postcode|plz|port|pid|uid)\b\W{0,3})\Z", re.I)
_NANP = re.compile(r"(?:\+?1[ .\-]?)?(?:\([2-9]\d\d\) ?|[2-9]\d\d([ .\-]))[2-9]\d\d([ .\-])\d{4}")
# Regions where national numbers are written without their trunk "0" as often as with it.
_TRUNK_OPTIONAL = {"BR", "IN", "CN", "MX", "AR", "CO"}


def joined_to_other_text(text: str, start: int, end: int) -> bool:
    """True for digits the phone library accepts that belong to something else: a host name or mail
    local part ("dsl-65-185-76-173.example.net", "bounce-56446664-12@"), a dotted quad (an address or a
    version), an order or ticket number ("#123456789"), a date followed by a time ("24.07.2002 15:57"),
    seconds of a time, URL-encoded text ("%2018.68") or a licence number ("0108263号")."""
    before = text[start - 1] if start else ""
    joined = before in ".:" and start > 1 and text[start - 2].isalnum()  # "host.123", a time "16:42:01.000"
    if (before.isascii() and before.isalnum()) or (before and before in "-_@/#%") or joined:
        # "Fax-253-660-3853", "Tel/Fax/0301234567": a phone keyword joined by a dash or slash
        return not (before in "-/" and _PHONE_WORD.search(text, max(0, start - 41), start - 1))
    if _JOINED_AFTER.match(text, end) or text.startswith(("号", "號"), end):  # "0108263号": a licence number
        return True
    return bool(_DOTTED_QUAD.fullmatch(text, start, end))


def _looks_like_other_number(run: str) -> bool:
    """Dates, versions and decimals ("3.14159", "10.0.19041.1"), thousands ("1.234.567")."""
    m = _DATE.match(run)
    if m and not _PAIRS.fullmatch(run):
        if m.group(1):
            if 1 <= int(m.group(2)) <= 12 and 1 <= int(m.group(3)) <= 31:
                return True
        else:
            a, b = int(m.group(4)), int(m.group(6))
            if (1 <= a <= 31 and 1 <= b <= 12) or (1 <= a <= 12 and 1 <= b <= 31):
                return True
    if _ZIP_PLUS_4.fullmatch(run):
        return True
    if _ISBN10.fullmatch(run) and isbn10_ok(run):
        return True
    groups = re.split(r"\D+", run.strip("+()"))
    spaced_only = not re.search(r"[\-/.()]", run)
    if (spaced_only and sum(len(g) == 1 for g in groups) >= 2) or any(len(g) >= 7 for g in groups[:-1]):
        return True  # "2 1 6 0 3 1 1 1", "7552100 311": counts and identifiers, no phone layout
    if "." in run and not run.startswith("+"):
        if re.search(r"[ \-/()]", run):
            return True  # "15 16.581877", "2018.68-18.68": decimals beside other numbers
        if len(groups) == 2 or min(len(g) for g in groups) == 1 or _THOUSANDS.fullmatch(run):
            return True
    return False


def isbn10_ok(value: str) -> bool:
    """The ISBN-10 check: digits weighted 10 down to 1 sum to a multiple of 11."""
    digits = [int(c) for c in value if c.isdigit()]
    return len(digits) == 10 and sum((10 - i) * d for i, d in enumerate(digits)) % 11 == 0


@lru_cache(maxsize=None)
def _region_layout(region: str) -> tuple[str | None, frozenset[int]]:
    """(trunk prefix, lengths of national significant numbers) of a region."""
    meta = PhoneMetadata.metadata_for_region(region)
    if meta is None:
        return None, frozenset()
    return meta.national_prefix, frozenset(meta.general_desc.possible_length)


def _fits(region: str, digits: str) -> bool:
    trunk, lengths = _region_layout(region)
    if trunk and digits.startswith(trunk) and len(digits) - len(trunk) in lengths:
        return True
    if trunk == "0" and region not in _TRUNK_OPTIONAL:
        return False  # written nationally, these numbers always start with their trunk 0
    return len(digits) in lengths and not digits.startswith("0") or (region == "IT" and len(digits) in lengths)


def _parses(run: str, region: str | None, possible_is_enough: bool = False) -> bool:
    try:
        number = phonenumbers.parse(run, region)
    except phonenumbers.NumberParseException:
        return False
    if phonenumbers.is_valid_number(number):
        return True
    return possible_is_enough and phonenumbers.is_possible_number(number)


def is_phone_number(run: str, regions: tuple[str, ...]) -> bool:
    """Whether `run` (one NUMBER match, without context) is a phone number of some region."""
    digits = re.sub(r"\D", "", run)
    if not 7 <= len(digits) <= 17 or _looks_like_other_number(run):
        return False
    # "+44 (0)20 ..." and "0044 (0)20 ...": the national trunk 0 is written in parentheses.
    international = run.startswith("+") or digits.startswith("00")
    if international:
        plain = "+" + re.sub(r"\(0\)", "", run.lstrip("+ "))[2 if run.startswith("00") else 0:]
        return len(digits) <= 17 and _parses(plain, None, possible_is_enough=True)
    if len(digits) > 15:
        return False
    if ("US" in regions or "CA" in regions) and _NANP.fullmatch(run):
        return True
    return any(_fits(r, digits) and _parses(run, r) for r in regions)


def phone_spans(text: str, regions: tuple[str, ...]) -> list[tuple[int, int]]:
    """(start, end) of each phone number in `text`, an extension ("x1234", "ext. 12") included."""
    spans = []
    for m in NUMBER.finditer(text):
        start, end = m.span()
        if end - start < 7:
            continue
        ext = _EXTENSION.match(text, end)
        full_end = ext.end() if ext else end
        run = m.group(0)
        if joined_to_other_text(text, start, full_end):
            continue
        keyword = _PHONE_WORD.search(text, max(0, start - 40), start)  # "Tel No: ..." is still a phone
        if not keyword and _ID_LABEL.search(text, max(0, start - 16), start):
            continue
        # Digits alone, no separator: a phone only after a phone keyword, or with a national trunk 0 and
        # the 10-12 digits most such numbers have (shorter ones are product and account codes).
        if run.isdigit() and not keyword and (not run.startswith("0") or run.startswith("00")
                                              or not 10 <= len(run) <= 12):
            continue
        if not is_phone_number(run, regions):
            continue
        spans.append((start, full_end))
    return spans
