"""Imports every attack module so that each registers itself in ATTACKS."""

import importlib

ATTACK_MODULES = ["badnet", "blended", "sig", "ssba", "ftrojan", "trojvqa", "vltrojan", "adaptive"]

for _name in ATTACK_MODULES:
    try:
        importlib.import_module(f"{__package__}.{_name}")
    except ModuleNotFoundError as exc:  # pragma: no cover - only while an attack is being written
        if exc.name != f"{__package__}.{_name}":
            raise
