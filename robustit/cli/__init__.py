"""The ``robustit`` command line: one module per verb, each with ``register(subparsers)``.

Each verb module defines ``register(subparsers)`` which adds its parser and sets
``func=run`` where ``run(args) -> int``. Errors from bad user input (:class:`RobustITError`)
are printed as one clear line, without a traceback, and exit with status 2.
"""

from __future__ import annotations

import argparse
import importlib
import signal
import sys
import threading
from typing import List, Optional

from ..errors import RobustITError

#: verb -> module under robustit.cli
VERBS = ["data", "pretrain", "train", "generate", "poison", "audit", "eval", "bench", "report", "activations",
         "compose"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="robustit",
        description="Backdoor-safe instruction tuning of vision-language models: build data, "
                    "poison it, tune (VanillaIT / RobustIT / baselines), generate, evaluate, run "
                    "benchmark grids and report them. `robustit VERB --help` explains each verb.",
    )
    sub = parser.add_subparsers(dest="verb", metavar="VERB")
    sub.required = True
    for verb in VERBS:
        importlib.import_module(f"{__name__}.{verb.replace('-', '_')}").register(sub)
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    terminate_as_interrupt()
    try:
        return int(args.func(args) or 0)
    except RobustITError as exc:
        print(f"robustit {args.verb}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"robustit {args.verb}: interrupted", file=sys.stderr)
        return 130


def _raise_interrupt(signum, frame) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def terminate_as_interrupt() -> None:
    """Make SIGTERM (``kill``, ``timeout``, batch schedulers) stop a verb like Ctrl-C does, so
    its cleanup runs: temporary files are removed, bench workers are terminated. Only from the
    main thread and only where SIGTERM still has its default action (an embedding program's
    own handler is kept)."""
    if (threading.current_thread() is threading.main_thread()
            and signal.getsignal(signal.SIGTERM) is signal.SIG_DFL):
        signal.signal(signal.SIGTERM, _raise_interrupt)


if __name__ == "__main__":  # python -m robustit.cli
    sys.exit(main())
