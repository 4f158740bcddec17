"""`robustit eval`: caption metrics / VQA accuracy, false-trigger rate and ASR in one JSON."""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def register(sub) -> None:
    from .common import add_format_args, add_inference_defense_args, add_model_args, add_param_arg, add_threads_arg

    p = sub.add_parser("eval", help="evaluate a model: quality + ASR, one results JSON",
                       description="Generate for a clean test split and, for each --attack, its "
                                   "triggered twins (full trigger, image half, text half); score "
                                   "caption metrics (pycocoevalcap, x100) or VQA accuracy, the "
                                   "false-trigger rate and the ASR. Writes OUT (JSON) and "
                                   "OUT.generations.jsonl so every number can be re-scored.")
    add_model_args(p)
    p.add_argument("--data", required=True, metavar="DIR", help="data root or split folder")
    add_format_args(p)
    p.add_argument("--split", default="test-a", help="test split (default: test-a)")
    p.add_argument("--support", default="train",
                   help="split for one-shot examples and for preparing learned triggers (default: train)")
    p.add_argument("--attack", action="append", default=[], metavar="NAME",
                   help="measure ASR for this attack (repeatable); see `robustit poison --help`")
    p.add_argument("--manifest", action="append", default=[], metavar="FILE",
                   help="take the attack and its exact parameters from a poisoning manifest (repeatable)")
    add_param_arg(p, "attack (applies to every --attack)")
    p.add_argument("--out", required=True, metavar="FILE.json", help="results file to write")
    p.add_argument("--shots", type=int, default=0, choices=[0, 1], help="0: zero-shot, 1: one-shot")
    p.add_argument("--target", default=None,
                   help="attacker target for the ASR matcher (default: the manifest's, else "
                        "'The image depicts a photo of the banana.')")
    p.add_argument("--matcher", default="keyword", choices=["keyword", "substring", "icase", "regex"],
                   help="ASR rule: keyword (the target's key word, case-sensitive, as the VL-Trojan "
                        "harness), substring (full target), icase, regex (--pattern)")
    p.add_argument("--pattern", default=None, help="keyword or regular expression for --matcher")
    p.add_argument("--halves", default="both,image,text",
                   help="trigger halves to measure, comma-separated from both,image,text")
    p.add_argument("--spice-jars", default=None, metavar="DIR",
                   help="folder with stanford-corenlp-3.6.0.jar and -models.jar (or set "
                        "ROBUSTIT_SPICE_JARS); without them SPICE is null")
    p.add_argument("--scorers", default="BLEU,METEOR,ROUGE_L,CIDEr,SPICE",
                   help="caption scorers to run, comma-separated (METEOR and SPICE start Java)")
    p.add_argument("--n", type=int, default=0, help="only the first N test samples (0: all)")
    p.add_argument("--batch-size", type=int, default=32, help="prompts per generation batch")
    p.add_argument("--beams", type=int, default=1, help="beam width (1: greedy)")
    p.add_argument("--max-new-tokens", type=int, default=20, help="generation budget")
    p.add_argument("--seed", type=int, default=0, help="seed for one-shot examples")
    p.add_argument("--cache", default=None, metavar="DIR",
                   help="cache for learned triggers (default: $ROBUSTIT_CACHE/attacks or ~/.cache/robustit/attacks)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"],
                   help="auto: this process's GPU when CUDA is visible, else the CPU (default). "
                        "Under torchrun / accelerate launch each process generates its block of "
                        "the samples and rank 0 scores and writes OUT")
    add_inference_defense_args(p)
    add_threads_arg(p)
    p.set_defaults(func=run)


def check_writable(path: str) -> None:
    from ..errors import ConfigError

    out = Path(path)
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        probe = out.parent / f".{out.name}.probe"
        probe.write_text("")
        probe.unlink()
    except OSError as exc:
        raise ConfigError(f"--out {path}: cannot write there ({exc.strerror}); choose another path") from None


