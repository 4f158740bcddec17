"""Prompt filtering at inference (RobustIT paper, Sec. 4 / Table 10): drop blacklisted tokens
from the instruction before generation.

The blacklist is the defender's guess at the trigger. Two lists ship with the package
(``robustit/resources/blacklists/``): ``perfect`` (the text triggers our attacks use: an oracle
upper bound) and ``realistic`` (rare tokens a defender would write from the trigger-word
literature without knowing the attack); any UTF-8 file can be given instead.

File format: one entry per line; an entry is a word or a phrase (words separated by spaces);
blank lines and lines starting with ``#`` are ignored.

Matching (what "removes the listed tokens and nothing else" means here):

* case-insensitive ("Consider" is removed by the entry ``consider``);
* whole words only: an entry matches where it is not preceded or followed by a word character
  (letter, digit, underscore), so ``cf`` removes "cf" and "cf." 's "cf" but not "cfa" or "scf";
* a phrase matches its words in order with any whitespace between them;
* punctuation next to a removed word stays ("Describe it, zbw." -> "Describe it,.");
* when something was removed, whitespace is tidied: runs become one space, none at the ends,
  none before ``. , ; : ! ?``. An instruction with no match is returned unchanged, byte for byte.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import List, Tuple

from ..errors import ConfigError

__all__ = ["BUILTIN_BLACKLISTS", "PromptFilter", "load_blacklist", "parse_blacklist"]

#: built-in list name -> resource path inside the robustit package
BUILTIN_BLACKLISTS = {"perfect": "resources/blacklists/perfect.txt",
                      "realistic": "resources/blacklists/realistic.txt"}


def parse_blacklist(text: str, where: str) -> Tuple[str, ...]:
    """Entries of a blacklist text: stripped non-comment lines, inner whitespace collapsed."""
    entries = []
    for line in text.splitlines():
        entry = " ".join(line.split())
        if entry and not entry.startswith("#") and entry not in entries:
            entries.append(entry)
    if not entries:
        raise ConfigError(f"blacklist {where}: holds no entries (one word or phrase per line, "
                          f"'#' for comments)")
    return tuple(entries)


def load_blacklist(spec: str) -> Tuple[str, str, Tuple[str, ...]]:
    """(where, text, entries) for ``spec``: a built-in name (``perfect``, ``realistic``) or a file.

    Raises:
        ConfigError: naming the file when it cannot be read, is not UTF-8 or has no entries.
    """
    if spec in BUILTIN_BLACKLISTS:
        where = f"{spec} (robustit/{BUILTIN_BLACKLISTS[spec]})"
        text = resources.files("robustit").joinpath(BUILTIN_BLACKLISTS[spec]).read_text("utf-8")
    else:
        where = str(spec)
        try:
            text = Path(spec).read_text("utf-8")
        except OSError as exc:
            raise ConfigError(f"blacklist file {where}: cannot read it ({exc.strerror or exc}); give "
                              f"'perfect', 'realistic' or a readable text file") from None
        except UnicodeDecodeError:
            raise ConfigError(f"blacklist file {where}: not UTF-8 text") from None
    return where, text, parse_blacklist(text, where)


def _entry_pattern(entry: str) -> str:
    return r"\s+".join(re.escape(word) for word in entry.split())


@dataclass(frozen=True)
class PromptFilter:
    """Removes blacklisted words / phrases from instructions (see the module doc for the rules).

    Attributes:
        source: what was asked for (``perfect``, ``realistic`` or a file path).
        where: where the list was read from.
        entries: the blacklist.
        sha256: hash of the list's text (recorded with results).
    """

    source: str
    where: str
    entries: Tuple[str, ...]
    sha256: str

    @classmethod
    def from_spec(cls, spec: str) -> "PromptFilter":
        where, text, entries = load_blacklist(spec)
        return cls(spec, where, entries, hashlib.sha256(text.encode("utf-8")).hexdigest())

    @property
    def pattern(self) -> re.Pattern:
        # longest entries first, so a phrase wins over a word it starts with
        alternatives = sorted(self.entries, key=len, reverse=True)
        body = "|".join(_entry_pattern(e) for e in alternatives)
        return re.compile(rf"(?<!\w)(?:{body})(?!\w)", re.IGNORECASE)

    def __call__(self, text: str) -> str:
        """``text`` without the blacklisted entries (unchanged when none occurs)."""
        removed, n = self._compiled().subn("", text)
        if n == 0:
            return text
        removed = " ".join(removed.split())
        return re.sub(r" (?=[.,;:!?])", "", removed)

    def batch(self, texts: List[str]) -> List[str]:
        return [self(t) for t in texts]

    def _compiled(self) -> re.Pattern:
        # frozen dataclass: cache the compiled pattern on the instance without a field
        cached = self.__dict__.get("_pattern")
        if cached is None:
            cached = self.pattern
            object.__setattr__(self, "_pattern", cached)
        return cached

    def describe(self) -> dict:
        """JSON-ready record for results."""
        return {"source": self.source, "where": self.where, "sha256": self.sha256,
                "entries": list(self.entries)}
