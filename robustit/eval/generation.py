"""Batched generation over an instruction set: zero-shot or one-shot, one template for all.

One-shot prompts prepend one clean in-context example (its image and its full
instruction-response turn) drawn from a support set (the training split) with a seeded
generator, so the same seed gives the same examples for the clean and the triggered twin.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import torch
from tqdm.auto import tqdm

from ..data.records import InstructionSet, Sample
from ..distributed import shard_bounds
from ..errors import ConfigError, DataError
from ..seeding import derive_seed, torch_generator
from ..data.batching import ImageStore


@dataclass
class DecodingConfig:
    """Decoding settings, recorded with every result."""

    max_new_tokens: int = 20
    num_beams: int = 1
    batch_size: int = 32
    shots: int = 0
    seed: int = 0
    use_cache: bool = True

    def __post_init__(self) -> None:
        if self.shots not in (0, 1):
            raise ConfigError(f"`shots` must be 0 or 1; got {self.shots}")
        if self.max_new_tokens < 1 or self.num_beams < 1 or self.batch_size < 1:
            raise ConfigError("`max_new_tokens`, `num_beams` and `batch_size` must be >= 1")


def pick_examples(queries: Sequence[Sample], support: InstructionSet, seed: int,
                  task: Optional[str] = None) -> List[Sample]:
    """One in-context example per query from ``support`` (same task when given), seeded."""
    pool = [s for s in support.samples if task is None or s.task == task]
    if not pool:
        raise DataError(f"support split {support.name!r} has no {task or ''} samples for one-shot prompts")
    g = torch_generator(derive_seed(seed, "in-context", support.name))
    idx = torch.randint(len(pool), (len(queries),), generator=g).tolist()
    return [pool[i] for i in idx]


def generate_for_set(model, dataset: InstructionSet, decoding: DecodingConfig,
                     support: Optional[InstructionSet] = None, progress: bool = True,
                     desc: str = "generating",
                     prompt_filter: Optional[Callable[[str], str]] = None,
                     shard: Tuple[int, int] = (0, 1)) -> List[Dict]:
    """Generate a response for every sample. Returns one dict per sample: id, prompt, output.

    ``prompt_filter`` (e.g. a :class:`robustit.defenses.prompt_filter.PromptFilter`) rewrites
    every instruction in the prompt (the query's and a one-shot example's, never a response)
    before templating; the row's ``prompt`` shows the filtered text.

    ``shard`` = (rank, world): generate only this rank's contiguous block of the samples
    (``robustit.distributed.shard_bounds``); one-shot examples are drawn for the whole set first,
    so every sample gets the example it gets in a one-process run.
    """
    samples = dataset.samples
    examples = None
    if decoding.shots == 1:
        if support is None:
            raise ConfigError("one-shot generation needs a support split (e.g. --support train)")
        examples = pick_examples(samples, support, decoding.seed, task=samples[0].task if samples else None)
    start, stop = shard_bounds(len(samples), *shard)
    samples, examples = samples[start:stop], examples[start:stop] if examples else None
    if not samples:  # more ranks than samples: nothing to decode here
        return []
    size = getattr(model, "image_size", None)  # one size for query and in-context images
    # a shard decodes only its own images (one process: the whole split, as always)
    store = ImageStore(dataset, None if shard[1] == 1 else [s.image_ids[0] for s in samples], size=size)
    ex_store = ImageStore(support, [e.image_ids[0] for e in examples], size=size) if examples else None
    out: List[Dict] = []
    model.eval()
    for start in tqdm(range(0, len(samples), decoding.batch_size), desc=desc, disable=not progress,
                      leave=False):
        chunk = samples[start:start + decoding.batch_size]
        ex = examples[start:start + decoding.batch_size] if examples else None
        out.extend(_generate_chunk(model, chunk, ex, store, ex_store, decoding, prompt_filter))
    return out


def _generate_chunk(model, chunk, examples, store, ex_store, decoding, prompt_filter=None) -> List[Dict]:
    images = store.batch([s.image_ids[:1] for s in chunk])  # (B, 1, 3, H, W)
    keep = prompt_filter or (lambda text: text)
    if examples:
        images = torch.cat([ex_store.batch([e.image_ids[:1] for e in examples]), images], dim=1)
        prompts = model.prompts([keep(s.instruction) for s in chunk],
                                [[(keep(e.instruction), e.answer)] for e in examples])
    else:
        prompts = model.prompts([keep(s.instruction) for s in chunk])
    texts = model.generate(prompts, images=images.to(model.device),
                           max_new_tokens=decoding.max_new_tokens, num_beams=decoding.num_beams,
                           use_cache=decoding.use_cache)
    rows = []
    for i, (s, p, t) in enumerate(zip(chunk, prompts, texts)):
        row = {"id": s.id, "prompt": p, "output": t}
        if examples:
            row["in_context_id"] = examples[i].id
        rows.append(row)
    return rows
