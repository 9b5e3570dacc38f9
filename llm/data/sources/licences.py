"""Licences of a repository and its files, as SPDX identifiers.

A file's `SPDX-License-Identifier:` header names its licence exactly. A repository's licence comes from
its licence files (`LICENSE`, `LICENCE`, `COPYING`, with any extension or suffix) in the top folder,
recognised by the key phrases of the common licences' texts after normalisation (lower case, only letters
and digits), so reflowed or re-punctuated copies still match. A licence file that holds several texts
(a project's licence followed by those of code it bundles, as gRPC's does) counts as the first one; several
licence files with different licences (`LICENSE-MIT` and `LICENSE-APACHE`) are the choice between them.
A licence file that matches no known text is `NOASSERTION`, SPDX's word for "not determined".
"""

from __future__ import annotations

import re

LICENCE_FILE = re.compile(r"^(un)?(licen[cs]e|copying)([-._].*)?$", re.IGNORECASE)
NOASSERTION = "NOASSERTION"

_SPDX_HEADER = re.compile(rb"SPDX-License-Identifier:[ \t]*([^\r\n]+)")
_SPDX_EXPRESSION = re.compile(r"^[A-Za-z0-9.+:()\- ]+$")
_HEADER_LINES = 30  # REUSE and the Linux kernel put the tag in the first lines, after a shebang or a banner

# (identifier, phrases that must all appear; the first one's position says where the text starts).
# Order matters where one text quotes another: the LGPL and AGPL titles come before the GPL's.
_TEXTS = [
    ("AGPL-3.0", ["gnu affero general public license version 3"]),
    ("LGPL-3.0", ["gnu lesser general public license version 3 29 june 2007"]),
    ("LGPL-2.1", ["gnu lesser general public license version 2 1 february 1999"]),
    ("GPL-3.0", ["gnu general public license version 3 29 june 2007"]),
    ("GPL-2.0", ["gnu general public license version 2 june 1991"]),
    ("MPL-2.0", ["mozilla public license version 2 0"]),
    ("Apache-2.0", ["apache license version 2 0"]),
    ("BSD-3-Clause", ["redistribution and use in source and binary forms", "neither the name of"]),
    ("BSD-2-Clause", ["redistribution and use in source and binary forms",
                      "redistributions in binary form must reproduce"]),
    ("ISC", ["permission to use copy modify and or distribute this software for any purpose with or without fee"]),
    ("ISC", ["permission to use copy modify and distribute this software for any purpose with or without fee"]),
    ("MIT", ["permission is hereby granted free of charge to any person obtaining a copy",
             "the above copyright notice and this permission notice shall be included"]),
    ("Unlicense", ["this is free and unencumbered software released into the public domain"]),
]


def normalised(text: str) -> str:
    """Lower-case words of letters and digits, one space apart: `Version 2.0,` -> `version 2 0`."""
    return " ".join(re.findall(r"[a-z0-9]+", text.lower()))


def spdx_header(payload: bytes) -> str | None:
    """The licence expression of a file's `SPDX-License-Identifier:` line in its first lines, or None."""
    head = b"\n".join(payload.split(b"\n", _HEADER_LINES)[:_HEADER_LINES])
    match = _SPDX_HEADER.search(head)
    if not match:
        return None
    # The tag sits in a comment: drop what closes it (`*/`, `-->`) and quotes around the expression.
    value = match.group(1).decode("utf-8", "replace")
    value = re.split(r"\*/|-->|#}|\"\"\"", value)[0].strip().strip("\"'").strip()
    return value if value and _SPDX_EXPRESSION.match(value) else None


def licence_of_text(text: str) -> str | None:
    """The SPDX identifier of the first known licence text in `text`, or None."""
    words = normalised(text)
    found: list[tuple[int, str]] = []
    for ident, phrases in _TEXTS:
        positions = [words.find(p) for p in phrases]
        if all(p >= 0 for p in positions):
            found.append((positions[0], ident))
    if not found:
        return None
    first = min(pos for pos, _ in found)
    # At one position the earlier entry wins: BSD-3 (with its "neither the name" clause) over BSD-2.
    return next(ident for pos, ident in found if pos == first)


def repository_licence(texts: dict[str, str]) -> str | None:
    """The licence of a repository from its top-level licence files (`{name: text}`); None without any."""
    if not texts:
        return None
    found = sorted({licence_of_text(text) or NOASSERTION for text in texts.values()})
    known = [f for f in found if f != NOASSERTION]
    if not known:
        return NOASSERTION
    return known[0] if len(known) == 1 else " OR ".join(known)
