"""When a dotted quad is a version number, not an IP address: the rule the PII scrubber applies
before it scrubs one (and the README documents)."""

from __future__ import annotations

import re

# A dotted quad is a version, not an address, when a version marker is right beside it (the rule the
# README documents); anything else is scrubbed, so an address is kept only where a reader would also
# read a version. Before it: "v", "version", "release", "build", "rev" (also as a key: "b_ver=",
# "'build': '"), "changes in", "fixed in", "prepare for", "notes to", "update X to" (not "update DNS
# to"), "since", a requirement operator ("pkg==", ">=", "~=", "^"), a product name ("Git 1.7.9.2",
# "XFree86 4.3.99.16"), a date and "(", a name joined by "/" ("Apache/2.4.1.1"), or by "-" / "_" when
# nothing but a space or an archive extension follows ("foo-1.2.3.4.tar.gz";
# "dialup-1.2.3.4.example.net" is a host), or more dotted digits. After it: a fifth part, a release
# suffix ("-beta", "rc1"), an archive extension or "release", "cycle", "notes". Changelog headings:
# "## 1.2.3.4", "## [1.2.3.4] - 2024-01-15", "* 1.2.3.4:", "1.2.3.4 (2024-01-15)", "[1.2.3.4]: https://...",
# Debian's "pkg (1.2.3.4-1) unstable; urgency=low", or the quad alone on a line underlined with "===". Other words
# after an address do not make it a version ("1.2.3.4-generic" is a host; "8.8.8.8" alone on a line,
# "from 8.8.8.8", "IP 1.2.3.4" are addresses).
_ARCHIVE = r"\.(?:tar|tgz|zip|whl|gz|bz2|xz|exe|msi|dmg|jar|deb|rpm|apk|nupkg)\b"
_VERSION_AFTER = re.compile(r"\.\d|[\-_]?[a-zA-Z]\d|[\-_](?:alpha|beta|rc|dev|pre|snapshot|final|stable)\b|" + _ARCHIVE
                            + r"|\s+(?:release|cycle|documentation|notes|series|branch|changelog)\b", re.I)
_IP_WORDS = r"(?:ip|ipv4|dns|server|address|addr|host|gateway|proxy|resolver|nameserver|route|router|relay|mx|client)"
_VERSION_BEFORE = re.compile(
    r"(?:(?:\b|_)(?:versions?|releases?d?|ver\.?|build|rev(?:ision)?\.?|tag(?:ged)?)(?:\s+(?:to|of|is|was))?"
    r"[\"']?\s*[=:]?\s*[\"']?|\b[vV]|\bsince|\buntil"
    r"|\bchanges\s+(?:in|for|since)|\b(?:fixed|added|changed|deprecated|removed|introduced|new|backported)\s+(?:in|since)"
    r"|\b(?:prepar(?:e|es|ed|ing|ation)|ready|notes?|fix(?:es)?|corrections?)\s+(?:to|for)"
    r"|\b(?:upgrade[sd]?|update[sd]?|bump(?:ed|s)?|pinned|downgrade[sd]?)(?:\s+(?!" + _IP_WORDS + r"\b)[\w.\-]+){0,2}\s+to"
    r"|\d{4}-\d\d-\d\d\s+\(|==|[<>~!]=|[\^~])\s*\Z|(?:[A-Za-z]/|[\d.][.\-]?)\Z", re.I)
# A product name right before it: a well-known program from this list only; not a networking acronym
# ("IPv4"). Any other name ("WebEasyMail 3.0.0.2" in a mail's Received line, "MyGateway 8.8.8.8") could
# as well name the host at that address, so the quad is scrubbed: a version lost beats an address kept.
_PRODUCT_BEFORE = re.compile(
    r"(?<![\w.\-])(?!(?i:ip|ipv4|ipv6|dns|tcp|udp|nat|vpn|wan|lan|isp|smtp|esmtp|esmtps|esmtpa|https?|ftp|ssh|helo|ehlo"
    r"|rbl|dnsbl|spf|mx|ns|addr|host|from|server|proxy|gateway|router|ping|client|relay)\b)"
    r"(?:(?i:git|linux|kernel|python|perl|ruby|node"
    r"|java|chrome|chromium|firefox|thunderbird|windows|android|ubuntu|debian|openssl|sqlite|qt|gtk|gnome|kde|xorg"
    r"|apache|nginx|php|mysql|postgresql|emacs|vim|gcc|glibc|binutils|automake|autoconf|libtool|cmake|doxygen"
    r"|policy|standards(?:-version)?))[ \t]+\Z")
