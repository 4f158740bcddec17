"""The tuning loop: one readable function in labelled sections, helpers of about 20 lines.

Run folder layout (``run_dir``)::

    checkpoint/      the final tuned checkpoint (tuned.safetensors + tuned.json)
    resume/          the latest resumable state (tuned parts + optimizer + counters), atomic
    logs/            TensorBoard event files and loss.jsonl
    train.json       summary: config, method, trainable count, wall time, throughput, provenance

Resuming: data order and augmentation randomness are pure functions of (seed, epoch / step), and
the global RNG (dropout) is saved with the state, so a resumed run continues exactly where the
killed one stopped.

Processes: the same function runs under ``torchrun`` / ``accelerate launch`` (see
``runtime.py``). Every rank builds the model, data and optimizer alike; each optimizer step reads
one global batch of batch_size x ranks x grad_accum samples, of which each rank takes its own
disjoint micro-batches; AAR statistics are all-reduced inside the forward, so masks agree on every
rank. Only rank 0 writes the run folder; every rank returns after it has.
"""

from __future__ import annotations

import json
import math
import resource
import time
from dataclasses import replace
from pathlib import Path
from typing import Dict, Optional

import torch
from safetensors.torch import load_file
from tqdm.auto import tqdm

from ..config import config_to_dict
from ..data.records import InstructionSet
from ..distributed import gather_to_main, shard_bounds
from ..errors import CheckpointError, ConfigError, DataError
from ..io import atomic_write_json, provenance
from ..models.checkpoint import (OPTIM_WEIGHTS, TRAINER_STATE, load_tuned, save_tuned)
from ..seeding import derive_seed, seed_everything, torch_generator
from . import resume as rs
from .batching import Batch, FeatureCache, ImageStore, encode_pairs
from .config import TrainConfig
from .methods import METHODS, Method
from .runtime import Runtime, make_accelerator, shards_parameters
from .schedule import cosine_with_warmup


class TrainData:
    """Deterministic batches: the order of epoch e is a permutation seeded by (seed, e).

    Optimizer step s reads global batch s: ``global_batch`` = batch_size x world x grad_accum
    consecutive rows of the permutation, cut into ``slots`` = world x grad_accum micro-batches;
    rank r's micro-batch m is slot m * world + r. So 2 ranks x batch 8 and 1 rank x batch 16 see
    the same 16 samples at every step. ``runtime`` is set by :func:`train` (methods' ``finish``
    steps through it).
    """

    def __init__(self, model, dataset: InstructionSet, cfg: TrainConfig, method: Method,
                 progress: bool, rank: int = 0, world: int = 1) -> None:
        if len(dataset) == 0:
            raise DataError(f"split {dataset.name!r} is empty: nothing to train on")
        self.model, self.dataset, self.cfg = model, dataset, cfg
        self.rank, self.world, self.slots = rank, world, world * cfg.grad_accum
        self.global_batch = cfg.batch_size * self.slots
        self.runtime: Optional[Runtime] = None
        self.store = ImageStore(dataset, size=getattr(model, "image_size", None))
        use_cache = cfg.cache_vision and not method.full_model and model.spec.caches_vision
        self.features = FeatureCache(model, self.store, progress=progress) if use_cache else None
        self.need_images = method.full_model or method.augments_images or self.features is None
        self.steps_per_epoch = math.ceil(len(dataset) / self.global_batch)
        self._perm_epoch, self._perm = -1, None

    def use_dataset(self, dataset: InstructionSet) -> None:
        """Tune on ``dataset`` instead (a screened subset or repaired copy of the original: its
        images are a subset of the decoded store and the feature cache, which are kept)."""
        if len(dataset) == 0:
            raise DataError(f"split {dataset.name!r}: screening left no sample to train on")
        self.dataset = dataset
        self.steps_per_epoch = math.ceil(len(dataset) / self.global_batch)
        self._perm_epoch, self._perm = -1, None

    def total_steps(self) -> int:
        if self.cfg.max_steps:
            return self.cfg.max_steps
        return max(1, math.ceil(self.cfg.epochs * self.steps_per_epoch))

    def step_rows(self, step: int) -> list:
        """Dataset rows of global batch ``step`` (all ranks, all micro-batches)."""
        epoch, pos = divmod(step, self.steps_per_epoch)
        if epoch != self._perm_epoch:
            g = torch_generator(derive_seed(self.cfg.seed, "order", epoch))
            self._perm, self._perm_epoch = torch.randperm(len(self.dataset), generator=g).tolist(), epoch
        return self._perm[pos * self.global_batch:(pos + 1) * self.global_batch]

    def indices(self, step: int, micro: int = 0) -> list:
        """This rank's rows for micro-batch ``micro`` of step ``step``."""
        return slot_rows(self.step_rows(step), micro * self.world + self.rank, self.slots,
                         self.cfg.batch_size)

    def step_size(self, step: int) -> int:
        """Distinct samples global batch ``step`` holds (for throughput)."""
        return len(self.step_rows(step))

    def batch(self, step: int, micro: int = 0) -> Batch:
        samples = [self.dataset.samples[i] for i in self.indices(step, micro)]
        image_ids = [s.image_ids for s in samples]
        enc = encode_pairs(self.model.tokenizer, self.model.template, [s.instruction for s in samples],
                           [s.answer for s in samples], self.cfg.max_len)
        dev = self.model.device
        return Batch(samples=samples,
                     images=self.store.batch(image_ids).to(dev) if self.need_images else None,
                     vision_features=self.features.batch(image_ids).to(dev) if self.features else None,
                     max_len=self.cfg.max_len, **{k: v.to(dev) for k, v in enc.items()})


