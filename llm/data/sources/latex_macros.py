"""User macros of a LaTeX document: their definitions, and their expansion in the body.

Understood: `\\newcommand`, `\\renewcommand`, `\\providecommand`, `\\DeclareRobustCommand` (starred or
not) with up to nine arguments and an optional default for the first, and `\\def`/`\\gdef`/`\\edef`
without parameters or with plain `#1#2...` parameters. Anything else (`\\let`, delimited `\\def`
parameters, names with `@`) is left alone, and so is every macro not defined in the document.
Expansion is a bounded number of passes, so a macro that expands to itself stops instead of looping,
and it never rewrites math or verbatim text.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from llm.data.sources.latex_scan import (find_unprotected, read_argument, read_group, read_optional, skip_space,
                                         sub_unprotected)

_NEWCOMMAND = re.compile(r"\\(newcommand|renewcommand|providecommand|DeclareRobustCommand)\*?(?![A-Za-z])")
_DEF = re.compile(r"\\[gex]?def\s*\\([A-Za-z]+)((?:#[1-9])*)\s*(?=\{)")
_CONTROL_WORD = re.compile(r"\\([A-Za-z]+)(?![A-Za-z])")
# A use of a macro, or a control symbol (`\\\\`, `\\%`) matched only so that the letters after it are
# not taken for a macro name (`\\\\where` is a line break, then the word "where").
_CONTROL_SEQUENCE = re.compile(r"\\(?:([A-Za-z]+)(?![A-Za-z])|.)", re.S)
_PARAM = re.compile(r"##|#([1-9])")
_ENDS_IN_CONTROL_WORD = re.compile(r"\\[A-Za-z]+$")
# Expansion stops once the text has grown past this factor of its size before (a macro that expands
# to several copies of itself would otherwise double the text with each pass).
_MAX_GROWTH = 4


@dataclass(frozen=True)
class Macro:
    """A user macro: how many arguments it takes, the default of an optional first one, its body."""

    nargs: int
    default: str | None
    body: str


@dataclass(frozen=True)
class Definition:
    """One definition found in the text, with the span it takes there."""

    name: str
    macro: Macro
    start: int
    end: int
    overrides: bool  # False for \providecommand: an earlier definition wins


def _newcommand(m: re.Match, text: str) -> Definition | None:
    i = skip_space(text, m.end())
    name_group = read_group(text, i)
    if name_group is not None:
        name, i = name_group[0].strip(), name_group[1]
    else:
        word = _CONTROL_WORD.match(text, i)
        if word is None:
            return None
        name, i = word.group(), word.end()
    if not re.fullmatch(r"\\[A-Za-z]+", name):
        return None
    nargs, default = 0, None
    count = read_optional(text, i)
    if count is not None:
        if not count[0].strip().isdigit() or not 0 <= int(count[0]) <= 9:
            return None
        nargs, i = int(count[0]), count[1]
        optional = read_optional(text, i)
        if optional is not None and nargs:
            default, i = optional
    body = read_group(text, i)
    if body is None:
        return None
    macro = Macro(nargs, default, body[0])
    return Definition(name[1:], macro, m.start(), body[1], m.group(1) != "providecommand")


def _def(m: re.Match, text: str) -> Definition | None:
    params = m.group(2)
    numbers = [int(c) for c in params[1::2]]
    if numbers != list(range(1, len(numbers) + 1)):  # #1#3, say: not a plain parameter list
        return None
    body = read_group(text, m.end())
    if body is None:
        return None
    return Definition(m.group(1), Macro(len(numbers), None, body[0]), m.start(), body[1], True)


def find_definitions(text: str) -> list[Definition]:
    """The macro definitions of `text` outside verbatim regions, in text order."""
    found = [d for m in find_unprotected(_NEWCOMMAND, text) if (d := _newcommand(m, text))]
    found += [d for m in find_unprotected(_DEF, text) if (d := _def(m, text))]
    return sorted(found, key=lambda d: d.start)


def macro_table(definitions: list[Definition]) -> dict[str, Macro]:
    """Name -> macro, a later definition replacing an earlier one (\\providecommand never replaces)."""
    table: dict[str, Macro] = {}
    for d in definitions:
        if d.overrides or d.name not in table:
            table[d.name] = d.macro
    return table


def remove_definitions(text: str) -> str:
    """`text` without its macro definitions (they are markup, not content)."""
    spans = [(d.start, d.end) for d in find_definitions(text)]
    out, pos = [], 0
    for start, end in spans:
        if start >= pos:
            out.append(text[pos:start])
            pos = end
    out.append(text[pos:])
    return "".join(out)


def _substitute(body: str, args: list[str]) -> str:
    def one(m: re.Match) -> str:
        if m.group() == "##":
            return "#"
        k = int(m.group(1))
        return args[k - 1] if k <= len(args) else m.group()

    return _PARAM.sub(one, body)


def _call(macros: dict[str, Macro]):
    """The rewrite of one use of a known macro: its body with the arguments put in; None (left as it
    is) for an unknown macro or one whose arguments are not all there."""

    def rewrite(m: re.Match, text: str) -> tuple[str, int] | None:
        macro = macros.get(m.group(1)) if m.group(1) else None
        if macro is None:
            return None
        args, i = [], m.end()
        if macro.default is not None:
            optional = read_optional(text, i)
            if optional is None:
                args.append(macro.default)
            else:
                args.append(optional[0])
                i = optional[1]
        while len(args) < macro.nargs:
            arg = read_argument(text, i)
            if arg is None:
                return None
            args.append(arg[0])
            i = arg[1]
        expansion = _substitute(macro.body, args)
        # `\LARGE\name` must not become `\LARGEName`: a space keeps the control word before it whole.
        if expansion[:1].isalpha() and _ENDS_IN_CONTROL_WORD.search(text, max(0, m.start() - 64), m.start()):
            expansion = " " + expansion
        return expansion, i if macro.nargs else m.end()

    return rewrite


def expand_macros(text: str, macros: dict[str, Macro], passes: int) -> str:
    """`text` with the uses of `macros` outside math and verbatim replaced by their bodies, over at most
    `passes` passes (a body that uses another macro needs a second pass). Unknown macros stay."""
    if not macros:
        return text
    limit = _MAX_GROWTH * len(text) + 4096
    rewrite = _call(macros)
    for _ in range(passes):
        expanded = sub_unprotected(_CONTROL_SEQUENCE, rewrite, text)
        if expanded == text or len(expanded) > limit:
            break
        text = expanded
    return text
