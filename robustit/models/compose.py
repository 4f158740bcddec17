"""The ``flamingo-compose`` family: a Flamingo/Otter model composed from local pretrained parts.

As ``open_flamingo`` composes OpenFlamingo / Otter, robustit composes

    local HF CLIP vision folder (CLIPVisionModel, or CLIPModel's vision part; frozen)
      -> perceiver resampler + gated cross-attention (the adapter, trained; ``flamingo_parts``)
      -> local HF causal LM folder (GPT-2, LLaMA or MPT; frozen blocks, trained embeddings)

into an :class:`EmbeddedFlamingo` (the same class, hooks and parts as the embedded model; only
the vision encoder and LM come from folders). The LM's tokenizer gets ``<|endofchunk|>``,
``<image>`` and ``<answer>`` (Otter's order; ``<PAD>`` when it has no pad token), the LM's
embeddings are resized, and ``<|endofchunk|>`` ends every response (as OpenFlamingo's ``eoc``).
Cross-attention blocks sit where OpenFlamingo puts them (after every N-th LM layer) and the
adapter sees CLIP's patch tokens (no CLS), so an OpenFlamingo checkpoint of the perceiver and
cross-attention weights loads onto it (``openflamingo.py``).

A composed folder (``robustit compose ... --out DIR``) holds ``robustit_compose.json`` (the
recipe), ``config.json`` (``"family": "flamingo-compose"``, the sizes, the recipe with absolute
paths, fingerprints of the two source folders), ``model.safetensors`` (what composing adds or
changes: the adapter and the resized embeddings / LM head) and the tokenizer files. The vision
and LM weights stay in their own folders and are read from there at every load; a changed
source folder is refused.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Dict, Optional, Tuple

import torch
from safetensors.torch import load_file, save_file

from ..config import check_range, config_from_dict
from ..data.template import ANSWER_TOKEN, END_OF_CHUNK, IMAGE_TOKEN
from ..errors import CheckpointError, ConfigError
from ..io import atomic_path, provenance
from .checkpoint import shards_fingerprint
from .embedded import LM_FAMILIES, EmbeddedConfig, EmbeddedFlamingo
from .hf_lvlm import quiet_transformers

FAMILY = "flamingo-compose"
RECIPE = "robustit_compose.json"
WEIGHTS = "model.safetensors"
PAD = "<PAD>"


@dataclass
class ComposeRecipe:
    """What to compose. Adapter sizes default to OpenFlamingo's (perceiver depth 6, 64 latents,
    8 heads of 64, feed-forward x4, one cross-attention block per LM layer)."""

    vision: str
    lm: str
    openflamingo_ckpt: Optional[str] = None
    cross_attn_every: int = 1
    perceiver_depth: int = 6
    num_latents: int = 64
    heads: int = 8
    dim_head: int = 64
    ff_mult: int = 4
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("cross_attn_every", "perceiver_depth", "num_latents", "heads", "dim_head", "ff_mult"):
            check_range(name, getattr(self, name), 1, None)

    def resolved(self, root: Path) -> "ComposeRecipe":
        """The recipe with its paths made absolute (relative ones are relative to ``root``)."""
        def fix(p: str | None) -> str | None:
            return None if p is None else str((root / Path(p).expanduser()).resolve())

        return ComposeRecipe(**{**asdict(self), "vision": fix(self.vision), "lm": fix(self.lm),
                                "openflamingo_ckpt": fix(self.openflamingo_ckpt)})


def read_recipe(path: str | Path) -> ComposeRecipe:
    """Read ``robustit_compose.json`` (unknown keys refused; paths relative to its folder)."""
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such recipe file") from None
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{path} is not valid JSON (line {exc.lineno})") from None
    return config_from_dict(ComposeRecipe, data, where=str(path)).resolved(path.parent)


# -- the two pretrained parts -------------------------------------------------------------------
def source_fingerprint(folder: str | Path) -> str:
    """sha256 of config.json and every ``*.safetensors`` file's name, size, first and last MiB."""
    folder = Path(folder)
    return shards_fingerprint(folder, sorted(folder.glob("*.safetensors")))


def _check_folder(folder: str, what: str) -> Path:
    path = Path(folder)
    if not (path / "config.json").is_file():
        raise CheckpointError(f"{what} {folder}: not a Hugging Face folder (config.json missing)")
    if not any(path.glob("*.safetensors")):
        raise CheckpointError(f"{what} {folder}: no *.safetensors weights (robustit never unpickles "
                              f"weights; re-save with save_pretrained(..., safe_serialization=True))")
    return path