def slot_rows(block: list, slot: int, slots: int, size: int) -> list:
    """Rows of micro-batch ``slot`` of ``slots`` in a global batch ``block``.

    A full block gives every slot ``size`` consecutive rows. The epoch's last, shorter block is
    split as evenly as possible (one slot on one process: the whole block, as before); a slot
    left empty (fewer rows than slots) repeats one row so that no rank skips the collective step.
    """
    if len(block) == slots * size:
        return block[slot * size:(slot + 1) * size]
    start, stop = shard_bounds(len(block), slot, slots)
    return block[start:stop] or [block[slot % len(block)]]


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
    """Write ``run_dir/resume`` (atomic). Under a launcher every rank calls it (their RNG states
    are gathered) and rank 0 writes; ``meta["scale"]`` is kept to check a later resume."""
    rngs = gather_to_main(rs.rng_tensors())
    if rngs is None:  # not rank 0
        return
    tensors = {**rs.optimizer_tensors(optimizer, names), **rs.ranks_rng_tensors(rngs)}
    if meta["method"]["name"] == "pretrain":
        tensors.update({f"__model__::{k}": v.detach().clone() for k, v in
                        model.state_dict().items()})
    for name, mod in method_modules.items():
        tensors.update({f"__method__::{name}.{k}": v.detach().clone() for k, v in mod.state_dict().items()})
    scale = {k: meta["scale"][k] for k in ("world_size", "global_batch")} if "scale" in meta else {}
    save_tuned(model, run_dir / "resume", {**meta, "step": step},
               optimizer_state=(tensors, {"step": step, **scale}))


def try_resume(model, optimizer, names, run_dir: Path, method_modules: Dict[str, torch.nn.Module],
               global_batch: Optional[int] = None, rank: int = 0) -> int:
    """Load ``run_dir/resume`` if present; return the step to continue from (0 = fresh).

    Every rank loads the same files (a folder all ranks can read) and restores its own RNG.
    Raises CheckpointError when the state was saved with another global batch (the data order
    of the remaining steps would differ).
    """
    folder = run_dir / "resume"
    if not (folder / TRAINER_STATE).exists():
        return 0
    state = json.loads((folder / TRAINER_STATE).read_text())
    _check_global_batch(state, global_batch, folder)
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
    rs.restore_rng(rng, rank)
    return int(state["step"])


def _check_global_batch(state: dict, global_batch: Optional[int], folder: Path) -> None:
    saved = state.get("global_batch")
    if saved is None or global_batch is None or saved == global_batch:
        return
    raise CheckpointError(
        f"{folder} was saved by a run with a global batch of {saved} (batch size x "
        f"{state.get('world_size')} process(es) x grad accumulation); this run has {global_batch}, "
        f"so its remaining steps would read other samples. Rerun with the same global batch "
        f"(--batch-size / --grad-accum / number of processes) or pass --no-resume to start over")


