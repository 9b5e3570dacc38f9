"""The content step's packaged word list: found offline, matched as whole words, counted, never logged."""

from __future__ import annotations

import logging
import subprocess
import sys

import pyarrow as pa

from llm.config import ContentConfig
from llm.data.content import ContentStep, package_word_list

CLEAN = "The river rises in the hills to the north of the town and flows south to the sea."


def test_package_list_loads_without_importing_the_package_or_the_network():
    # A fresh interpreter with an audit hook that fails any socket connection or DNS look-up.
    code = (
        "import sys\n"
        "def guard(event, args):\n"
        "    if event in ('socket.connect', 'socket.getaddrinfo', 'socket.gethostbyname'):\n"
        "        raise RuntimeError('network used: ' + event)\n"
        "sys.addaudithook(guard)\n"
        "from llm.config import ContentConfig\n"
        "from llm.data.content import ContentStep\n"
        "step = ContentStep(ContentConfig(word_list='better_profanity'))\n"
        "assert step.words and 'better_profanity' not in sys.modules\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]


def test_package_words_drop_documents_with_counts_and_no_term_leaks(caplog):
    words = package_word_list()
    assert len(words) > 500 and words == sorted(set(words))
    single = [w for w in words if w.isalpha() and len(w) > 4]
    term, other = single[len(single) // 2], single[len(single) // 3]
    texts = [CLEAN, f"{CLEAN} {term.upper()} and {other}.", f"{CLEAN} {term}ness{term}",
             f"{CLEAN} ({term}), {term}; {term}!"]
    docs = pa.table({"id": list("abcd"), "source": ["web"] * 4, "url": [None] * 4, "text": texts})
    with caplog.at_level(logging.DEBUG):
        out = ContentStep(ContentConfig(word_list="better_profanity", max_blocked_words=0)).apply(docs)
    # Whole words only and case-insensitive: the joined-up form in "c" is no match.
    assert out.kept.column("id").to_pylist() == ["a", "c"]
    counts = dict(zip(out.dropped.column("id").to_pylist(), out.dropped.column("value").to_pylist()))
    assert counts == {"b": 2, "d": 3}
    assert set(out.dropped.column("rule").to_pylist()) == {"content_blocked_words"}
    assert out.kept.column("content_blocked_words").to_pylist() == [0, 0]
    recorded = str(out.dropped.drop_columns(["text"]).to_pylist()) + caplog.text
    assert term not in recorded.lower() and other not in recorded.lower()


def test_a_higher_threshold_keeps_documents_with_few_matches():
    term = next(w for w in package_word_list() if w.isalpha() and len(w) > 4)
    docs = pa.table({"id": ["a"], "source": ["web"], "url": [None], "text": [f"{CLEAN} {term}."]})
    out = ContentStep(ContentConfig(word_list="better_profanity", max_blocked_words=1)).apply(docs)
    assert out.kept.num_rows == 1 and out.kept.column("content_blocked_words").to_pylist() == [1]
