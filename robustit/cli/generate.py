"""`robustit generate`: responses from a (tuned) model for a split or a single image."""

from __future__ import annotations

import argparse
import json


def register(sub) -> None:
    from .common import add_format_args, add_inference_defense_args, add_model_args, add_threads_arg

    p = sub.add_parser("generate", help="generate responses (greedy or beam, zero- or one-shot)",
                       description="Generate with the Otter prompt template for every sample of a "
                                   "split (or one --image with one --instruction). Batched, with a "
                                   "KV cache.")
    add_model_args(p)
    p.add_argument("--data", metavar="DIR", help="data root or split folder")
    add_format_args(p)
    p.add_argument("--split", default="test-a", help="split to generate for (default: test-a)")
    p.add_argument("--support", default="train",
                   help="split the one-shot in-context examples come from (default: train)")
    p.add_argument("--image", metavar="FILE", help="a single image file (instead of --data)")
    p.add_argument("--instruction", default="Describe the image.", help="instruction for --image")
    p.add_argument("--n", type=int, default=0, help="only the first N samples (0: all)")
    p.add_argument("--shots", type=int, default=0, choices=[0, 1], help="in-context examples")
    p.add_argument("--beams", type=int, default=1, help="beam width (1: greedy)")
    p.add_argument("--max-new-tokens", type=int, default=20, help="generation budget")
    p.add_argument("--batch-size", type=int, default=32, help="prompts per generation batch")
    p.add_argument("--seed", type=int, default=0, help="seed for one-shot example choice")
    p.add_argument("--no-cache", action="store_true", help="decode without the KV cache (slow; for checks)")
    p.add_argument("--out", metavar="FILE.jsonl", help="write id/prompt/output rows here")
    add_inference_defense_args(p)
    add_threads_arg(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..errors import ConfigError
    from ..eval.generation import DecodingConfig, generate_for_set
    from ..io import atomic_write_text
    from ..models.factory import load_model
    from ..defenses.magnitude_prune import magnitude_prune
    from .common import data_options, inference_defenses, open_split, set_threads, tuned_folder

    set_threads(args.threads)
    if not args.data and not args.image:
        raise ConfigError("give --data DIR (a split) or --image FILE")
    prompt_filter, share = inference_defenses(args)
    model, _, _ = load_model(args.model, tuned_folder(args.tuned))
    if share:
        magnitude_prune(model, share)
    if args.image:
        print(_single(model, args, prompt_filter))
        return 0
    dataset = open_split(args.data, args.split, **data_options(args))
    if args.n:
        dataset.samples = dataset.samples[: args.n]
    support = open_split(args.data, args.support, **{**data_options(args), "limit": None}) if args.shots else None
    dec = DecodingConfig(max_new_tokens=args.max_new_tokens, num_beams=args.beams,
                         batch_size=args.batch_size, shots=args.shots, seed=args.seed,
                         use_cache=not args.no_cache)
    rows = generate_for_set(model, dataset, dec, support=support, prompt_filter=prompt_filter)
    text = "".join(json.dumps(r) + "\n" for r in rows)
    if args.out:
        atomic_write_text(args.out, text)
        print(f"wrote {len(rows)} generations to {args.out}")
    else:
        for r in rows:
            print(f"{r['id']}\t{r['output']}")
    return 0


def _single(model, args, prompt_filter=None) -> str:
    import numpy as np
    import torch

    from ..data.records import decode_image

    try:
        data = open(args.image, "rb").read()
    except OSError as exc:
        from ..errors import DataError

        raise DataError(f"--image {args.image}: {exc.strerror}") from None
    arr = decode_image(data, where=f"--image {args.image}")
    size = model.image_size
    img = torch.from_numpy(np.ascontiguousarray(arr)).permute(2, 0, 1).float().div(255)
    img = torch.nn.functional.interpolate(img[None], size=(size, size), mode="bilinear",
                                          antialias=True, align_corners=False).clamp(0, 1)
    instruction = prompt_filter(args.instruction) if prompt_filter else args.instruction
    return model.generate(model.prompts([instruction]), images=img[:, None],
                          max_new_tokens=args.max_new_tokens, num_beams=args.beams)[0]
