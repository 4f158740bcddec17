"""One check for scorers that pair generated outputs with ground truth by id."""

from __future__ import annotations

from typing import Mapping

from ..errors import ConfigError, DataError


def few_ids(ids) -> str:
    shown = sorted(map(str, ids))[:5]
    return ", ".join(repr(i) for i in shown) + (", ..." if len(ids) > 5 else "")


def check_paired(scorer: str, outputs: Mapping, truths: Mapping, output_name: str,
                 truth_name: str) -> None:
    """Same ids on both sides, a string per output, a non-empty list of strings per truth.

    Args:
        scorer: the calling function's name, for messages.
        outputs, truths: id -> generated text; id -> list of reference strings.
        output_name, truth_name: what to call the two sides in messages
            (e.g. "candidate" / "reference", "prediction" / "answer").
    """
    if not outputs:
        raise DataError(f"{scorer}: `{output_name}s` is empty; nothing to score")
    only_o = set(outputs) - set(truths)
    only_t = set(truths) - set(outputs)
    if only_o or only_t:
        parts = []
        if only_o:
            parts.append(f"{len(only_o)} {output_name} id(s) have no {truth_name}s ({few_ids(only_o)})")
        if only_t:
            parts.append(f"{len(only_t)} {truth_name} id(s) have no {output_name} ({few_ids(only_t)})")
        raise ConfigError(f"{scorer}: `{output_name}s` and `{truth_name}s` must have the same ids; "
                          + "; ".join(parts) + ". Score the matching subset or fix the id mapping")
    for key, out in outputs.items():
        if not isinstance(out, str):
            raise DataError(f"{scorer}: {output_name} {key!r} is {type(out).__name__}, "
                            "expected a string (use '' for an empty generation)")
    for key, refs in truths.items():
        if isinstance(refs, str) or not refs or not all(isinstance(r, str) for r in refs):
            raise DataError(f"{scorer}: {truth_name}s of {key!r} must be a non-empty list of "
                            f"strings, got {refs!r}")
