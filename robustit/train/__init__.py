"""Tuning: presets, methods (vanilla, robustit, pretrain), the loop, resume state."""

from . import robustit_method  # noqa: F401  (registers the "robustit" method)
