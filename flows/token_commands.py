"""`llmpipe export-tokens`: a token dataset version's splits as other tools' token files.

    llmpipe export-tokens work/demo/tokens exported/ --format datatrove
    llmpipe export-tokens work/demo/tokens@VERSION megatron/ --format megatron --split train

The work is in `llm.tokenizer.token_formats`; this only parses and prints.
"""

from __future__ import annotations

import argparse

# llm.tokenizer.token_formats.FORMATS; not imported here, as building the parser would load numpy and
# the tokenizers for every command (export_tokens rejects any other name itself).
FORMATS = ("datatrove", "megatron")


def add_export_tokens_command(sub, common: argparse.ArgumentParser) -> None:
    """Add `export-tokens` to `llmpipe`'s subparsers."""
    what = "write a token dataset's splits as datatrove (.ds) or Megatron indexed-dataset (.bin/.idx) files"
    p = sub.add_parser("export-tokens", help=what, parents=[common],
                       description=what + "; the training split in its shuffled order when the version has one")
    p.add_argument("tokens_dir", help="token dataset folder or URI, optionally TOKENS@VERSION (e.g. work/demo/tokens)")
    p.add_argument("out", help="folder to write (local path or s3://): <split>/part-NNNNN.* in training order")
    p.add_argument("--format", required=True, choices=FORMATS, help="datatrove: .ds, .ds.index, .ds.metadata; "
                   "megatron: an IndexedDataset .bin/.idx pair per part")
    p.add_argument("--split", action="append", dest="splits", metavar="SPLIT",
                   help="split to write (train, val, test); repeatable (default: every split the version has)")


def run_export_tokens(args: argparse.Namespace) -> int:
    """Write the files and print one line per split."""
    from llm.tokenizer.token_formats import export_tokens

    report = export_tokens(args.tokens_dir, args.out, args.format, args.splits)
    for split, done in report["splits"].items():
        print(f"{split}: {done['docs']} documents, {done['tokens']} tokens in {len(done['files'])} files "
              f"({report['format']}, {report['token_size']}-byte tokens) under {args.out}/{split}")
    return 0
