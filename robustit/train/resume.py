"""Resumable state without pickle: AdamW moments as safetensors tensors, counters as JSON."""

from __future__ import annotations

from typing import Dict, List, Tuple

import torch


def optimizer_tensors(optimizer: torch.optim.Optimizer, names: List[str]) -> Dict[str, torch.Tensor]:
    """Flatten AdamW state to ``{f"{param_name}::{key}": tensor}`` (param order = ``names``)."""
    params = [p for g in optimizer.param_groups for p in g["params"]]
    out = {}
    for name, p in zip(names, params):
        for key, value in optimizer.state.get(p, {}).items():
            t = value if torch.is_tensor(value) else torch.tensor(value)
            out[f"{name}::{key}"] = t.detach().contiguous().clone()
    return out


def load_optimizer_tensors(optimizer: torch.optim.Optimizer, names: List[str],
                           tensors: Dict[str, torch.Tensor]) -> None:
    params = [p for g in optimizer.param_groups for p in g["params"]]
    for name, p in zip(names, params):
        state = {k.split("::", 1)[1]: v.to(p.device) for k, v in tensors.items()
                 if k.split("::", 1)[0] == name}
        if state:
            optimizer.state[p] = state


def rng_tensors() -> Dict[str, torch.Tensor]:
    """The global torch RNG (dropout draws from it; on a GPU the CUDA one too) so a resumed run
    continues identically."""
    out = {"__rng__::torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        out["__rng__::cuda"] = torch.cuda.get_rng_state()
    return out


def ranks_rng_tensors(per_rank: List[Dict[str, torch.Tensor]]) -> Dict[str, torch.Tensor]:
    """Merge every rank's :func:`rng_tensors` into one mapping: rank 0 keeps the one-process keys,
    rank r > 0 gets ``::rank{r}`` appended (each rank draws its own dropout masks)."""
    out = {}
    for r, states in enumerate(per_rank):
        out.update({(k if r == 0 else f"{k}::rank{r}"): v for k, v in states.items()})
    return out


def split_rng(tensors: Dict[str, torch.Tensor]) -> Tuple[Dict[str, torch.Tensor], Dict[str, torch.Tensor]]:
    rng = {k: v for k, v in tensors.items() if k.startswith("__rng__::")}
    return {k: v for k, v in tensors.items() if k not in rng}, rng


def restore_rng(rng: Dict[str, torch.Tensor], rank: int = 0) -> None:
    """Restore this rank's saved RNG states; a rank the run did not have keeps its fresh seed."""
    suffix = "" if rank == 0 else f"::rank{rank}"
    if f"__rng__::torch{suffix}" in rng:
        torch.set_rng_state(rng[f"__rng__::torch{suffix}"])
    if f"__rng__::cuda{suffix}" in rng and torch.cuda.is_available():
        torch.cuda.set_rng_state(rng[f"__rng__::cuda{suffix}"])
