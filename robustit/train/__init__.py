"""Tuning: presets, methods (vanilla, robustit, pretrain, fineprune, cleanclip), the loop, resume state."""

from . import robustit_method  # noqa: F401  (registers the "robustit" method)
from . import baselines  # noqa: F401  (registers the "fineprune" and "cleanclip" baselines)
from . import guard  # noqa: F401  (registers the "guard" screening defense)
from . import abl  # noqa: F401  (registers the "abl" baseline)
