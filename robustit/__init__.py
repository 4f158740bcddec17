"""robustit: backdoor-safe instruction tuning of vision-language models.

The pipeline is a chain of functions, each with a CLI verb on top of it::

    data -> poison -> train (vanilla | robustit | baselines) -> eval -> bench -> report

See ``docs/architecture.md`` for the packages and their direction.
"""

__version__ = "0.1.0"
