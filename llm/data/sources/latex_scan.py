"""Lexical pieces of LaTeX that the arXiv reader needs: comments, protected regions, arguments.

Nothing here typesets LaTeX. The reader rewrites source text (inlining inputs, expanding macros,
dropping the bibliography) and must never rewrite what LaTeX itself treats as literal: verbatim
environments and `\\verb`, and math, which is kept exactly as written. `protected_spans` finds those
regions; `sub_unprotected` applies a rewrite everywhere else.
"""

from __future__ import annotations

import bisect
import re
from typing import Callable

# Environments whose body LaTeX reads as literal characters: `%` there is not a comment.
VERBATIM_ENVS = frozenset({"verbatim", "verbatim*", "Verbatim", "Verbatim*", "BVerbatim", "LVerbatim",
                           "lstlisting", "minted", "alltt"})
# The `comment` package's environment: its body is not part of the document at all.
DROPPED_ENVS = frozenset({"comment"})
MATH_ENVS = frozenset(name + star for name in ("equation", "align", "alignat", "flalign", "gather", "multline",
                                               "eqnarray", "displaymath", "math", "dmath")
                      for star in ("", "*"))

_COMMENT_SCAN = re.compile(r"\\begin\s*\{([^{}]*)\}|\\verb\*?(?![A-Za-z])|\\.|%", re.S)
_REGION_SCAN = re.compile(r"\\begin\s*\{([^{}]*)\}|\\verb\*?(?![A-Za-z])|\\\[|\\\(|\\.|\$\$|\$", re.S)
_ESCAPE_OR_DOLLAR = re.compile(r"\\.|\$", re.S)


def _verb_end(text: str, start: int) -> int | None:
    """End of a `\\verb<d>...<d>` whose delimiter is at `start`; None when it is not closed on its line."""
    if start >= len(text) or text[start].isspace():
        return None
    close = text.find(text[start], start + 1)
    if close == -1 or "\n" in text[start:close]:
        return None
    return close + 1


def _env_end(text: str, name: str, start: int) -> int | None:
    close = text.find(f"\\end{{{name}}}", start)
    return None if close == -1 else close + len(name) + 6


def strip_comments(text: str) -> str:
    """`text` without comments: from an unescaped `%` to the end of its line (`\\%` stays; `%` inside
    verbatim environments and `\\verb` stays). A line that holds only a comment goes, line end and all;
    `comment` environments go whole."""
    out: list[str] = []
    pos = scan = 0
    while (m := _COMMENT_SCAN.search(text, scan)) is not None:
        token = m.group()
        scan = m.end()
        if token == "%":
            line_start = text.rfind("\n", 0, m.start()) + 1
            whole_line = not text[line_start:m.start()].strip()
            out.append(text[pos:m.start()].rstrip(" \t"))
            end = text.find("\n", m.end())
            end = len(text) if end == -1 else end + (1 if whole_line else 0)
            pos = scan = end
        elif m.group(1) is not None and m.group(1) in VERBATIM_ENVS | DROPPED_ENVS:
            end = _env_end(text, m.group(1), m.end())
            end = len(text) if end is None else end
            if m.group(1) in DROPPED_ENVS:
                out.append(text[pos:m.start()])
                pos = end
            scan = end
        elif token.startswith("\\verb"):
            scan = _verb_end(text, m.end()) or m.end()
    out.append(text[pos:])
    return "".join(out)


def protected_spans(text: str, math: bool = True) -> list[tuple[int, int]]:
    """(start, end) of the verbatim regions of `text` and, with `math`, of its math (`$...$`,
    `$$...$$`, `\\(...\\)`, `\\[...\\]` and the math environments), in order. An opener without its
    closer protects nothing."""
    spans: list[tuple[int, int]] = []
    scan = 0
    while (m := _REGION_SCAN.search(text, scan)) is not None:
        token, env, end = m.group(), m.group(1), None
        if env is not None:
            if env in VERBATIM_ENVS or env in DROPPED_ENVS or (math and env in MATH_ENVS):
                end = _env_end(text, env, m.end())
        elif token.startswith("\\verb"):
            end = _verb_end(text, m.end())
        elif math and token in ("\\[", "\\("):
            close = text.find("\\]" if token == "\\[" else "\\)", m.end())
            end = None if close == -1 else close + 2
        elif math and token == "$$":
            close = text.find("$$", m.end())
            end = None if close == -1 else close + 2
        elif math and token == "$":
            end = _dollar_end(text, m.end())
        if end is None:
            scan = m.end()
        else:
            spans.append((m.start(), end))
            scan = end
    return spans


