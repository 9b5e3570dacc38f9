"""Byte-level BPE training: the tokenizer stage's training step (`library: hf`) against HF tokenizers' own trainer.

    .venv/bin/python bench/tokenizer_train_vs_hf.py                 # 2 cores, vocabulary 16384
    .venv/bin/python bench/tokenizer_train_vs_hf.py --copies 4 --vocab 8192 --repeat 3

Input: as `tokenizer_train_vs_spm.py`: the real text of the development data folder (`--data`),
`--copies` times under distinct ids, written as the project's document shards, and the stage's sample of
them (`build_sample`, in-process, outside the timings) as Parquet part files, which both sides read:
(a) llmpipe: `train_tokenizer(SampleTexts(parts), cfg)` with `library: hf, model_type: bpe` (what the
    stage's one training task runs: `train_hf`, the parts streamed row group by row group into
    `train_from_iterator`, then the added tokens past the roles made non-special), its tokenizer.json
    written to disk.
(b) HF tokenizers: `Tokenizer(models.BPE(unk_token="<unk>"))` with the ByteLevel pre-tokenizer (no
    prefix space, GPT-2's regex) and decoder, `BpeTrainer(vocab_size, special_tokens, initial_alphabet=
    ByteLevel.alphabet())`, `train_from_iterator` over the parts' `text` column read with pyarrow (one
    row group at a time), then `Tokenizer.save`.
Same vocabulary size and special tokens (<pad> <unk> <s> </s>, then the chat template's tokens). The
vocabularies (token -> id) and merges of the two are compared and printed; llmpipe's file differs from
HF's in the added tokens' `special` flag only (its chat tokens are matched whole but not special).

Timing: each side in its own subprocess, pinned to `--cores` CPUs (the trainer's threads use them);
sides alternate over `--repeat` rounds and each side's fastest is kept. With start-up: from spawning the
subprocess to the tokenizer.json on disk (interpreter, imports inside); steady: the same training again
in that process into a fresh folder. The last line is the time ratio llmpipe/HF with start-up, the
line before it the steady one.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from sides import alternate, timed_child  # noqa: E402
from token_inputs import bench_parser, pin, report_training, training_sample  # noqa: E402

SIDES = ["llmpipe", "hf"]
ROLES = ["<pad>", "<unk>", "<s>", "</s>"]  # ids 0-3, the stage's defaults


def llmpipe_job(parts: list[str], vocab: int):
    from llm.config import TokenizerConfig
    from llm.tokenizer.sample import SampleTexts
    from llm.tokenizer.train import train_tokenizer

    cfg = TokenizerConfig(library="hf", model_type="bpe", vocab_size=vocab)

    def run(out: Path) -> None:
        out.mkdir(parents=True)
        (out / "tokenizer.json").write_bytes(train_tokenizer(SampleTexts(tuple(parts)), cfg))
    return run


def hf_job(parts: list[str], vocab: int, specials: list[str]):
    import pyarrow.parquet as pq
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    def texts():
        for part in parts:
            pf = pq.ParquetFile(part)
            for i in range(pf.num_row_groups):
                yield from pf.read_row_group(i, columns=["text"]).column("text").to_pylist()

    def run(out: Path) -> None:
        out.mkdir(parents=True)
        tk = Tokenizer(models.BPE(unk_token="<unk>"))
        tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
        tk.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(vocab_size=vocab, special_tokens=specials, show_progress=False,
                                      initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
        tk.train_from_iterator(texts(), trainer=trainer)
        tk.save(str(out / "tokenizer.json"))
    return run


def child(args: argparse.Namespace) -> None:
    parts = sorted(str(p) for p in (Path(args.root) / "sample").glob("part-*.parquet"))
    vocab = int(args.vocab)
    job = llmpipe_job(parts, vocab) if args.side == "llmpipe" else hf_job(parts, vocab, json.loads(args.specials))
    timed_child(job, Path(args.out), args.spawned)


def compare(a: Path, b: Path) -> str:
    """How the two tokenizer.json files' models and added tokens compare."""
    ja, jb = (json.loads(p.read_text(encoding="utf-8")) for p in (a, b))
    vocab = ja["model"]["vocab"] == jb["model"]["vocab"]
    merges = ja["model"]["merges"] == jb["model"]["merges"]
    added = [{k: v for k, v in t.items() if k != "special"} for t in ja["added_tokens"]] == \
        [{k: v for k, v in t.items() if k != "special"} for t in jb["added_tokens"]]
    return (f"vocabulary {'identical' if vocab else 'DIFFERENT'}, merges {'identical' if merges else 'DIFFERENT'}, "
            f"added tokens {'the same but for their special flag' if added else 'DIFFERENT'}")


def main() -> None:
    parser = bench_parser(__doc__, "--specials")
    parser.add_argument("--copies", type=int, default=8, help="copies of the real text, each under its own ids")
    parser.add_argument("--vocab", type=int, default=16384, help="vocabulary size")
    args = parser.parse_args()
    if args.side:
        child(args)
        return
    cores = pin(args.cores)
    from llm.config import TokenizerConfig
    from tokenizers import Tokenizer

    specials = ROLES + list(TokenizerConfig(library="hf").special_tokens)
    with tempfile.TemporaryDirectory(prefix="llmpipe-bench-") as tmp:
        root = Path(tmp)
        _, sample = training_sample(root, Path(args.data), args.copies, shards=8, sample_bytes=20_000_000,
                                     stdlib=args.stdlib)
        mb = sample["bytes"] / 1e6
        print(f"sample: {sample['documents']} documents, {mb:.2f} MB (of {args.copies} copies of {args.data}'s real "
              f"text); byte-level BPE, vocabulary {args.vocab}, {len(specials)} special tokens, {cores} cores")
        print("timed: with start-up = spawn of each side's subprocess to its tokenizer.json on disk; steady = the "
              "same training again in that process")
        best = alternate(__file__, SIDES, root, args.repeat, "--root", str(root), "--vocab", str(args.vocab),
                         "--specials", json.dumps(specials))
        files = {side: best[side]["out"] / "first" / "tokenizer.json" for side in SIDES}
        sizes = {side: Tokenizer.from_file(str(f)).get_vocab_size(with_added_tokens=True) for side, f in files.items()}
        print(f"vocabulary sizes: llmpipe {sizes['llmpipe']}, hf {sizes['hf']} "
              f"({'equal' if sizes['llmpipe'] == sizes['hf'] else 'DIFFERENT'}); {compare(files['llmpipe'], files['hf'])}")
    report_training(best, "hf", mb, cores)


if __name__ == "__main__":
    sys.exit(main())
