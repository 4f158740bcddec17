"""From-scratch pretraining of the embedded LVLM on the world's ``pretrain`` split.

Trains a byte-level BPE tokenizer on the world's text, builds the model from an
:class:`EmbeddedConfig`, trains every parameter with the ``pretrain`` method, and writes a base
model folder (safetensors + JSON + tokenizer + model card).
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Iterable, List, Optional

import torch

from ..config import config_to_dict
from ..data.records import InstructionSet
from ..distributed import is_main_process
from ..models.checkpoint import save_base
from ..models.embedded import EmbeddedConfig, EmbeddedFlamingo
from ..models.tokenizer import train_tokenizer
from ..seeding import derive_seed
from .config import TrainConfig
from .loop import train


def corpus(sets: Iterable[InstructionSet]) -> List[str]:
    """All text of the given splits (instructions, answers, references), in file order."""
    out: List[str] = []
    for ds in sets:
        for s in ds.samples:
            out += [s.instruction, s.answer, *s.meta.get("references", [])]
    return out


def build_model(sets: List[InstructionSet], model_cfg: EmbeddedConfig, seed: int,
                vocab_size: int = 2048) -> EmbeddedFlamingo:
    """Tokenizer + freshly initialised model (init seeded by ``seed``)."""
    tok = train_tokenizer(corpus(sets), vocab_size=vocab_size)
    model_cfg.vocab_size = len(tok)
    torch.manual_seed(derive_seed(seed, "init"))
    return EmbeddedFlamingo(model_cfg, tok)


def pretrain(pretrain_set: InstructionSet, text_sets: List[InstructionSet], out: str | Path,
             run_dir: str | Path, cfg: TrainConfig, model_cfg: Optional[EmbeddedConfig] = None,
             vocab_size: int = 2048, progress: bool = True, resume: bool = True) -> dict:
    """Pretrain and write the base model folder ``out``. Returns the training summary."""
    first = pretrain_set.image(pretrain_set.samples[0].image_ids[0])
    model_cfg = model_cfg or EmbeddedConfig(image_size=first.shape[0])
    model = build_model([pretrain_set, *text_sets], model_cfg, cfg.seed, vocab_size)
    t0 = time.perf_counter()
    summary = train(model, pretrain_set, cfg, run_dir, progress=progress, resume=resume)
    wall = time.perf_counter() - t0
    if not is_main_process():  # under a launcher rank 0 writes the base folder
        return {**summary, "wall_seconds_total": round(wall, 1)}
    save_base(model, out, extra={"pretraining": {
        "command": " ".join(["robustit", *sys.argv[1:]]) if sys.argv else None,
        "data": pretrain_set.meta.get("source", pretrain_set.name),
        "train_config": config_to_dict(cfg), "wall_seconds": round(wall, 1),
        "parameters": sum(p.numel() for p in model.parameters()),
        "samples_per_second": summary["samples_per_second"]}})
    return {**summary, "wall_seconds_total": round(wall, 1)}


def parameter_counts(model) -> dict:
    return {part: sum(p.numel() for p in model.part_parameters(part).values())
            for part in ("vision_encoder", "adapter", "language_model", "embeddings")}


