"""Tuning: presets, methods (vanilla, robustit, pretrain), the loop, resume state."""
