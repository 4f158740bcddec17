"""Process-group helpers shared by training and evaluation.

A run is *launched* when ``torchrun`` or ``accelerate launch`` started it (``WORLD_SIZE`` > 1 in
the environment). Training builds its ``accelerate.Accelerator`` (``robustit.train.runtime``),
which initialises the process group; evaluation calls :func:`init_eval_process` (accelerate's
``PartialState``). Without a launcher every helper here is the one-process identity: rank 0 of
1, nothing is communicated.

Devices (``--device``): ``auto`` lets accelerate choose (this rank's GPU when CUDA is visible,
else the CPU, gloo between CPU ranks), ``cpu`` forces the CPU, ``cuda`` requires a GPU.
"""

from __future__ import annotations

import os
from typing import Any, List, Optional, Tuple

import torch

from .errors import ConfigError

DEVICES = ("auto", "cpu", "cuda")


def launched() -> bool:
    """True when a launcher (torchrun, accelerate launch) started more than one process."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def is_distributed() -> bool:
    return torch.distributed.is_available() and torch.distributed.is_initialized()


def rank() -> int:
    return torch.distributed.get_rank() if is_distributed() else 0


def world_size() -> int:
    return torch.distributed.get_world_size() if is_distributed() else 1


def is_main_process() -> bool:
    """Rank 0 (or the only process): the one that writes files and prints summaries."""
    return rank() == 0


def barrier() -> None:
    if is_distributed():
        torch.distributed.barrier()


def check_device(device: str) -> str:
    """The device type (``cpu`` or ``cuda``) ``device`` resolves to on this machine.

    Raises:
        ConfigError: an unknown name, or ``cuda`` without a visible GPU.
    """
    if device not in DEVICES:
        raise ConfigError(f"--device must be one of {list(DEVICES)}; got {device!r}")
    if device == "cuda" and not torch.cuda.is_available():
        raise ConfigError("--device cuda: no CUDA device is visible (torch.cuda.is_available() is "
                          "False); use --device cpu or auto")
    return "cuda" if device != "cpu" and torch.cuda.is_available() else "cpu"


def init_eval_process(device: str = "auto") -> torch.device:
    """Join the launcher's process group (when launched) and return this rank's device.

    Without a launcher the device is the CPU for ``auto`` when no GPU is visible, so a plain
    ``robustit eval`` on a CPU machine behaves as before.
    """
    kind = check_device(device)
    if not launched():
        return torch.device(kind)
    from accelerate import PartialState

    return PartialState(cpu=kind == "cpu").device


def shard_bounds(n: int, rank_: int, world: int) -> Tuple[int, int]:
    """Contiguous, balanced block [start, stop) of ``n`` items for ``rank_`` of ``world``.

    The first ``n % world`` ranks take one item more; concatenating the blocks in rank order
    gives back 0..n-1, so gathered results keep the data set's order.
    """
    base, extra = divmod(n, world)
    start = rank_ * base + min(rank_, extra)
    return start, start + base + (1 if rank_ < extra else 0)


def gather_to_main(obj: Any) -> Optional[List[Any]]:
    """``[obj of rank 0, obj of rank 1, ...]`` on rank 0, None on the others (a collective:
    every rank calls it). Without a process group: ``[obj]``."""
    if not is_distributed():
        return [obj]
    out: Optional[List[Any]] = [None] * world_size() if is_main_process() else None
    torch.distributed.gather_object(obj, out, dst=0)
    return out
