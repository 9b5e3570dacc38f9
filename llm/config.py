"""Pipeline configuration: one pydantic model per stage, loaded from YAML with dotted overrides.

The same models are the Prefect flow parameters, so every field carries a description that doubles
as CLI help and as the label of the form field in the Prefect UI. Unknown keys and out-of-range values
fail at load time with the dotted path of the offending field (`ConfigError`).
"""

from __future__ import annotations

import functools
import hashlib
import json
import re
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field, PlainSerializer, SecretStr,
                      ValidationError, model_validator)

from llm.errors import UserError


class ConfigError(UserError):
    """A configuration problem a user can fix; the message names the field and the file."""


class Section(BaseModel):
    """Base of every config section: unknown keys are errors, assignments are re-validated, and numbers
    must be finite (`.inf` or `.nan` as a timeout or a threshold is a mistake, not a setting)."""

    # defer_build: a model's validator is built when it is first used, not at import; a process that
    # uses three sections (a stage's worker) does not pay ~0.1 s building all forty.
    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False, defer_build=True)


def _path_safe(name: str) -> str:
    if name in (".", ".."):
        raise ValueError(f"{name!r} is not a name (it would be a path to a folder)")
    return name


# A name that becomes part of file names, ids or URIs: one path segment of these characters, never
# `.` or `..`, so it cannot point outside the work directory.
PathSafeName = Annotated[str, Field(pattern=r"^[A-Za-z0-9._-]+$", max_length=64), AfterValidator(_path_safe)]


# A secret config value: kept as a SecretStr (its repr and str are masked), and written out, in JSON
# form, as a fingerprint: stage identities change when the key does, and nothing that prints, logs or
# stores a config (MLflow parameters, Prefect parameters, manifests) can reveal it. A fingerprint or a
# masked value read back (a Prefect run's stored parameters) counts as not given.
_SECRET_PLACEHOLDER = re.compile(r"^(?:secret:[0-9a-f]{16}|\*+|<redacted>)$")


@functools.lru_cache(maxsize=16)
def secret_fingerprint(value: str) -> str:
    """`secret:` and 16 hex digits of a slow salted digest of `value`: tells keys apart, and makes
    testing guesses of a weak, human-chosen key from its fingerprint expensive (~0.1 s a guess)."""
    digest = hashlib.pbkdf2_hmac("sha256", value.encode("utf-8", "surrogatepass"), b"llmpipe-secret-fingerprint",
                                 200_000, dklen=8)
    return "secret:" + digest.hex()


def _read_secret(value: Any) -> Any:
    raw = value.get_secret_value() if isinstance(value, SecretStr) else value
    if raw is None or (isinstance(raw, str) and (not raw or _SECRET_PLACEHOLDER.match(raw))):
        return None
    return value


def _write_secret(value: SecretStr | None) -> str | None:
    return None if value is None else secret_fingerprint(value.get_secret_value())


SecretKey = Annotated[SecretStr | None, BeforeValidator(_read_secret),
                      PlainSerializer(_write_secret, when_used="json")]


# --------------------------------------------------------------------------------------------- data


class CrawlConfig(Section):
    """The built-in web crawler. Same host only, robots.txt honoured, everything written as WARC."""

    start_url: str | None = Field(
        None,
        description="Root page to crawl. Empty: start a local `pydoc` documentation server and crawl "
        "it (the demo corpus, nothing downloaded).",
    )
    max_pages: int = Field(150, ge=1, description="Stop after this many successful HTML responses.")
    concurrency: int = Field(4, ge=1, le=64, description="Requests in flight at once.")
    rate_limit_per_s: float = Field(50.0, gt=0, description="Upper bound on requests started per second.")
    timeout_s: float = Field(10.0, gt=0, description="Per-request timeout in seconds.")
    retries: int = Field(2, ge=0, le=10, description="Retries for a failed request (connection error or 5xx).")
    backoff_s: float = Field(0.2, ge=0, description="First retry delay; doubles with each retry.")
    user_agent: str = Field("llmpipe-crawler/0.1", description="User-Agent header and robots.txt agent.")
    records_per_warc: int = Field(
        50, ge=1, description="Responses per WARC file; each file becomes one shard of the ingest pass."
    )


class ArxivOptions(Section):
    """`arxiv` sources: LaTeX source bundles (a `.tar.gz`, a gzipped `.tex` or a plain `.tex`), each one
    document made of its main file with its inputs inlined."""

    keep_bibliography: bool = Field(
        False, description="Keep the bibliography: `thebibliography` environments and, for `\\bibliography`, "
        "the bundle's `.bbl` file inlined. Off: both are dropped (reference lists are repetitive, not prose)."
    )
    read_pdf: bool = Field(
        False, description="Read a file that is a PDF (not LaTeX source; `.pdf`, or gzipped) by its text layer; "
        "needs the `pypdf` package (`llmpipe[pdf]`). A PDF pypdf could only read by repairing it, or with no text "
        "layer, is quarantined with the reason. Off: every PDF is quarantined as not read."
    )
    expand_macros: bool = Field(
        True, description="Replace uses of the document's own macros (`\\newcommand`, `\\def`, with up to 9 "
        "arguments) by their definitions; math and verbatim text are never touched."
    )
    macro_passes: int = Field(
        3, ge=1, le=20, description="Expansion passes: a macro whose definition uses another needs two; the bound "
        "stops a macro that expands to itself."
    )


class GutenbergOptions(Section):
    """`gutenberg` sources: Project Gutenberg plain-text e-books (`*.txt`) and EPUB files (`*.epub`)."""

    strip_boilerplate: bool = Field(
        True, description="Cut the Project Gutenberg header, footer and licence text at their start and end "
        "markers (every era's forms); the book's own text is what is kept."
    )
    max_strip_share: float = Field(
        0.3, gt=0, le=1, description="Guard against markers found in the wrong place: where stripping would "
        "remove more than this share of a book's characters, the book is kept whole and `meta.boilerplate` "
        "says `kept_overcut`. Raise it for corpora of very short texts, whose licence alone is a large share."
    )
    default_encoding: Literal["latin-1", "cp1252"] = Field(
        "latin-1", description="Encoding of a plain-text file that has no byte-order mark, declares no usable "
        "`Character set encoding:` and is not valid UTF-8 (bytes 0x80-0x9F then read as cp1252 either way)."
    )


class GitOptions(Section):
    """`git` sources: which commit of the repository is read, where a URL is cloned, and the thresholds
    of The Stack (BigCode) that leave out files which are not hand-written code."""

    ref: str = Field("HEAD", min_length=1, description="Branch, tag or commit whose files are read (resolved to "
                     "one commit when the run is planned; the commit is stored on every document).")
    clone_dir: str | None = Field(
        None, description="Local folder that keeps bare clones of repositories given as URLs, updated with a "
        "fetch on every run. Empty: `llmpipe-git` under the system temp folder."
    )
    max_file_bytes: int = Field(1 << 20, ge=1, description="Larger files are dropped (`file_too_large`), "
                                "as The Stack drops files over 1 MB.")
    max_line_length: int = Field(1000, ge=1, description="A file with a longer line is dropped (`max_line_length`).")
    max_mean_line_length: float = Field(100.0, gt=0, description="A file whose mean line length is above this "
                                        "is dropped (`mean_line_length`).")
    min_alnum_fraction: float = Field(0.25, ge=0, le=1, description="A file with a smaller share of letters "
                                      "and digits among its characters is dropped (`alnum_fraction`).")
    if_missing: Literal["error", "skip"] = Field(
        "error", description="A local `uri` that does not exist or is not a git repository (a project unpacked "
        "from an archive, without `.git`): `error` stops the run; `skip` leaves the source out with one warning "
        "and records why under the ingest manifest's `sources`. Refs, damaged repositories and clone failures "
        "are errors either way."
    )


