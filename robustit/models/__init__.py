"""Models: the LVLM protocol, family specs, the embedded Flamingo-style model, checkpoints."""
