"""SentencePiece BPE training: the tokenizer stage's training step against raw SentencePiece (spm_train).

    .venv/bin/python bench/tokenizer_train_vs_spm.py                # 2 cores, vocabulary 16384
    .venv/bin/python bench/tokenizer_train_vs_spm.py --copies 4 --vocab 8192 --repeat 3

Input: the real text of the development data folder (`--data`, default `../shared/data`: the books, the
reST sources of `html_dev.jsonl`, the news articles, the language-ID texts; ~2.5 MB in 711 texts),
`--copies` times under distinct ids (each copy's last line marked with its number), written as the
project's document shards. The stage's sampler (`build_sample`, in-process, outside the timings) takes
its sample of them once, as the stage does for sentencepiece: part files of the sample's training lines
(`llm.tokenizer.spm.training_lines`: each document's lines, right-stripped, non-empty, cut at
max_sentence_length), one per line. The same lines are also written once as one text file. Both sides
train on them:
(a) llmpipe: the stage's training step, `train_tokenizer(SampleTexts(parts), cfg)` (`llm.tokenizer.train`; the stage's
    one training task runs: SentencePiece reads the part files itself and the record of their paths is
    dropped from the model), then the .model and .vocab files written as the stage writes them.
    Not timed: the sampling pass and the tokenizer card (other passes of the stage, over the shards).
(b) SentencePiece: `SentencePieceTrainer.train(input=<the text file>, model_prefix=...)`, what
    `spm_train` does, writing its .model and .vocab.
Same settings: `--vocab`, bpe, character_coverage 0.9995, byte_fallback, split_digits, the identity
normalization, no whitespace clean-up, whitespace-only pieces allowed, pad/unk/bos/eos 0-3, the chat
template's tokens as user-defined symbols, max_sentence_length 16384, and `num_threads` = the pinned
cores on both (llmpipe through `tokenizer.num_threads`). The two vocabularies (pieces, scores, types)
are compared and the result printed: they must be the same model.

Timing: each side in its own subprocess, pinned to `--cores` CPUs by this script; sides alternate over
`--repeat` rounds and each side's fastest is kept. With start-up: from spawning the subprocess to the
model files on disk (interpreter, imports inside); steady: the same training again in that process
into a fresh folder. The last line is the time ratio llmpipe/SentencePiece with start-up (target: at
most 1.1), the line before it the steady one.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from sides import alternate, timed_child  # noqa: E402
from token_inputs import bench_parser, pin, report_training, training_sample  # noqa: E402

SIDES = ["llmpipe", "spm"]
TARGET = 1.1  # llmpipe time / SentencePiece time, at most


def config(vocab: int, threads: int, sample_bytes: int):
    from llm.config import TokenizerConfig

    return TokenizerConfig(vocab_size=vocab, num_threads=threads, sample_bytes=sample_bytes)


def llmpipe_job(parts: list[str], cfg):
    from llm.tokenizer.base import tokenizer_from_bytes
    from llm.tokenizer.sample import SampleTexts
    from llm.tokenizer.spm import vocab_text
    from llm.tokenizer.train import train_tokenizer

    def run(out: Path) -> None:
        out.mkdir(parents=True)
        model = train_tokenizer(SampleTexts(tuple(parts)), cfg)
        (out / "spm.model").write_bytes(model)
        (out / "spm.vocab").write_text(vocab_text(tokenizer_from_bytes(model)), encoding="utf-8")
    return run


def spm_job(lines: Path, cfg):
    import sentencepiece as spm

    def run(out: Path) -> None:
        out.mkdir(parents=True)
        spm.SentencePieceTrainer.train(
            input=str(lines), model_prefix=str(out / "spm"), vocab_size=cfg.vocab_size, model_type="bpe",
            character_coverage=cfg.character_coverage, byte_fallback=cfg.byte_fallback,
            max_sentence_length=cfg.max_sentence_length, pad_id=0, unk_id=1, bos_id=2, eos_id=3,
            pad_piece="<pad>", unk_piece="<unk>", bos_piece="<s>", eos_piece="</s>",
            user_defined_symbols=list(cfg.special_tokens), split_digits=True, remove_extra_whitespaces=False,
            normalization_rule_name="identity", allow_whitespace_only_pieces=True, num_threads=cfg.num_threads,
            minloglevel=2, hard_vocab_limit=False)
    return run


def child(args: argparse.Namespace) -> None:
    cfg = config(args.vocab, args.threads, args.sample_bytes)
    root = Path(args.root)
    if args.side == "llmpipe":
        job = llmpipe_job(sorted(str(p) for p in (root / "sample").glob("part-*")), cfg)
    else:
        job = spm_job(root / "sample.txt", cfg)
    timed_child(job, Path(args.out), args.spawned)


def vocabulary(model: Path) -> list[tuple[str, float, int]]:
    from sentencepiece import sentencepiece_model_pb2 as model_pb2

    proto = model_pb2.ModelProto()
    proto.ParseFromString(model.read_bytes())
    return [(p.piece, p.score, p.type) for p in proto.pieces]


def main() -> None:
    parser = bench_parser(__doc__, "--threads", "--sample-bytes")
    parser.add_argument("--copies", type=int, default=8, help="copies of the real text, each under its own ids")
    parser.add_argument("--vocab", type=int, default=16384, help="vocabulary size")
    args = parser.parse_args()
    if args.side:
        args.vocab, args.threads, args.sample_bytes = int(args.vocab), int(args.threads), int(args.sample_bytes)
        child(args)
        return
    cores = pin(args.cores)
    from llm.tokenizer.sample import SampleTexts
    from llm.tokenizer.spm import training_lines

    with tempfile.TemporaryDirectory(prefix="llmpipe-bench-") as tmp:
        root = Path(tmp)
        sample_bytes = 20_000_000  # the stage's default
        # As the stage samples for sentencepiece: parts of training lines, which SentencePiece reads itself.
        parts, sample = training_sample(root, Path(args.data), args.copies, shards=8, sample_bytes=sample_bytes,
                                        stdlib=args.stdlib, line_length=config(args.vocab, cores, sample_bytes).max_sentence_length)
        cfg = config(args.vocab, cores, sample_bytes)
        lines = 0
        with open(root / "sample.txt", "w", encoding="utf-8") as fh:
            for line in training_lines(SampleTexts(tuple(parts)), cfg.max_sentence_length):
                fh.write(line + "\n")
                lines += 1
        mb = sample["bytes"] / 1e6
        print(f"sample: {sample['documents']} documents, {mb:.2f} MB, {lines} lines (of {args.copies} copies of "
              f"{args.data}'s real text{' and the standard library' if args.stdlib else ''}); vocabulary {args.vocab}, bpe, {cores} cores, num_threads {cores}")
        print("timed: with start-up = spawn of each side's subprocess to its .model and .vocab on disk; steady = "
              "the same training again in that process")
        t0 = time.monotonic()
        best = alternate(__file__, SIDES, root, args.repeat, "--root", str(root), "--vocab", str(args.vocab),
                         "--threads", str(cores), "--sample-bytes", str(sample_bytes))
        vocabs = {side: vocabulary(best[side]["out"] / "first" / "spm.model") for side in SIDES}
        print(f"rounds took {time.monotonic() - t0:.1f} s")
    same = vocabs["llmpipe"] == vocabs["spm"]
    print(f"vocabularies: llmpipe {len(vocabs['llmpipe'])} pieces, spm {len(vocabs['spm'])} pieces; pieces, "
          f"scores and types {'identical' if same else 'DIFFER'}")
    report_training(best, "spm", mb, cores, TARGET)
    if not same:
        sys.exit("the two sides trained different vocabularies")


if __name__ == "__main__":
    sys.exit(main())
