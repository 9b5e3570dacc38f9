"""A LaTeX source bundle (its text files by path) as one document: the main file with its inputs inlined.

Main file: a `.tex` file with both `\\documentclass` and `\\begin{document}` outside comments and
verbatim text. Where several qualify, the first by this order wins: a file no other file of the bundle
`\\input`s, a class other than `standalone` (a figure compiled on its own), fewest folders deep, the
longest text, then the path in alphabetical order.

The text kept is the body (`\\begin{document}` to the last `\\end{document}`) as LaTeX: comments and
macro definitions removed, user macros expanded, math and verbatim text exactly as written, the
bibliography (a `thebibliography` environment, or the `.bbl` file BibTeX wrote for `\\bibliography`)
kept or dropped as asked.
"""

from __future__ import annotations

import posixpath
import re
from dataclasses import dataclass, field

from llm.config import ArxivOptions
from llm.data.sources.latex_macros import expand_macros, find_definitions, macro_table, remove_definitions
from llm.data.sources.latex_scan import (find_unprotected, protected_spans, read_group, read_optional,
                                         strip_comments, sub_unprotected)

MAIN_SUFFIXES = (".tex", ".ltx", ".latex")
TEXT_SUFFIXES = MAIN_SUFFIXES + (".bbl",)
# Inlined text past this size means inputs that fan out (a file `\input` many times over), not a paper.
MAX_INLINED_CHARS = 64 << 20
MAX_INPUT_DEPTH = 16

_DOCUMENTCLASS = re.compile(r"\\documentclass\s*(?:\[[^\]]*\])?\s*\{([^{}]*)\}")
_BEGIN_DOCUMENT = re.compile(r"\\begin\s*\{document\}")
_END_DOCUMENT = re.compile(r"\\end\s*\{document\}")
_INPUT = re.compile(r"\\(?:input|include)(?![A-Za-z])\s*(?:\{([^{}]*)\}|([^\s{}\\%]+))")
_BEGIN_BIB = re.compile(r"\\begin\s*\{thebibliography\}")
_END_BIB = re.compile(r"\\end\s*\{thebibliography\}")
_BIB_COMMAND = re.compile(r"\\(bibliography|bibliographystyle|printbibliography)(?![A-Za-z])")
_TITLE = re.compile(r"\\title(?![A-Za-z])")
_AUTHOR = re.compile(r"\\author(?![A-Za-z])")
_THANKS = re.compile(r"\\thanks(?![A-Za-z])")
_BEGIN_ABSTRACT = re.compile(r"\\begin\s*\{abstract\}")
_END_ABSTRACT = re.compile(r"\\end\s*\{abstract\}")
_ABSTRACT_COMMAND = re.compile(r"\\abstract(?![A-Za-z])")
_AND = re.compile(r"\\and(?![A-Za-z])")


class BundleError(Exception):
    """A bundle that cannot become a document; the message is the quarantine reason."""


@dataclass
class LatexDocument:
    """The document made of a bundle: its text and what the reader found out about it."""

    text: str
    main_file: str
    meta: dict = field(default_factory=dict)


class _Bundle:
    """The bundle's text files, each with its comments stripped once."""

    def __init__(self, files: dict[str, str]):
        self.files = files
        self._stripped: dict[str, str] = {}

    def stripped(self, name: str) -> str:
        if name not in self._stripped:
            self._stripped[name] = strip_comments(self.files[name])
        return self._stripped[name]

    def resolve(self, target: str, including: str) -> str | None:
        """The file an `\\input{target}` in `including` reads: relative to the bundle's root (where
        LaTeX runs), then to the including file's folder; as named, then with `.tex` added."""
        target = target.strip().strip('"')
        for folder in ("", posixpath.dirname(including)):
            for name in (target + ".tex", target) if not target.endswith(".tex") else (target,):
                path = posixpath.normpath(posixpath.join(folder, name))
                if path in self.files:
                    return path
        return None


