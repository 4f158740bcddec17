"""Load an OpenFlamingo / Otter checkpoint's adapter weights onto robustit's Flamingo adapter.

OpenFlamingo (``open_flamingo``) names the trainable parts of its model

    perceiver.latents                                           (N, Dv)
    perceiver.layers.{d}.0.{norm_media,norm_latents,to_q,to_kv,to_out}.*    attention
    perceiver.layers.{d}.1.{0,1,3}.*                            feed-forward (LN, Linear, Linear)
    perceiver.norm.*
    lang_encoder.gated_cross_attn_layers.{i}.attn.{norm,to_q,to_kv,to_out}.*
    lang_encoder.gated_cross_attn_layers.{i}.{attn_gate,ff_gate,ff.{0,1,3}.*}

where ``i`` is the LM layer the block sits before (``(i + 1) % cross_attn_every_n_layers == 0``);
the same blocks also appear as ``lang_encoder.<decoder layers>.{i}.gated_cross_attn_layer.*``.
robustit's adapter (``flamingo_parts.py``) has the same tensors under ``adapter.perceiver.*`` and
``adapter.xattn.{k}.*`` (block k before LM layer ``adapter.xattn_layer_ids[k]``; the
cross-attention's ``attn.`` level is flattened). Only safetensors files are read: robustit never
unpickles a file (docs/models.md shows how to convert a trusted ``.pt``).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import torch
from safetensors.torch import load_file

from ..errors import CheckpointError

_XATTN = (re.compile(r"^lang_encoder\.gated_cross_attn_layers\.(\d+)\.(.+)$"),
          re.compile(r"^lang_encoder\..+\.(\d+)\.gated_cross_attn_layer\.(.+)$"))
#: OpenFlamingo perceiver extras robustit's resampler does not have (video / multi-image embeddings).
_PERCEIVER_EXTRAS = ("perceiver.frame_embs", "perceiver.media_time_embs")


def read_openflamingo_file(path: str | Path) -> Dict[str, torch.Tensor]:
    """The tensors of a ``.safetensors`` checkpoint (a ``module.`` prefix from DDP is dropped).

    Raises CheckpointError for a pickled file (.pt/.bin/...) with how to convert it, or an
    unreadable one."""
    path = require_safetensors(path)
    try:
        state = load_file(str(path))
    except FileNotFoundError:
        raise CheckpointError(f"{path}: no such file") from None
    except Exception as exc:  # safetensors raises its own error types on corrupt files
        raise CheckpointError(f"{path} could not be read as safetensors ({exc})") from None
    if state and all(k.startswith("module.") for k in state):
        state = {k[len("module."):]: v for k, v in state.items()}
    return state


def require_safetensors(path: str | Path) -> Path:
    """``path`` if it names a ``.safetensors`` file; a CheckpointError saying how to convert a
    pickled checkpoint (.pt/.bin/...) otherwise."""
    path = Path(path)
    if path.suffix.lower() != ".safetensors":
        raise CheckpointError(
            f"{path}: robustit reads OpenFlamingo checkpoints as .safetensors only (it never unpickles "
            f"a file, which can run code). If you trust the file, convert it once yourself: see "
            f"docs/models.md, 'OpenFlamingo / Otter' (torch.load + safetensors.torch.save_file)")
    return path


def _xattn_name(sub: str) -> str:
    """OpenFlamingo block sub-name -> ours: ``attn.to_q.weight`` -> ``to_q.weight``."""
    return sub[len("attn."):] if sub.startswith("attn.") else sub


def map_openflamingo_names(keys: Sequence[str], xattn_layer_ids: Sequence[int]
                           ) -> Tuple[Dict[str, str], List[str], List[int]]:
    """Map OpenFlamingo names onto robustit adapter names (``adapter.``-prefixed).

    Returns (ours -> theirs, unmapped keys, LM layers whose block has no slot here). When a block
    is stored under both its aliases the ``gated_cross_attn_layers`` copy is used.
    """
    slot = {layer: k for k, layer in enumerate(xattn_layer_ids)}
    mapping: Dict[str, str] = {}
    unmapped, no_slot = [], set()
    for key in sorted(keys, key=lambda k: ".gated_cross_attn_layers." not in k):
        if key.startswith("perceiver.") and key not in _PERCEIVER_EXTRAS:
            mapping.setdefault(f"adapter.{key}", key)
            continue
        match = next((m for m in (p.match(key) for p in _XATTN) if m), None)
        if match is None:
            unmapped.append(key)
        elif int(match.group(1)) not in slot:
            no_slot.add(int(match.group(1)))
        else:
            ours = f"adapter.xattn.{slot[int(match.group(1))]}.{_xattn_name(match.group(2))}"
            mapping.setdefault(ours, key)
    return mapping, sorted(unmapped), sorted(no_slot)


def _check_mapping(path: Path, params: Dict[str, torch.Tensor], state: Dict[str, torch.Tensor],
                   mapping: Dict[str, str], no_slot: List[int], layer_ids: Sequence[int]) -> None:
    """Raise a CheckpointError for blocks without a slot, missing or unknown names, or shapes."""
    if no_slot:
        raise CheckpointError(f"{path}: cross-attention blocks before LM layers {no_slot[:8]} have no "
                              f"place in this model (its blocks sit before layers {list(layer_ids)[:8]}"
                              f"...): compose with the checkpoint's --cross-attn-every")
    unknown = sorted(set(mapping) - set(params))
    missing = sorted(set(params) - set(mapping))
    if unknown or missing:
        raise CheckpointError(f"{path} does not match the adapter: names with no counterpart "
                              f"{[mapping[n] for n in unknown[:5]]}, adapter weights it lacks "
                              f"{missing[:5]} ({len(missing)} in all)")
    bad = [(n, tuple(params[n].shape), mapping[n], tuple(state[mapping[n]].shape))
           for n in params if tuple(params[n].shape) != tuple(state[mapping[n]].shape)]
    if bad:
        listed = "; ".join(f"{theirs} {ts} -> {ours} {os_}" for ours, os_, theirs, ts in bad[:5])
        raise CheckpointError(f"{path}: {len(bad)} shapes differ from the adapter (checkpoint -> ours): "
                              f"{listed}. Compose with the checkpoint's sizes (perceiver depth, "
                              f"latents, heads, dim_head, ff_mult, --cross-attn-every)")


def load_openflamingo_adapter(model, path: str | Path, max_listed: int = 20) -> dict:
    """Copy an OpenFlamingo-style checkpoint's perceiver + gated cross-attention weights into
    ``model.adapter`` (an :class:`EmbeddedFlamingo`'s). All-or-nothing: every adapter weight must
    be present with its shape, else nothing is copied.

    Returns a report: file, loaded count, and the checkpoint keys left unmapped (count and the
    first ``max_listed``; LM / vision / embedding weights of a full state dict land there).
    """
    path = Path(path)
    state = read_openflamingo_file(path)
    params = {f"adapter.{n}": p for n, p in model.adapter.named_parameters()}
    layer_ids = model.adapter.xattn_layer_ids
    mapping, unmapped, no_slot = map_openflamingo_names(list(state), layer_ids)
    if not mapping:
        raise CheckpointError(f"{path} holds no OpenFlamingo adapter weights (no 'perceiver.*' nor "
                              f"'lang_encoder.*gated_cross_attn_layer*' names); first keys: "
                              f"{sorted(state)[:5]}")
    _check_mapping(path, params, state, mapping, no_slot, layer_ids)
    with torch.no_grad():
        for ours, theirs in mapping.items():
            params[ours].copy_(state[theirs])
    used = set(mapping.values())
    aliases = [k for k in state if k not in used and k not in unmapped]
    return {"file": str(path), "loaded": len(mapping), "aliases_skipped": len(aliases),
            "unmapped": len(unmapped), "unmapped_first": unmapped[:max_listed]}


def adapter_to_openflamingo(model, alias: Optional[str] = None) -> Dict[str, torch.Tensor]:
    """The inverse: ``model.adapter``'s weights under OpenFlamingo's names (for export and tests).

    ``alias`` (e.g. ``"transformer.h"``): also write each block as
    ``lang_encoder.{alias}.{i}.gated_cross_attn_layer.*``."""
    out: Dict[str, torch.Tensor] = {}
    for name, p in model.adapter.perceiver.named_parameters():
        out[f"perceiver.{name}"] = p.detach().clone()
    for block, layer in zip(model.adapter.xattn, model.adapter.xattn_layer_ids):
        for name, p in block.named_parameters():
            sub = name if name.startswith(("ff", "attn_gate")) else f"attn.{name}"
            out[f"lang_encoder.gated_cross_attn_layers.{layer}.{sub}"] = p.detach().clone()
            if alias:
                out[f"lang_encoder.{alias}.{layer}.gated_cross_attn_layer.{sub}"] = p.detach().clone()
    return out
