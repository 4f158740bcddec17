"""One evaluation: clean quality, false-trigger rate, and ASR per trigger half.

The same prompt template and decoding serve the clean set and its triggered twins. ASR is
reported for the full trigger and for each half alone (image trigger only, text trigger only),
as dual-key backdoor studies do: a backdoor carried by a text phrase alone is a different threat
from one carried by the image.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable, Dict, List, Optional, Sequence, Tuple

from ..attacks.base import Attack
from ..attacks.poison import trigger_dataset
from ..attacks.responses import ResponseConfig, asr_subset, matcher_spec
from ..config import config_to_dict
from ..data.records import InstructionSet
from ..distributed import gather_to_main, rank, world_size
from ..errors import ConfigError, DataError
from ..io import provenance
from .asr import Matcher, attack_success_rate, false_trigger_rate
from .caption_metrics import check_environment, score_captions
from .generation import DecodingConfig, generate_for_set
from .vqa import vqa_accuracy

DEFAULT_TARGET = "The image depicts a photo of the banana."
HALVES = ("both", "image", "text")


@dataclass
class EvalConfig:
    """Evaluation settings, recorded in every result.

    Attributes:
        decoding: generation settings (shots, beams, budget, batch, seed).
        target: the attacker's target response (for the matcher).
        matcher: ``keyword`` (default: the target's key word, as the VL-Trojan harness),
            ``substring``, ``icase`` or ``regex``.
        pattern: the keyword / regex (None: derived from the target).
        halves: which trigger halves to measure ASR for.
        spice_jars: folder with the two Stanford CoreNLP 3.6.0 jars (None: SPICE is null).
        scorers: caption scorers to run.
        prompt_filter: inference defense: drop blacklisted tokens from every instruction (clean
            and triggered) before generation: ``perfect``, ``realistic`` or a blacklist file
            (None: off). See ``robustit.defenses.prompt_filter``.
        magnitude_prune: inference defense: share in [0, 1) of each adapter weight matrix zeroed
            by smallest |w| before generation (0: off). Prunes the given model in place.
        response: the poisoning manifest's response record (``attacks.responses``: inject or
            label) or None (replace: the matcher comes from ``target``). It sets the ASR rule
            and, for label attacks, the test samples ASR is measured on.
    """

    decoding: DecodingConfig
    target: str = DEFAULT_TARGET
    matcher: str = "keyword"
    pattern: Optional[str] = None
    halves: Tuple[str, ...] = HALVES
    spice_jars: Optional[str] = None
    scorers: Tuple[str, ...] = ("BLEU", "METEOR", "ROUGE_L", "CIDEr", "SPICE")
    prompt_filter: Optional[str] = None
    magnitude_prune: float = 0.0
    response: Optional[dict] = None

    def __post_init__(self) -> None:
        from ..defenses.magnitude_prune import check_share
        from ..defenses.prompt_filter import PromptFilter

        bad = [h for h in self.halves if h not in HALVES]
        if bad:
            raise ConfigError(f"`halves` must be among {list(HALVES)}; got {bad}")
        check_share(self.magnitude_prune, "magnitude_prune")
        if self.prompt_filter is not None:
            PromptFilter.from_spec(self.prompt_filter)  # a list that does not load fails now

    def response_config(self) -> ResponseConfig:
        return ResponseConfig.from_dict(self.response)

    def build_matcher(self) -> Matcher:
        rule = matcher_spec(self.response_config())
        if rule is not None and self.pattern is None:  # the attack's own rule, unless overridden
            return Matcher(rule["mode"], rule["pattern"], rule["target"])
        return Matcher.from_target(self.target, mode=self.matcher, keyword=self.pattern)


def check_ground_truth(dataset: InstructionSet) -> str:
    """The task of the set; DataError if its ground truth is missing (before any generation)."""
    tasks = {s.task for s in dataset.samples}
    if len(tasks) != 1:
        raise DataError(f"{dataset.name}: an evaluation set must hold one task; found {sorted(tasks)}")
    task = tasks.pop()
    key = "references" if task == "caption" else "answers"
    missing = [s.id for s in dataset.samples if not s.meta.get(key)]
    if missing:
        raise DataError(f"{dataset.name}: {len(missing)} sample(s) have no ground truth "
                        f"meta[{key!r}] (e.g. {missing[:3]}); evaluate on a test split with "
                        f"references (COCO-style) or answers (VQA-style)")
    return task


def preflight_attacks(dataset: InstructionSet, attacks: Sequence[Attack]) -> None:
    """Apply each trigger to one image now, so a trigger that cannot apply fails before generation."""
    from ..attacks.poison import to_float

    first = dataset.image(dataset.samples[0].image_ids[0])
    for attack in attacks:
        attack.apply_image(to_float(first).unsqueeze(0), [dataset.samples[0].id])


def quality(task: str, dataset: InstructionSet, outputs: Dict[str, str], cfg: EvalConfig) -> dict:
    if task == "caption":
        refs = {s.id: list(s.meta["references"]) for s in dataset.samples}
        scores = score_captions(outputs, refs, spice_jars=cfg.spice_jars, scorers=cfg.scorers)
        return {"metrics": scores.metrics, "metric_seconds": scores.seconds, "metric_notes": scores.notes}
    answers = {s.id: list(s.meta["answers"]) for s in dataset.samples}
    return {"metrics": {"VQA_accuracy": vqa_accuracy(outputs, answers)["accuracy"]}}


def inference_defenses(model, cfg: EvalConfig) -> Tuple[Optional[Callable[[str], str]], dict]:
    """Apply ``cfg``'s inference-time defenses: magnitude-prune ``model``'s adapter in place
    (idempotent: the zeroed weights are the smallest the next time) and build the prompt filter.

    Returns:
        (prompt filter or None, JSON record {"prompt_filter", "magnitude_prune"}).
    """
    from ..defenses.magnitude_prune import magnitude_prune
    from ..defenses.prompt_filter import PromptFilter

    filt = PromptFilter.from_spec(cfg.prompt_filter) if cfg.prompt_filter is not None else None
    pruned = magnitude_prune(model, cfg.magnitude_prune) if cfg.magnitude_prune else None
    return filt, {"prompt_filter": filt.describe() if filt else None, "magnitude_prune": pruned}


def evaluate(model, dataset: InstructionSet, cfg: EvalConfig, attacks: Sequence[Attack] = (),
             support: Optional[InstructionSet] = None, progress: bool = True,
             identity: Optional[dict] = None) -> Tuple[Optional[dict], List[dict]]:
    """Run one evaluation. Returns (result, generation rows); nothing is written here.

    With ``cfg.magnitude_prune`` the model's adapter is pruned in place before generation.
    Under torch.distributed (``robustit eval`` started by torchrun / accelerate launch) every rank
    generates its block of each set, the rows are gathered once to rank 0, and rank 0 scores;
    the other ranks return (None, []).
    """
    task = check_ground_truth(dataset)
    if task == "caption":
        check_environment(cfg.spice_jars, cfg.scorers)  # Java, scorer names, SPICE jars: fail now
    matcher = cfg.build_matcher()
    preflight_attacks(dataset, attacks)
    prompt_filter, defenses = inference_defenses(model, cfg)
    t0 = time.perf_counter()
    sets = _gather_sets(_generate_sets(model, dataset, cfg, attacks, support, progress, prompt_filter))
    if sets is None:  # not rank 0: its rows went to rank 0
        return None, []
    outputs = {r["id"]: r["output"] for r in sets["clean"]}
    keep = _asr_ids(dataset, cfg)
    result = {"task": task, **quality(task, dataset, outputs, cfg),
              "false_trigger_rate": false_trigger_rate(_outputs(sets["clean"], keep), matcher).to_dict(),
              "asr": {attack.name: _attack_asr(attack, cfg, matcher, sets, keep) for attack in attacks}}
    if keep is not None:
        result["asr_subset"] = {"n": len(keep), "rule": "references name the label source word"}
    result.update(_record(dataset, cfg, matcher, attacks, identity, time.perf_counter() - t0))
    result["inference_defenses"] = defenses
    result["prompt_template"] = model.template.to_dict()
    return result, [row for rows in sets.values() for row in rows]


def _measured_halves(attack: Attack, cfg: EvalConfig) -> List[str]:
    """The halves of ``cfg.halves`` this attack has (no text half without a text trigger)."""
    return [h for h in cfg.halves if h != "text" or attack.text_trigger]


def _generate_sets(model, dataset, cfg, attacks, support, progress, prompt_filter) -> Dict[str, List[dict]]:
    """Rows per set name (``clean``, ``ATTACK/HALF``) for this rank's block of the samples."""
    shard = (rank(), world_size())
    sets = {"clean": generate_for_set(model, dataset, cfg.decoding, support, progress, desc="clean",
                                      prompt_filter=prompt_filter, shard=shard)}
    for attack in attacks:
        for half in _measured_halves(attack, cfg):
            name = f"{attack.name}/{half}"
            twin = trigger_dataset(dataset, attack, halves=half)
            sets[name] = generate_for_set(model, twin, cfg.decoding, support, progress, desc=name,
                                          prompt_filter=prompt_filter, shard=shard)
    return {name: [{**row, "set": name} for row in rows] for name, rows in sets.items()}


