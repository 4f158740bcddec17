"""Names and roles of groups: which paper label a method has and which table a group feeds.

Method naming (the paper's): ``vanilla`` -> VanillaIT; ``robustit`` with ``components=both``
-> RobustIT, ``idr`` -> IDR only, ``aar`` -> AAR only; other methods keep their name.
Hyper-parameters that differ from RobustIT's defaults are appended, e.g. ``RobustIT (α=1)``.

Every group has one *role*:

* ``main``: VanillaIT, RobustIT at its defaults, other methods, and any variant no ablation
  table holds (it is never dropped from the report);
* ``components``: IDR only / AAR only at default hyper-parameters (Table 2);
* ``alpha_gamma``: RobustIT (both) with default beta and another alpha or gamma (Table 3);
* ``beta``: RobustIT (both) with default alpha and gamma and another beta (Table 4);
* ``combined``: any method evaluated with inference-time defenses (the cell key's
  ``inference``: prompt filtering, magnitude pruning), labelled e.g. ``RobustIT + prompt filter
  (realistic)`` (Table 10).
"""

from __future__ import annotations

from typing import Dict, Tuple

from .aggregate import ROBUSTIT_DEFAULTS

ATTACK_ORDER = ("none", "badnet", "adaptive-badnet", "sig", "blended", "ssba", "ftrojan", "trojvqa",
                "vltrojan")
ATTACK_NAMES = {"none": "No attack", "badnet": "BadNet", "adaptive-badnet": "Adaptive BadNet", "sig": "SIG",
                "blended": "Blended", "ssba": "SSBA", "ftrojan": "FTrojan", "trojvqa": "TrojVQA",
                "vltrojan": "VLTrojan"}
#: order of inference-time defenses in labels and tables
INFERENCE_ORDER = ("prompt_filter", "magnitude_prune")
METHOD_ORDER = ("VanillaIT", "RobustIT", "AAR only", "IDR only", "Fine-Pruning", "CleanCLIP", "ABL", "BYORn", "Guard")
#: display names of the tuning methods other than robustit (whose label depends on its params)
METHOD_NAMES = {"vanilla": "VanillaIT", "fineprune": "Fine-Pruning", "cleanclip": "CleanCLIP", "guard": "Guard", "byorn": "BYORn", "abl": "ABL"}
_COMPONENT_NAMES = {"both": "RobustIT", "idr": "IDR only", "aar": "AAR only"}
_SYMBOLS = {"alpha": "α", "beta": "β", "gamma": "γ"}
HYPER = ("alpha", "beta", "gamma")


def robustit_params(params: Dict) -> Dict:
    """RobustIT parameters with the defaults filled in (numbers as floats)."""
    out = {**ROBUSTIT_DEFAULTS, **(params or {})}
    for name in HYPER:
        if isinstance(out[name], (int, float)):
            out[name] = float(out[name])
    return out


def _fmt(value) -> str:
    """A parameter value as written in labels (2.0 -> 2, 0.5 -> 0.5)."""
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def _robustit_label(params: Dict) -> Tuple[str, str]:
    """(label, role) of a robustit group."""
    full = robustit_params(params)
    changed = [h for h in HYPER if full[h] != ROBUSTIT_DEFAULTS[h]]
    extras = {k: v for k, v in full.items() if k not in ROBUSTIT_DEFAULTS}
    base = _COMPONENT_NAMES.get(full["components"], f"robustit[{full['components']}]")
    parts = [f"{_SYMBOLS[h]}={_fmt(full[h])}" for h in changed]
    parts += [f"{k}={_fmt(v)}" for k, v in sorted(extras.items())]
    label = f"{base} ({', '.join(parts)})" if parts else base
    if full["components"] == "both" and changed and set(changed) <= {"alpha", "gamma"}:
        return label, "alpha_gamma"
    if full["components"] == "both" and changed == ["beta"]:
        return label, "beta"
    if full["components"] in ("idr", "aar") and not changed:
        return label, "components"
    return label, "main"


def _tuning_label(key: Dict) -> Tuple[str, str]:
    """(label, role) of the tuning method alone (inference options not considered)."""
    method, params = key["method"], key.get("params") or {}
    if method == "robustit":
        return _robustit_label(params)
    base = METHOD_NAMES.get(method, method)
    if params:
        base += " (" + ", ".join(f"{k}={_fmt(v)}" for k, v in sorted(params.items())) + ")"
    return base, "main"


def inference_label(inference: Dict) -> str:
    """``prompt filter (realistic) + magnitude pruning (20%)``; ``""`` for no options."""
    parts = []
    for name in sorted(inference or {}, key=lambda n: (_option_rank(n), n)):
        value = inference[name]
        if name == "prompt_filter":
            shown = value if value in ("perfect", "realistic") else str(value).replace("\\", "/").split("/")[-1]
            parts.append(f"prompt filter ({shown})")
        elif name == "magnitude_prune":
            parts.append(f"magnitude pruning ({_fmt(round(float(value) * 100, 4))}%)")
        else:
            parts.append(f"{name}={_fmt(value)}")
    return " + ".join(parts)


def method_label(key: Dict) -> Tuple[str, str]:
    """(label, role) of a group key; see the module docstring."""
    label, role = _tuning_label(key)
    extra = inference_label(key.get("inference") or {})
    return (f"{label} + {extra}", "combined") if extra else (label, role)


def _option_rank(name: str) -> int:
    return INFERENCE_ORDER.index(name) if name in INFERENCE_ORDER else len(INFERENCE_ORDER)


def inference_rank(inference: Dict) -> Tuple:
    """Sort key of inference options: none first, then as Table 10 (prompt filtering before
    magnitude pruning), then by value."""
    options = inference or {}
    return (len(options), sorted((_option_rank(k), str(k), str(v)) for k, v in options.items()))


def is_default_robustit(key: Dict) -> bool:
    """RobustIT (both components) at default alpha, beta, gamma (extra params and inference
    options allowed)."""
    if key["method"] != "robustit":
        return False
    full = robustit_params(key.get("params") or {})
    return all(full[k] == v for k, v in ROBUSTIT_DEFAULTS.items())


def attack_label(key: Dict) -> str:
    """``Blended 1%``, ``Blended 5% (image-only)``, ``No attack``."""
    attack = key["attack"]
    if attack == "none":
        return ATTACK_NAMES["none"]
    rate = f"{_fmt(round(float(key.get('rate', 0.0)) * 100, 4))}%"
    mode = key.get("text_trigger_mode", "paper")
    label = f"{ATTACK_NAMES.get(attack, attack)} {rate}"
    return label if mode == "paper" else f"{label} ({mode})"


def attack_rank(key: Dict) -> Tuple:
    """Sort key: the paper's attack order, then rate and trigger mode."""
    attack = key["attack"]
    rank = ATTACK_ORDER.index(attack) if attack in ATTACK_ORDER else len(ATTACK_ORDER)
    return (rank, attack, float(key.get("rate", 0.0)), str(key.get("text_trigger_mode", "")))


def method_rank(label: str) -> Tuple:
    """Sort key: VanillaIT, RobustIT, AAR only, IDR only, then the rest by name."""
    base = label.split(" (")[0]
    rank = METHOD_ORDER.index(base) if base in METHOD_ORDER else len(METHOD_ORDER)
    return (rank, label)
