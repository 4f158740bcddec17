"""``robustit compose``: a Flamingo/Otter model from a local CLIP folder and a local causal LM.

::

    robustit compose --vision /models/clip-vit-large-patch14 --lm /models/mpt-1b \\
        [--openflamingo-ckpt adapter.safetensors] --cross-attn-every 1 --out /models/otter-like
    robustit compose --recipe DIR/robustit_compose.json [--out DIR]

The output folder is a base model for every other verb (``--model DIR``): see docs/models.md,
"OpenFlamingo / Otter".
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

#: CLI flag -> ComposeRecipe field, for the adapter sizes.
SIZES = {"--perceiver-depth": "perceiver_depth", "--num-latents": "num_latents", "--heads": "heads",
         "--dim-head": "dim_head", "--ff-mult": "ff_mult"}


def register(sub) -> None:
    from ..models.compose import ComposeRecipe

    p = sub.add_parser("compose", help="compose a Flamingo/Otter model from local CLIP + causal LM folders",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--vision", metavar="DIR", help="local HF CLIP folder (CLIPVisionModel or CLIPModel)")
    p.add_argument("--lm", metavar="DIR", help="local HF causal LM folder with its tokenizer "
                                                "(GPT-2, LLaMA or MPT, safetensors)")
    p.add_argument("--openflamingo-ckpt", metavar="FILE.safetensors",
                   help="OpenFlamingo-style perceiver + gated cross-attention weights (.safetensors only)")
    p.add_argument("--cross-attn-every", type=int, default=1, metavar="N",
                   help="a cross-attention block after every N-th LM layer, as OpenFlamingo (default: 1)")
    for flag, field in SIZES.items():
        default = ComposeRecipe.__dataclass_fields__[field].default
        p.add_argument(flag, type=int, default=default, help=f"adapter size (default: {default}, OpenFlamingo's)")
    p.add_argument("--seed", type=int, default=0, help="seed of the adapter's initial weights")
    p.add_argument("--recipe", metavar="FILE", help="read everything from a robustit_compose.json instead")
    p.add_argument("--out", metavar="DIR", help="the composed base folder (default with --recipe: its folder)")
    p.set_defaults(func=run)


def _recipe(args: argparse.Namespace):
    from ..errors import ConfigError
    from ..models.compose import ComposeRecipe, read_recipe

    if args.recipe:
        return read_recipe(args.recipe), Path(args.out or Path(args.recipe).parent)
    if not (args.vision and args.lm and args.out):
        raise ConfigError("give --vision DIR, --lm DIR and --out DIR (or --recipe FILE)")
    sizes = {field: getattr(args, flag[2:].replace("-", "_")) for flag, field in SIZES.items()}
    recipe = ComposeRecipe(vision=args.vision, lm=args.lm, openflamingo_ckpt=args.openflamingo_ckpt,
                           cross_attn_every=args.cross_attn_every, seed=args.seed, **sizes)
    return recipe.resolved(Path.cwd()), Path(args.out)


def run(args: argparse.Namespace) -> int:
    from ..models.compose import compose, save_composed

    recipe, out = _recipe(args)
    model, report = compose(recipe)
    save_composed(model, recipe, out, report)
    total = sum(p.numel() for p in model.parameters())
    print(json.dumps({"out": str(out), "family": model.spec.name, "lm_family": model.config.lm_family,
                      "parameters": total, "trainable": model.freeze_for_tuning(),
                      "openflamingo": report}, indent=2))
    return 0