def train_step(model, method: Method, optimizer, params: Dict[str, torch.nn.Parameter],
               data: TrainData, cfg: TrainConfig, step: int, total: int,
               runtime: Optional[Runtime] = None):
    """One optimizer step on global batch ``step`` (also timed alone by benchmarks/bench_cost.py,
    which gives no ``runtime``: the plain one-process PyTorch step).

    Returns:
        (loss scalar tensor, logs dict, the Batch) of this rank's first micro-batch.
    """
    runtime = runtime or Runtime(model, method, optimizer, params, cfg)
    lr = cfg.lr * cosine_with_warmup(step, total, cfg.warmup_ratio)
    return runtime.step(data, step, lr)[0]


def train(model, dataset: InstructionSet, cfg: TrainConfig, run_dir: str | Path,
          base_info: Optional[dict] = None, progress: bool = True, resume: bool = True,
          device: str = "auto") -> dict:
    """Tune ``model`` on ``dataset`` with ``cfg.method``; write checkpoints and logs to run_dir.

    ``device``: auto | cpu | cuda (``robustit.distributed.check_device``). Under a launcher every
    rank calls this with the same arguments. Returns the summary that rank 0 also writes to
    ``run_dir/train.json``.
    """
    from torch.utils.tensorboard import SummaryWriter

    # -- set-up -------------------------------------------------------------------------------
    run_dir = Path(run_dir)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    accelerator = make_accelerator(cfg, device)  # joins the launcher's process group, if any
    main = accelerator.is_main_process
    seed_everything(derive_seed(cfg.seed, "global"))
    method: Method = METHODS.get(cfg.method)(cfg.method_params)
    cfg = _place(model, cfg, accelerator, method)
    n_trainable = setup_trainable(model, method)
    method.setup(model)
    params = trainable_named(model)
    params.update({f"__method__.{name}.{n}": p for name, mod in method.extra_modules().items()
                   for n, p in mod.named_parameters()})
    names = _param_order(params)
    data = TrainData(model, dataset, cfg, method, progress and main, accelerator.process_index,
                     accelerator.num_processes)
    screened = _screen(model, method, data, run_dir, main, progress and main)  # on the base, before any step
    optimizer = build_optimizer(params, cfg)
    data.runtime = runtime = Runtime(model, method, optimizer, params, cfg, accelerator)
    total = data.total_steps()
    meta = {"method": method.describe(), "train_config": config_to_dict(cfg), "base": base_info or {},
            "data": {"name": dataset.name, "n_samples": len(dataset), "source": dataset.meta.get("source"),
                     "location": dataset.meta.get("location")},
            "trainable_parameters": n_trainable, "trainable_parts": list(model.spec.trainable_parts()),
            "scale": runtime.describe(data)}
    if screened is not None:
        meta["screen"] = screened
    _seed_rank(cfg, runtime.rank)
    if runtime.sharded:
        _check_no_sharded_resume(run_dir, resume, main, cfg)
    start = try_resume(model, optimizer, names, run_dir, method.extra_modules(), data.global_batch,
                       runtime.rank) if resume and not runtime.sharded else 0

    # -- loop ---------------------------------------------------------------------------------
    writer = SummaryWriter(str(run_dir / "logs"), purge_step=start) if main else None
    log_path = run_dir / "logs" / "loss.jsonl"
    runtime.module.train()
    t0, seen = time.perf_counter(), 0
    bar = tqdm(range(start, total), desc=f"{cfg.method} tuning", disable=not (progress and main),
               initial=start, total=total)
    for step in bar:
        lr = cfg.lr * cosine_with_warmup(step, total, cfg.warmup_ratio)
        results = runtime.step(data, step, lr)
        seen += data.step_size(step)
        if step % cfg.log_every == 0 or step == total - 1:
            logs = runtime.mean_logs(results)  # under a launcher a collective: every rank calls it
            if main:
                _log(writer, log_path, step, {**logs, "lr": lr})
                bar.set_postfix(loss=f"{logs['loss']:.3f}")
        if cfg.save_every and not runtime.sharded and (step + 1) % cfg.save_every == 0 and step + 1 < total:
            save_resume(model, optimizer, names, run_dir, step + 1, meta, method.extra_modules())
    if writer is not None:
        writer.close()

    # -- finish -------------------------------------------------------------------------------
    finished = method.finish(model, data, optimizer, cfg)  # e.g. Fine-Pruning's mask + re-tune
    if finished:
        meta = {**meta, "finish": finished}
    model.eval()
    wall = time.perf_counter() - t0 + (screened or {}).get("screen_seconds", 0.0)  # a defense's full cost
    summary = {**meta, "steps": total, "resumed_from_step": start, "wall_seconds": round(wall, 2),
               "samples_per_second": round(seen / wall, 2) if wall > 0 else None,
               "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
               "provenance": provenance()}
    full_state = runtime.full_model_state()  # sharded runs gather the weights (every rank calls)
    if main:
        if not method.full_model:
            save_tuned(model, run_dir / "checkpoint", {**meta, "step": total}, state=full_state)
        atomic_write_json(run_dir / "train.json", summary)
    accelerator.wait_for_everyone()  # no rank returns before the run folder is complete
    return summary


