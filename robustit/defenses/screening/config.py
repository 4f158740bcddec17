"""What a screening run computes and how it decides (recorded with every audit and guard run)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional, Tuple

from ...config import check_range
from ...errors import ConfigError

#: every signal the screen can compute; each can be switched off (docs/audit.md)
SIGNALS = ("likelihood", "grounding", "surprise", "duplicates", "associations", "trigger_ngrams")
#: signals on by default (``grounding`` alone separated no attack in the probes of docs/audit.md
#: and flags clean samples; ``duplicates`` uses it where responses repeat)
DEFAULT_SIGNALS = ("likelihood", "surprise", "duplicates", "associations", "trigger_ngrams")


@dataclass
class ScreenConfig:
    """Settings of the screen (``robustit audit``, the ``guard`` defense).

    Attributes:
        signals: which signals to compute and combine (a subset of ``SIGNALS``):
            ``likelihood`` (mean token NLL of the response under the frozen base, BYORn's),
            ``grounding`` (PMI: NLL given other images minus NLL given its own image),
            ``surprise`` (mean of the ``surprise_tokens`` least likely response tokens: an
            inserted phrase or a swapped word),
            ``duplicates`` (how many samples share the response, weighed by how little their
            images agree), ``associations`` (instruction n-grams after which one response word
            is near-certain: a text trigger and its target, found from the text alone),
            ``trigger_ngrams`` (instruction n-grams concentrated on suspects).
        threshold: a sample is flagged when its combined score (robust z units) exceeds this.
        flag_share: instead of ``threshold``, flag this share of the samples with the highest
            scores (BYORn flags the least likely 40 %: ``flag_share=0.4``); None: the threshold.
        other_images: how many other images each response is scored against (grounding).
        grounding_reference: with ``grounding`` off, only responses that repeat over images (and
            this many unique-response samples per task, the z's reference) are scored against
            other images: what ``duplicates`` needs, at a fraction of a full pass.
        surprise_tokens: tokens averaged by ``surprise``.
        batch_size: samples per forward pass.
        max_len: token budget per sample (the training preset's).
        ngram_max: longest instruction n-gram considered by ``trigger_ngrams``.
        ngram_min_count: an n-gram must occur in at least this many samples.
        ngram_purity: share of an n-gram's samples that must be flagged for it to be a trigger.
        ngram_max_share: an n-gram carried by more than this share of all samples is never one.
        ngram_min_cover: share of all flagged samples an n-gram must carry (a text trigger is
            shared by the poison; a chance co-occurrence with a few suspects is not).
        assoc_min_rate: share of an n-gram's carriers that must say the associated word.
        assoc_alpha: family-wise significance of the association test (Bonferroni over pairs).
        seed: seeds the choice of other images.
    """

    signals: Tuple[str, ...] = DEFAULT_SIGNALS
    threshold: float = 6.0
    flag_share: Optional[float] = None
    other_images: int = 1
    grounding_reference: int = 256
    surprise_tokens: int = 2
    batch_size: int = 64
    max_len: int = 96
    ngram_max: int = 3
    ngram_min_count: int = 5
    ngram_purity: float = 0.8
    ngram_max_share: float = 0.25
    ngram_min_cover: float = 0.2
    assoc_min_rate: float = 0.8
    assoc_alpha: float = 0.01
    seed: int = 0
    notes: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.signals = tuple(self.signals)
        unknown = [s for s in self.signals if s not in SIGNALS]
        if unknown or not self.signals:
            raise ConfigError(f"screen signals {list(self.signals)}: unknown or none {unknown}; "
                              f"choose from {list(SIGNALS)}")
        if self.signals == ("trigger_ngrams",):
            raise ConfigError("the trigger_ngrams signal spreads other signals' suspicion; "
                              "switch on at least one more signal")
        check_range("threshold", self.threshold, 0)
        if self.flag_share is not None:
            check_range("flag_share", self.flag_share, 0, 1, lo_open=True, hi_open=True)
        check_range("other_images", self.other_images, 1, 16)
        check_range("grounding_reference", self.grounding_reference, 8)
        check_range("surprise_tokens", self.surprise_tokens, 1, 64)
        check_range("batch_size", self.batch_size, 1)
        check_range("max_len", self.max_len, 8)
        check_range("ngram_max", self.ngram_max, 1, 8)
        check_range("ngram_min_count", self.ngram_min_count, 2)
        check_range("ngram_purity", self.ngram_purity, 0, 1)
        check_range("ngram_max_share", self.ngram_max_share, 0, 1)
        check_range("ngram_min_cover", self.ngram_min_cover, 0, 1)
        check_range("assoc_min_rate", self.assoc_min_rate, 0, 1, lo_open=True)
        check_range("assoc_alpha", self.assoc_alpha, 0, 1, lo_open=True)

    @property
    def needs_model(self) -> bool:
        return any(s in self.signals for s in ("likelihood", "grounding", "surprise", "duplicates"))
