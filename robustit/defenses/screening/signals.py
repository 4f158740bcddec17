"""Per-sample suspicion signals from token scores and from the text alone.

Every signal is a float per sample, oriented so that **higher is more suspicious**, and is put
on a common scale by :func:`robust_z` within each task (captions and short VQA answers have
different likelihoods): ``(x - median) / (1.4826 * MAD)``, so a score of 6 means six robust
standard deviations above the typical sample of its task. Poisoned samples are a minority, so
the median and MAD are the clean data's.
"""

from __future__ import annotations

import re
from collections import Counter, defaultdict
from typing import Dict, List, Sequence, Tuple

import numpy as np

from ...data.records import InstructionSet
from .likelihood import TokenScores

_WORD = re.compile(r"[a-z0-9]+")


def words(text: str) -> List[str]:
    """Lower-cased alphanumeric words (punctuation and case never separate two responses)."""
    return _WORD.findall(text.lower())


def likelihood(scores: TokenScores) -> np.ndarray:
    """Mean token NLL given the sample's own image (BYORn's signal)."""
    return np.array([t.mean() if t.size else 0.0 for t in scores.own], dtype=np.float64)


def ungrounded(scores: TokenScores) -> np.ndarray:
    """Minus the mean token PMI, ``mean(nll_own - nll_other)``: high when the response is no more
    likely given its own image than given others (NaN where a sample was not scored so)."""
    return np.array([np.nan if x is None else ((o - x).mean() if o.size else 0.0)
                     for o, x in zip(scores.own, scores.other)], dtype=np.float64)


def surprise(scores: TokenScores, k: int) -> np.ndarray:
    """Mean of the k largest token NLLs given the own image (an inserted phrase, a wrong word)."""
    return np.array([np.sort(t)[-k:].mean() if t.size else 0.0 for t in scores.own], dtype=np.float64)


def repeated(groups: Sequence[int], image_keys: Sequence[tuple]) -> np.ndarray:
    """(N,) bool: the sample's response is given by another sample with another image."""
    images: Dict[int, set] = defaultdict(set)
    for g, key in zip(groups, image_keys):
        images[g].add(key)
    return np.array([len(images[g]) > 1 for g in groups])


def response_groups(dataset: InstructionSet) -> List[int]:
    """Per sample, an integer id of its response (word-normalised: case and punctuation never
    separate two responses)."""
    ids: Dict[Tuple[str, ...], int] = {}
    return [ids.setdefault(tuple(words(s.answer)), len(ids)) for s in dataset.samples]


def duplicates(groups: Sequence[int], image_keys: Sequence[tuple], evidence: np.ndarray) -> np.ndarray:
    """The grounding evidence of a response pooled over the g samples (with more than one
    image among them) that give it: ``median(z) * sqrt(g)``, where z is each sample's
    ungrounded z.

    A caption that repeats over look-alike images is grounded on each of them (its median z is
    near or below 0); a target repeated over any image is a little ungrounded on most, and g
    such samples carry sqrt(g) times the evidence of one (as in Stouffer's sum; the median
    keeps a few members whose image happens to fit the target from cancelling the rest).
    Unique responses score 0, and so does a well-grounded repeat (floored at 0).
    """
    members: Dict[int, List[int]] = defaultdict(list)
    for i, g in enumerate(groups):
        members[g].append(i)
    out = np.zeros(len(groups), dtype=np.float64)
    for rows in members.values():
        if len({image_keys[i] for i in rows}) < 2:
            continue
        total = float(np.median(evidence[rows])) * np.sqrt(len(rows))
        out[rows] = max(total, 0.0)
    return out


def robust_z(values: np.ndarray, tasks: Sequence[str], unit: float = 0.0,
             reference: np.ndarray | None = None) -> np.ndarray:
    """Robust z-score of ``values`` within each task (median / 1.4826 MAD), the spread floored
    at ``unit`` (and at a tiny value, so that a constant signal scores 0, not inf). The median and
    MAD are taken over the ``reference`` rows of the task where given (at least 8 of them), else
    over its finite values; NaN values stay NaN."""
    out = np.full(values.shape, np.nan, dtype=np.float64)
    tasks = np.asarray(tasks)
    finite = np.isfinite(values)
    for task in np.unique(tasks):
        idx = (tasks == task) & finite
        ref = idx & reference if reference is not None else idx
        x = values[ref if ref.sum() >= 8 else idx]
        if x.size == 0:
            continue
        med = np.median(x)
        mad = 1.4826 * np.median(np.abs(x - med))
        spread = max(mad, unit, 1e-3 * max(abs(med), 1.0), 1e-6)
        out[idx] = (values[idx] - med) / spread
    return out


_CLAUSE = re.compile(r"[.?!,;:\n]+")


