"""Magnitude pruning of the adapter before inference (RobustIT paper, Sec. 4 / Table 10).

"20% magnitude-based adapter pruning before each forward pass": in every weight *matrix* of the
adapter (``*.weight`` parameters with two or more dimensions: the (out, in) linear weights), the
floor(share * numel) entries of smallest |w| are set to zero. The adapter's weights do not
change during inference, so pruning once before generation equals pruning before each forward.

Choices of ours (docs/baselines.md): per matrix, not one global threshold (so no matrix is
emptied); vectors and scalars (biases, norms, the cross-attention gates) and the perceiver's
learned latent queries (an input, not a weight matrix) are left alone, as is everything outside
the adapter (vision encoder, language model, word embeddings / LM head); ties
in |w| prune the lower flat index first (a stable sort), so the result is deterministic.
"""

from __future__ import annotations

import math
from typing import Dict

import torch
from torch import Tensor

from ..config import check_range
from ..errors import ConfigError

__all__ = ["check_share", "prune_count", "prune_matrix_", "adapter_matrices", "magnitude_prune"]

_FLOOR_EPS = 1e-9  # floor(0.29 * 100) must be 29, not 28 (float error)


def check_share(share: float, name: str = "magnitude_prune") -> float:
    """``share`` as a float in [0, 1); ConfigError naming ``name`` otherwise."""
    if isinstance(share, bool) or not isinstance(share, (int, float)):
        raise ConfigError(f"`{name}` must be a number in [0, 1); got {share!r}")
    check_range(name, share, 0.0, 1.0, hi_open=True)
    return float(share)


def prune_count(share: float, numel: int) -> int:
    """Entries zeroed in a matrix of ``numel`` entries: floor(share * numel)."""
    return int(math.floor(check_share(share) * numel + _FLOOR_EPS))


@torch.no_grad()
def prune_matrix_(weight: Tensor, share: float) -> int:
    """Zero, in place, the floor(share * numel) entries of ``weight`` with the smallest |w|.

    Args:
        weight: any shape (..., ...); ranked over all its entries.
        share: in [0, 1).

    Returns:
        how many entries were set to zero (some may already have been zero).
    """
    n = prune_count(share, weight.numel())
    if n == 0:
        return 0
    flat = weight.view(-1) if weight.is_contiguous() else weight.reshape(-1)
    order = torch.sort(flat.abs(), stable=True).indices[:n]
    flat[order] = 0
    if not weight.is_contiguous():  # reshape copied: write back
        weight.copy_(flat.view_as(weight))
    return n


def adapter_matrices(model) -> Dict[str, torch.nn.Parameter]:
    """The adapter's weight matrices: ``*.weight`` parameters with ndim >= 2, by name."""
    return {n: p for n, p in model.part_parameters("adapter").items()
            if n.endswith("weight") and p.dim() >= 2}


def magnitude_prune(model, share: float) -> Dict:
    """Prune every adapter weight matrix of ``model`` in place; returns a JSON-ready record.

    Args:
        model: an LVLM (its ``spec.adapter`` names the adapter modules).
        share: share of each matrix's entries to zero, in [0, 1); 0 does nothing.

    Returns:
        {"share", "matrices": how many matrices, "weights": their entries, "zeroed": entries set
        to zero, "zero_after": entries that are zero afterwards}.
    """
    share = check_share(share)
    matrices = adapter_matrices(model)
    zeroed = sum(prune_matrix_(p.data, share) for p in matrices.values())
    return {"share": share, "matrices": len(matrices),
            "weights": sum(p.numel() for p in matrices.values()), "zeroed": zeroed,
            "zero_after": sum(int((p == 0).sum()) for p in matrices.values())}
