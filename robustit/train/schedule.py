"""Learning-rate schedule: linear warm-up then cosine decay to zero (the paper's setting)."""

import math


def cosine_with_warmup(step: int, total_steps: int, warmup_ratio: float) -> float:
    """Multiplier in [0, 1] for optimizer step ``step`` (0-based) of ``total_steps``.

    Warm-up covers ``ceil(warmup_ratio * total_steps)`` steps (at least one when the ratio is
    positive), so 1 % warm-up is never silently zero on short runs.
    """
    warmup = math.ceil(warmup_ratio * total_steps) if warmup_ratio > 0 else 0
    if step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, total_steps - warmup)
    return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))