def run(args: argparse.Namespace) -> int:
    from ..eval.evaluate import DEFAULT_TARGET, EvalConfig, evaluate
    from ..eval.generation import DecodingConfig
    from ..distributed import init_eval_process, is_main_process
    from ..io import atomic_write_json, atomic_write_text
    from ..models.factory import load_model
    from .common import data_options, inference_defenses, open_split, parse_params, set_threads, tuned_folder

    inference_defenses(args)  # a bad blacklist or share fails before anything is loaded
    device = init_eval_process(args.device)  # joins the launcher's process group, if any
    if is_main_process():  # only rank 0 writes
        check_writable(args.out)
    set_threads(args.threads)
    dataset = open_split(args.data, args.split, **data_options(args))
    if args.n:
        dataset.samples = dataset.samples[: args.n]
    model, info, tuned_meta = load_model(args.model, tuned_folder(args.tuned))
    model.to(device)
    specs, target, response = _attacks(args, parse_params(args.param))
    attacks = [a for a, _ in specs]
    support = open_split(args.data, args.support, **{**data_options(args), "limit": None}) if (args.shots or attacks) else None
    if specs:
        _prepare_once(specs, support, args)
    cfg = EvalConfig(decoding=DecodingConfig(max_new_tokens=args.max_new_tokens, num_beams=args.beams,
                                             batch_size=args.batch_size, shots=args.shots, seed=args.seed),
                     target=args.target or target or DEFAULT_TARGET, matcher=args.matcher,
                     pattern=args.pattern, halves=tuple(h.strip() for h in args.halves.split(",")),
                     spice_jars=args.spice_jars,
                     scorers=tuple(x.strip() for x in args.scorers.split(",") if x.strip()),
                     prompt_filter=args.prompt_filter, magnitude_prune=args.magnitude_prune,
                     response=response)
    identity = {"base": info.to_dict(), "tuned": tuned_folder(args.tuned),
                "tuned_method": tuned_meta.get("method")}
    result, rows = evaluate(model, dataset, cfg, attacks, support,
                            progress=not args.quiet and is_main_process(), identity=identity)
    if result is None:  # a rank > 0: rank 0 scores and writes
        return 0
    gen_path = str(Path(args.out).with_suffix("")) + ".generations.jsonl"
    atomic_write_text(gen_path, "".join(json.dumps(r) + "\n" for r in rows))
    atomic_write_json(args.out, {**result, "generations": gen_path})
    print(summary_line(result))
    print(f"results: {args.out}")
    return 0


def _attacks(args, params):
    """[(attack, trigger context spec)], target, response record. A manifest pins the trigger's
    seed and victim, and (varied-target attacks) the response mode and its ASR rule."""
    from ..attacks import build_attack

    specs, target = [(build_attack(name, params), {"seed": 0, "victim": True}) for name in args.attack], None
    response = None
    for path in args.manifest:
        man = _read_manifest(path)
        ctx = man.get("trigger_context") or {}
        victim = ctx.get("model_id", "none") not in (None, "none")
        specs.append((build_attack(man["attack"]["name"], man["attack"]["config"]),
                      {"seed": ctx.get("seed", 0), "victim": victim}))
        target = target or man.get("target")
        response = response or man.get("response")
    return specs, target, response


def _read_manifest(path: str) -> dict:
    from ..errors import ConfigError

    try:
        man = json.loads(Path(path).read_text())
        man["attack"]["name"], man["attack"]["config"]
    except (OSError, json.JSONDecodeError, KeyError, TypeError) as exc:
        raise ConfigError(f"--manifest {path}: not a readable poisoning manifest ({type(exc).__name__}); "
                          f"give the manifest.json written by `robustit poison`") from None
    return man


def _prepare_once(specs, support, args) -> None:
    """Under a launcher rank 0 prepares (and caches) learned triggers before the other ranks,
    which then read them from the cache instead of optimising them concurrently."""
    from ..distributed import barrier, is_main_process

    if not is_main_process():
        barrier()
    _prepare(specs, support, args)
    if is_main_process():
        barrier()


def _prepare(specs, support, args) -> None:
    """Prepare each trigger exactly as `robustit poison` did (same images, seed, victim, cache)."""
    from ..eval.victim import attack_context, default_cache_dir, optional_model_id
    from ..models.factory import load_base

    base = info = None
    for attack, spec in specs:
        if spec["victim"] and base is None:
            base, info = load_base(args.model)  # the attacker knows the frozen base only
        model = base if spec["victim"] else None
        ctx = attack_context(support, args.cache or default_cache_dir(), seed=spec["seed"], model=model,
                             model_id=optional_model_id(info) if model is not None else "none")
        if getattr(args, "quiet", False) and hasattr(attack, "progress"):
            attack.progress = False
        attack.prepare(ctx)


def summary_line(result: dict) -> str:
    m = result["metrics"]
    parts = [f"{k}={v:.1f}" for k, v in m.items() if v is not None]
    parts.append(f"false_trigger={result['false_trigger_rate']['rate_percent']:.1f}%")
    for name, halves in result["asr"].items():
        for half in ("both", "image", "text"):
            if halves.get(half):
                parts.append(f"ASR[{name}/{half}]={halves[half]['rate_percent']:.1f}%")
    return "  ".join(parts)
