"""The tuning loop: one readable function in labelled sections, helpers of about 20 lines.

Run folder layout (``run_dir``)::

    checkpoint/      the final tuned checkpoint (tuned.safetensors + tuned.json)
    resume/          the latest resumable state (tuned parts + optimizer + counters), atomic
    logs/            TensorBoard event files and loss.jsonl
    train.json       summary: config, method, trainable count, wall time, throughput, provenance

Resuming: data order and augmentation randomness are pure functions of (seed, epoch / step), and
the global RNG (dropout) is saved with the state, so a resumed run continues exactly where the
killed one stopped.
"""

from __future__ import annotations

import json
import math
import resource
import time
from pathlib import Path
from typing import Dict, Optional

import torch
from safetensors.torch import load_file
from tqdm.auto import tqdm

from ..config import config_to_dict
from ..data.records import InstructionSet
from ..errors import DataError
from ..io import atomic_write_json, provenance
from ..models.checkpoint import (OPTIM_WEIGHTS, TRAINER_STATE, load_tuned, save_tuned)
from ..seeding import derive_seed, seed_everything, torch_generator
from . import resume as rs
from .batching import Batch, FeatureCache, ImageStore, encode_pairs
from .config import TrainConfig
from .methods import METHODS, Method
from .schedule import cosine_with_warmup


class TrainData:
    """Deterministic batches: the order of epoch e is a permutation seeded by (seed, e)."""

    def __init__(self, model, dataset: InstructionSet, cfg: TrainConfig, method: Method,
                 progress: bool) -> None:
        if len(dataset) == 0:
            raise DataError(f"split {dataset.name!r} is empty: nothing to train on")
        self.model, self.dataset, self.cfg = model, dataset, cfg
        self.store = ImageStore(dataset, size=getattr(model, "image_size", None))
        use_cache = cfg.cache_vision and not method.full_model and model.spec.caches_vision
        self.features = FeatureCache(model, self.store, progress=progress) if use_cache else None
        self.need_images = method.full_model or method.augments_images or self.features is None
        self.steps_per_epoch = math.ceil(len(dataset) / cfg.batch_size)
        self._perm_epoch, self._perm = -1, None

    def total_steps(self) -> int:
        if self.cfg.max_steps:
            return self.cfg.max_steps
        return max(1, math.ceil(self.cfg.epochs * self.steps_per_epoch))

    def indices(self, step: int) -> list:
        epoch, pos = divmod(step, self.steps_per_epoch)
        if epoch != self._perm_epoch:
            g = torch_generator(derive_seed(self.cfg.seed, "order", epoch))
            self._perm, self._perm_epoch = torch.randperm(len(self.dataset), generator=g).tolist(), epoch
        return self._perm[pos * self.cfg.batch_size:(pos + 1) * self.cfg.batch_size]

    def batch(self, step: int) -> Batch:
        samples = [self.dataset.samples[i] for i in self.indices(step)]
        image_ids = [s.image_ids for s in samples]
        enc = encode_pairs(self.model.tokenizer, self.model.template, [s.instruction for s in samples],
                           [s.answer for s in samples], self.cfg.max_len)
        dev = self.model.device
        return Batch(samples=samples,
                     images=self.store.batch(image_ids).to(dev) if self.need_images else None,
                     vision_features=self.features.batch(image_ids).to(dev) if self.features else None,
                     max_len=self.cfg.max_len, **{k: v.to(dev) for k, v in enc.items()})


def setup_trainable(model, method: Method) -> int:
    """Freeze per the method; return the trainable parameter count."""
    if method.full_model:
        model.requires_grad_(True)
        return sum(p.numel() for p in model.parameters())
    return model.freeze_for_tuning()


def trainable_named(model) -> Dict[str, torch.nn.Parameter]:
    seen, out = set(), {}
    for n, p in model.named_parameters(remove_duplicate=False):
        if p.requires_grad and id(p) not in seen:
            seen.add(id(p))
            out[n] = p
    return out


def build_optimizer(params: Dict[str, torch.nn.Parameter], cfg: TrainConfig) -> torch.optim.AdamW:
    """AdamW; weight decay on matrices only (not on biases, norms, gates), as is standard."""
    decay = [p for p in params.values() if p.ndim >= 2]
    no_decay = [p for p in params.values() if p.ndim < 2]
    return torch.optim.AdamW([{"params": decay, "weight_decay": cfg.weight_decay},
                              {"params": no_decay, "weight_decay": 0.0}], lr=cfg.lr)


def _param_order(params: Dict[str, torch.nn.Parameter]) -> list:
    """Names in optimizer order (decay group first), matching build_optimizer."""
    return [n for n, p in params.items() if p.ndim >= 2] + [n for n, p in params.items() if p.ndim < 2]


def save_resume(model, optimizer, names, run_dir: Path, step: int, meta: dict,
                method_modules: Dict[str, torch.nn.Module]) -> None:
    tensors = {**rs.optimizer_tensors(optimizer, names), **rs.rng_tensors()}
    if meta["method"]["name"] == "pretrain":
        tensors.update({f"__model__::{k}": v.detach().clone() for k, v in
                        model.state_dict().items()})
    for name, mod in method_modules.items():
        tensors.update({f"__method__::{name}.{k}": v.detach().clone() for k, v in mod.state_dict().items()})
    save_tuned(model, run_dir / "resume", {**meta, "step": step},
               optimizer_state=(tensors, {"step": step}))


