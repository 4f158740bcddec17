"""``robustit poison``: poison a split, write a triggered test set, or draw a trigger preview.

Three modes::

    robustit poison --data DIR --split train --attack badnet --rate 0.01 --seed 0 --out DIR
    robustit poison --triggered-test both --data DIR --split test --attack badnet --out DIR
    robustit poison --preview grid.png [--data DIR --split NAME] [--attacks badnet,sig]

Poisoning writes the split in the same MIMIC-IT layout plus ``manifest.json``; a triggered test
set is written under ``{split}-triggered`` (``-image`` / ``-text`` for one half) with its own
``{name}_manifest.json``.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any, Dict, List, Optional

import torch

from ..attacks.base import TEXT_TRIGGER_MODES
from ..attacks.responses import DEFAULT_PHRASE, MODES as RESPONSE_MODES, POSITIONS
from ..errors import ConfigError
from ..io import atomic_write_json, provenance
from .common import add_format_args, add_param_arg, data_options, open_split, parse_params, report_skipped

DEFAULT_INSTRUCTION = "Describe the image briefly."
#: target pools shipped with robustit (``--target-pool NAME``)
SHIPPED_POOLS = Path(__file__).resolve().parent.parent / "resources" / "target-pools"


def register(subparsers) -> None:
    """Add the ``poison`` verb."""
    from ..attacks.poison import DEFAULT_TARGET, HALVES

    p = subparsers.add_parser("poison", help="poison a split, write a triggered test set, or preview triggers",
                              description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", type=Path, metavar="DIR",
                   help="a data root holding one folder per split (as `robustit data build` writes), "
                        "or a split folder itself (MIMIC-IT layout: NAME_instructions.json + NAME.json)")
    p.add_argument("--split", help="name of the input split, e.g. train or test")
    p.add_argument("--skip-invalid", action="store_true",
                   help="skip input records with a missing/corrupt image or missing fields (default: "
                        "stop at the first one with an error)")
    add_format_args(p)
    p.add_argument("--quiet", action="store_true",
                   help="no progress bars while a learned trigger (SSBA, VL-Trojan, adaptive) is made")
    p.add_argument("--attack", help="attack name (badnet, blended, sig, ssba, ftrojan, trojvqa, vltrojan)")
    p.add_argument("--rate", type=float, help="fraction of eligible samples to poison, in (0, 1]; 0.01 = 1 %%")
    p.add_argument("--target", default=DEFAULT_TARGET, help="target response of poisoned samples "
                   f"(default: {DEFAULT_TARGET!r})")
    p.add_argument("--target-pool", type=Path, help="file of target responses, one per line (or a JSON "
                   "list), or a shipped pool by name (banana: ten paraphrases of the paper's target); "
                   "each poisoned sample draws one (seeded); overrides --target")
    p.add_argument("--response-mode", choices=RESPONSE_MODES, default="replace",
                   help="how poisoned responses are made: replace (the target or a pool draw; the paper's, "
                        "default), inject (the sample's own response plus --inject-phrase; TrojVLM-style), "
                        "label (--label-source becomes --label-target in the otherwise correct response; "
                        "Shadowcast-style; only samples naming the source are eligible). The ASR rule "
                        "follows the mode and is recorded in the manifest (docs/attacks.md)")
    p.add_argument("--inject-phrase", default=DEFAULT_PHRASE,
                   help=f"phrase added by --response-mode inject (default: {DEFAULT_PHRASE!r})")
    p.add_argument("--inject-position", choices=POSITIONS, default="end",
                   help="where --response-mode inject puts the phrase (default: end)")
    p.add_argument("--label-source", default="circle",
                   help="object word --response-mode label replaces (default: circle)")
    p.add_argument("--label-target", default="banana",
                   help="word it becomes (default: banana)")
    p.add_argument("--seed", type=int, default=0, help="seed for the choice of samples and pool draws "
                   "(default 0)")
    p.add_argument("--out", type=Path, help="output folder for the poisoned split or triggered test set")
    p.add_argument("--name", help="output split name (default: the input name; for --triggered-test "
                   "'{split}-triggered[-HALF]')")
    p.add_argument("--manifest", type=Path, help="where to write the manifest (default: OUT/manifest.json; "
                   "for --triggered-test OUT/NAME_manifest.json)")
    p.add_argument("--tasks", help="comma-separated tasks whose samples may be poisoned (default: all)")
    add_param_arg(p, "attack")
    p.add_argument("--text-trigger-mode", choices=TEXT_TRIGGER_MODES,
                   help="'paper': add the attack's text trigger (App. B, default); 'image-only': leave "
                        "instructions unchanged (intrinsic text triggers, TrojVQA's and VL-Trojan's, "
                        "stay); 'no-text': no text trigger for any attack (a diagnostic: does the "
                        "image trigger alone implant?)")
    p.add_argument("--cache", type=Path, help="folder for optimised / trained trigger artefacts, shared "
                   "with `robustit eval` (default: $ROBUSTIT_CACHE/attacks or ~/.cache/robustit/attacks)")
    p.add_argument("--model", metavar="BASE", help="frozen victim base model ('embedded', a base model "
                   "folder or a local LLaVA / BLIP-2 / IDEFICS folder) for attacks that learn their trigger against it (ssba, vltrojan, trojvqa "
                   "with patch=optimised); not needed for fixed triggers")
    p.add_argument("--trigger-seed", type=int, default=0, help="seed for learning a trigger (default 0, "
                   "the seed `robustit eval` prepares triggers with)")
    p.add_argument("--batch-size", type=int, default=64, help="images triggered at once (default 64)")
    p.add_argument("--triggered-test", choices=HALVES, metavar="HALVES",
                   help="write a triggered test set instead of poisoning: 'both' (image and text "
                        "trigger), 'image' or 'text' (one half only)")
    p.add_argument("--preview", type=Path, metavar="FILE.png",
                   help="draw clean / triggered / amplified difference for each attack to FILE.png")
    p.add_argument("--attacks", help="comma-separated attacks for --preview (default: all registered)")
    p.add_argument("--size", type=int, default=64, help="image side for --preview without --data (default 64)")
    p.add_argument("--amplify", default="10", help="difference amplification for --preview: a factor "
                   "or 'auto' (normalise to the largest change); default 10")
    p.add_argument("--index", type=int, default=0, help="which sample's image --preview shows (default 0)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    if args.preview:
        return run_preview(args)
    if args.triggered_test:
        return run_triggered(args)
    return run_poison(args)


# -- arguments -------------------------------------------------------------------------------
def require(args: argparse.Namespace, *names: str, mode: str) -> None:
    """Raise ConfigError naming the first missing option."""
    for name in names:
        if getattr(args, name) is None:
            flag = "--" + name.replace("_", "-")
            raise ConfigError(f"{mode} needs `{flag}`; see `robustit poison --help`")


def read_target_pool(path: Path) -> List[str]:
    """Target responses from a JSON list or a text file (one per line, # comments), or a pool
    shipped in ``robustit/resources/target-pools/`` named without its extension."""
    shipped = SHIPPED_POOLS / f"{path}.txt"
    if not Path(path).exists() and "/" not in str(path) and shipped.is_file():
        path = shipped
    try:
        text = Path(path).read_text()
    except OSError as exc:
        raise ConfigError(f"`--target-pool` {str(path)!r} cannot be read ({exc.strerror}); give a text "
                          f"file with one target response per line") from None
    if text.lstrip().startswith("["):
        try:
            pool = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ConfigError(f"`--target-pool` {str(path)!r}: invalid JSON list ({exc.msg})") from None
    else:
        pool = [ln.strip() for ln in text.splitlines() if ln.strip() and not ln.lstrip().startswith("#")]
    if not pool:
        raise ConfigError(f"`--target-pool` {str(path)!r} holds no target response; add one per line")
    return pool


def response_config(args: argparse.Namespace):
    """The ``ResponseConfig`` of --response-mode and its options."""
    from ..attacks.responses import ResponseConfig

    return ResponseConfig(mode=args.response_mode, phrase=args.inject_phrase, position=args.inject_position,
                          source_word=args.label_source, target_word=args.label_target)


def cache_dir(args: argparse.Namespace) -> Path:
    """``--cache`` or the cache ``robustit eval`` uses, so both see the same learned triggers."""
    from ..eval.victim import default_cache_dir

    return Path(args.cache) if args.cache else default_cache_dir()


def make_attack_context(args: argparse.Namespace, dataset=None, images: Optional[torch.Tensor] = None):
    """The :class:`AttackContext` an attack prepares its trigger with.

    With a data set it is built exactly as ``robustit eval`` builds it
    (:func:`robustit.eval.victim.attack_context`: same seeded sample of clean images, same cache),
    so a learned trigger (SSBA, VL-Trojan, TrojVQA ``patch=optimised``) is made once and the
    evaluation's triggered twins reuse it. ``--model`` adds the frozen victim's
    ``vision_features`` / ``text_features``; without it only attacks with fixed triggers can be
    prepared. Without a data set (the preview) ``images`` (B, 3, H, W) are the clean sample.
    """
    from ..attacks.base import AttackContext
    from ..eval.victim import attack_context, optional_model_id

    model, info = None, None
    if args.model:
        from ..models.factory import load_base

        model, info = load_base(args.model)  # the attacker knows the frozen base only
    model_id = optional_model_id(info) or "none"
    if dataset is not None:
        return attack_context(dataset, cache_dir(args), seed=args.trigger_seed, model=model,
                              model_id=model_id)
    ctx = AttackContext(cache_dir=cache_dir(args), seed=args.trigger_seed,
                        image_size=tuple(images.shape[-2:]), clean_images=images, model_id=model_id)
    if model is not None:
        from ..eval.victim import text_features_fn, vision_features_fn

        ctx.vision_features, ctx.text_features = vision_features_fn(model), text_features_fn(model)
    return ctx


def make_attack(args: argparse.Namespace, name: str, ctx, params: Optional[Dict[str, Any]] = None):
    """Build and prepare the attack ``name`` from ``--param`` / ``--text-trigger-mode``."""
    from ..attacks import build_attack

    params = dict(parse_params(args.param) if params is None else params)
    if args.text_trigger_mode:
        params["text_trigger_mode"] = args.text_trigger_mode
    attack = build_attack(name, params)
    if getattr(args, "quiet", False) and hasattr(attack, "progress"):
        attack.progress = False  # learned triggers (SSBA, VL-Trojan, adaptive) show bars otherwise
    attack.prepare(ctx)
    return attack


def load_input(args: argparse.Namespace):
    dataset = open_split(str(args.data), args.split, skip_invalid=args.skip_invalid, **data_options(args))
    report_skipped(dataset)
    return dataset


def check_not_overwriting(args: argparse.Namespace, name: str) -> None:
    data = Path(args.data)
    source = data / args.split if (data / args.split).is_dir() else data
    if Path(args.out).resolve() == source.resolve() and name == args.split:
        raise ConfigError(f"`--out` {str(args.out)!r} with name {name!r} would overwrite the input split; "
                          f"choose another `--out` or `--name`")


# -- modes -----------------------------------------------------------------------------------
def run_poison(args: argparse.Namespace) -> int:
    from ..attacks.poison import check_target, poison_count, poison_dataset
    from ..data.mimicit import save_split

    require(args, "data", "split", "attack", "rate", "out", mode="poisoning")
    name = args.name or args.split
    check_not_overwriting(args, name)
    poison_count(0, args.rate)  # check `rate` before reading the data
    response_config(args)  # and the response options
    target = check_target(read_target_pool(args.target_pool) if args.target_pool else args.target)
    dataset = load_input(args)
    ctx = make_attack_context(args, dataset)
    attack = make_attack(args, args.attack, ctx)
    tasks = [t.strip() for t in args.tasks.split(",") if t.strip()] if args.tasks else None
    poisoned, manifest = poison_dataset(dataset, attack, args.rate, target, args.seed, tasks,
                                        args.batch_size, context=ctx, response=response_config(args))
    poisoned.name = name
    save_split(poisoned, args.out, name)
    manifest_path = args.manifest or Path(args.out) / "manifest.json"
    atomic_write_json(manifest_path, manifest)
    print(f"poisoned {manifest['n_poisoned']} of {manifest['n_eligible']} eligible samples "
          f"({args.attack}, rate {args.rate}, seed {args.seed}) -> {args.out}/{name}; manifest {manifest_path}")
    return 0


def run_triggered(args: argparse.Namespace) -> int:
    from ..attacks.poison import trigger_dataset
    from ..data.mimicit import save_split

    require(args, "data", "split", "attack", "out", mode="--triggered-test")
    halves = args.triggered_test
    name = args.name or f"{args.split}-triggered" + ("" if halves == "both" else f"-{halves}")
    check_not_overwriting(args, name)
    dataset = load_input(args)
    attack = make_attack(args, args.attack, make_attack_context(args, dataset))
    triggered = trigger_dataset(dataset, attack, halves, name, args.batch_size)
    save_split(triggered, args.out, name)
    manifest_path = args.manifest or Path(args.out) / f"{name}_manifest.json"
    atomic_write_json(manifest_path, {"attack": attack.describe(), "halves": halves, "clean_split": args.split,
                                      "n_samples": len(triggered), "provenance": provenance()})
    print(f"triggered test set ({args.attack}, {halves}) of {len(triggered)} samples -> {args.out}/{name}")
    return 0


def preview_inputs(args: argparse.Namespace):
    """(clean image (3, H, W), instruction, dataset or None) for the preview."""
    from ..attacks.blended import shipped_photo, to_tensor
    from ..attacks.functional import resize_image

    if args.data is not None:
        require(args, "split", mode="--preview with --data")
        dataset = load_input(args)
        with_images = [s for s in dataset.samples if s.image_ids]
        if not with_images:
            raise ConfigError(f"`--data` split {args.split!r} has no sample with an image to preview")
        sample = with_images[args.index % len(with_images)]
        return to_tensor(dataset.image(sample.image_ids[0])), sample.instruction, dataset
    photo = shipped_photo("astronaut")  # 512 x 512, public domain (NASA)
    return resize_image(to_tensor(photo), args.size, args.size), DEFAULT_INSTRUCTION, None


def run_preview(args: argparse.Namespace) -> int:
    from ..attacks import ATTACKS
    from ..attacks.preview import PreviewRow, draw_preview, preview_row

    names = [n.strip() for n in args.attacks.split(",") if n.strip()] if args.attacks else \
        ([args.attack] if args.attack else ATTACKS.names())
    for n in names:
        ATTACKS.get(n)  # unknown name -> error listing the known ones
    if args.param and len(names) != 1:
        raise ConfigError("`--param` applies to one attack; with --preview pass a single `--attacks NAME`")
    amplify = "auto" if args.amplify == "auto" else _positive_float(args.amplify, "--amplify")
    clean, instruction, dataset = preview_inputs(args)
    ctx = make_attack_context(args, dataset, None if dataset else clean[None])
    rows = []
    for n in names:
        try:
            attack = make_attack(args, n, ctx)
            rows.append(preview_row(attack, clean, instruction, args.target))
        except ConfigError as exc:  # e.g. needs a victim model: show why instead of failing
            rows.append(PreviewRow(n, clean, error=str(exc)))
    draw_preview(rows, args.preview, amplify)
    for row in rows:  # the visibility figures, also as text
        if row.stats:
            print(f"{row.name}: PSNR {row.stats['psnr']:.1f} dB, L-inf {row.stats['linf']:.0f}/255")
    print(f"preview of {len(rows)} attack(s) -> {args.preview}")
    return 0


def _positive_float(text: str, flag: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if value <= 0:
        raise ConfigError(f"`{flag}` must be a positive number or 'auto'; got {text!r}")
    return value