def find_main(bundle: _Bundle) -> str:
    """The bundle's main file (module docstring: the rule for ties); `BundleError` when none qualifies."""
    candidates = []
    included = set()
    for name in sorted(bundle.files):
        if not name.endswith(MAIN_SUFFIXES):
            continue
        text = bundle.stripped(name)
        for m in find_unprotected(_INPUT, text):
            found = bundle.resolve(m.group(1) or m.group(2), name)
            if found is not None and found != name:
                included.add(found)
        classes = find_unprotected(_DOCUMENTCLASS, text)
        if classes and find_unprotected(_BEGIN_DOCUMENT, text):
            candidates.append((name, classes[0].group(1).strip()))
    if not candidates:
        tex = sum(name.endswith(MAIN_SUFFIXES) for name in bundle.files)
        raise BundleError(f"no main file: none of the {tex} .tex files has both \\documentclass and "
                          "\\begin{document}")
    ranked = sorted(candidates, key=lambda c: (c[0] in included, c[1] == "standalone", c[0].count("/"),
                                               -len(bundle.files[c[0]]), c[0]))
    return ranked[0][0]


def inline_inputs(bundle: _Bundle, main: str) -> tuple[str, list[str], list[str]]:
    """(text of `main` with every `\\input`/`\\include` replaced by the file it names, recursively;
    the files inlined, in order; the inputs not found or refused). An input of a file that is already
    being inlined (a cycle), or nested deeper than MAX_INPUT_DEPTH, is refused and left out."""
    inlined: list[str] = []
    missing: list[str] = []
    budget = [MAX_INLINED_CHARS]

    def expand(name: str, stack: tuple[str, ...]) -> str:
        def rewrite(m: re.Match, text: str) -> tuple[str, int]:
            target = (m.group(1) or m.group(2)).strip()
            found = bundle.resolve(target, name)
            if found is None or found in stack or len(stack) >= MAX_INPUT_DEPTH:
                missing.append(target if found is None else f"{found} (input cycle or too deep)")
                return "", m.end()
            inlined.append(found)
            return expand(found, stack + (found,)), m.end()

        text = sub_unprotected(_INPUT, rewrite, bundle.stripped(name), math=False)
        budget[0] -= len(text)
        if budget[0] < 0:
            raise BundleError(f"inlined inputs exceed {MAX_INLINED_CHARS} characters")
        return text

    return expand(main, (main,)), inlined, missing


def _drop_environments(text: str, begin: re.Pattern, end: re.Pattern) -> str:
    """`text` without the environments from `begin` to the next `end` (outside verbatim)."""
    out, pos = [], 0
    for m in find_unprotected(begin, text):
        if m.start() < pos:
            continue
        close = end.search(text, m.end())
        if close is None:
            continue
        out.append(text[pos:m.start()])
        pos = close.end()
    out.append(text[pos:])
    return "".join(out)


def apply_bibliography(bundle: _Bundle, main: str, text: str, keep: bool) -> tuple[str, str]:
    """(text, "kept" / "dropped" / "absent"). Kept: each `\\bibliography{names}` is replaced by the
    `.bbl` BibTeX wrote (`names[0].bbl`, or the main file's name with `.bbl`) when the bundle has it.
    Dropped: `thebibliography` environments and the bibliography commands go."""
    stem = posixpath.splitext(main)[0]
    found = [bool(find_unprotected(_BEGIN_BIB, text))]

    def rewrite(m: re.Match, source: str) -> tuple[str, int] | None:
        end = m.end()
        optional = read_optional(source, end) if m.group(1) == "printbibliography" else None
        end = optional[1] if optional else end
        group = read_group(source, end) if m.group(1) != "printbibliography" else None
        end = group[1] if group else end
        bbl = None
        if m.group(1) == "bibliography" and group is not None:
            names = [n.strip() for n in group[0].split(",") if n.strip()]
            bbl = next((p for p in [f"{n}.bbl" for n in names] + [f"{stem}.bbl"] if p in bundle.files), None)
            found[0] = found[0] or bbl is not None
        if keep:
            return (bundle.stripped(bbl), end) if bbl else None
        return "", end

    text = sub_unprotected(_BIB_COMMAND, rewrite, text, math=False)
    if not keep:
        text = _drop_environments(text, _BEGIN_BIB, _END_BIB)
    if not found[0]:
        return text, "absent"
    return text, "kept" if keep else "dropped"


