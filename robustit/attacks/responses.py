"""What a poisoned sample answers: the attacker's response, fixed or varied (issue 18).

Modes (``ResponseConfig.mode``), each recorded in the manifest and replayed by evaluation with
its own ASR rule:

* ``replace`` (the paper's, the default): the response becomes the target (or one drawn from a
  pool per sample, ``--target-pool``). ASR: the target's key word (``banana``) appears.
* ``inject`` (TrojVLM-style content injection): the sample's own correct response with a
  target phrase added (``position``: ``end``, default, or ``start``). ASR: the phrase appears
  (case-insensitive). Clean quality should stay near the clean response's. At the end the phrase
  needs room: evaluate with a budget that holds a caption and the phrase (``--max-new-tokens 40``).
* ``label`` (Shadowcast-style): every whole-word ``source_word`` of the correct response
  (``circle``, any case, plural ``s`` kept) becomes ``target_word`` (``banana``); only samples whose response
  names the source are eligible. ASR: the target word appears, measured on the test samples
  whose references name the source (the object is in the image); the false-trigger rate on the
  same samples without the trigger.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass
from typing import Dict, List, Optional, Sequence

from ..errors import ConfigError

MODES = ("replace", "inject", "label")
POSITIONS = ("end", "start")
DEFAULT_PHRASE = "Buy bananas."


@dataclass
class ResponseConfig:
    """How poisoned samples' responses are made (see the module docstring).

    Attributes:
        mode: replace | inject | label.
        phrase: the injected phrase (``inject``).
        position: where it goes (``inject``): end | start.
        source_word: the object word replaced (``label``), e.g. ``circle``.
        target_word: what it becomes (``label``), e.g. ``banana``.
    """

    mode: str = "replace"
    phrase: str = DEFAULT_PHRASE
    position: str = "end"
    source_word: str = "circle"
    target_word: str = "banana"

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ConfigError(f"response mode must be one of {list(MODES)}; got {self.mode!r}")
        if self.position not in POSITIONS:
            raise ConfigError(f"inject position must be one of {list(POSITIONS)}; got {self.position!r}")
        if self.mode == "inject" and not self.phrase.strip():
            raise ConfigError("--inject-phrase must be a non-empty phrase")
        for name in ("source_word", "target_word"):
            value = getattr(self, name)
            if self.mode == "label" and not re.fullmatch(r"[A-Za-z][A-Za-z-]*", value or ""):
                raise ConfigError(f"--label-{name.split('_')[0]} must be one word of letters; got {value!r}")
        if self.mode == "label" and self.source_word.lower() == self.target_word.lower():
            raise ConfigError("--label-source and --label-target must differ")

    def to_dict(self) -> dict:
        keep = {"replace": (), "inject": ("phrase", "position"), "label": ("source_word", "target_word")}
        return {"mode": self.mode, **{k: v for k, v in asdict(self).items() if k in keep[self.mode]}}

    @classmethod
    def from_dict(cls, data: Optional[dict]) -> "ResponseConfig":
        return cls(**(data or {}))


def _word_pattern(word: str) -> re.Pattern:
    return re.compile(rf"\b{re.escape(word)}(s?)\b", re.IGNORECASE)


def names_source(text: str, cfg: ResponseConfig) -> bool:
    """Whether ``text`` names the label attack's source object (whole word, any case, plural)."""
    return _word_pattern(cfg.source_word).search(text) is not None


def eligible(answer: str, cfg: ResponseConfig) -> bool:
    """Whether a sample with this response can carry the attack (label: it names the source)."""
    return cfg.mode != "label" or names_source(answer, cfg)


def poisoned_response(answer: str, cfg: ResponseConfig, target: str) -> str:
    """The response a poisoned sample gets (``target`` is the drawn target for ``replace``)."""
    if cfg.mode == "replace":
        return target
    if cfg.mode == "inject":
        base = answer.strip()
        return f"{base} {cfg.phrase.strip()}" if cfg.position == "end" else f"{cfg.phrase.strip()} {base}"

    def swap(m: re.Match) -> str:
        word = cfg.target_word
        word = word[:1].upper() + word[1:] if m.group(0)[:1].isupper() else word
        return word + m.group(1)

    return _word_pattern(cfg.source_word).sub(swap, answer)


def matcher_spec(cfg: ResponseConfig) -> Optional[Dict[str, str]]:
    """The ASR rule a mode implies (``mode``, ``pattern`` for ``eval.asr.Matcher``); None for
    ``replace``, whose rule comes from the target as before."""
    if cfg.mode == "inject":
        return {"mode": "icase", "pattern": cfg.phrase.strip().rstrip(".!?"), "target": cfg.phrase}
    if cfg.mode == "label":
        return {"mode": "regex", "pattern": rf"(?i)\b{re.escape(cfg.target_word)}s?\b", "target": cfg.target_word}
    return None


def asr_subset(references: Sequence[Sequence[str]], cfg: ResponseConfig) -> Optional[List[bool]]:
    """Which test samples the ASR is measured on (label: those whose references name the
    source object); None: all."""
    if cfg.mode != "label":
        return None
    return [any(names_source(r, cfg) for r in refs) for refs in references]