class CommonCrawlOptions(Section):
    """`commoncrawl` sources: the WARC or WET files of a Common Crawl dump (or of a paths listing), or
    single WARC records named by CDX index records, read with ranged GETs rather than downloaded whole."""

    prefix: str = Field("s3://commoncrawl/", description="Where the crawl's `crawl-data/...` files lie: an "
                        "s3:// bucket (or prefix) or a local folder; listed paths are relative to it.")
    dump: str | None = Field(None, description="Dump to read, e.g. `CC-MAIN-2025-33`: its listing "
                             "`crawl-data/<dump>/<kind>.paths.gz` under `prefix` names the files.")
    paths: str | None = Field(None, description="A `warc.paths` / `wet.paths` listing (gzipped or not; local or "
                              "s3://) naming the files instead of a dump's; one path relative to `prefix` a line.")
    cdx: str | None = Field(None, description="A JSONL file of CDX index records (`filename`, `offset`, "
                            "`length`): each record is read alone by its byte range, instead of whole files.")
    kind: Literal["warc", "wet"] = Field("warc", description="`warc`: HTTP responses, HTML left to the extract "
                                         "step. `wet`: Common Crawl's extracted plain text (`conversion` records).")
    chunk_bytes: int = Field(8 << 20, ge=1 << 16, description="Bytes fetched by one ranged read: files are "
                             "streamed in chunks of this size, never downloaded whole.")


class FeedOptions(Section):
    """`feed` sources: `uri` is an RSS 2.0 / RSS 1.0 (RDF) / Atom / JSON Feed URL or a folder (or file) of
    feeds; entries are followed to their article pages with the crawler's fetcher, and only new entries
    are fetched."""

    store_dir: str | None = Field(
        None, description="Folder of the captured pages and per-feed state (ETag, Last-Modified, seen entry "
        "ids). Empty: `raw/feeds/<source name>` under the work dir, beside the crawl."
    )
    fallback_to_content: bool = Field(
        True, description="When an entry's page cannot be fetched, use the entry's own content or summary "
        "HTML (`meta.body` says `entry_content`). Off, or with none: the entry is quarantined with the reason."
    )
    url_rewrites: dict[str, str] = Field(
        default_factory=dict, description="URL prefix -> replacement applied to entry links before fetching "
        "(a mirror of the site); `meta.entry_link` and the document URL keep the link as the feed gives it."
    )
    rate_limit_per_s: float = Field(5.0, gt=0, description="Upper bound on page requests started per second.")
    timeout_s: float = Field(10.0, gt=0, description="Per-request timeout in seconds (feed and pages).")
    user_agent: str = Field("llmpipe-crawler/0.1", description="User-Agent header and robots.txt agent.")


class SourceConfig(Section):
    """One input of the ingest pass. Every source is read only through its reader."""

    kind: Literal["warc", "code", "jsonl", "parquet", "crawl", "arxiv", "gutenberg", "git",
                  "commoncrawl", "feed"] = Field(
        description="Reader to use. `crawl` reads the WARC files written by the crawl stage."
    )
    name: PathSafeName = Field(
        description="Source label stored on every document (`web`, `code`, `books`, ...): letters, digits, "
        "`.`, `_` and `-` (it prefixes shard names and document ids).",
    )
    uri: str | None = Field(
        None,
        description="File or folder URI (local path or s3://). Empty for `code` means the Python "
        "standard library's own source folder; not used for `crawl`.",
    )
    glob: str | None = Field(
        None, description="File pattern inside a folder, e.g. `*.warc.gz`. Default depends on `kind`."
    )
    text_field: str = Field("text", description="JSONL/Parquet: column holding the document text.")
    id_field: str | None = Field(None, description="JSONL/Parquet: column holding an id to keep in `meta`.")
    max_files: int | None = Field(None, ge=1, description="Read at most this many files (sorted by path).")
    files_per_shard: int = Field(
        64, ge=1, description="`code`: source files grouped into one ingest shard."
    )
    arxiv: ArxivOptions = Field(default_factory=ArxivOptions, description="`arxiv`: how LaTeX bundles are read.")
    gutenberg: GutenbergOptions = Field(
        default_factory=GutenbergOptions, description="`gutenberg`: boilerplate stripping and encoding options."
    )
    git: GitOptions = Field(default_factory=GitOptions, description="`git`: `uri` is a repository (a folder "
                            "with `.git`, a bare repository, or a URL `git clone` accepts); `glob` picks paths "
                            "and `files_per_shard` groups its files into shards.")
    commoncrawl: CommonCrawlOptions = Field(
        default_factory=CommonCrawlOptions, description="`commoncrawl`: which dump, listing or CDX records are "
        "read, and how; `max_files` bounds the files taken from the listing, in its order."
    )
    feed: FeedOptions = Field(default_factory=FeedOptions, description="`feed`: where captures and feed "
                              "state are kept, fallback to entry content, link rewrites, politeness.")


class ExtractConfig(Section):
    """HTML to text extraction with per-document limits on CPU time and elapsed time.

    The default `auto` runs a fast main-content pass (resiliparse, C++) on every page and trafilatura
    only where that pass is unsure of the main content: most of a page's visible text left out, or
    little text kept. On the development pages it matches trafilatura's quality at several times the
    speed (bench/README.md)."""

    extractor: Literal["auto", "trafilatura", "resiliparse"] = Field(
        "auto", description="`auto`: the fast pass, then trafilatura where it is unsure (`min_main_share`, "
        "`min_main_words`); `trafilatura` or `resiliparse`: that extractor on every page. The one used is "
        "recorded per document in the `extractor` column."
    )
    min_main_share: float = Field(
        0.5, ge=0, le=1, description="`auto`: a page whose fast main-content pass kept less than this share of "
        "its visible words is mostly boilerplate, where the main-content guess matters: trafilatura extracts it."
    )
    min_main_words: int = Field(
        50, ge=0, description="`auto`: a page whose fast pass kept fewer words than this goes to trafilatura too."
    )

    cpu_limit_s: float = Field(
        60.0, gt=0, description="A document whose extraction uses more CPU time than this is quarantined. CPU "
        "time does not grow when the machine is busy, so the verdict is the same under any load; real pages "
        "need under 1 s, a page of `max_html_bytes` about 10 s."
    )
    wall_limit_s: float = Field(
        600.0, gt=0, description="Backstop for a document that stalls without computing: extraction taking "
        "longer than this in elapsed time is quarantined. Keep it far above `cpu_limit_s`, so load never decides."
    )
    include_tables: bool = Field(True, description="Keep table text.")
    include_comments: bool = Field(
        False, description="Keep the text of a page's comment section (readers' comments below an article); "
        "off by default: comments are short, repetitive and often spam."
    )
    favor_precision: bool = Field(
        True, description="trafilatura: prefer precision of the main-content guess over keeping text, as "
        "FineWeb extracts; on the development pages it scores higher on both docs and news pages than "
        "`favor_recall`."
    )
    favor_recall: bool = Field(False, description="trafilatura: prefer keeping text over precision (when "
                               "`favor_precision` is off).")
    max_html_bytes: int = Field(5_000_000, ge=1024, description="Larger responses are dropped before parsing.")


class NormalizeConfig(Section):
    """Text normalization: Unicode form, control characters, line endings, whitespace."""

    unicode_form: Literal["NFC", "NFKC", "none"] = Field("NFC", description="Unicode normalization form.")
    min_chars: int = Field(1, ge=0, description="Documents shorter than this after normalization are dropped.")
    max_blank_lines: int = Field(2, ge=1, description="Runs of blank lines are capped at this many.")


class ExactDedupConfig(Section):
    """Exact deduplication on a hash of the normalized text."""

    enabled: bool = Field(True, description="Turn the stage off to keep exact duplicates.")
    num_buckets: int | None = Field(
        None, ge=1, le=4096, description="Hash-range buckets; bounds the memory of each grouping task. "
        "Empty: one per million documents."
    )


