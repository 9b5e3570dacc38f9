"""Compiled loop of language ID (numba): py3langid's naive-Bayes classifier over a batch of texts.

The model is py3langid's own (its byte n-gram automaton and naive-Bayes tables, loaded by py3langid);
this is its `classify` with `norm_probs=True` as one pass over many texts given as one byte buffer
and offsets: walk the automaton over each text's UTF-8 bytes, count the n-gram features it reaches,
score each class (sum over features of log1p(count) times the feature's log-probability, plus the
class prior), scale by 1/sqrt(bytes), softmax, fold aliased classes into their first column and take
the best. The walk takes several texts in turn, a byte each, so that the reads of the automaton's
39 MB table, which often miss the cache, overlap across texts (twice as fast as one text at a time).
py3langid does the same arithmetic in float32; here it is float64, so probabilities agree with
py3langid's to its float32 rounding and with the same arithmetic in float64 to ~1e-13.

Compiled code is cached beside this file (`cache=True`), so a process pays the compile once per
installation; where no cache can be written (read-only install and home) it compiles per process.
"""

from __future__ import annotations

import math

import numpy as np
from llm.compiled import njit_cached

_compiled = njit_cached(nogil=True)


_LANES = 8  # texts walked at once: their table lookups overlap instead of waiting one after another


@_compiled
def walk(data, offsets, nextmove, rowbase, output):
    """The feature the automaton emits at each byte of `data` (negative: none), each text walked from
    the start state. Walks `_LANES` texts in turn, one byte each, so that the table reads, which miss
    the cache, of different texts are in flight together."""
    n_texts = offsets.shape[0] - 1
    base = offsets[0]
    feats = np.empty(offsets[n_texts] - base, np.int32)
    state = np.zeros(_LANES, np.int64)
    pos = np.zeros(_LANES, np.int64)
    end = np.zeros(_LANES, np.int64)
    taken = 0  # texts given to a lane so far
    active = True
    while active:
        active = False
        for g in range(_LANES):
            p = pos[g]
            while p >= end[g] and taken < n_texts:  # lane free: take the next text
                p, end[g], state[g] = offsets[taken], offsets[taken + 1], 0
                taken += 1
            pos[g] = p
            if p < end[g]:
                s = nextmove[rowbase[state[g]] + data[p]]
                state[g] = s
                feats[p - base] = output[s]
                pos[g] = p + 1
                active = True
    return feats


@_compiled
def classify_batch(data, offsets, nextmove, rowbase, output, ptc, pc, alias_first, alias_dupe):
    """(class index, probability) per text `data[offsets[t]:offsets[t + 1]]` (UTF-8 bytes, uint8).

    `nextmove[rowbase[state] + byte]` is the automaton's next state, `output[state]` the feature it
    emits there (negative: none), `ptc` (features x classes, float32) the log-probabilities, `pc` the
    class priors; class `alias_dupe[k]` is another column of the label of `alias_first[k]`."""
    n_texts = offsets.shape[0] - 1
    n_classes = pc.shape[0]
    base = offsets[0]
    feats = walk(data, offsets, nextmove, rowbase, output)
    best = np.empty(n_texts, np.int64)
    prob = np.empty(n_texts, np.float64)
    counts = np.zeros(ptc.shape[0], np.int64)
    touched = np.empty(max(feats.shape[0], 1), np.int64)  # features of one text, in order of first appearance
    scores = np.empty(n_classes, np.float64)
    for t in range(n_texts):
        start, end = offsets[t], offsets[t + 1]
        n_feats = 0
        for k in range(start - base, end - base):
            f = feats[k]
            if f >= 0:
                if counts[f] == 0:
                    touched[n_feats] = f
                    n_feats += 1
                counts[f] += 1
        scores[:] = 0.0
        if n_feats:  # featureless text: every class 0, a uniform distribution (as py3langid)
            for j in range(n_feats):
                f = touched[j]
                w = math.log1p(counts[f])
                counts[f] = 0
                for c in range(n_classes):
                    scores[c] += w * ptc[f, c]
            for c in range(n_classes):
                scores[c] += pc[c]
        length = end - start
        inv = 1.0 / math.sqrt(length if length else 1)  # temperature sqrt(bytes), as py3langid
        top = -np.inf
        for c in range(n_classes):
            scores[c] *= inv
            if scores[c] > top:
                top = scores[c]
        total = 0.0
        for c in range(n_classes):
            scores[c] = math.exp(scores[c] - top)
            total += scores[c]
        for c in range(n_classes):
            scores[c] /= total
        for k in range(alias_first.shape[0]):
            scores[alias_first[k]] += scores[alias_dupe[k]]
            scores[alias_dupe[k]] = 0.0
        i = 0
        for c in range(1, n_classes):
            if scores[c] > scores[i]:  # the first of equal maxima, as argmax
                i = c
        best[t] = i
        prob[t] = scores[i]
    return best, prob
