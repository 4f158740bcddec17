"""The factory: build or load a backbone, then freeze it for tuning.

``load_base(path)`` reads a base model folder (``config.json`` names the family) and dispatches
through :data:`FAMILIES`; ``"embedded"`` (or no path) means the default model shipped in
``robustit/resources/embedded-base``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

from ..config import config_from_dict
from ..errors import CheckpointError
from ..registry import Registry
from .checkpoint import BASE_WEIGHTS, file_sha256, load_base_weights, load_tuned, read_base_config
from .lvlm import LVLM

FAMILIES: Registry[Callable[[Path, dict], LVLM]] = Registry("model family")

DEFAULT_BASE = Path(__file__).resolve().parent.parent / "resources" / "embedded-base"


@dataclass
class BaseInfo:
    """Where a base model came from: recorded with every tuned checkpoint and result."""

    path: str
    sha256: str
    family: str

    def to_dict(self) -> dict:
        return {"path": self.path, "sha256": self.sha256, "family": self.family}


def resolve_base_path(path: Optional[str]) -> Path:
    if path in (None, "", "embedded"):
        if not (DEFAULT_BASE / BASE_WEIGHTS).exists():
            raise CheckpointError(f"the shipped embedded base model is missing at {DEFAULT_BASE}; "
                                  f"re-create it with `robustit pretrain --out {DEFAULT_BASE}`")
        return DEFAULT_BASE
    p = Path(path)
    if not p.is_dir():
        raise CheckpointError(f"--model {path}: no such folder. Known: 'embedded' (the shipped "
                              f"default) or a folder with config.json + model.safetensors")
    return p


@FAMILIES.register("embedded-flamingo-gpt2")
@FAMILIES.register("embedded-flamingo-llama")
def _load_embedded(folder: Path, meta: dict) -> LVLM:
    from .embedded import EmbeddedConfig, EmbeddedFlamingo
    from .tokenizer import load_tokenizer

    cfg = config_from_dict(EmbeddedConfig, meta["config"], where=f"{folder}/config.json")
    return EmbeddedFlamingo(cfg, load_tokenizer(folder))


def load_base(path: Optional[str] = None) -> tuple[LVLM, BaseInfo]:
    """Load a base model (weights included) and where it came from."""
    folder = resolve_base_path(path)
    meta = read_base_config(folder)
    family = meta.get("family")
    model = FAMILIES.get(family)(folder, meta)
    load_base_weights(model, folder)
    info = BaseInfo(str(folder), file_sha256(folder / BASE_WEIGHTS), family)
    return model.eval(), info


def load_model(base: Optional[str] = None, tuned: Optional[str] = None) -> tuple[LVLM, BaseInfo, dict]:
    """A base model with an optional tuned checkpoint on top. Returns (model, base info, tuned meta)."""
    model, info = load_base(base)
    meta = load_tuned(model, tuned, base_hash=info.sha256) if tuned else {}
    return model.eval(), info, meta