class MinHashConfig(Section):
    """MinHash near-duplicate removal: shingles, LSH banding, verification and clustering without chaining."""

    enabled: bool = Field(True, description="Turn the stage off to pass every document through.")
    url_dedup: bool = Field(
        True, description="First drop documents whose normalized URL repeats an earlier document's (cheap)."
    )
    shingle: Literal["word", "char"] = Field(
        "word", description="Shingle unit: words (CJK/Thai split per character) or characters."
    )
    ngram: int = Field(5, ge=1, le=64, description="Shingle size in units (words or characters).")
    bands: int = Field(14, ge=1, le=512, description="LSH bands (ignored when `auto_bands` is on).")
    rows: int = Field(8, ge=1, le=64, description="Signature values per band (ignored when `auto_bands` is on).")
    auto_bands: bool = Field(
        False, description="Choose bands x rows from `threshold` and the error weights, within `num_perm`."
    )
    num_perm: int = Field(112, ge=1, le=2048, description="`auto_bands`: signature length to fit bands x rows in.")
    fp_weight: float = Field(0.5, ge=0, description="`auto_bands`: relative cost of a false candidate.")
    fn_weight: float = Field(0.5, ge=0, description="`auto_bands`: relative cost of a missed duplicate.")
    threshold: float = Field(
        0.8, gt=0, le=1, description="Jaccard similarity at or above which a document is a near-duplicate."
    )
    verify: Literal["exact", "estimate", "none"] = Field(
        "exact",
        description="Check candidate pairs against `threshold`: exact Jaccard of the shingle sets, the "
        "signature estimate, or not at all (every band collision counts).",
    )
    keeper: Literal["oldest", "longest", "quality", "first"] = Field(
        "oldest",
        description="Which document of a cluster is kept: oldest `created`, longest text, highest "
        "`quality_column`, or first in input order (always the tie-breaker).",
    )
    quality_column: str = Field("quality_score", description="`keeper: quality`: numeric column to maximise.")
    star_width: int = Field(
        16, ge=1, le=1024,
        description="Each member of a band collision group is paired with this many best-ranked members "
        "(all pairs for smaller groups); bounds pairs from huge groups of copies.",
    )
    memory_mb: int = Field(
        256, ge=1, description="Memory budget of each task in MiB: sets signature chunking and the number "
        "of band-hash buckets and graph partitions.",
    )
    min_buckets: int = Field(4, ge=1, le=65536, description="Fewest band-hash buckets (and graph partitions).")
    seed: int = Field(1, description="Seed of the MinHash permutation family.")
    index_uri: str | None = Field(
        None, description="Output URI of an earlier run whose signature index new documents are also "
        "checked against (its documents stay; incremental refresh).",
    )


class ShardConfig(Section):
    """Final Parquet sharding of the cleaned corpus."""

    target_bytes: int = Field(
        8 * 1024 * 1024, ge=1024, description="Approximate uncompressed text bytes per output shard."
    )
    row_group_rows: int = Field(1024, ge=1, description="Parquet row-group size.")
    compression: Literal["zstd", "snappy", "none"] = Field("zstd", description="Parquet compression codec.")


#: Role and end-of-turn markers of the default chat template, trained into the tokenizer as single pieces.
CHAT_SPECIAL_TOKENS = ("<|system|>", "<|user|>", "<|assistant|>", "<|end|>")

#: Model types each `tokenizer.library` trains.
TOKENIZER_MODEL_TYPES = {"sentencepiece": ("bpe", "unigram", "char"), "hf": ("bpe", "wordpiece", "unigram")}
#: The text the trainers give each role: `<s>`-style, and BERT's for hf wordpiece (which also adds [MASK]).
#: One table for every trainer and loader (`llm.tokenizer.spm`, `llm.tokenizer.hf`).
ROLE_TEXTS = {"angle": {"pad": "<pad>", "unk": "<unk>", "bos": "<s>", "eos": "</s>"},
              "bert": {"pad": "[PAD]", "unk": "[UNK]", "bos": "[CLS]", "eos": "[SEP]"}}
#: The roles' default ids (`tokenizer.pad_id` ... `eos_id`).
DEFAULT_SPECIAL_IDS = {"pad": 0, "unk": 1, "bos": 2, "eos": 3}
_Token = Annotated[str, Field(min_length=1, max_length=64)]


_SAMPLE_KEY = re.compile(r"(?:[A-Za-z0-9._-]+|\*/[^/\s]+|[A-Za-z0-9._-]+/[^/\s]+)")


class TokenizerConfig(Section):
    """Tokenizer training on a sample of the shards, with SentencePiece or Hugging Face tokenizers."""

    library: Literal["sentencepiece", "hf"] = Field(
        "sentencepiece", description="Library that trains the tokenizer: `sentencepiece` (a .model proto) or `hf`, "
        "Hugging Face tokenizers (a tokenizer.json).")
    vocab_size: int = Field(4096, ge=64, le=1_000_000, description="Vocabulary size, special tokens included.")
    model_type: Literal["bpe", "unigram", "char", "wordpiece"] = Field(
        "bpe", description="sentencepiece: bpe | unigram | char. hf: bpe (byte-level, GPT-2 style: every text "
        "encodes, no unknowns) | wordpiece (BERT style: [PAD] [UNK] [CLS] [SEP] [MASK], `##` continuations) | "
        "unigram.")
    sample_bytes: int = Field(
        20_000_000, ge=1000, description="Text bytes sampled from the shards for training."
    )
    character_coverage: float = Field(0.9995, gt=0, le=1, description="Share of characters covered (sentencepiece).")
    byte_fallback: bool = Field(True, description="Unknown characters become byte tokens, never <unk> (sentencepiece).")
    max_sentence_length: int = Field(16384, ge=64, description="Longer training lines are split (sentencepiece).")
    num_threads: int = Field(
        1, ge=0, description="Threads SentencePiece trains with; above 1 the training task asks the executor "
        "for that many CPUs (capped at the largest node's). 0: every CPU the training task has (a Ray task "
        "holds one; in-process, the CPUs this process may run on). The model file records the count, so its "
        "sha256 follows it (1 by default: the same bytes on every machine); BPE's vocabulary does not.")
    sample_weights: dict[str, Annotated[float, Field(ge=0, le=1)]] = Field(
        default_factory=dict,
        description="Share of `sample_bytes` per stratum, by key: `<source>` (all its languages), "
        "`<source>/<lang>`, or `*/<lang>` (that language in every source); a document counts under the most "
        "specific key that matches it. `lang` is the language-ID column, `unknown` where a document has none. "
        "Shares sum to at most 1; unlisted strata split the rest by their bytes (their natural share), and "
        "when every stratum is listed the shares are scaled to sum to 1. 0 leaves a stratum out; a stratum "
        "smaller than its share is taken whole. Empty: every document has the same chance.",
    )
    input_sentence_size: int = Field(
        0, ge=0, description="Most sentences (lines of the sampled documents) SentencePiece loads; 0: all, "
        "else above 100 (SentencePiece's minimum).")
    shuffle_input_sentence: bool = Field(
        False, description="With `input_sentence_size`, load a random choice of the sample's lines (seeded "
        "by `seed`) rather than the first ones.")
    seed: int = Field(0, description="Seed for sampling and training.")
    pad_id: int = Field(DEFAULT_SPECIAL_IDS["pad"], ge=0, description="Id of the padding token (<pad>, wordpiece [PAD]).")
    unk_id: int = Field(DEFAULT_SPECIAL_IDS["unk"], ge=0, description="Id of the unknown token (<unk>, wordpiece [UNK]).")
    bos_id: int = Field(DEFAULT_SPECIAL_IDS["bos"], ge=0, description="Id of the begin-of-document token (<s>, wordpiece [CLS]).")
    eos_id: int = Field(DEFAULT_SPECIAL_IDS["eos"], ge=0, description="Id of the end-of-document token (</s>, wordpiece [SEP]).")
    card_bytes: int = Field(
        2_000_000, ge=0, description="About how many text bytes of documents outside the training sample the "
        "tokenizer card measures (bytes per token, unknown and byte-fallback rates, round trip; 0: none).")
    card_max_share: float = Field(
        0.1, gt=0, lt=1, description="Most share of the corpus held out of the training sample for the card "
        "(its documents are set aside before sampling, so the card measures unseen text even when "
        "`sample_bytes` covers the whole corpus).")
    special_tokens: list[_Token] = Field(
        default_factory=lambda: list(CHAT_SPECIAL_TOKENS),
        description="Tokens kept whole (one id each, after pad/unk/bos/eos): the chat template's role and "
        "end-of-turn markers (finetune.template).",
    )
    user_tokens: list[_Token] = Field(
        default_factory=list, description="More tokens kept whole, after special_tokens ([CLS], [MASK], ...): "
        "one id each, never split where they occur in text, decoded back unchanged.")

    def role_pieces(self) -> dict[str, str]:
        """The text of the pad, unk, bos and eos tokens this config trains."""
        return ROLE_TEXTS["bert" if (self.library, self.model_type) == ("hf", "wordpiece") else "angle"]

    def special_ids(self) -> dict[str, int]:
        """The configured id of each role."""
        return {"pad": self.pad_id, "unk": self.unk_id, "bos": self.bos_id, "eos": self.eos_id}

    @model_validator(mode="after")
    def _valid_tokenizer(self) -> "TokenizerConfig":
        allowed = TOKENIZER_MODEL_TYPES[self.library]
        if self.model_type not in allowed:
            raise ValueError(f"model_type {self.model_type!r} is not a model type of library {self.library!r} "
                             f"(one of {', '.join(allowed)})")
        ids = self.special_ids()
        if len(set(ids.values())) != len(ids):
            raise ValueError(f"pad_id, unk_id, bos_id and eos_id must be distinct, got {ids}")
        if self.library == "hf" and sorted(ids.values()) != [0, 1, 2, 3]:
            # The hf trainers give special tokens ids in the order they are listed, from 0.
            raise ValueError(f"with library 'hf', pad_id, unk_id, bos_id and eos_id must be 0, 1, 2 and 3 in some "
                             f"order (special tokens take the first ids), got {ids}")
        if max(ids.values()) >= self.vocab_size:
            raise ValueError(f"pad_id, unk_id, bos_id and eos_id must be below vocab_size={self.vocab_size}, got {ids}")
        tokens = [*self.special_tokens, *self.user_tokens]
        taken = set(self.role_pieces().values())
        if len(set(tokens)) != len(tokens) or taken & set(tokens):
            raise ValueError(f"special_tokens and user_tokens must be distinct and none of {sorted(taken)} (the "
                             f"role tokens), got special_tokens={self.special_tokens}, user_tokens={self.user_tokens}")
        return self

    @model_validator(mode="after")
    def _sample_settings(self) -> "TokenizerConfig":
        bad = [k for k in self.sample_weights if not _SAMPLE_KEY.fullmatch(k)]
        if bad:
            raise ValueError(f"sample_weights keys are `<source>`, `<source>/<lang>` or `*/<lang>`, got {bad}")
        if sum(self.sample_weights.values()) > 1 + 1e-9:
            raise ValueError(f"sample_weights sum to {sum(self.sample_weights.values()):g}, more than 1")
        if 0 < self.input_sentence_size <= 100:
            raise ValueError(f"input_sentence_size must be 0 (all) or above 100, got {self.input_sentence_size}")
        return self

    on_new_data: Literal["keep", "retrain"] = Field(
        "keep",
        description="When a refresh only adds or removes documents: `keep` the trained tokenizer (token "
        "ids stay comparable with earlier token datasets and checkpoints), or `retrain` on the new data (a "
        "new token dataset version follows). A change to how the shards are made always retrains.",
    )


