"""Seeded generators. Library code never touches the global RNGs."""

from __future__ import annotations

import random

import numpy as np
import torch


def torch_generator(seed: int) -> torch.Generator:
    g = torch.Generator()
    g.manual_seed(int(seed))
    return g


def numpy_rng(seed: int) -> np.random.Generator:
    return np.random.default_rng(int(seed))


def seed_everything(seed: int) -> None:
    """Seed the global RNGs too: only for the top of a CLI run (model init, dropout)."""
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)


def derive_seed(seed: int, *labels: object) -> int:
    """A stable child seed for a named purpose (same inputs -> same seed on every machine)."""
    import hashlib

    h = hashlib.sha256(("/".join([str(seed), *map(str, labels)])).encode()).digest()
    return int.from_bytes(h[:8], "little") & 0x7FFF_FFFF_FFFF_FFFF