def _dollar_end(text: str, start: int) -> int | None:
    """End of inline math opened by a `$` just before `start`: the next unescaped `$`; a paragraph
    break first means the `$` was not math (TeX refuses a blank line inside inline math)."""
    scan = start
    while (m := _ESCAPE_OR_DOLLAR.search(text, scan)) is not None:
        if m.group() == "$":
            return None if "\n\n" in text[start:m.start()] else m.end()
        scan = m.end()
    return None


class Spans:
    """Membership test for positions in a sorted list of non-overlapping spans."""

    def __init__(self, spans: list[tuple[int, int]]):
        self.starts = [s for s, _ in spans]
        self.spans = spans

    def __contains__(self, pos: int) -> bool:
        i = bisect.bisect_right(self.starts, pos) - 1
        return i >= 0 and pos < self.spans[i][1]


# (match, text) -> (replacement, end of the replaced text) or None to leave the match as it is.
Rewrite = Callable[[re.Match, str], "tuple[str, int] | None"]


def sub_unprotected(pattern: re.Pattern, rewrite: Rewrite, text: str, math: bool = True) -> str:
    """`text` with every match of `pattern` that starts outside a protected region rewritten. A rewrite
    may consume text past its match (a command's arguments), which is then not searched again."""
    protected = Spans(protected_spans(text, math))
    out: list[str] = []
    pos = scan = 0
    while (m := pattern.search(text, scan)) is not None:
        scan = m.end() if m.end() > m.start() else m.end() + 1
        if m.start() < pos or m.start() in protected:
            continue
        done = rewrite(m, text)
        if done is not None:
            out.append(text[pos:m.start()])
            out.append(done[0])
            pos = scan = max(done[1], m.end())
    out.append(text[pos:])
    return "".join(out)


def find_unprotected(pattern: re.Pattern, text: str, math: bool = False) -> list[re.Match]:
    """Matches of `pattern` that start outside verbatim (and, with `math`, math) regions."""
    protected = Spans(protected_spans(text, math))
    return [m for m in pattern.finditer(text) if m.start() not in protected]


def skip_space(text: str, i: int) -> int:
    """The first position at or after `i` that is not a space, tab or single line end."""
    while i < len(text) and text[i] in " \t\n" and not text.startswith("\n\n", i):
        i += 1
    return i


def read_group(text: str, i: int, open_: str = "{", close: str = "}") -> tuple[str, int] | None:
    """(content, end) of the balanced group opening at `i` (after spaces); None when there is none or it
    is not closed. Escaped braces (`\\{`) do not count."""
    i = skip_space(text, i)
    if i >= len(text) or text[i] != open_:
        return None
    depth, j = 0, i
    while j < len(text):
        c = text[j]
        if c == "\\":
            j += 2
            continue
        if c == "{":
            depth += 1
        elif c == "}":
            depth -= 1
        if c == close and depth == 0:
            return text[i + 1:j], j + 1
        if depth < 0:
            return None
        j += 1
    return None


def read_optional(text: str, i: int) -> tuple[str, int] | None:
    """(content, end) of a `[...]` argument at `i` (after spaces), braces inside it balanced; else None."""
    return read_group(text, i, "[", "]")


_TOKEN = re.compile(r"\\[A-Za-z@]+|\\.|[^\s{}]", re.S)


def read_argument(text: str, i: int) -> tuple[str, int] | None:
    """(content, end) of one mandatory argument at `i`: a braced group, or else a single token (a
    control sequence or a character), as TeX reads an undelimited argument."""
    group = read_group(text, i)
    if group is not None:
        return group
    j = skip_space(text, i)
    m = _TOKEN.match(text, j)
    return (m.group(), m.end()) if m else None