class TokenizeConfig(Section):
    """Shards to flat binary token files with a document index, split by document hash."""

    val_fraction: float = Field(
        0.05, ge=0, lt=1, description="Share of documents sent to validation (periodic validation and early "
        "stopping during training).")
    test_fraction: float = Field(
        0.05, ge=0, lt=1, description="Share of documents sent to the test split, which only the evaluate stage "
        "scores: training and early stopping never see it.")
    append_eos: bool = Field(True, description="Add the end-of-document token after each document.")
    prepend_bos: bool = Field(True, description="Add the begin-of-document token before each document.")
    formats: list[Literal["datatrove", "megatron"]] = Field(
        default_factory=list, description="Token file formats written beside the project's own, per shard and "
        "split (datatrove: .ds/.ds.index/.ds.metadata under datatrove/; megatron: an indexed dataset .bin/.idx "
        "under megatron/; see llm.tokenizer.token_formats). With `shuffle`, the training split's are written "
        "from the shuffled parts. Empty: only the project's files.")
    shuffle: bool = Field(
        False, description="Also write the training split's documents in one seeded random order across all "
        "shards (a two-pass bucket shuffle, llm.tokenizer.shuffle), as the manifest's `tokens.shuffled` parts. The "
        "training loader samples random windows and does not need it; sequential readers of `formats` do.")
    shuffle_seed: int = Field(0, description="Seed of the global shuffle: the same seed and input give the same "
                              "order and bytes, whatever the number of workers.")
    shuffle_bucket_bytes: int = Field(
        256 * 2**20, ge=2**10, description="Memory budget of one shuffle bucket: the training split's token "
        "bytes over this, rounded up, is the number of buckets; a gather task holds about four times one "
        "bucket's tokens.")

    @model_validator(mode="after")
    def _shares_leave_training_data(self) -> "TokenizeConfig":
        if self.val_fraction + self.test_fraction >= 1:
            raise ValueError(f"val_fraction + test_fraction must be below 1 (training keeps the rest), got "
                             f"{self.val_fraction} + {self.test_fraction}")
        return self


class LangIdConfig(Section):
    """Language identification with the model that ships inside `py3langid` (nothing downloaded)."""

    enabled: bool = Field(True, description="Run language identification.")
    sources: list[str] | None = Field(
        default_factory=lambda: ["web"],
        description="Source labels the step applies to; other documents pass with null signals. Empty: all.",
    )
    keep: list[str] = Field(
        default_factory=lambda: ["en"],
        description="ISO 639-1 codes of the languages kept; empty keeps every language.",
    )
    min_confidence: float = Field(
        0.5, ge=0, le=1, description="Documents whose top-language probability is not above this are dropped."
    )
    min_confidence_per_language: dict[str, float] = Field(
        default_factory=lambda: {"en": 0.5},
        description="Per-language threshold overriding `min_confidence`. English: 0.5, the py3langid threshold "
        "that makes the cut FineWeb's 0.65 makes with fastText (same precision and keep rate on the development "
        "set, bench/langid_threshold.py); 0.65 means something else on py3langid's scale.",
    )
    max_chars: int = Field(
        4000, ge=100, description="Characters scored per document: long documents are judged on a bounded "
        "sample (start, middle and end)."
    )


class GopherQualityConfig(Section):
    """Gopher quality rules (Rae et al. 2021, appendix A); a threshold of null turns that rule off."""

    enabled: bool = Field(True, description="Compute the signals and apply the rules.")
    min_words: int | None = Field(50, ge=0, description="Fewer words (punctuation-only tokens excluded) drop.")
    max_words: int | None = Field(100_000, ge=1, description="More words drop.")
    min_mean_word_length: float | None = Field(3.0, ge=0, description="Shorter mean word length drops.")
    max_mean_word_length: float | None = Field(10.0, ge=0, description="Longer mean word length drops.")
    max_symbol_word_ratio: float | None = Field(
        0.1, ge=0, description="Hash symbols, and separately ellipses, per word above this drop."
    )
    max_bullet_lines_ratio: float | None = Field(0.9, ge=0, le=1, description="Share of lines starting with a bullet.")
    max_ellipsis_lines_ratio: float | None = Field(0.3, ge=0, le=1, description="Share of lines ending in an ellipsis.")
    min_alpha_words_ratio: float | None = Field(
        0.8, ge=0, le=1, description="Share of words (punctuation tokens included) holding a letter."
    )
    min_stop_words: int | None = Field(2, ge=0, description="Distinct stop words the document must hold.")
    stop_words: list[str] = Field(
        default_factory=lambda: ["the", "be", "to", "of", "and", "that", "have", "with"],
        description="Stop words counted by `min_stop_words` (case-sensitive, as in the paper's code).",
    )


class GopherRepetitionConfig(Section):
    """Gopher repetition rules with the paper's table A1 values; a threshold of null turns that rule off."""

    enabled: bool = Field(True, description="Compute the signals and apply the rules.")
    max_dup_para_frac: float | None = Field(0.3, ge=0, le=1, description="Duplicate paragraphs / paragraphs.")
    max_dup_para_char_frac: float | None = Field(0.2, ge=0, le=1, description="Characters in duplicate paragraphs / characters.")
    max_dup_line_frac: float | None = Field(0.3, ge=0, le=1, description="Duplicate lines / lines.")
    max_dup_line_char_frac: float | None = Field(0.2, ge=0, le=1, description="Characters in duplicate lines / characters.")
    max_top_ngram_char_frac: dict[int, float] = Field(
        default_factory=lambda: {2: 0.20, 3: 0.18, 4: 0.16},
        description="n -> limit on the characters of the most frequent n-gram (times its count) / characters.",
    )
    max_dup_ngram_char_frac: dict[int, float] = Field(
        default_factory=lambda: {5: 0.15, 6: 0.14, 7: 0.13, 8: 0.12, 9: 0.11, 10: 0.10},
        description="n -> limit on the characters of words inside repeated n-grams / characters.",
    )