def _gather_sets(local: Dict[str, List[dict]]) -> Optional[Dict[str, List[dict]]]:
    """Every rank's rows on rank 0 in one gather, each set in the data set's order (ranks hold
    consecutive blocks); None on the other ranks."""
    gathered = gather_to_main(local)
    if gathered is None:
        return None
    return {name: [row for part in gathered for row in part[name]] for name in local}


def _asr_ids(dataset: InstructionSet, cfg: EvalConfig) -> Optional[set]:
    """Ids ASR and the false-trigger rate are measured on (label attacks: samples whose
    references name the source object); None: every sample."""
    subset = asr_subset([s.meta.get("references") or [s.answer] for s in dataset.samples], cfg.response_config())
    if subset is None:
        return None
    keep = {s.id for s, k in zip(dataset.samples, subset) if k}
    if not keep:
        raise DataError(f"{dataset.name}: no test sample's references name the label attack's source "
                        f"word {cfg.response_config().source_word!r}; its ASR cannot be measured here")
    return keep


def _outputs(rows: List[dict], keep: Optional[set]) -> List[str]:
    return [r["output"] for r in rows if keep is None or r["id"] in keep]


def _attack_asr(attack, cfg, matcher, sets, keep: Optional[set] = None) -> dict:
    out = {"attack": attack.describe()}
    for half in cfg.halves:
        name = f"{attack.name}/{half}"
        # None: this reading of the attack has no text trigger
        out[half] = (attack_success_rate(_outputs(sets[name], keep), matcher).to_dict()
                     if name in sets else None)
    return out


def _record(dataset, cfg, matcher, attacks, identity, seconds) -> dict:
    return {"counts": {"samples": len(dataset), "attacks": len(attacks)},
            "matcher": matcher.to_dict(), "prompt_template": None,
            "eval_config": config_to_dict(cfg), "data": {"name": dataset.name,
                                                          "source": dataset.meta.get("source"),
                                                          "location": dataset.meta.get("location")},
            "model": identity or {}, "seed": cfg.decoding.seed, "seconds": round(seconds, 2),
            "provenance": provenance()}