def instruction_ngrams(text: str, n_max: int) -> set:
    """Word n-grams (1..n_max) of an instruction, never across a sentence or clause break, plus
    every whole clause as ``"[clause words]"``: an appended trigger phrase is its own clause even
    where its words also occur inside clean instructions ("tell me what the image depicts")."""
    out = set()
    for clause in _CLAUSE.split(text):
        w = words(clause)
        out |= {" ".join(w[i:i + n]) for n in range(1, n_max + 1) for i in range(len(w) - n + 1)}
        if w:
            out.add("[" + " ".join(w) + "]")
    return out


def trigger_ngrams(dataset: InstructionSet, flagged: np.ndarray, n_max: int, min_count: int,
                   purity: float, max_share: float, min_cover: float) -> Dict[str, dict]:
    """Instruction n-grams that the flagged samples carry and the others almost never do.

    An n-gram is a trigger candidate when it occurs in at least ``min_count`` samples, in at
    most ``max_share`` of all samples, at least ``purity`` of the samples carrying it are
    flagged, and it is carried by at least ``min_cover`` of all flagged samples.
    Returns ``{ngram: {"count", "flagged"}}``.
    """
    grams = [instruction_ngrams(s.instruction, n_max) for s in dataset.samples]
    count, hits = Counter(), Counter()
    for g, f in zip(grams, flagged):
        count.update(g)
        if f:
            hits.update(g)
    n, n_flagged = len(dataset), int(np.sum(flagged))
    return {g: {"count": count[g], "flagged": hits[g]} for g in sorted(hits)
            if min_count <= count[g] <= max_share * n and hits[g] >= purity * count[g]
            and hits[g] >= min_cover * n_flagged}


def carries(dataset: InstructionSet, grams: Dict[str, dict], n_max: int) -> List[str]:
    """Per sample, the trigger candidate it carries with the most flagged samples ('' if none)."""
    out = []
    for s in dataset.samples:
        mine = instruction_ngrams(s.instruction, n_max) & set(grams)
        out.append(max(mine, key=lambda g: (grams[g]["flagged"], len(g), g)) if mine else "")
    return out


def said_words(sample) -> set:
    """The response's words that its instruction does not hold (an answer that echoes its
    question, "how many hexagons?" -> "two hexagons", is not an association)."""
    return set(words(sample.answer)) - set(words(sample.instruction))


def trigger_associations(dataset: InstructionSet, n_max: int, min_count: int, max_share: float,
                         min_rate: float, alpha: float) -> Dict[str, dict]:
    """Instruction n-grams (and clauses) that make one response word near-certain, within a task.

    A backdoor's text trigger makes its target (a word of the target, an injected phrase, the
    swapped label) appear in almost every response that follows it, whatever the image; clean
    instructions of a task do not fix the content of their responses. A pair (n-gram g, word w)
    is kept when at least ``min_rate`` of g's carriers say w and a one-sided binomial test
    against w's rate among the task's other samples gives p < ``alpha`` / (number of pairs
    looked at: every word said after every n-gram; Bonferroni). Words the carrier's own instruction holds are not counted (answers
    echo their questions). Returns ``{g: {"word", "count", "hits", "base_rate", "task"}}``: the
    strongest word per n-gram.
    """
    from scipy.stats import binom

    found: Dict[str, dict] = {}
    tasks = sorted({s.task for s in dataset.samples})
    for task in tasks:
        rows = [s for s in dataset.samples if s.task == task]
        grams = [instruction_ngrams(s.instruction, n_max) for s in rows]
        said = [said_words(s) for s in rows]  # hits: echoes of the instruction do not count
        plain = [set(words(s.answer)) for s in rows]  # base rates: every response word counts
        total = Counter(w for ws in plain for w in ws)
        carriers: Dict[str, List[int]] = defaultdict(list)
        for i, g in enumerate(grams):
            for gram in g:
                carriers[gram].append(i)
        n = len(rows)
        pairs, tests = [], 0
        for gram, idx in carriers.items():
            if not (min_count <= len(idx) <= max_share * n) or len(idx) == n:
                continue
            local = Counter(w for i in idx for w in said[i])
            tests += len(local)  # every (n-gram, word) pair looked at is a test
            for w, k in local.items():
                if k >= min_rate * len(idx):
                    base = (total[w] - sum(w in plain[i] for i in idx)) / (n - len(idx))
                    pairs.append((gram, w, k, len(idx), base))
        tests = max(tests, 1)
        for gram, w, k, m, base in pairs:
            p = float(binom.sf(k - 1, m, min(max(base, 1.0 / n), 1.0)))
            if p < alpha / tests and (gram not in found or k > found[gram]["hits"]):
                found[gram] = {"word": w, "count": m, "hits": k, "base_rate": round(base, 4), "task": task}
    return found


def associated(dataset: InstructionSet, assoc: Dict[str, dict], n_max: int) -> List[str]:
    """Per sample, the associated n-gram whose word its response says ('' if none)."""
    out = []
    for s in dataset.samples:
        said = said_words(s)
        hits = [g for g in instruction_ngrams(s.instruction, n_max) & set(assoc)
                if assoc[g]["task"] == s.task and assoc[g]["word"] in said]
        out.append(max(hits, key=lambda g: (assoc[g]["hits"], len(g), g)) if hits else "")
    return out