class C4QualityConfig(Section):
    """C4 rules (Raffel et al. 2020): lines that count are those ending in terminal punctuation, with
    enough words, not mentioning javascript or cookie/terms-of-use policies."""

    enabled: bool = Field(True, description="Compute the signals and apply the rules.")
    min_sentences: int | None = Field(5, ge=0, description="Sentences in counted lines below this drop.")
    min_words_per_line: int = Field(3, ge=0, description="Lines with fewer words do not count.")
    terminal_punct_lines: bool | None = Field(
        None, description="Only lines ending in terminal punctuation (. ? ! \" ', not an ellipsis) count. "
        "Empty: on when the FineWeb rules are off (as in C4), off when they run (as in FineWeb's pipeline, "
        "where FineWeb's line-punctuation ratio replaces this rule; after it that ratio would have nothing "
        "left to measure)."
    )
    max_word_length: int = Field(1000, ge=1, description="Lines holding a longer word do not count.")
    lorem_ipsum: bool = Field(True, description="Drop documents with `lorem ipsum` in a counted line.")
    curly_bracket: bool = Field(True, description="Drop documents with `{` in a counted line.")
    javascript_lines: bool = Field(True, description="Lines mentioning javascript do not count.")
    policy_lines: bool = Field(True, description="Lines about cookies or terms of use do not count.")
    remove_lines: bool = Field(
        True, description="As C4 does, rewrite each kept document to the lines that count (the others are "
        "removed; their number is stored as `c4_removed_lines`) before the FineWeb rules measure it. "
        "False: C4 only decides keep or drop and the text is left as it is."
    )


class FineWebQualityConfig(Section):
    """FineWeb's additional rules (Penedo et al. 2024); a threshold of null turns that rule off."""

    enabled: bool = Field(True, description="Compute the signals and apply the rules.")
    min_line_punct_ratio: float | None = Field(0.12, ge=0, le=1, description="Share of lines ending in terminal punctuation.")
    max_short_line_ratio: float | None = Field(0.67, ge=0, le=1, description="Share of lines of at most `short_line_chars`.")
    short_line_chars: int = Field(30, ge=1, description="A line this long or shorter is short.")
    max_dup_line_char_ratio: float | None = Field(
        0.01, ge=0, description="Characters in duplicate lines / characters (newlines excluded)."
    )
    max_newline_word_ratio: float | None = Field(0.3, ge=0, description="Newlines per word.")


class QualityConfig(Section):
    """Heuristic quality filtering: every signal is stored as a column, every drop names its rule."""

    enabled: bool = Field(True, description="Run the quality step.")
    sources: list[str] | None = Field(
        default_factory=lambda: ["web"],
        description="Source labels the step applies to (prose, not code); others pass with null signals. Empty: all.",
    )
    gopher_repetition: GopherRepetitionConfig = Field(default_factory=GopherRepetitionConfig)
    gopher: GopherQualityConfig = Field(default_factory=GopherQualityConfig)
    c4: C4QualityConfig = Field(default_factory=C4QualityConfig)
    fineweb: FineWebQualityConfig = Field(default_factory=FineWebQualityConfig)
    measure: Literal["all", "until_dropped"] = Field(
        "all",
        description="Which signals a document gets: all of them (a rejected document can be judged again "
        "under other thresholds from its stored signals), or rule set by rule set until one drops it "
        "(repetition and Gopher together, then C4, then FineWeb; the sets after the one that drops a "
        "document stay null on it). The decisions, kept texts and recorded rules are the same either way.",
    )


class ContentConfig(Section):
    """Content filtering: a URL domain block list and a word list for adult or abusive content."""

    enabled: bool = Field(True, description="Run the content step (it does nothing without a list).")
    sources: list[str] | None = Field(
        default_factory=lambda: ["web"], description="Source labels the step applies to. Empty: all."
    )
    blocked_domains_file: str | None = Field(
        None, description="File (one domain a line, `#` comments) whose domains and their subdomains are dropped."
    )
    word_list: Literal["none", "file", "better_profanity"] = Field(
        "none", description="Where the blocked words come from: none, `blocked_words_file`, or the word list "
        "that ships with the `better-profanity` package."
    )
    blocked_words_file: str | None = Field(None, description="File of blocked words or phrases, one a line.")
    max_blocked_words: int = Field(
        0, ge=0, description="Documents with more blocked-word matches than this are dropped (counted, never logged)."
    )


class PiiConfig(Section):
    """PII scrubbing: matches are replaced in the text; only counts per type are kept."""

    enabled: bool = Field(True, description="Run the PII step.")
    sources: list[str] | None = Field(None, description="Source labels the step applies to. Empty: all.")
    types: list[Literal["email", "ip", "phone", "card", "iban", "ssn", "secret"]] = Field(
        default_factory=lambda: ["email", "ip", "phone", "card", "iban", "ssn", "secret"],
        description="Kinds of PII scrubbed.",
    )
    replacement: Literal["placeholder", "pseudonym"] = Field(
        "placeholder",
        description="`placeholder`: `<EMAIL>`, `<PHONE>`, ...; `pseudonym`: `<EMAIL_1a2b3c4d>`, the same for "
        "the same value under the same `pseudonym_key`.",
    )
    pseudonym_key: SecretKey = Field(
        None,
        description="Key of the keyed hash behind pseudonyms; whoever has it can test guesses of the "
        "originals. Empty: the environment variable LLMPIPE_PSEUDONYM_KEY, else the Prefect Secret block "
        "named by `pseudonym_key_secret`, else a random key generated once and kept owner-only in "
        "`<work_dir>/_secrets/pseudonym_key`. Never shown: configs, MLflow and manifests hold only a "
        "fingerprint of it.",
    )
    pseudonym_key_secret: PathSafeName | None = Field(
        None, description="Name of a Prefect Secret block holding the pseudonym key (for deployments)."
    )
    phone_regions: list[str] = Field(
        default_factory=lambda: ["US", "CA", "GB", "IE", "DE", "AT", "CH", "FR", "BE", "NL", "IT", "ES", "PT", "PL",
                                 "SE", "BR", "MX", "IN", "JP", "AU"],
        description="Regions (ISO 3166 alpha-2) whose national phone formats are recognised (each costs a parse "
        "of the numbers its layout fits); international numbers (`+44 ...`, `0044 ...`) are recognised "
        "whatever the region.",
    )


class QuarantineConfig(Section):
    """What is kept of input that could not be read or processed (`<dataset>/quarantine/`)."""

    keep_raw: bool = Field(
        False,
        description="Also keep the offending bytes as they were read, unscrubbed (up to 64 KiB each). Off: "
        "an entry holds the error, the size, a digest and, when the bytes are text, the PII-scrubbed text.",
    )


class DataConfig(Section):
    """Everything from raw sources to token files."""

    crawl: CrawlConfig = Field(default_factory=CrawlConfig)
    sources: list[SourceConfig] = Field(
        default_factory=lambda: [SourceConfig(kind="crawl", name="web"), SourceConfig(kind="code", name="code")],
        description="Inputs of the ingest pass.",
    )
    extract: ExtractConfig = Field(default_factory=ExtractConfig)
    normalize: NormalizeConfig = Field(default_factory=NormalizeConfig)
    langid: LangIdConfig = Field(default_factory=LangIdConfig)
    quality: QualityConfig = Field(default_factory=QualityConfig)
    content: ContentConfig = Field(default_factory=ContentConfig)
    pii: PiiConfig = Field(default_factory=PiiConfig)
    quarantine: QuarantineConfig = Field(default_factory=QuarantineConfig)
    exact_dedup: ExactDedupConfig = Field(default_factory=ExactDedupConfig)
    minhash: MinHashConfig = Field(default_factory=MinHashConfig)
    shard: ShardConfig = Field(default_factory=ShardConfig)


# ------------------------------------------------------------------------------------------- model


class ModelConfig(Section):
    """Decoder-only transformer shape. Names follow the usual `layers / hidden_size / heads` convention."""

    layers: int = Field(4, ge=1, le=512, description="Transformer blocks.")
    hidden_size: int = Field(128, ge=8, description="Residual stream width.")
    attention_heads: int = Field(4, ge=1, description="Attention heads; must divide `hidden_size`.")
    vocab_size: int | None = Field(
        None, ge=8, description="Vocabulary size. Empty: taken from the trained tokenizer."
    )
    context_length: int = Field(128, ge=8, description="Maximum sequence length in tokens.")
    mlp_ratio: float = Field(4.0, gt=0, description="MLP hidden width as a multiple of `hidden_size`.")
    dropout: float = Field(0.0, ge=0, lt=1, description="Dropout on attention and residual paths.")
    bias: bool = Field(False, description="Bias terms in linear layers and norms.")
    tie_embeddings: bool = Field(True, description="Share the input embedding and output projection.")

    @model_validator(mode="after")
    def _heads_divide_width(self) -> "ModelConfig":
        if self.hidden_size % self.attention_heads:
            raise ValueError(
                f"hidden_size ({self.hidden_size}) must be divisible by attention_heads ({self.attention_heads})"
            )
        return self


