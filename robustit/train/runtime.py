"""How an optimizer step runs: one process, or a group started by torchrun / accelerate launch.

The loop hands the model and the method to :class:`Runtime`, which wraps them in one
:class:`StepModule` (its forward *is* the method's loss) and passes it to
``accelerate.Accelerator.prepare``. Accelerate then does what differs between set-ups:

* one process without a launcher: nothing is wrapped; the step is the plain PyTorch step the
  loop always ran (``loss / 1`` in ``accelerator.backward`` is exact, so runs stay bit-identical);
* ``torchrun`` / ``accelerate launch`` with N processes: DistributedDataParallel (gloo between
  CPU processes, NCCL between GPUs); every use of a trainable parameter happens inside the one
  DDP forward, so DDP's gradient all-reduce sees the whole step (a method calling
  ``model.visual_features`` outside a DDP forward would silently skip the sync);
* an accelerate FSDP / DeepSpeed ZeRO-2 config (``robustit/resources/accelerate/``): those
  wrappers. NOT RUN: accelerate uses them only on GPUs and none was available where this was
  written. What is done for them: model and optimizer are prepared together (both need it),
  DeepSpeed gets the micro-batch, accumulation and clipping from the TrainConfig, the final
  checkpoint is gathered with ``accelerator.get_state_dict``; resume states are not written
  (the optimizer state is sharded) and FSDP turns the frozen-feature cache off (the encoder's
  weights are shards outside the wrapped forward);
* ``mixed_precision`` bf16 / fp16: autocast around the forward, and for fp16 a gradient scaler
  (in ``accelerator.backward``, ``clip_grad_norm_`` and the prepared optimizer's ``step``);
* ``grad_accum`` N: ``accelerator.accumulate`` skips the all-reduce on the first N - 1
  micro-batches and ``accelerator.backward`` divides each loss by N.

Data: micro-batch ``m`` of rank ``r`` is slot ``m * world + r`` of the step's global batch
(``TrainData``); its augmentation generator is seeded by (seed, step, slot), so the same samples
draw the same augmentations whichever rank or micro-batch holds them.
"""

from __future__ import annotations

import contextlib
from typing import Dict, List, Optional, Tuple

import torch
from torch import nn

from ..distributed import check_device, launched
from ..errors import ConfigError
from ..seeding import derive_seed, torch_generator
from .batching import Batch


def slot_seed(seed: int, label: str, step: int, slot: int) -> int:
    """Seed of the generator of global-batch slot ``slot`` at ``step``; slot 0 keeps the
    one-process seed derive_seed(seed, label, step), so single runs are unchanged."""
    return derive_seed(seed, label, step) if slot == 0 else derive_seed(seed, label, step, "slot", slot)


def check_precision(mixed_precision: str, device: str = "auto") -> str:
    """The device type (cpu / cuda) for ``device``, refusing what cannot run.

    Raises:
        ConfigError: fp16 on a CPU (fp16 autocast needs a GPU gradient scaler: use bf16 or no),
            or a device that is not there.
    """
    kind = check_device(device)
    if mixed_precision == "fp16" and kind == "cpu":
        raise ConfigError("--mixed-precision fp16 needs a GPU (fp16 autocast with a gradient "
                          "scaler); on the CPU use --mixed-precision bf16 or no")
    return kind


def make_accelerator(cfg, device: str = "auto"):
    """An ``accelerate.Accelerator`` for ``cfg.mixed_precision`` and ``cfg.grad_accum`` on
    ``device`` (errors: :func:`check_precision`)."""
    from accelerate import Accelerator
    from accelerate.utils import DistributedDataParallelKwargs, GradientAccumulationPlugin

    kind = check_precision(cfg.mixed_precision, device)
    _fresh_accelerate_state()
    # An explicit plugin: the launcher's ACCELERATE_GRADIENT_ACCUMULATION_STEPS must not silently
    # differ from the grad_accum recorded in train.json (the CLI reads it as the default instead).
    plugin = GradientAccumulationPlugin(num_steps=cfg.grad_accum, sync_with_dataloader=False)
    # find_unused_parameters: a family or method may leave a trainable parameter out of a step
    # (a full-model run's unused pooler, a text-only batch); DDP would otherwise stop with an error.
    ddp = DistributedDataParallelKwargs(find_unused_parameters=True)
    return Accelerator(cpu=kind == "cpu", mixed_precision=cfg.mixed_precision,
                       gradient_accumulation_plugin=plugin, kwargs_handlers=[ddp])