def load_vision(folder: str) -> torch.nn.Module:
    """A local CLIP vision tower (a CLIPVisionModel or CLIPModel folder), float32, eval mode."""
    from transformers import AutoConfig, CLIPVisionModel

    path = _check_folder(folder, "--vision")
    kind = AutoConfig.from_pretrained(str(path), local_files_only=True).model_type
    if kind not in ("clip", "clip_vision_model"):
        raise CheckpointError(f"--vision {folder}: model_type {kind!r}; expected a CLIP folder "
                              f"(CLIPVisionModel or CLIPModel, model_type 'clip_vision_model' / 'clip')")
    return CLIPVisionModel.from_pretrained(str(path), local_files_only=True, use_safetensors=True,
                                           dtype=torch.float32).eval()


def load_lm(folder: str) -> torch.nn.Module:
    """A local HF causal LM of a supported family (``LM_FAMILIES``), float32, eval mode."""
    from transformers import AutoConfig, AutoModelForCausalLM

    path = _check_folder(folder, "--lm")
    kind = AutoConfig.from_pretrained(str(path), local_files_only=True).model_type
    if kind not in LM_FAMILIES:
        raise CheckpointError(f"--lm {folder}: model_type {kind!r} is not supported; the cross-attention "
                              f"hooks know {sorted(LM_FAMILIES)} (HF classes, no remote code)")
    return AutoModelForCausalLM.from_pretrained(str(path), local_files_only=True, use_safetensors=True,
                                                dtype=torch.float32).eval()


def load_tokenizer(folder: str | Path):
    """The folder's HF tokenizer (local files only)."""
    from transformers import AutoTokenizer

    try:
        tok = AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"{folder}: no usable tokenizer ({exc}); save the LM's tokenizer into "
                              f"its folder (tokenizer.save_pretrained(folder))") from None
    tok.padding_side = "right"
    return tok


def add_flamingo_tokens(tok) -> int:
    """Add ``<|endofchunk|>``, ``<image>``, ``<answer>`` (and ``<PAD>`` without a pad token);
    ``<|endofchunk|>`` becomes the EOS. Returns how many tokens were added."""
    added = tok.add_special_tokens({"additional_special_tokens": [END_OF_CHUNK, IMAGE_TOKEN, ANSWER_TOKEN]},
                                   replace_extra_special_tokens=False)
    if tok.pad_token is None:
        added += tok.add_special_tokens({"pad_token": PAD})
    tok.eos_token = END_OF_CHUNK
    tok.padding_side = "right"
    return added


def _lm_sizes(config) -> Tuple[str, int, int, int, int]:
    """(lm_family, width, layers, heads, max positions) of an HF causal LM config."""
    kind = config.model_type
    if kind == "gpt2":
        return kind, config.n_embd, config.n_layer, config.n_head, config.n_positions
    if kind == "mpt":
        return kind, config.d_model, config.n_layers, config.n_heads, config.max_seq_len
    return kind, config.hidden_size, config.num_hidden_layers, config.num_attention_heads, \
        config.max_position_embeddings


def embedded_config(vision, lm, recipe: ComposeRecipe, vocab_size: int) -> EmbeddedConfig:
    """The EmbeddedConfig describing a composition (sizes read from the two HF configs)."""
    v = vision.config
    family, width, layers, heads, positions = _lm_sizes(lm.config)
    if recipe.cross_attn_every > layers:
        raise ConfigError(f"--cross-attn-every {recipe.cross_attn_every} exceeds the LM's {layers} layers")
    return EmbeddedConfig(
        image_size=v.image_size, patch_size=v.patch_size, vision_width=v.hidden_size,
        vision_layers=v.num_hidden_layers, vision_heads=v.num_attention_heads, lm_family=family,
        lm_width=width, lm_layers=layers, lm_heads=heads, max_positions=positions, vocab_size=vocab_size,
        perceiver_depth=recipe.perceiver_depth, num_latents=recipe.num_latents,
        perceiver_heads=recipe.heads, perceiver_dim_head=recipe.dim_head, xattn_heads=recipe.heads,
        xattn_dim_head=recipe.dim_head, xattn_every=recipe.cross_attn_every, ff_mult=recipe.ff_mult,
        xattn_gate_init=0.0, xattn_first=recipe.cross_attn_every - 1, vision_drop_cls=True)