# ------------------------------------------------------------------------------------------- train


class TrainConfig(Section):
    """Pre-training: optimizer, schedule, batch, parallelism, checkpoints."""

    strategy: Literal["ddp", "fsdp", "tp", "pp", "fsdp+tp", "ddp+pp"] = Field(
        "ddp",
        description="Parallel strategy inside the Ray Train workers: data parallel (ddp, fsdp = FSDP2 "
        "fully_shard), tensor parallel (tp), pipeline parallel (pp), or a hybrid on a 2-D device mesh.",
    )
    tensor_parallel: int = Field(
        1, ge=1, description="Tensor-parallel degree (tp, fsdp+tp); must divide num_workers and the heads."
    )
    pipeline_parallel: int = Field(
        1, ge=1, description="Pipeline stages (pp, ddp+pp); must divide num_workers and at most `model.layers`."
    )
    pipeline_schedule: Literal["gpipe", "1f1b"] = Field(
        "1f1b", description="Pipeline schedule: GPipe (all forwards, then all backwards) or 1F1B (less memory)."
    )
    num_workers: int = Field(2, ge=1, description="Ray Train workers (processes); one per GPU on GPU.")
    use_gpu: bool = Field(False, description="Train on GPUs (NCCL) instead of CPUs (gloo).")
    cpus_per_worker: float = Field(1.0, gt=0, description="CPUs reserved per worker.")
    batch_size: int = Field(
        16, ge=1, description="Global batch in sequences per optimizer step (all workers, all micro-steps)."
    )
    micro_batch_size: int = Field(8, ge=1, description="Sequences per worker per forward/backward.")
    learning_rate: float = Field(3e-3, gt=0, le=10, description="Peak learning rate after warmup.")
    min_lr_ratio: float = Field(
        0.1, ge=0, le=1, description="Floor of the decay as a fraction of the peak (a tenth, as in Chinchilla)."
    )
    warmup_steps: int = Field(20, ge=0, description="Linear warmup steps up to the peak learning rate: warmup "
                              "step s runs at peak x (s+1) / warmup_steps, so the first step already learns.")
    max_steps: int = Field(200, ge=1, description="Optimizer steps.")
    decay: Literal["cosine", "linear", "step", "constant"] = Field("cosine", description="Decay after warmup.")
    step_decay_every: int = Field(
        1000, ge=1, description="Step decay: the learning rate is multiplied by `step_decay_factor` every N steps."
    )
    step_decay_factor: float = Field(0.5, gt=0, le=1, description="Step decay: factor applied every `step_decay_every` steps.")
    weight_decay: float = Field(0.1, ge=0, description="AdamW weight decay (matrices only).")
    beta1: float = Field(0.9, ge=0, lt=1, description="AdamW beta1.")
    beta2: float = Field(0.95, ge=0, lt=1, description="AdamW beta2.")
    eps: float = Field(1e-8, gt=0, description="AdamW epsilon.")
    gradient_clipping: float = Field(1.0, ge=0, description="Clip the global gradient norm; 0 turns it off.")
    eval_every: int = Field(50, ge=1, description="Validation every N steps (and at the end).")
    eval_batches: int = Field(8, ge=1, description="Validation batches per evaluation.")
    checkpoint_every: int = Field(100, ge=1, description="Checkpoint every N steps (and at the end).")
    log_every: int = Field(10, ge=1, description="Log line and metrics every N steps.")
    seed: int = Field(1337, description="Seeds weights and data order.")
    precision: Literal["fp32", "bf16", "fp16"] = Field(
        "fp32",
        description="Compute precision: autocast to bf16 (CPU, GPU) or fp16 with loss scaling (GPU, ddp only); "
        "master weights and optimizer state stay fp32.",
    )
    activation_checkpointing: int = Field(
        0, ge=0, description="Recompute activations in backward for every k-th block: 0 none, 1 every block, k every k-th."
    )
    spike_factor: float = Field(
        0.0, ge=0, description="A step whose loss exceeds this multiple of the recent mean is a spike; 0 turns the check off."
    )
    rollback_after: int = Field(
        0, ge=0, description="After this many bad (NaN/inf/spike) steps in a row, roll back to the last checkpoint; 0: only skip."
    )
    rollback_lr_factor: float = Field(
        0.5, gt=0, le=1, description="Learning-rate multiplier applied at each rollback."
    )
    early_stopping_patience: int = Field(
        0, ge=0, description="Stop after this many evaluations without improvement and keep the best weights; 0: off."
    )
    early_stopping_min_delta: float = Field(
        0.001, ge=0, description="Improvement in validation loss (nats/token) that resets the patience counter."
    )
    max_failures: int = Field(
        0, ge=-1, description="Worker-group restarts (from the latest checkpoint) before the run fails; -1: no limit."
    )
    compile: bool = Field(
        False, description="Compile the model with torch.compile in each worker (faster steps after a warm-up)."
    )
    system_metrics: bool = Field(
        True,
        description="Log the training host's CPU, memory, disk, network and GPU use to the MLflow run "
        "(system/... metrics, sampled every few seconds by rank 0).",
    )
    resume_from: str | None = Field(
        None,
        description="Continue from an earlier pretraining run of this work directory instead of from "
        "random weights: `last` (the current one) or a version listed by `llmpipe lineage WORK/train`. "
        "Weights, optimizer state and step carry over; `max_steps` counts from that run's start.",
    )
    resume_data: Literal["new", "all"] = Field(
        "new",
        description="With `resume_from`: train only on token shards the earlier run did not have (a grown "
        "corpus after a refresh: nothing seen is replayed), or on all of them.",
    )
    registered_model: str | None = Field(
        "llmpipe-gpt",
        description="MLflow registry name the final model is registered under (when tracking is on); empty: none.",
    )
    registered_model_alias: str = Field(
        "current", min_length=1, description="Registry alias moved to the new version (MLflow reserves `latest`)."
    )

    @model_validator(mode="before")
    @classmethod
    def _no_ddp_with_tp(cls, data: Any) -> Any:
        if isinstance(data, dict) and str(data.get("strategy", "")).replace(" ", "") in ("ddp+tp", "tp+ddp"):
            # DDP only takes plain tensors; tensor-parallel weights are DTensors sharded across ranks.
            raise ValueError("strategy ddp+tp is not supported (DDP cannot wrap DTensor parameters): use fsdp+tp")
        return data

    @model_validator(mode="after")
    def _batch_divides(self) -> "TrainConfig":
        parts = self.strategy.split("+")
        if "tp" not in parts and self.tensor_parallel > 1:
            raise ValueError(f"tensor_parallel ({self.tensor_parallel}) needs strategy tp or fsdp+tp, not {self.strategy}")
        if "pp" not in parts and self.pipeline_parallel > 1:
            raise ValueError(f"pipeline_parallel ({self.pipeline_parallel}) needs strategy pp or ddp+pp, not {self.strategy}")
        model_parallel = self.tensor_parallel * self.pipeline_parallel
        if self.num_workers % model_parallel:
            raise ValueError(
                f"num_workers ({self.num_workers}) must be a multiple of tensor_parallel x pipeline_parallel "
                f"({model_parallel})"
            )
        if self.strategy in ("tp", "pp") and model_parallel != self.num_workers:
            raise ValueError(
                f"strategy {self.strategy} uses every worker for the model: set its degree to num_workers "
                f"({self.num_workers}), or use a hybrid (fsdp+tp, ddp+pp) for data parallelism as well"
            )
        if self.precision == "fp16" and not self.use_gpu:
            raise ValueError("precision fp16 needs use_gpu: true (loss scaling is a GPU feature); use bf16 on CPU")
        if self.precision == "fp16" and self.strategy != "ddp":
            raise ValueError(f"precision fp16 is supported with strategy ddp only, not {self.strategy}; use bf16")
        per_step = self.micro_batch_size * self.data_parallel
        if self.batch_size % per_step:
            raise ValueError(
                f"batch_size ({self.batch_size}) must be a multiple of micro_batch_size x data-parallel workers "
                f"({self.micro_batch_size} x {self.data_parallel})"
            )
        if self.grad_accum_steps < self.pipeline_parallel:
            # Fewer micro-batches than stages leaves stages idle for most of the step (and 1F1B needs
            # at least one micro-batch in flight per stage).
            raise ValueError(
                f"pipeline_parallel {self.pipeline_parallel} needs at least as many micro-batches per step "
                f"(batch_size / (micro_batch_size x data-parallel workers) = {self.grad_accum_steps}): "
                "lower micro_batch_size"
            )
        return self

    @property
    def data_parallel(self) -> int:
        """Data-parallel degree: the workers that see different data (the rest split the model)."""
        return self.num_workers // (self.tensor_parallel * self.pipeline_parallel)

    @property
    def grad_accum_steps(self) -> int:
        """Micro-batches per optimizer step on each data-parallel rank (pipeline micro-batches under pp)."""
        return self.batch_size // (self.micro_batch_size * self.data_parallel)


