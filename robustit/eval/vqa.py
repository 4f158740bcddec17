"""VQA accuracy with the VQAv2 answer normalisation.

Written from the published VQA evaluation rules (visualqa.org, "Evaluation"):

1. line breaks and tabs become spaces; surrounding space is stripped;
2. punctuation ``; / [ ] " { } ( ) = + \\ _ - > < @ ` , ? !`` is replaced by a space, or deleted
   when it touches a space or when the answer holds a digit-comma-digit group ("100,000");
   apostrophes and colons stay;
3. a period is removed unless a digit follows it (so "3.5" stays, "yes." -> "yes");
4. lower case; number words ``none zero one .. ten`` become digits; articles ``a an the`` go;
5. a contraction written without its apostrophe gets it back ("dont" -> "don't").

Accuracy of one answer against the ten human answers is the mean, over the ten ways of leaving
one human answer out, of ``min(1, #matches among the other nine / 3)``: 1 match -> 0.3,
2 -> 0.6, 3 -> 0.9, 4 or more -> 1.0.

Two deliberate, documented choices:

- The official script normalises the human answers (and, in some versions, the prediction)
  only when the annotators disagree, because the released answers are already normalised.
  Generated answers are not, so here both sides are always normalised: "Two" matches "2"
  even when all ten annotators wrote "2".
- The official contraction table also carries entries that never fire after lower-casing
  ("Im", "Ive", "Id've") and one reversed entry ("somebody'd" -> "somebodyd"); the table here
  is built from the contracted forms and keeps only what fires, and leaves spellings that
  are ordinary words alone ("its", "lets", "shell", "well", "were", "wed", "ill", "id").

Imports no model code and not torch.
"""

from __future__ import annotations

import re
from collections import defaultdict
from typing import Mapping, Sequence

from .pairing import check_paired

_PUNCT = (";", "/", "[", "]", '"', "{", "}", "(", ")", "=", "+", "\\", "_", "-", ">", "<", "@",
          "`", ",", "?", "!")
_DIGIT_COMMA_DIGIT = re.compile(r"\d,\d")
_PERIOD_NOT_BEFORE_DIGIT = re.compile(r"\.(?!\d)")
NUMBER_WORDS = {"none": "0", "zero": "0", "one": "1", "two": "2", "three": "3", "four": "4",
                "five": "5", "six": "6", "seven": "7", "eight": "8", "nine": "9", "ten": "10"}
ARTICLES = frozenset({"a", "an", "the"})

# Contracted forms; each is restored from its spellings with one apostrophe dropped.
_CONTRACTED = """
ain't aren't can't could've couldn't couldn't've didn't doesn't don't hadn't hadn't've hasn't
haven't he'd he'd've he's how'd how'll how's isn't it'd it'd've it'll ma'am mightn't mightn't've
might've mustn't must've needn't not've o'clock oughtn't 'ow's'at shan't she'd've should've
shouldn't shouldn't've somebody'd've somebody'll somebody's someone'd someone'd've someone'll
someone's something'd something'd've something'll that's there'd there'd've there're there's
they'd they'd've they'll they're they've 'twas wasn't we'd've we've weren't what'll what're
what's what've when's where'd where's where've who'd who'd've who'll who's who've why'll why're
why's won't would've wouldn't wouldn't've y'all y'all'll y'all'd've you'd you'd've you'll
you're you've
""".split()


def _build_contractions(forms: Sequence[str]) -> dict[str, str]:
    """Map each spelling with exactly one apostrophe missing to the contracted form."""
    table = {}
    for form in forms:
        positions = [i for i, ch in enumerate(form) if ch == "'"]
        for pos in positions:
            table[form[:pos] + form[pos + 1:]] = form
    return table


CONTRACTIONS = _build_contractions(_CONTRACTED)


def _punctuation(text: str) -> str:
    """Rules 2 and 3: space out or delete punctuation; drop periods not followed by a digit."""
    delete_all = _DIGIT_COMMA_DIGIT.search(text) is not None
    out = text
    for mark in _PUNCT:
        # The decision looks at the original text, as the published rules do.
        touches_space = (mark + " " in text) or (" " + mark in text)
        out = out.replace(mark, "" if (touches_space or delete_all) else " ")
    return _PERIOD_NOT_BEFORE_DIGIT.sub("", out)


def _digits_articles_contractions(text: str) -> str:
    """Rules 4 and 5 on whitespace-separated words."""
    words = []
    for word in text.lower().split():
        word = NUMBER_WORDS.get(word, word)
        if word not in ARTICLES:
            words.append(CONTRACTIONS.get(word, word))
    return " ".join(words)


def normalize_answer(answer: str) -> str:
    """The VQAv2 normalisation of one answer string (see the module docstring).

    >>> normalize_answer("Two dogs.")
    '2 dogs'
    """
    text = answer.replace("\n", " ").replace("\t", " ").strip()
    return _digits_articles_contractions(_punctuation(text))


def question_accuracy(prediction: str, answers: Sequence[str]) -> float:
    """Accuracy in [0, 1] of one prediction against the human answers (normalised here).

    With ten answers this is the VQAv2 leave-one-out mean of ``min(1, matches / 3)``. With a
    single reference answer (a generated QA set) it is exact match after normalisation; with
    2-9 answers the same leave-one-out formula applies, so full credit needs at least four
    matching answers, as in VQAv2.
    """
    pred = normalize_answer(prediction)
    norm = [normalize_answer(a) for a in answers]
    if len(norm) == 1:
        return float(pred == norm[0])
    matches = sum(a == pred for a in norm)
    # Leaving out a matching answer leaves matches - 1 among the others, else matches.
    total = sum(min(1.0, (matches - (a == pred)) / 3.0) for a in norm)
    return total / len(norm)


def _check(predictions: Mapping, answers: Mapping) -> None:
    check_paired("vqa_accuracy", predictions, answers, "prediction", "answer")


def vqa_accuracy(predictions: Mapping[object, str], answers: Mapping[object, Sequence[str]],
                 question_types: Mapping[object, str] | None = None) -> dict:
    """VQA accuracy in percent over questions, optionally broken down by question type.

    Args:
        predictions: question id -> generated answer.
        answers: question id -> human answers (ten in VQAv2); the same ids as ``predictions``.
        question_types: optional question id -> type (e.g. "what color", or answer type
            "yes/no"); ids without a type are grouped under "unknown".

    Returns:
        ``{"accuracy": percent, "per_type": {type: percent} or None, "n": questions}``.
    """
    _check(predictions, answers)
    scores = {qid: question_accuracy(predictions[qid], answers[qid]) for qid in predictions}
    per_type = None
    if question_types is not None:
        groups: dict[str, list[float]] = defaultdict(list)
        for qid, score in scores.items():
            groups[question_types.get(qid, "unknown")].append(score)
        per_type = {t: 100.0 * sum(v) / len(v) for t, v in sorted(groups.items())}
    accuracy = 100.0 * sum(scores.values()) / len(scores)
    return {"accuracy": accuracy, "per_type": per_type, "n": len(scores)}