def try_resume(model, optimizer, names, run_dir: Path, method_modules: Dict[str, torch.nn.Module]) -> int:
    """Load ``run_dir/resume`` if present; return the step to continue from (0 = fresh)."""
    folder = run_dir / "resume"
    if not (folder / TRAINER_STATE).exists():
        return 0
    state = json.loads((folder / TRAINER_STATE).read_text())
    tensors, rng = rs.split_rng(load_file(str(folder / OPTIM_WEIGHTS)))
    full = {k.split("::", 1)[1]: v for k, v in tensors.items() if k.startswith("__model__::")}
    if full:
        model.load_state_dict(full, strict=False)
    else:
        load_tuned(model, folder)
    for name, mod in method_modules.items():
        prefix = f"__method__::{name}."
        mod.load_state_dict({k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)})
    rs.load_optimizer_tensors(optimizer, names, {k: v for k, v in tensors.items()
                                                 if not k.startswith(("__model__::", "__method__::"))})
    rs.restore_rng(rng)
    return int(state["step"])


def train_step(model, method: Method, optimizer, params: Dict[str, torch.nn.Parameter],
               data: TrainData, cfg: TrainConfig, step: int, total: int):
    """One optimizer step on batch ``step`` (also timed alone by benchmarks/bench_cost.py).

    Returns:
        (loss scalar tensor, logs dict, the Batch).
    """
    batch = data.batch(step)
    for group in optimizer.param_groups:
        group["lr"] = cfg.lr * cosine_with_warmup(step, total, cfg.warmup_ratio)
    loss, logs = method.loss(model, batch, torch_generator(derive_seed(cfg.seed, "step", step)))
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    if cfg.grad_clip:
        torch.nn.utils.clip_grad_norm_(list(params.values()), cfg.grad_clip)
    optimizer.step()
    return loss, logs, batch


def train(model, dataset: InstructionSet, cfg: TrainConfig, run_dir: str | Path,
          base_info: Optional[dict] = None, progress: bool = True, resume: bool = True) -> dict:
    """Tune ``model`` on ``dataset`` with ``cfg.method``; write checkpoints and logs to run_dir.

    Returns the summary also written to ``run_dir/train.json``.
    """
    from torch.utils.tensorboard import SummaryWriter

    # -- set-up -------------------------------------------------------------------------------
    run_dir = Path(run_dir)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    seed_everything(derive_seed(cfg.seed, "global"))
    method: Method = METHODS.get(cfg.method)(cfg.method_params)
    n_trainable = setup_trainable(model, method)
    method.setup(model)
    params = trainable_named(model)
    params.update({f"__method__.{name}.{n}": p for name, mod in method.extra_modules().items()
                   for n, p in mod.named_parameters()})
    names = _param_order(params)
    data = TrainData(model, dataset, cfg, method, progress)
    optimizer = build_optimizer(params, cfg)
    total = data.total_steps()
    meta = {"method": method.describe(), "train_config": config_to_dict(cfg), "base": base_info or {},
            "data": {"name": dataset.name, "n_samples": len(dataset), "source": dataset.meta.get("source"),
                     "location": dataset.meta.get("location")},
            "trainable_parameters": n_trainable, "trainable_parts": list(model.spec.trainable_parts())}
    start = try_resume(model, optimizer, names, run_dir, method.extra_modules()) if resume else 0

    # -- loop ---------------------------------------------------------------------------------
    writer = SummaryWriter(str(run_dir / "logs"), purge_step=start)
    log_path = run_dir / "logs" / "loss.jsonl"
    model.train()
    t0, seen = time.perf_counter(), 0
    bar = tqdm(range(start, total), desc=f"{cfg.method} tuning", disable=not progress,
               initial=start, total=total)
    for step in bar:
        loss, logs, batch = train_step(model, method, optimizer, params, data, cfg, step, total)
        seen += len(batch.samples)
        if step % cfg.log_every == 0 or step == total - 1:
            _log(writer, log_path, step, {**logs, "loss": loss.item(), "lr": optimizer.param_groups[0]["lr"]})
            bar.set_postfix(loss=f"{loss.item():.3f}")
        if cfg.save_every and (step + 1) % cfg.save_every == 0 and step + 1 < total:
            save_resume(model, optimizer, names, run_dir, step + 1, meta, method.extra_modules())
    writer.close()

    # -- finish -------------------------------------------------------------------------------
    finished = method.finish(model, data, optimizer, cfg)  # e.g. Fine-Pruning's mask + re-tune
    if finished:
        meta = {**meta, "finish": finished}
    model.eval()
    wall = time.perf_counter() - t0
    summary = {**meta, "steps": total, "resumed_from_step": start, "wall_seconds": round(wall, 2),
               "samples_per_second": round(seen / wall, 2) if wall > 0 else None,
               "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
               "provenance": provenance()}
    if not method.full_model:
        save_tuned(model, run_dir / "checkpoint", {**meta, "step": total})
    atomic_write_json(run_dir / "train.json", summary)
    return summary


def _log(writer, path: Path, step: int, values: Dict[str, float]) -> None:
    for k, v in values.items():
        writer.add_scalar(k, v, step)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as f:
        f.write(json.dumps({"step": step, **{k: round(v, 6) for k, v in values.items()}}) + "\n")