class EvalConfig(Section):
    """Evaluation after training: test-split loss and perplexity, sampled continuations."""

    batches: int = Field(32, ge=1, description="Test-split batches for the final loss (validation batches for "
                         "a token dataset made without a test split).")
    prompts: list[str] = Field(
        default_factory=lambda: ["def main(", "The Python standard library", "import os\n"],
        description="Prompts whose sampled continuations are saved as an artifact.",
    )
    max_new_tokens: int = Field(48, ge=1, description="Tokens sampled per prompt.")
    temperature: float = Field(0.8, ge=0, description="Sampling temperature; 0 is greedy.")
    top_k: int = Field(40, ge=0, description="Sample from the k most likely tokens; 0 keeps all.")
    use_gpu: bool = Field(False, description="Evaluate in a Ray task holding one GPU (it waits for one); "
                                             "off: a CPU task, even where GPUs are free.")


# ---------------------------------------------------------------------------------------- finetune


class ChatTemplateConfig(Section):
    """How an example becomes tokens: `bos`, then each message as its role's marker, the content and
    `end`. The markers must be single pieces of the tokenizer (`tokenizer.special_tokens`)."""

    system: str = Field("<|system|>", min_length=1, description="Marker before a system message.")
    user: str = Field("<|user|>", min_length=1, description="Marker before a user message (a prompt).")
    assistant: str = Field("<|assistant|>", min_length=1, description="Marker before an assistant message (a response).")
    end: str = Field("<|end|>", min_length=1, description="Marker after every message; trained on after a response, so the model learns to stop.")
    bos: bool = Field(True, description="Start every example with the tokenizer's begin-of-document token.")
    default_system: str | None = Field(
        None, description="A system message put first in every example that has none; empty: none."
    )

    @model_validator(mode="after")
    def _distinct_markers(self) -> "ChatTemplateConfig":
        markers = [self.system, self.user, self.assistant, self.end]
        if len(set(markers)) != len(markers):
            raise ValueError(f"the template's markers must differ from each other, got {markers}")
        return self


class SftDataConfig(Section):
    """Supervised fine-tuning examples: JSONL of prompt/response pairs or chat messages."""

    path: str | None = Field(
        None,
        description="A JSONL file (or .jsonl.gz), or a folder of them: `{\"prompt\", \"response\"}` pairs or "
        "`{\"messages\": [{\"role\", \"content\"}]}` chats. Empty: the demo's pairs built from the crawled docs.",
    )
    format: Literal["auto", "pairs", "chat"] = Field(
        "auto", description="Record shape: `auto` takes each record's own (messages if present, else a pair)."
    )
    prompt_field: str = Field("prompt", min_length=1, description="Pairs: the prompt's key.")
    response_field: str = Field("response", min_length=1, description="Pairs: the response's key.")
    messages_field: str = Field("messages", min_length=1, description="Chats: the message list's key.")
    val_fraction: float = Field(
        0.1, gt=0, lt=1, description="Share of examples held out (by a hash of the example) for the response loss."
    )
    pack: bool = Field(
        True, description="Pack several examples into each window (attention and positions kept per example); "
        "off: one example per window, padded.",
    )
    max_examples: int | None = Field(None, ge=1, description="Use at most this many examples (in file order); empty: all.")


class LoraConfig(Section):
    """LoRA (Hu et al. 2021): a trainable low-rank update beside each targeted linear layer."""

    rank: int = Field(8, ge=1, description="Rank r of the update B @ A.")
    alpha: float = Field(16.0, gt=0, description="Scale: the update is multiplied by alpha / rank.")
    dropout: float = Field(0.0, ge=0, lt=1, description="Dropout on the update's input.")
    targets: list[Literal["qkv", "proj", "fc"]] = Field(
        default_factory=lambda: ["qkv", "proj", "fc"], min_length=1,
        description="Linear layers to adapt: qkv (attention input), proj (attention and MLP outputs), fc (MLP input).",
    )


class PrefixConfig(Section):
    """Prefix tuning (Li & Liang 2021): trainable keys and values every layer's attention sees first."""

    virtual_tokens: int = Field(16, ge=1, le=1024, description="Prefix length in virtual tokens per layer.")
    reparam_hidden: int = Field(
        0, ge=0, description="Hidden width of the MLP that produces the prefix during training (more stable); "
        "dropped after training. 0: train the prefix directly.",
    )


class AdapterConfig(Section):
    """Bottleneck adapters (Houlsby et al. 2019) after each attention and MLP sublayer."""

    reduction_factor: int = Field(16, ge=1, description="Bottleneck width = hidden_size / reduction_factor.")


class FinetuneTrainConfig(TrainConfig):
    """A fine-tune's training settings: the fields of `train`, with defaults for fine-tuning (a lower peak
    rate, a short warmup, no weight decay, its own registry name). Fields left out of a config keep these
    defaults, not pre-training's."""

    learning_rate: float = Field(1e-3, gt=0, le=10, description="Peak learning rate after warmup.")
    warmup_steps: int = Field(10, ge=0, description="Linear warmup steps up to the peak learning rate: warmup "
                              "step s runs at peak x (s+1) / warmup_steps, so the first step already learns.")
    max_steps: int = Field(200, ge=1, description="Optimizer steps.")
    eval_every: int = Field(25, ge=1, description="Held-out response loss every N steps (and at the end).")
    eval_batches: int = Field(4, ge=1, description="Held-out batches per evaluation.")
    checkpoint_every: int = Field(50, ge=1, description="Checkpoint every N steps (and at the end).")
    weight_decay: float = Field(0.0, ge=0, description="AdamW weight decay (matrices only).")
    registered_model: str | None = Field(
        "llmpipe-gpt-sft",
        description="MLflow registry name the fine-tuned model is registered under (when tracking is on); empty: none.",
    )


class FinetuneConfig(Section):
    """Supervised fine-tuning of a pretrained model: the method, the data, and its own training settings."""

    method: Literal["full", "lora", "prefix", "adapter"] = Field(
        "lora", description="full (every weight), lora, prefix (prefix tuning) or adapter (bottleneck adapters)."
    )
    base: str | None = Field(
        None,
        description="The model to start from: empty for this work directory's current pretraining, a checkpoint "
        "folder (local or s3://), or a registered model `models:/NAME@ALIAS`.",
    )
    data: SftDataConfig = Field(default_factory=SftDataConfig)
    template: ChatTemplateConfig = Field(default_factory=ChatTemplateConfig)
    lora: LoraConfig = Field(default_factory=LoraConfig)
    prefix: PrefixConfig = Field(default_factory=PrefixConfig)
    adapter: AdapterConfig = Field(default_factory=AdapterConfig)
    train: FinetuneTrainConfig = Field(
        default_factory=FinetuneTrainConfig,
        description="Optimizer, schedule, batch, parallelism and checkpoints of the fine-tune (as for pretraining).",
    )
    sample_prompts: list[str] = Field(
        default_factory=lambda: ["What does os.path.join do?", "dumps(obj, *, skipkeys=False)"],
        description="Prompts answered before and after fine-tuning; the responses are logged side by side.",
    )
    sample_tokens: int = Field(48, ge=1, description="Tokens generated per sample response (greedy).")


# ------------------------------------------------------------------------------------ infrastructure