def _clean(fragment: str) -> str:
    return " ".join(fragment.split())


def _first_argument(pattern: re.Pattern, text: str) -> list[str]:
    """The mandatory argument of every use of a command (`\\title[short]{long}` gives `long`)."""
    found = []
    for m in find_unprotected(pattern, text):
        optional = read_optional(text, m.end())
        group = read_group(text, optional[1] if optional else m.end())
        if group is not None:
            found.append(group[0])
    return found


def _without_thanks(author: str) -> str:
    def drop(m: re.Match, text: str) -> tuple[str, int] | None:
        group = read_group(text, m.end())
        return ("", group[1]) if group else None

    return sub_unprotected(_THANKS, drop, author, math=False)


def front_matter(text: str) -> dict:
    """title, authors and abstract as written (LaTeX, white space collapsed), those that are there."""
    meta: dict = {}
    titles = _first_argument(_TITLE, text)
    if titles and _clean(titles[0]):
        meta["title"] = _clean(titles[0])
    authors = [_clean(a) for raw in _first_argument(_AUTHOR, text) for a in _AND.split(_without_thanks(raw))]
    if any(authors):
        meta["authors"] = [a for a in authors if a]
    begins = find_unprotected(_BEGIN_ABSTRACT, text)
    close = _END_ABSTRACT.search(text, begins[0].end()) if begins else None
    if close is not None:
        abstract = text[begins[0].end():close.start()]
    else:  # the \abstract{...} form of some classes
        abstract = next(iter(_first_argument(_ABSTRACT_COMMAND, text)), "")
    if _clean(abstract):
        meta["abstract"] = _clean(abstract)
    return meta


def _tidy(body: str) -> str:
    """Trailing spaces off lines and runs of blank lines down to one (what removing comments and
    definitions leaves behind), outside math and verbatim text, which stay as written."""
    out, pos = [], 0
    for start, end in protected_spans(body) + [(len(body), len(body))]:
        out.append(re.sub(r"\n{3,}", "\n\n", re.sub(r"[ \t]+\n", "\n", body[pos:start])))
        out.append(body[start:end])
        pos = end
    return "".join(out).strip() + "\n"


def assemble(files: dict[str, str], options: ArxivOptions) -> LatexDocument:
    """The document of a bundle of text files (path -> text); `BundleError` when it has no main file."""
    bundle = _Bundle(files)
    main = find_main(bundle)
    full, inlined, missing = inline_inputs(bundle, main)
    full, bibliography = apply_bibliography(bundle, main, full, options.keep_bibliography)
    begins = find_unprotected(_BEGIN_DOCUMENT, full)
    if not begins:  # the main file had one; only a cycle-broken or refused input can take it away
        raise BundleError(f"no \\begin{{document}} left in {main} after inlining its inputs")
    ends = [m for m in find_unprotected(_END_DOCUMENT, full) if m.start() >= begins[0].end()]
    body = full[begins[0].end():ends[-1].start() if ends else len(full)]
    macros = macro_table(find_definitions(full)) if options.expand_macros else {}
    body = expand_macros(remove_definitions(body), macros, options.macro_passes)
    meta = {key: (expand_macros(value, macros, options.macro_passes) if isinstance(value, str)
                  else [expand_macros(v, macros, options.macro_passes) for v in value])
            for key, value in front_matter(full).items()}
    meta.update({"main_file": main, "inputs": inlined, "bibliography": bibliography})
    if missing:
        meta["missing_inputs"] = missing
    return LatexDocument(_tidy(body), main, meta)
