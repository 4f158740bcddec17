"""Synonyms for IDR's textual augmentation (synonym substitution, RobustIT Sec. 3.3).

Two sources:

* ``"wordnet"``: WordNet through NLTK, used only when ``nltk`` imports and the corpus is already
  on disk (``nltk.data.find``); nothing is ever downloaded. Lemmas of every synset of the word,
  in WordNet's order (the EDA / CleanCLIP convention); noisy but broad.
* ``"table"``: the table shipped in ``robustit/resources/synonyms.json`` (~400 captioning / VQA
  instruction words, one-directional, hand-checked; no entries for direction, colour, shape or
  number words, whose replacement would change the answer).

``kind="auto"`` (default) takes WordNet when present, else the table. Because the choice changes
the augmentation, ``source_name`` records which one is in use; results should store it (and
``kind="table"`` gives the same augmentation on every machine).
"""

from __future__ import annotations

import json
import re
from importlib import resources
from pathlib import Path
from typing import Callable, Dict, List, Optional, Union

from ..errors import ConfigError, DataError

__all__ = ["SynonymSource", "load_table", "wordnet_available", "match_case", "SOURCE_KINDS"]

SOURCE_KINDS = ("auto", "table", "wordnet")
_WORD_OK = re.compile(r"^[a-z][a-z' -]*$")


def load_table(path: Union[str, Path, None] = None) -> Dict[str, List[str]]:
    """Read a synonym table ``{"synonyms": {word: [replacement, ...]}}`` (default: the shipped one).

    Raises:
        DataError: the file is missing or not in that format.
    """
    if path is None:
        text = resources.files("robustit").joinpath("resources/synonyms.json").read_text("utf-8")
        where = "robustit/resources/synonyms.json"
    else:
        where = str(path)
        try:
            text = Path(path).read_text("utf-8")
        except OSError as exc:
            raise DataError(f"synonym table {where}: cannot read it ({exc.strerror})") from None
    try:
        table = json.loads(text)["synonyms"]
        ok = isinstance(table, dict) and all(isinstance(v, list) and all(isinstance(s, str) for s in v)
                                             for v in table.values())
    except (json.JSONDecodeError, KeyError, TypeError):
        ok = False
    if not ok:
        raise DataError(f"synonym table {where}: expected JSON {{\"synonyms\": {{word: [synonym, ...]}}}}")
    return {k.lower(): list(v) for k, v in table.items()}


def _load_wordnet() -> Optional[Callable[[str], List[str]]]:
    """A word -> synonyms function backed by local WordNet, or None when unavailable."""
    try:
        import nltk  # noqa: F401  (optional dependency)
        from nltk.corpus import wordnet as wn

        try:
            nltk.data.find("corpora/wordnet")
        except LookupError:
            nltk.data.find("corpora/wordnet.zip")
        wn.synsets("picture")  # forces the lazy corpus load; raises if the files are incomplete
    except Exception:  # ImportError, LookupError, OSError from a half-installed corpus
        return None

    def lookup(word: str) -> List[str]:
        out: List[str] = []
        for synset in wn.synsets(word):
            for lemma in synset.lemma_names():
                name = lemma.replace("_", " ").lower()
                if name != word and name not in out and _WORD_OK.match(name):
                    out.append(name)
        return out

    return lookup


def wordnet_available() -> bool:
    """Whether NLTK and a local WordNet corpus are usable (no download is attempted)."""
    return _load_wordnet() is not None


def match_case(original: str, replacement: str) -> str:
    """Give ``replacement`` the capitalisation pattern of ``original``.

    ALL CAPS (2+ letters) -> upper; Capitalised -> first letter upper; otherwise unchanged.
    """
    if len(original) > 1 and original.isupper():
        return replacement.upper()
    if original[:1].isupper():
        return replacement[:1].upper() + replacement[1:]
    return replacement


class SynonymSource:
    """Looks up synonyms of single words, deterministically.

    Args:
        kind: ``"auto"`` (WordNet if present locally, else the table), ``"table"`` or
            ``"wordnet"`` (error when unavailable).
        table_path: a table to use instead of the shipped one.

    Attributes:
        source_name: ``"wordnet"`` or ``"table"`` (record it with results).
    """

    def __init__(self, kind: str = "auto", table_path: Union[str, Path, None] = None) -> None:
        if kind not in SOURCE_KINDS:
            raise ConfigError(f"`synonym_source` must be one of {list(SOURCE_KINDS)}; got {kind!r}")
        self._wordnet = _load_wordnet() if kind in ("auto", "wordnet") else None
        if kind == "wordnet" and self._wordnet is None:
            raise ConfigError(
                "`synonym_source`='wordnet' but NLTK or its WordNet corpus is not available locally; "
                "install nltk and put WordNet under an nltk.data.path root (corpora/wordnet), or use "
                "synonym_source='table' (the shipped table) or 'auto'"
            )
        self._table = load_table(table_path) if self._wordnet is None else {}
        self.source_name = "wordnet" if self._wordnet is not None else "table"
        self._cache: Dict[str, List[str]] = {}

    def synonyms(self, word: str) -> List[str]:
        """Replacements for ``word`` (case-insensitive lookup), with its capitalisation; [] if none.

        The order is the source's order (table order / WordNet synset order), never sorted by
        chance, so a seeded pick is reproducible.
        """
        key = word.lower()
        if key not in self._cache:
            found = self._wordnet(key) if self._wordnet is not None else self._table.get(key, [])
            self._cache[key] = [s for s in found if s.lower() != key]
        return [match_case(word, s) for s in self._cache[key]]

    def __contains__(self, word: str) -> bool:
        return bool(self.synonyms(word))

    def __repr__(self) -> str:
        return f"SynonymSource(source_name={self.source_name!r})"
