"""Checkpoints: safetensors + JSON, never pickle.

Two kinds:

* a **base model** folder: ``config.json`` (family, sizes, provenance), ``model.safetensors``
  (all weights; tied weights stored once), ``tokenizer.json``, ``README.md`` (model card);
* a **tuned** folder: ``tuned.safetensors`` (only the tuned parts: adapter + embeddings, plus the
  channel-mask buffers), ``tuned.json`` (base identity and hash, method, config, step), and for
  resuming ``optimizer.safetensors`` + ``trainer_state.json``.

Folders are written under a temporary name and renamed, so a killed run never leaves a
half-written checkpoint.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Dict, Optional, Tuple

import torch
from safetensors.torch import load_file, save_file

from ..errors import CheckpointError
from ..io import atomic_path, provenance
from .lvlm import LVLM

BASE_CONFIG = "config.json"
BASE_WEIGHTS = "model.safetensors"
TUNED_WEIGHTS = "tuned.safetensors"
TUNED_META = "tuned.json"
OPTIM_WEIGHTS = "optimizer.safetensors"
TRAINER_STATE = "trainer_state.json"


def file_sha256(path: Path, limit: Optional[int] = None) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()[:limit] if limit else h.hexdigest()


def _unique_state(model: torch.nn.Module) -> Dict[str, torch.Tensor]:
    """state_dict with tied tensors stored once (safetensors refuses shared storage)."""
    out, seen = {}, set()
    for name, t in model.state_dict().items():
        key = (t.data_ptr(), t.shape, t.stride()) if t.numel() else (name,)
        if key in seen:
            continue
        seen.add(key)
        out[name] = t.detach().contiguous().clone()
    return out


# -- base models --------------------------------------------------------------------------------
def save_base(model: LVLM, folder: str | Path, extra: Optional[dict] = None) -> Path:
    """Write a base model folder atomically."""
    from .tokenizer import save_tokenizer

    folder = Path(folder)
    with atomic_path(folder) as tmp:
        tmp.mkdir(parents=True)
        save_file(_unique_state(model), str(tmp / BASE_WEIGHTS))
        save_tokenizer(model.tokenizer, tmp)
        meta = {**model.identity(), "provenance": provenance(), **(extra or {})}
        (tmp / BASE_CONFIG).write_text(json.dumps(meta, indent=2) + "\n")
    return folder


def read_base_config(folder: str | Path) -> dict:
    path = Path(folder) / BASE_CONFIG
    if not path.exists():
        raise CheckpointError(f"{folder} is not a model folder: {BASE_CONFIG} is missing (expected a "
                              f"robustit base folder: {BASE_CONFIG}, {BASE_WEIGHTS}, tokenizer.json; or "
                              f"a Hugging Face LLaVA / BLIP-2 / IDEFICS folder: {BASE_CONFIG}, "
                              f"*.safetensors, tokenizer files)")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise CheckpointError(f"{path} is not valid JSON (line {exc.lineno}): re-create the model") from None


def load_base_weights(model: LVLM, folder: str | Path) -> None:
    path = Path(folder) / BASE_WEIGHTS
    try:
        state = load_file(str(path))
    except FileNotFoundError:
        raise CheckpointError(f"{path} does not exist") from None
    except Exception as exc:  # safetensors raises its own error types on corrupt files
        raise CheckpointError(f"{path} could not be read ({exc}); the file is corrupt") from None
    missing, unexpected = model.load_state_dict(state, strict=False)
    tied = {n for n in missing if _is_tied_alias(model, n, state)}
    if set(missing) - tied or unexpected:
        raise CheckpointError(f"{path} does not match the model: missing {sorted(set(missing) - tied)[:5]}, "
                              f"unexpected {sorted(unexpected)[:5]}")


def _is_tied_alias(model: torch.nn.Module, name: str, state: dict) -> bool:
    sd = model.state_dict()
    return any(sd[name].data_ptr() == sd[k].data_ptr() for k in state if k in sd)


# -- tuned checkpoints ----------------------------------------------------------------------------
def tuned_state(model: LVLM, source: Optional[Dict[str, torch.Tensor]] = None) -> Dict[str, torch.Tensor]:
    """The tuned parts (adapter + embeddings) and channel-mask buffers.

    ``source``: a full state dict of ``model`` to take the values from (a sharded run gathers one,
    its parameters being shards); None reads the model's own tensors.
    """
    own = {**model.part_parameters("adapter"), **model.part_parameters("embeddings"),
           **{f"channel_masks.{n}": t for n, t in model.channel_masks.state_dict().items()}}
    source = own if source is None else source
    return {n: source[n].detach().contiguous().clone() for n in own}


def save_tuned(model: LVLM, folder: str | Path, meta: dict,
               optimizer_state: Optional[Tuple[Dict[str, torch.Tensor], dict]] = None,
               state: Optional[Dict[str, torch.Tensor]] = None) -> Path:
    """Write a tuned checkpoint folder atomically (weights, metadata, optional optimizer state).

    ``state``: the model's full state dict when its own parameters are shards (see tuned_state).
    """
    folder = Path(folder)
    masks = {hp: describe_mask(m) for hp, m in model.channel_masks.items()}
    with atomic_path(folder) as tmp:
        tmp.mkdir(parents=True)
        save_file(tuned_state(model, state), str(tmp / TUNED_WEIGHTS))
        full = {**meta, "channel_masks": masks, "provenance": provenance()}
        (tmp / TUNED_META).write_text(json.dumps(full, indent=2, default=str) + "\n")
        if optimizer_state is not None:
            tensors, state = optimizer_state
            save_file(tensors, str(tmp / OPTIM_WEIGHTS))
            (tmp / TRAINER_STATE).write_text(json.dumps(state, indent=2) + "\n")
    return folder


def describe_mask(mask) -> dict:
    """What is needed to rebuild a ChannelMask before loading its buffers."""
    return {"width": mask.width, "gamma": mask.gamma, "beta": mask.beta, "kept": int(mask.mask.sum())}


def read_tuned_meta(folder: str | Path) -> dict:
    path = Path(folder) / TUNED_META
    if not path.exists():
        raise CheckpointError(f"{folder} is not a tuned checkpoint ({TUNED_META} missing)")
    return json.loads(path.read_text())


def load_tuned(model: LVLM, folder: str | Path, base_hash: Optional[str] = None) -> dict:
    """Load tuned parts and channel masks onto ``model`` (a freshly loaded base). Returns meta."""
    from .masks import ChannelMask

    folder = Path(folder)
    meta = read_tuned_meta(folder)
    _check_same_base(model, meta, base_hash, folder)
    state = load_file(str(folder / TUNED_WEIGHTS))
    for hp, desc in meta.get("channel_masks", {}).items():
        if hp not in model.channel_masks:  # a mask set up for training (resume) is loaded into
            model.add_channel_mask(hp, ChannelMask(desc["width"], gamma=desc["gamma"],
                                                   beta=desc["beta"], tracking=False))
    params = {**model.part_parameters("adapter"), **model.part_parameters("embeddings")}
    expected = set(params) | {f"channel_masks.{k}" for k in model.channel_masks.state_dict()}
    if set(state) != expected:
        raise CheckpointError(f"{folder}: tuned parts do not match the base model "
                              f"(missing {sorted(expected - set(state))[:5]}, "
                              f"unexpected {sorted(set(state) - expected)[:5]})")
    with torch.no_grad():
        for name, p in params.items():
            if p.shape != state[name].shape:
                raise CheckpointError(f"{folder}: {name} has shape {tuple(state[name].shape)}, the "
                                      f"base model expects {tuple(p.shape)}")
            p.copy_(state[name])
    mask_state = {k[len("channel_masks."):]: v for k, v in state.items() if k.startswith("channel_masks.")}
    model.channel_masks.load_state_dict(mask_state)
    return meta


def _check_same_base(model: LVLM, meta: dict, base_hash: Optional[str], folder: Path) -> None:
    want = meta.get("base", {})
    if want.get("identity") and want["identity"] != model.identity():
        raise CheckpointError(f"{folder} was tuned on a different base model ({want['identity'].get('family')}); "
                              f"load it with the base it was tuned from: {want.get('path')}")
    if base_hash and want.get("sha256") and want["sha256"] != base_hash:
        raise CheckpointError(f"{folder} was tuned on base weights {want['sha256'][:12]}, but the given "
                              f"base has {base_hash[:12]}; use --base {want.get('path')}")


def shards_fingerprint(folder: Path, shards) -> str:
    """sha256 of ``folder/config.json`` and each shard's name, size, first and last MiB: a
    fingerprint of large (sharded) weights that does not read tens of GB."""
    h = hashlib.sha256((Path(folder) / "config.json").read_bytes())
    for shard in shards:
        size = shard.stat().st_size
        h.update(f"{shard.name}:{size}".encode())
        with open(shard, "rb") as f:
            h.update(f.read(1 << 20))
            f.seek(max(0, size - (1 << 20)))
            h.update(f.read(1 << 20))
    return h.hexdigest()