def sharded_type(accelerator) -> bool:
    from accelerate.utils import DistributedType

    return accelerator.distributed_type in (DistributedType.FSDP, DistributedType.DEEPSPEED)


def shards_parameters(accelerator) -> bool:
    """FSDP keeps only a shard of each wrapped parameter on a rank outside its forward."""
    from accelerate.utils import DistributedType

    return accelerator.distributed_type == DistributedType.FSDP


def _configure_deepspeed(accelerator, cfg) -> None:
    """DeepSpeed reads batch size, accumulation and clipping from its own config; robustit has no
    DataLoader for accelerate to infer them from, so they are set from the TrainConfig (NOT RUN)."""
    plugin = getattr(accelerator.state, "deepspeed_plugin", None)
    if plugin is None:
        return
    plugin.deepspeed_config.update({"train_micro_batch_size_per_gpu": cfg.batch_size,
                                    "gradient_accumulation_steps": cfg.grad_accum,
                                    "gradient_clipping": cfg.grad_clip or 0.0})


def _fresh_accelerate_state() -> None:
    """Forget accelerate's process-wide state between runs of one process without a launcher.

    accelerate keeps one global state per process and refuses a second Accelerator with another
    mixed precision or device; robustit runs several trainings in one process (the bench runs the
    CLI verbs in-process, tests train many tiny models). Under a launcher the state (process
    group, device) belongs to the whole run and is kept.
    """
    if launched():
        return
    from accelerate.state import AcceleratorState, GradientState

    AcceleratorState._reset_state(reset_partial_state=True)
    GradientState._reset_state()


class StepModule(nn.Module):
    """The model plus the method's own modules, as one module whose forward is the method's loss.

    ``forward(batch, generator) -> (loss scalar, logs dict of floats)``. Wrapping this (not the
    bare model) lets DDP / FSDP / autocast cover every forward pass a method makes in a step
    (RobustIT runs the adapter on two views and the LM on one or both).
    """

    def __init__(self, model: nn.Module, method) -> None:
        super().__init__()
        self.model = model
        self.extra = nn.ModuleDict(method.extra_modules())  # e.g. pretraining's scene head
        self.method = method  # not a Module: a plain attribute

    def forward(self, batch: Batch, generator: torch.Generator) -> Tuple[torch.Tensor, Dict[str, float]]:
        return self.method.loss(self.model, batch, generator)


