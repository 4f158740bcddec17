"""Screening instruction data for backdoor poison without knowing the attack.

``screen_dataset(model, dataset, ScreenConfig)`` scores every sample under the frozen base
(``likelihood.py``: token NLLs given its own and other images; ``signals.py``: the per-sample
signals and the text-trigger search) and flags the outliers (``screen.py``); ``repair.py`` drops
or repairs the flagged samples. Used by ``robustit audit`` and the ``guard`` tuning method.
"""

from .config import DEFAULT_SIGNALS, SIGNALS, ScreenConfig  # noqa: F401
