"""The end-of-run summary a user reads: counts per stage, tokens, losses, and where everything is."""

from __future__ import annotations

import math


def _row(cells: list[str], widths: list[int]) -> str:
    return "  ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(cells, widths)))


def format_summary(result: dict) -> str:
    """Render the dict returned by the pipeline flow."""
    stages = result.get("stages", {})
    lines = ["", "llmpipe run summary", "=" * 19, ""]
    header = ["stage", "read", "kept", "dropped", "quarantined"]
    rows = []
    for name, s in stages.items():
        counts = s.get("counts") or {}
        if counts:
            rows.append([name, str(counts["read"]), str(counts["kept"]),
                         str(sum(counts["dropped"].values())), str(counts["quarantined"])])
    if rows:
        widths = [max(len(r[i]) for r in rows + [header]) for i in range(len(header))]
        lines += [_row(header, widths), _row(["-" * w for w in widths], widths)]
        lines += [_row(r, widths) for r in rows]
        lines.append("")
        for name, s in stages.items():
            dropped = (s.get("counts") or {}).get("dropped") or {}
            if dropped:
                reasons = ", ".join(f"{rule}={n}" for rule, n in sorted(dropped.items(), key=lambda kv: -kv[1]))
                lines.append(f"  {name} dropped: {reasons}")
            # A source left out (`git.if_missing: skip`) read nothing: say so beside the counts.
            for reason in (s.get("skipped_sources") or {}).values():
                lines.append(f"  {name}: {reason}")
        lines.append("")
    reused = [name for name, st in stages.items() if st.get("reused")]
    if reused:
        made = [name for name in stages if name not in reused]
        lines.append(f"reused (inputs, code and config unchanged): {', '.join(reused)}")
        lines.append(f"made: {', '.join(made) if made else 'nothing'}")
        lines.append("")
    if "crawl" in stages:
        c = stages["crawl"]
        lines.append(f"crawl: {c.get('pages_fetched')} pages fetched, {c.get('pages_failed')} failed")
    if "tokenizer" in stages and stages["tokenizer"].get("vocab_size"):
        k = stages["tokenizer"]
        measured = (f"; {_f(k['bytes_per_token'], 3)} bytes/token on {k.get('held_out_documents', 0):,} held-out "
                    "documents (`llmpipe tokenizer-card`)" if k.get("bytes_per_token") is not None else "")
        lines.append(f"tokenizer: {k.get('library', 'sentencepiece')} {k.get('model_type') or ''}".rstrip()
                     + f", {k['vocab_size']:,} tokens, trained on {k.get('sample_documents', 0):,} documents{measured}")
    if "tokenize" in stages:
        t = stages["tokenize"]
        lines.append(f"tokens: train {t.get('train_tokens'):,}  val {t.get('val_tokens'):,}  "
                     f"test {t.get('test_tokens', 0):,}  ({t.get('dtype')})")
    if "pretrain" in stages:
        p = stages["pretrain"]
        lines.append(
            f"pretrain: {p.get('steps')} steps, {p.get('tokens_seen', 0):,} tokens, "
            f"val loss {_f(p.get('initial_val_loss'))} at init -> {_f(p.get('final_val_loss'))}"
            + (f" ({_f(p['final_val_bpb'])} bits/byte)" if p.get("final_val_bpb") is not None else "")
            + f", {_f(p.get('seconds'), 1)} s")
    if "evaluate" in stages:
        e = stages["evaluate"]
        held_out = "test" if e.get("split") == "test" else "validation (no test split)"
        bpb = f", {_f(e['eval_bpb'])} bits/byte" if e.get("eval_bpb") is not None else ""
        lines.append(f"evaluate: {held_out} loss {_f(e.get('val_loss'))}, perplexity {_f(e.get('perplexity'), 2)}"
                     f"{bpb} on {e.get('tokens_evaluated', 0):,} held-out tokens")
    if "finetune" in stages:
        f = stages["finetune"]
        share = f.get("examples_trained_token_share")
        lines.append(
            f"finetune ({f.get('method')}): {f.get('steps')} steps on {f.get('examples_train_examples')} examples "
            f"({f.get('examples_quarantined', 0)} quarantined), held-out response loss "
            f"{_f(f.get('response_loss_before'))} before -> {_f(f.get('response_loss_after'))} after"
            + (f" ({_f(f['response_bpb_after'])} bits/byte)" if f.get("response_bpb_after") is not None else "")
            + "; "
            f"{f.get('trainable_parameters', 0):,} of {f.get('total_parameters', 0):,} parameters trained"
            + (f", {share:.0%} of tokens in the loss" if share is not None else ""))
    lines.append("")
    lines.append("where to look:")
    width = max([len(n) for n in stages] + [len("fine-tuned")])
    for name, s in stages.items():
        if s.get("uri"):
            lines.append(f"  {name:<{width}} {s['uri']}")
    if "pretrain" in stages and stages["pretrain"].get("checkpoint_uri"):
        lines.append(f"  {'checkpoint':<{width}} {stages['pretrain']['checkpoint_uri']}")
    if "finetune" in stages and stages["finetune"].get("checkpoint_uri"):
        lines.append(f"  {'fine-tuned':<{width}} {stages['finetune']['checkpoint_uri']}")
    if result.get("tracking_uri"):
        lines.append(f"  {'mlflow':<{width}} {result['tracking_uri']}")
        lines.append("")
        lines.append(f"open the MLflow UI:  {result['mlflow_ui']}")
    return "\n".join(lines) + "\n"


def _f(value, digits: int = 4) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    return f"{value:.{digits}f}"