_NAME_JOINED = re.compile(r"[A-Za-z][\-_]\Z")
_NAME_JOINED_AFTER = re.compile(r"\s|[,;:)\]]|\Z")
_DATE = (r"(?:\d{4}[-/.]\d{1,2}[-/.]\d{1,2}|\d{1,2}[ ./-](?:\d{1,2}|[A-Za-z]{3,9})[ ./-]\d{2,4}"
         r"|[A-Za-z]{3,9}\.? \d{1,2},? \d{4}|unreleased|not yet released|released)")
_HEADING = [  # (line before the quad, line after it)
    (re.compile(r"\s*#{1,6}\s*\[?\s*[vV]?\s*"), re.compile(r"\]?\s*:?\s*(?:[\-\u2013\u2014(]\s*\(?" + _DATE + r".*)?", re.I)),
    (re.compile(r"\s*[*+\-]\s*\[?\s*[vV]?\s*"), re.compile(r"\]?\s*(?::\s*|\s*[\-\u2013\u2014(:]\s*\(?" + _DATE + r".*)", re.I)),
    (re.compile(r"\s*\[\s*[vV]?\s*"), re.compile(r"\]:\s.*|\]\s*[\-\u2013\u2014(]\s*\(?" + _DATE + r".*", re.I)),
    (re.compile(r"\s*[vV]?"), re.compile(r"\s*(?:\(|[\-\u2013\u2014]\s+)\s*" + _DATE + r".*", re.I)),
    # Debian: "dpkg (1.4.0.20) unstable; urgency=low", "libxi (2:1.4.99.1-1) experimental; ..."
    (re.compile(r"\s*[a-z0-9][a-z0-9.+\-]*\s+\(\s*(?:\d+:)?"), re.compile(r"[^)\s]*\)\s+[a-z][\w\-]*(?:\s+[a-z][\w\-]*)*;.*")),
]
_UNDERLINE = re.compile(r"\s*([=\-~^*+#])\1{2,}\s*")


def version_context(text: str, start: int, end: int) -> bool:
    """True when the dotted quad `text[start:end]` reads as a version number (see the rule above)."""
    before = text[max(0, start - 24):start]
    last = before.rstrip()[-1:]
    # Every marker before a version ends in a letter, digit or one of these; "[1.2.3.4]" needs no regex.
    if last and (last.isalnum() or last in "._-/=<>~!^:'\"(") and (
            _VERSION_BEFORE.search(before) or _PRODUCT_BEFORE.search(before)):
        return True
    if _VERSION_AFTER.match(text, end):
        return True
    if _NAME_JOINED.search(before) and _NAME_JOINED_AFTER.match(text, end):
        return True
    # A heading starts within a few characters of its line's start; only 200 characters after it count.
    line_start = text.rfind("\n", max(0, start - 40), start) + 1
    if line_start == 0 and start > 40:
        return False
    line_end = text.find("\n", end, end + 200)
    line_end = min(len(text), end + 200) if line_end < 0 else line_end
    prefix, rest = text[line_start:start], text[end:line_end]
    if any(b.fullmatch(prefix) and a.fullmatch(rest) for b, a in _HEADING):
        return True
    if prefix.strip(" \tvV") == "" and rest.strip() == "":  # alone on its line: a heading only when underlined
        next_end = text.find("\n", line_end + 1)
        return bool(_UNDERLINE.fullmatch(text[line_end + 1:len(text) if next_end < 0 else next_end]))
    return False