class RayConfig(Section):
    """Where the compute runs. Empty address: a local Ray started on this machine."""

    address: str | None = Field(None, description="`ray://host:10001` or `auto`; empty starts Ray locally.")
    num_cpus: int | None = Field(None, ge=1, description="Local Ray: CPUs to use (default: all).")
    object_store_memory: int = Field(
        512 * 1024 * 1024, ge=78_643_200, description="Local Ray: object store bytes (Ray's floor is 75 MiB)."
    )
    executor: Literal["ray", "processes"] = Field(
        "ray",
        description="Where the data stages' shard work runs. `ray`: Ray tasks, locally or on the cluster at "
                    "`address`. `processes`: a pool of worker processes on this machine, one per CPU "
                    "(`num_cpus`), without Ray's start-up (seconds per run), and a stage that is one piece of work "
                    "(the crawl, evaluation) in the flow's own process: for a short run on one machine. "
                    "Training and the other Ray Train stages use Ray either way; a cluster needs `ray`.")

    @model_validator(mode="after")
    def _processes_are_local(self) -> "RayConfig":
        if self.executor == "processes" and self.address:
            raise ValueError(f"executor 'processes' runs on this machine only; with address {self.address!r} "
                             f"(a Ray cluster) set ray.executor to 'ray'")
        return self


class TrackingConfig(Section):
    """MLflow tracking. Empty URI: `MLFLOW_TRACKING_URI`, else a SQLite store under the work directory."""

    uri: str | None = Field(None, description="MLflow tracking URI (http://..., sqlite:///..., file:...).")
    experiment: str = Field("llmpipe", description="MLflow experiment name.")
    enabled: bool = Field(True, description="Record runs in MLflow.")


class PipelineConfig(Section):
    """The whole pipeline: data, tokenizer, model, training, evaluation, and where things run."""

    name: str = Field("llmpipe", description="Run name shown in MLflow and Prefect.")
    work_dir: str = Field(
        "work", description="Root URI of every output (local path or s3://bucket/prefix)."
    )
    data: DataConfig = Field(default_factory=DataConfig)
    tokenizer: TokenizerConfig = Field(default_factory=TokenizerConfig)
    tokenize: TokenizeConfig = Field(default_factory=TokenizeConfig)
    model: ModelConfig = Field(default_factory=ModelConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    eval: EvalConfig = Field(default_factory=EvalConfig)
    finetune: FinetuneConfig = Field(default_factory=FinetuneConfig)
    ray: RayConfig = Field(default_factory=RayConfig)
    tracking: TrackingConfig = Field(default_factory=TrackingConfig)

    def digest(self, *sections: str) -> str:
        """Stable hash of the named sections (all when none), used to decide whether outputs are current."""
        data = self.model_dump(mode="json")
        if sections:
            data = {s: _get_path(data, s) for s in sections}
        return stable_hash(data)


# ------------------------------------------------------------------------------------------ loading


def stable_hash(obj: Any) -> str:
    """sha256 over canonical JSON: equal for equal content whatever the key order."""
    payload = json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str).encode()
    return hashlib.sha256(payload).hexdigest()[:16]


def _get_path(data: dict, dotted: str) -> Any:
    node: Any = data
    for part in dotted.split("."):
        node = node[part]
    return node


# Parts of a field name that mark its value as a secret: an error message names such a field but never
# repeats its value (a key typed on the command line would end up in logs and terminals).
_SECRET_WORDS = frozenset({"key", "secret", "password", "passwd", "token", "credentials"})


def _is_secret_name(name: str) -> bool:
    return bool(_SECRET_WORDS.intersection(re.split(r"[._-]", name.lower())))


def _shown_override(text: str) -> str:
    """An override as error messages quote it: the value of a secret field masked."""
    key, sep, _ = text.partition("=")
    return f"{key}{sep}<redacted>" if sep and _is_secret_name(key.strip().rsplit(".", 1)[-1]) else text


def _yaml_problem(exc: yaml.YAMLError) -> str:
    """A YAML error in one line: where (line, column) and what, without PyYAML's multi-line layout."""
    mark = getattr(exc, "problem_mark", None)
    problem = getattr(exc, "problem", None) or str(exc)
    where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark is not None else ""
    return where + " ".join(str(problem).split())


def parse_override(text: str) -> tuple[list[str], Any]:
    """`train.max_steps=50` -> (["train", "max_steps"], 50). Values are parsed as YAML scalars/lists."""
    if "=" not in text:
        raise ConfigError(f"override {_shown_override(text)!r} is not of the form key.sub=value")
    key, raw = text.split("=", 1)
    key = key.strip()
    if not key or any(not part for part in key.split(".")):
        raise ConfigError(f"override {_shown_override(text)!r} has an empty key")
    try:
        value = yaml.load(raw, Loader=_UniqueKeyLoader) if raw.strip() else None  # noqa: S506 (safe loader)
    except ConfigError as exc:
        raise ConfigError(f"override {_shown_override(text)!r}: {exc}") from None
    except yaml.YAMLError as exc:
        shown = "" if _is_secret_name(key.rsplit(".", 1)[-1]) else f" ({_yaml_problem(exc)})"
        raise ConfigError(f"override {_shown_override(text)!r}: value is not valid YAML{shown}") from None
    return key.split("."), value


def apply_overrides(data: dict, overrides: list[str]) -> dict:
    """Apply dotted overrides to a plain dict (before validation, so unknown keys are still caught)."""
    for text in overrides:
        path, value = parse_override(text)
        node = data
        for part in path[:-1]:
            child = node.get(part)
            if child is None:
                child = node[part] = {}
            if not isinstance(child, dict):
                raise ConfigError(f"override {_shown_override(text)!r}: {part!r} is not a section")
            node = child
        node[path[-1]] = value
    return data


def _format_validation_error(exc: ValidationError, origin: str) -> str:
    lines = [f"invalid config ({origin}):"]
    for err in exc.errors():
        path = ".".join(str(p) for p in err["loc"]) or "(top level)"
        msg = err["msg"]
        if err["type"] == "extra_forbidden":
            msg = "unknown key"
        got = err.get("input")
        secret = any(_is_secret_name(str(p)) for p in err["loc"][-1:])
        if err["type"] != "extra_forbidden" and _short(got) and not secret:
            msg += f" (got {got!r})"
        lines.append(f"  {path}: {msg}")
    return "\n".join(lines)


def _short(value: Any) -> bool:
    return isinstance(value, (int, float, str, bool)) and len(repr(value)) < 80


def build_config(data: dict | None = None, overrides: list[str] | None = None, origin: str = "config") -> PipelineConfig:
    """Validate a plain dict (plus overrides) into a `PipelineConfig`, raising `ConfigError` on problems."""
    data = apply_overrides(dict(data or {}), list(overrides or []))
    try:
        return PipelineConfig.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(_format_validation_error(exc, origin)) from None


class _UniqueKeyLoader(yaml.SafeLoader):
    """The safe YAML loader, refusing a key given twice in one mapping (YAML keeps the last silently,
    so a typo'd second `train:` section would replace the first)."""

    def construct_mapping(self, node, deep=False):
        seen: dict = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise ConfigError(f"line {key_node.start_mark.line + 1}: duplicate key {key!r} "
                                  f"(first given at line {seen[key] + 1})")
            seen[key] = key_node.start_mark.line
        return super().construct_mapping(node, deep=deep)


def _read_config_file(path: Path | str) -> str:
    """The text of a config file (a local path or an object-store URI such as s3://bucket/key); a path
    that is missing, a folder, unreadable or not UTF-8 is a `ConfigError` naming it."""
    if isinstance(path, str) and "://" in path:
        return _read_config_uri(path)
    if path.is_dir():
        raise ConfigError(f"{path}: is a folder, not a YAML config file")
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not UTF-8 text (byte {exc.start} is {exc.object[exc.start:exc.start + 1]!r}): "
                          "save the config as UTF-8") from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read the config file ({exc.strerror or exc})") from None


def _read_config_uri(uri: str) -> str:
    from llm import storage

    try:
        data = storage.read_bytes(uri)
    except FileNotFoundError:
        raise ConfigError(f"config file not found: {uri}") from None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{uri}: not UTF-8 text (byte {exc.start}): save the config as UTF-8") from None


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> PipelineConfig:
    """Load a YAML config file (or only defaults when `path` is None) and apply dotted overrides."""
    data: dict = {}
    origin = "defaults"
    if path is not None:
        origin = str(path)
        text = _read_config_file(path if isinstance(path, str) and "://" in path else Path(path))
        try:
            loaded = yaml.load(text, Loader=_UniqueKeyLoader)  # noqa: S506 (safe loader)
        except yaml.YAMLError as exc:
            raise ConfigError(f"{path}: not valid YAML ({_yaml_problem(exc)})") from None
        except ConfigError as exc:
            raise ConfigError(f"{path}: {exc}") from None
        if loaded is None:
            loaded = {}
        if not isinstance(loaded, dict):
            raise ConfigError(f"{path}: top level must be a mapping of sections")
        data = loaded
    return build_config(data, overrides, origin)
