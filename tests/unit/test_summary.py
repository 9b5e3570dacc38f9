"""The end-of-run summary shows bits per byte beside loss and perplexity where they were measured."""

from llm.summary import format_summary


def _evaluate(**extra) -> dict:
    stage = {"split": "test", "val_loss": 2.5, "perplexity": 12.18, "tokens_evaluated": 4096, **extra}
    return {"stages": {"pretrain": {"steps": 10, "initial_val_loss": 6.1, "final_val_loss": 2.4,
                                    "seconds": 3.0, **({"final_val_bpb": 1.25} if extra else {})},
                       "evaluate": stage}}


def test_evaluate_and_pretrain_lines_show_bits_per_byte():
    text = format_summary(_evaluate(eval_bpb=1.2345, bytes_evaluated=10000))
    line = next(l for l in text.splitlines() if l.startswith("evaluate:"))
    assert line == "evaluate: test loss 2.5000, perplexity 12.18, 1.2345 bits/byte on 4,096 held-out tokens"
    assert "-> 2.4000 (1.2500 bits/byte)," in next(l for l in text.splitlines() if l.startswith("pretrain:"))


def test_token_datasets_without_bytes_leave_bits_per_byte_out():
    text = format_summary(_evaluate())
    assert "bits/byte" not in text
    assert "evaluate: test loss 2.5000, perplexity 12.18 on 4,096 held-out tokens" in text


def test_a_skipped_source_is_named_beside_the_counts():
    reason = "source 'project' (git) skipped (git.if_missing: skip): repository /x: not a git repository"
    counts = {"read": 3, "kept": 2, "dropped": {"gopher_min_words": 1}, "quarantined": 0}
    text = format_summary({"stages": {"ingest": {"counts": counts, "skipped_sources": {"project": reason}}}})
    assert f"  ingest: {reason}" in text.splitlines()
    assert "skipped" not in format_summary({"stages": {"ingest": {"counts": counts}}})


def test_the_tokenizer_line_names_the_library_and_its_card_figure():
    stage = {"vocab_size": 4096, "library": "hf", "model_type": "bpe", "sample_documents": 580,
             "held_out_documents": 66, "bytes_per_token": 3.1372}
    line = next(l for l in format_summary({"stages": {"tokenizer": stage}}).splitlines() if l.startswith("tokenizer:"))
    assert line == ("tokenizer: hf bpe, 4,096 tokens, trained on 580 documents; 3.137 bytes/token on 66 held-out "
                    "documents (`llmpipe tokenizer-card`)")
    # No held-out text (card_bytes: 0): no figure, and a manifest from before libraries reads as sentencepiece.
    text = format_summary({"stages": {"tokenizer": {"vocab_size": 800, "sample_documents": 9}}})
    assert "tokenizer: sentencepiece, 800 tokens, trained on 9 documents" in text.splitlines()
