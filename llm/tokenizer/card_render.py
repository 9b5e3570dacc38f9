"""The tokenizer card as markdown: tables a terminal shows as they are (`llmpipe tokenizer-card`) and
card.md beside the model."""

from __future__ import annotations

_COLUMNS = ("docs", "bytes", "tokens", "bytes/token", "unk rate", "byte fallback", "round-trip failures")


def _rate(value: float | None) -> str:
    return "-" if value is None else f"{value:.2%}" if value >= 0.0001 or value == 0 else f"{value:.2e}"


def _row(name: str, t: dict) -> str:
    bpt = "-" if t["bytes_per_token"] is None else f"{t['bytes_per_token']:.3f}"
    fails = f"{t['roundtrip_failures']:,}"
    if t["roundtrip_failures"]:
        first = t["first_roundtrip_failure"]
        fails += f" ({_rate(t['roundtrip_failure_rate'])}; first: {first['doc_id']} at char {first['char']:,})"
    cells = [name, f"{t['documents']:,}", f"{t['bytes']:,}", f"{t['tokens']:,}", bpt, _rate(t["unk_rate"]),
             _rate(t["byte_fallback_rate"]), fails]
    return "| " + " | ".join(cells) + " |"


def _table(title: str, rows: dict[str, dict]) -> list[str]:
    head = f"| {title} | " + " | ".join(_COLUMNS) + " |"
    rule = "| --- |" + " ---: |" * len(_COLUMNS)
    return [head, rule] + [_row(name, t) for name, t in rows.items()] + [""]


def card_markdown(card: dict) -> str:
    """The card as markdown: what the model is, what it was measured on, the figures per language
    and per source, vocabulary usage and the special ids."""
    held, sample, usage = card["held_out"], card.get("sample") or {}, card["vocab_usage"]
    lines = ["# Tokenizer card", "",
             f"{card['library']} {card['model_type']}, vocabulary {card['vocab_size']:,} "
             f"({card['byte_fallback_ids']} byte-fallback ids).", ""]
    if sample:
        first = [k for k in ("documents", "bytes") if k in sample]
        scalars = [(k, sample[k]) for k in first + sorted(set(sample) - set(first))
                   if isinstance(sample[k], (int, float, str))]
        lines += ["Training sample: " + ", ".join(f"{k} {v:,}" if isinstance(v, int) else f"{k} {v}"
                                                  for k, v in scalars) + ".", ""]
    lines += [f"Measured on {held['documents']:,} held-out documents ({held['bytes']:,} bytes; the training "
              f"sample excluded, card hash fraction {held['fraction']}, seed {held['seed']}).", ""]
    if not held["documents"]:
        lines += ["No held-out text: the training sample took every document.", ""]
    lines += _table("overall", {"all": card["overall"]})
    if card["by_language"]:
        lines += _table("language", card["by_language"])
    if card["by_source"]:
        lines += _table("source", card["by_source"])
    lines += [f"Vocabulary usage: {usage['ids_seen']:,} of {card['vocab_size']:,} ids seen "
              f"({_rate(usage['share'])}); {usage['ids_never_used']:,} never used.", ""]
    specials = ", ".join(f"{piece} = {i}" for piece, i in sorted(card["special_ids"].items(), key=lambda kv: kv[1]))
    lines += [f"Special ids: {specials}.", ""]
    return "\n".join(lines)
