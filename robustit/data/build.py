"""Write the embedded world to disk: one MIMIC-IT folder per split, COCO ground truth for the
captioning test splits, and ``world.json`` (config, provenance, counts).

``world.json`` is written last, so its presence means the build finished. Building again with
the same config returns at once; a different config in the same folder is refused unless
``force`` (a world that experiments already use is never silently replaced).
"""

from __future__ import annotations

import json
import shutil
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Callable, Dict, List, Optional

from ..config import config_from_dict, config_to_dict
from ..errors import ConfigError
from ..io import atomic_write_json, provenance
from .mimicit import save_coco_gt, save_split
from .records import InstructionSet, Sample
from .world import (CAPTION_TEST_SPLITS, SPLITS, WorldConfig, assemble_split, generate_item,
                    split_profile)

WORLD_FILE = "world.json"
FORMAT = "robustit-world/1"


def load_world_info(out_dir: str | Path) -> Optional[dict]:
    """The ``world.json`` of a built world, or None when there is none (or it is unreadable)."""
    path = Path(out_dir) / WORLD_FILE
    try:
        return json.loads(path.read_text())
    except (FileNotFoundError, json.JSONDecodeError, UnicodeDecodeError):
        return None


def build_world(out_dir: str | Path, cfg: Optional[WorldConfig] = None, progress: bool = True,
                force: bool = False, workers: int = 1) -> dict:
    """Build every split of the world into ``out_dir/<split>/``.

    Args:
        out_dir: the data root.
        cfg: the world; default ``WorldConfig()``.
        progress: show a tqdm progress bar (images).
        force: rebuild even if ``out_dir`` holds this world, or holds another one.
        workers: processes that render images (the result does not depend on it).

    Returns:
        The content of ``out_dir/world.json``; ``"reused": True`` when nothing was built.

    Raises:
        ConfigError: ``out_dir`` holds a world built with another config and not ``force``.
    """
    cfg = cfg or WorldConfig()
    out = Path(out_dir)
    info = load_world_info(out)
    if info is not None and not force:
        if info.get("config") == config_to_dict(cfg) and _splits_present(out, info):
            return {**info, "reused": True}
        if info.get("config") != config_to_dict(cfg):
            raise ConfigError(f"{out / WORLD_FILE} holds a world built with another config "
                              f"({_config_diff(info.get('config') or {}, cfg)}); choose another "
                              f"--out, or pass --force (force=True) to replace it")
    return _build(out, cfg, progress, workers)


def _splits_present(out: Path, info: dict) -> bool:
    return all((out / s / f"{s}_instructions.json").exists() for s in info.get("splits", {}))


def _config_diff(old: dict, cfg: WorldConfig) -> str:
    new = config_to_dict(cfg)
    diffs = [f"{k}: {old.get(k)!r} -> {v!r}" for k, v in new.items() if old.get(k) != v]
    return ", ".join(diffs) or "unreadable config"


def _build(out: Path, cfg: WorldConfig, progress: bool, workers: int) -> dict:
    from tqdm.auto import tqdm

    start = time.time()
    (out / WORLD_FILE).unlink(missing_ok=True)  # an interrupted rebuild must not look finished
    sizes = {s: n for s, n in cfg.split_sizes().items() if n > 0}
    splits: Dict[str, dict] = {}
    with tqdm(total=sum(sizes.values()), unit="img", desc="world", disable=not progress) as bar:
        for split in SPLITS:
            folder = out / split
            if split not in sizes:
                _remove_stale(folder)
                continue
            bar.set_postfix_str(split)
            dataset = generate_split_parallel(cfg, split, bar.update, workers)
            splits[split] = _write_split(dataset, folder, split)
    info = {"format": FORMAT, "config": config_to_dict(cfg), "splits": splits,
            "seconds": round(time.time() - start, 1), "provenance": provenance()}
    atomic_write_json(out / WORLD_FILE, info)
    return info


def _remove_stale(folder: Path) -> None:
    """A split that this config does not build must not linger from an earlier build."""
    if folder.is_dir() and any(folder.glob("*_instructions.json")):
        shutil.rmtree(folder)


def _write_split(dataset: InstructionSet, folder: Path, split: str) -> dict:
    save_split(dataset, folder, split)
    tasks: Dict[str, int] = {}
    for s in dataset.samples:
        tasks[s.task] = tasks.get(s.task, 0) + 1
    entry = {"folder": split, "samples": len(dataset), "images": len(dataset.images),
             "tasks": tasks, "profile": split_profile(split).name}
    if split in CAPTION_TEST_SPLITS:
        gt = folder / f"{split}_coco_gt.json"
        save_coco_gt(dataset, gt)
        entry["coco_gt"] = f"{split}/{gt.name}"
    return entry


def _render_chunk(args: tuple) -> List[tuple]:
    cfg_dict, split, lo, hi = args
    cfg = config_from_dict(WorldConfig, cfg_dict)
    out = []
    for i in range(lo, hi):
        item = generate_item(cfg, split, i)
        out.append((item.image_id, item.png, item.samples))
    return out


def generate_split_parallel(cfg: WorldConfig, split: str,
                            on_image: Optional[Callable[[int], None]] = None,
                            workers: int = 1, chunk: int = 250) -> InstructionSet:
    """:func:`robustit.data.world.generate_split` spread over ``workers`` processes.

    Images are generated independently (each from its own seed) and collected in index order,
    so the result is identical for any number of workers.
    """
    from .world import generate_split

    n = cfg.split_sizes()[split]
    if workers <= 1 or n <= chunk:
        return generate_split(cfg, split, on_image)
    jobs = [(config_to_dict(cfg), split, lo, min(n, lo + chunk)) for lo in range(0, n, chunk)]
    samples: List[Sample] = []
    images: Dict[str, bytes] = {}
    with ProcessPoolExecutor(max_workers=workers) as pool:
        for part in pool.map(_render_chunk, jobs):
            for image_id, png, item_samples in part:
                images[image_id] = png
                samples.extend(item_samples)
            if on_image is not None:
                on_image(len(part))
    return assemble_split(cfg, split, samples, images)
