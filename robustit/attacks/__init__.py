"""Backdoor attacks: pure trigger maths (functional.py), one file per attack, poisoning.

Importing this package registers every attack in :data:`ATTACKS`.
"""

from .base import ATTACKS, Attack, AttackConfig, AttackContext, build_attack  # noqa: F401

# Attack modules register themselves on import.
from . import _all  # noqa: F401,E402