def _screen(model, method: Method, data: TrainData, run_dir: Path, main: bool, progress: bool):
    """Run the method's ``screen`` hook (deterministic, so a resumed run screens alike); write
    ``RUN/screen.json`` and return its summary for train.json (None when the method has none)."""
    t0 = time.perf_counter()
    outcome = method.screen(model, data, progress=progress)
    if outcome is None:
        return None
    dataset, record = outcome
    data.use_dataset(dataset)
    summary = {**record.get("summary", {}), "n_tuned_on": len(dataset),
               "screen_seconds": round(time.perf_counter() - t0, 3)}
    if main:
        run_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_json(run_dir / "screen.json", {**record, "summary": summary})
    return summary


def _place(model, cfg: TrainConfig, accelerator, method: Method) -> TrainConfig:
    """Move the model to this rank's device; the cfg to train with.

    Under FSDP accelerate places and shards the weights itself in ``prepare``, and the frozen
    feature cache is turned off: it would run the encoder outside the wrapped forward, where its
    weights are shards (NOT RUN here, see runtime.py). For the same reason methods with a
    ``finish`` step (Fine-Pruning) and full-model runs (their base folder is written from the
    model's own weights) are refused.
    """
    if not shards_parameters(accelerator):
        model.to(accelerator.device)
        return cfg
    if method.full_model or type(method).finish is not Method.finish:
        raise ConfigError(f"--method {method.name} is not supported under FSDP (it uses the model "
                          f"outside the wrapped training step); use DDP (ddp-8gpu.yaml) or ZeRO-2")
    return replace(cfg, cache_vision=False)


def _check_no_sharded_resume(run_dir: Path, resume: bool, main: bool, cfg: TrainConfig) -> None:
    """FSDP / DeepSpeed runs neither write nor read RUN/resume (their optimizer state is sharded
    and the resume format holds whole tensors); an existing one is refused, not ignored."""
    if resume and (run_dir / "resume" / TRAINER_STATE).exists():
        raise CheckpointError(f"{run_dir / 'resume'} exists, but resuming is not supported under "
                              f"FSDP / DeepSpeed; run without them to resume it, or pass --no-resume")
    if main and cfg.save_every:
        print("note: no resume states under FSDP / DeepSpeed (--save-every is ignored); the final "
              "checkpoint is written", flush=True)


def _seed_rank(cfg: TrainConfig, rank: int) -> None:
    """Ranks > 0 reseed the global RNG after the identical set-up so that each draws its own
    dropout masks; rank 0 keeps the one-process stream (a resume then restores each rank's)."""
    if rank > 0:
        torch.manual_seed(derive_seed(cfg.seed, "global", "rank", rank))


def _log(writer, path: Path, step: int, values: Dict[str, float]) -> None:
    for k, v in values.items():
        writer.add_scalar(k, v, step)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as f:
        f.write(json.dumps({"step": step, **{k: round(v, 6) for k, v in values.items()}}) + "\n")