class Runtime:
    """One optimizer step over ``cfg.grad_accum`` micro-batches per rank.

    Args:
        model, method: the model (already on its device) and the tuning method.
        optimizer: the torch optimizer over ``params`` (kept as ``raw_optimizer`` for the resume
            state; ``optimizer`` is accelerate's wrapper).
        params: name -> trainable parameter (the ones clipped).
        cfg: the run's TrainConfig.
        accelerator: an Accelerator from :func:`make_accelerator`; None runs the plain PyTorch
            step on one process (the benchmarks that time a bare step).
    """

    def __init__(self, model, method, optimizer, params: Dict[str, nn.Parameter], cfg,
                 accelerator=None) -> None:
        if accelerator is None and cfg.grad_accum != 1:
            raise ConfigError("grad_accum > 1 needs the accelerate runtime (train() builds it)")
        self.accelerator, self.cfg = accelerator, cfg
        self.module = StepModule(model, method)
        self.raw_optimizer = self.optimizer = optimizer
        if accelerator is not None:
            _configure_deepspeed(accelerator, cfg)
            # together: DeepSpeed and FSDP2 re-point the optimizer at the wrapped parameters
            self.module, self.optimizer = accelerator.prepare(self.module, optimizer)
        self.params = list(params.values())
        self.rank = accelerator.process_index if accelerator else 0
        self.world = accelerator.num_processes if accelerator else 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def sharded(self) -> bool:
        """FSDP or DeepSpeed: parameters, gradients or optimizer state are split over ranks."""
        return self.accelerator is not None and sharded_type(self.accelerator)

    def full_model_state(self) -> Optional[Dict[str, torch.Tensor]]:
        """The model's full state dict gathered on rank 0 when sharded (a collective: every rank
        calls it), keyed as ``model.state_dict()``; None when every rank holds whole weights."""
        if not self.sharded:
            return None
        state = self.accelerator.get_state_dict(self.module)
        return {k[len("model."):]: v for k, v in (state or {}).items() if k.startswith("model.")}

    def step(self, data, step: int, lr: float, label: str = "step",
             clip_params: Optional[List[nn.Parameter]] = None) -> List[Tuple[torch.Tensor, Dict, Batch]]:
        """Set ``lr``, run every micro-batch of ``step`` forward and backward, clip, step.

        ``clip_params``: the parameters whose gradient norm is clipped, in the order the norm is
        summed (default: the trainable parameters given at construction).

        Returns:
            per micro-batch of this rank: (loss before the 1/grad_accum scaling, logs, Batch).
        """
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        self.raw_optimizer.zero_grad(set_to_none=True)
        out = []
        for micro in range(self.cfg.grad_accum):
            batch = data.batch(step, micro)
            slot = micro * self.world + self.rank
            generator = torch_generator(slot_seed(self.cfg.seed, label, step, slot))
            with self._accumulate():
                loss, logs = self.module(batch, generator)
                self._backward(loss)
            out.append((loss.detach(), logs, batch))
        if self.accelerator is not None and not self.accelerator.sync_gradients:
            raise RuntimeError("gradient accumulation out of step: the last micro-batch did not sync")
        if self.cfg.grad_clip:
            self._clip(clip_params or self.params)
        self.optimizer.step()
        return out

    def _accumulate(self):
        if self.accelerator is None:
            return contextlib.nullcontext()
        return self.accelerator.accumulate(self.module)

    def _backward(self, loss: torch.Tensor) -> None:
        if self.accelerator is not None:
            self.accelerator.backward(loss)
        else:
            loss.backward()

    def _clip(self, params: List[nn.Parameter]) -> None:
        if self.accelerator is None:  # looked up at call time: benchmarks/bench_cost.py patches it
            torch.nn.utils.clip_grad_norm_(params, self.cfg.grad_clip)
            return
        from accelerate.utils import DistributedType

        if self.accelerator.distributed_type == DistributedType.FSDP:
            # FSDP shards gradients: accelerate computes the global norm only when given the
            # wrapped module's own parameters (frozen ones have no gradient and add nothing)
            params = list(self.module.parameters())
        self.accelerator.clip_grad_norm_(params, self.cfg.grad_clip)

    def mean_logs(self, results: List[Tuple[torch.Tensor, Dict, Batch]]) -> Dict[str, float]:
        """Logs averaged over this rank's micro-batches and over ranks (a collective when
        world > 1: every rank calls it at the same steps); ``loss`` is the method's loss.
        One micro-batch on one process returns its values untouched."""
        logs = [{**lg, "loss": loss.item()} for loss, lg, _ in results]
        if len(logs) == 1 and self.world == 1:
            return logs[0]
        keys = sorted(logs[0])
        local = torch.tensor([[lg[k] for k in keys] for lg in logs], dtype=torch.float64).mean(0)
        if self.world > 1:
            local = self.accelerator.reduce(local.to(self.accelerator.device), "mean").cpu()
        return dict(zip(keys, local.tolist()))

    def describe(self, data) -> Dict:
        """What train.json records about the set-up (and resume checks)."""
        acc = self.accelerator
        return {"world_size": self.world, "per_rank_batch": self.cfg.batch_size,
                "grad_accum": self.cfg.grad_accum, "global_batch": data.global_batch,
                "mixed_precision": self.cfg.mixed_precision,
                "distributed_type": str(acc.distributed_type.value) if acc else "NO",
                "device": str(acc.device) if acc else str(next(iter(self.params)).device)}

