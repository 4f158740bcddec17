"""The factory: build or load a backbone, then freeze it for tuning.

``load_base(path)`` reads a base model folder and dispatches through :data:`FAMILIES`:
- a robustit base folder names its family in ``config.json`` (``"family"``);
- a Hugging Face folder is recognised by ``config.json``'s ``model_type`` / ``architectures``
  (``llava``, ``blip2``, ``idefics``: see ``hf_families.py``) and loaded with
  ``from_pretrained(folder, local_files_only=True)``.
``"embedded"`` (or no path) means the default model shipped in ``robustit/resources/embedded-base``;
a Hub name (``org/name``) is looked up in the local Hugging Face cache only, never downloaded.
Every loader returns the model with its weights loaded.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

from ..config import config_from_dict
from ..errors import CheckpointError
from ..registry import Registry
from .checkpoint import (BASE_WEIGHTS, file_sha256, load_base_weights, load_tuned, read_base_config,
                         shards_fingerprint)
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
    if p.is_dir():
        return p
    cached = _hub_cache_folder(str(path))
    if cached is None:
        raise CheckpointError(f"--model {path}: no such folder (nor a Hugging Face Hub name in the "
                              f"local cache). Known: 'embedded' (the shipped default), a robustit base "
                              f"folder, a local LLaVA / BLIP-2 / IDEFICS folder (config.json + "
                              f"*.safetensors + tokenizer), or a `robustit compose` folder; see "
                              f"docs/models.md")
    return cached


def _hub_cache_folder(name: str) -> Optional[Path]:
    """The local snapshot of a Hub repo ``org/name`` if it is already cached; never downloads."""
    if name.count("/") != 1 or name.startswith((".", "/")):
        return None
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(repo_id=name, local_files_only=True))
    except Exception:  # not cached, or no huggingface_hub: the caller reports it
        return None


@FAMILIES.register("embedded-flamingo-gpt2")
@FAMILIES.register("embedded-flamingo-llama")
def _load_embedded(folder: Path, meta: dict) -> LVLM:
    from .embedded import EmbeddedConfig, EmbeddedFlamingo
    from .tokenizer import load_tokenizer

    cfg = config_from_dict(EmbeddedConfig, meta["config"], where=f"{folder}/config.json")
    model = EmbeddedFlamingo(cfg, load_tokenizer(folder))
    load_base_weights(model, folder)
    return model


@FAMILIES.register("flamingo-compose")
def _load_composed(folder: Path, meta: dict) -> LVLM:
    from .compose import load_composed

    return load_composed(folder, meta)


def _register_hf_families() -> None:
    from .hf_families import HF_FAMILIES, load_hf_family

    for name in HF_FAMILIES:
        FAMILIES.register(name)(lambda folder, meta, name=name: load_hf_family(name, folder))


_register_hf_families()


def detect_family(folder: Path, meta: dict) -> str:
    """The family of a base folder: robustit's ``family`` key, else the HF ``model_type`` /
    ``architectures`` of config.json. Raises a CheckpointError naming every family tried."""
    from .hf_families import HF_FAMILIES, matches

    if "family" in meta:
        return meta["family"]
    for name, cls in HF_FAMILIES.items():
        if matches(cls, meta):
            return name
    tried = ", ".join([f"{n} (model_type {c.model_type!r} / {c.architecture})" for n, c in HF_FAMILIES.items()]
                      + ["robustit base folders (config.json with 'family')"])
    raise CheckpointError(f"{folder}: unknown model family: config.json has model_type "
                          f"{meta.get('model_type')!r} and architectures {meta.get('architectures')}; "
                          f"tried: {tried}. To add a family see docs/models.md")


def base_fingerprint(folder: Path) -> str:
    """sha256 of ``model.safetensors``; for sharded weights, of config.json and every shard's
    name, size, first and last MiB (hashing tens of GB at each load would take minutes)."""
    if (folder / BASE_WEIGHTS).is_file():
        return file_sha256(folder / BASE_WEIGHTS)
    shards = sorted(folder.glob("*.safetensors"))
    if not shards:
        raise CheckpointError(f"{folder}: no *.safetensors weights (robustit never loads pickled "
                              f"weights; convert them with `safetensors` first)")
    return shards_fingerprint(folder, shards)


def load_base(path: Optional[str] = None) -> tuple[LVLM, BaseInfo]:
    """Load a base model (weights included) and where it came from."""
    folder = resolve_base_path(path)
    _refuse_bare_recipe(folder)
    meta = read_base_config(folder)
    family = detect_family(folder, meta)
    info = BaseInfo(str(folder), base_fingerprint(folder), family)
    model = FAMILIES.get(family)(folder, meta)
    return model.eval(), info


def _refuse_bare_recipe(folder: Path) -> None:
    """A folder holding only a ``robustit_compose.json`` recipe has not been composed yet."""
    if (folder / "robustit_compose.json").is_file() and not (folder / "config.json").is_file():
        raise CheckpointError(f"{folder} holds a composition recipe only; build the model first: "
                              f"robustit compose --recipe {folder / 'robustit_compose.json'}")


def load_model(base: Optional[str] = None, tuned: Optional[str] = None) -> tuple[LVLM, BaseInfo, dict]:
    """A base model with an optional tuned checkpoint on top. Returns (model, base info, tuned meta)."""
    model, info = load_base(base)
    meta = load_tuned(model, tuned, base_hash=info.sha256) if tuned else {}
    return model.eval(), info, meta