# -- composing, saving, loading -----------------------------------------------------------------
def _assemble(cfg: EmbeddedConfig, tok, vision, lm, seed: int) -> EmbeddedFlamingo:
    """EmbeddedFlamingo over the given parts; new embedding rows and the adapter drawn from
    ``seed`` (the global RNG is left as it was)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        lm.resize_token_embeddings(len(tok), mean_resizing=False)
        lm.config.pad_token_id, lm.config.eos_token_id = tok.pad_token_id, tok.eos_token_id
        model = EmbeddedFlamingo(cfg, tok, vision_encoder=vision, language_model=lm, family=FAMILY)
    return model.eval()


def compose(recipe: ComposeRecipe) -> Tuple[EmbeddedFlamingo, dict]:
    """Compose a model in memory. Returns (model, OpenFlamingo load report or {})."""
    from .openflamingo import load_openflamingo_adapter, require_safetensors

    if recipe.openflamingo_ckpt:  # refuse a pickled file before loading gigabytes
        require_safetensors(recipe.openflamingo_ckpt)
    with quiet_transformers():
        vision, lm = load_vision(recipe.vision), load_lm(recipe.lm)
    tok = load_tokenizer(recipe.lm)
    add_flamingo_tokens(tok)
    model = _assemble(embedded_config(vision, lm, recipe, len(tok)), tok, vision, lm, recipe.seed)
    report = load_openflamingo_adapter(model, recipe.openflamingo_ckpt) if recipe.openflamingo_ckpt else {}
    return model, report


def own_state(model: EmbeddedFlamingo) -> Dict[str, torch.Tensor]:
    """What a composed folder stores: the adapter and the embeddings / LM head (tied: once)."""
    params = {**model.part_parameters("adapter"), **model.part_parameters("embeddings")}
    return {n: p.detach().contiguous().clone() for n, p in params.items()}


def save_composed(model: EmbeddedFlamingo, recipe: ComposeRecipe, folder: str | Path,
                  report: Optional[dict] = None) -> Path:
    """Write a composed base folder atomically (see the module docstring)."""
    folder = Path(folder)
    meta = {**model.identity(), "compose": asdict(recipe),
            "sources": {"vision": source_fingerprint(recipe.vision), "lm": source_fingerprint(recipe.lm)},
            "openflamingo": report or {}, "provenance": provenance()}
    with atomic_path(folder) as tmp:
        tmp.mkdir(parents=True)
        save_file(own_state(model), str(tmp / WEIGHTS))
        model.tokenizer.save_pretrained(str(tmp))
        (tmp / RECIPE).write_text(json.dumps(asdict(recipe), indent=2) + "\n")
        (tmp / "config.json").write_text(json.dumps(meta, indent=2, default=str) + "\n")
    return folder


def load_composed(folder: Path, meta: dict) -> EmbeddedFlamingo:
    """Rebuild a composed model from its folder (the ``flamingo-compose`` loader of the factory)."""
    cfg = config_from_dict(EmbeddedConfig, meta["config"], where=f"{folder}/config.json")
    recipe = config_from_dict(ComposeRecipe, meta["compose"], where=f"{folder}/config.json")
    for part in ("vision", "lm"):
        source = getattr(recipe, part)
        _check_folder(source, f"the composed model's {part} folder")
        if source_fingerprint(source) != meta.get("sources", {}).get(part):
            raise CheckpointError(f"{folder}: its {part} folder {source} changed since it was composed; "
                                  f"compose again (robustit compose --recipe {folder / RECIPE} --out DIR)")
    tok = load_tokenizer(folder)
    if len(tok) != cfg.vocab_size:
        raise CheckpointError(f"{folder}: the tokenizer has {len(tok)} tokens, config.json says "
                              f"{cfg.vocab_size}; compose again")
    with quiet_transformers():
        vision, lm = load_vision(recipe.vision), load_lm(recipe.lm)
    model = _assemble(cfg, tok, vision, lm, recipe.seed)
    _load_own_state(model, folder / WEIGHTS)
    return model


def _load_own_state(model: EmbeddedFlamingo, path: Path) -> None:
    """Copy the stored adapter + embeddings onto ``model``; names and shapes must match."""
    try:
        state = load_file(str(path))
    except FileNotFoundError:
        raise CheckpointError(f"{path} does not exist; compose again") from None
    except Exception as exc:
        raise CheckpointError(f"{path} could not be read ({exc}); the file is corrupt") from None
    params = {**model.part_parameters("adapter"), **model.part_parameters("embeddings")}
    bad = [n for n in params if n not in state or state[n].shape != params[n].shape]
    if bad or set(state) - set(params):
        raise CheckpointError(f"{path} does not match the composed model: missing or reshaped "
                              f"{bad[:5]}, unexpected {sorted(set(state) - set(params))[:5]}")
    with torch.no_grad():
        for name, p in params.items():
            p.copy_(state[name])
