"""Bench specs: a YAML/JSON file that expands to a grid of cells.

A spec (every key optional except ``name``)::

    name: quick
    description: free text
    model: embedded                 # base model (shipped default or a folder)
    data: null                      # data root with the train and test splits; null: build the
                                    #   embedded world under OUT/work/world
    train_split: train
    train_size: 0                   # use the first N training samples (0: all)
    attacks: [none, blended]        # 'none' = clean tuning (its rate is 0)
    rates: [0.01]
    text_trigger_modes: [paper]     # paper | image-only | no-text
    responses: [{}]                 # how poisoned samples answer: {} (the target, the default),
                                    #   {target_pool: banana}, {mode: inject, phrase: ...},
                                    #   {mode: label, source_word: circle, target_word: banana}
    methods:                        # a name, or {name, params, inference, label}
      - vanilla
      - {name: robustit, params: {components: both}}
      - {name: robustit, inference: {prompt_filter: realistic}}   # same training run as above
    sweep: {alpha: [1, 2]}          # crossed into the params of the methods in sweep_methods
    sweep_methods: [robustit]       #   (matched by label, or by name when a method has no label)
    test_sets: [test-a, test-b]
    shots: [0]
    seeds: [0]
    train: {epochs: 3, lr: 0.001}   # TrainConfig overrides (and `preset`)
    eval: {n: 200, scorers: [BLEU, METEOR, ROUGE_L, CIDEr]}
    threads: 0

Cells are the product attack x rate x text-trigger mode x method (x sweep) x test set x shots x
seed; attack ``none`` gets one rate (0) and one mode. Every cell's ``key`` (see
``schema.KEY_FIELDS``) identifies it; its ``id`` is a readable, file-safe rendering of the key.

A method's ``inference`` mapping holds inference-time defenses passed to ``robustit eval``
(the paper's Table 10): ``prompt_filter`` (``perfect`` | ``realistic`` | a blacklist file) and
``magnitude_prune`` (a share in (0, 1)). They are part of the cell key (``key["inference"]``,
``{}`` when none) and of the cell id, but not of the training run's id: cells that differ only
in inference options share one training run, and only their evaluations differ.
"""

from __future__ import annotations

import hashlib
import itertools
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Tuple

from ..errors import ConfigError

SPEC_KEYS = {"name", "description", "model", "data", "train_split", "train_size", "attacks", "rates",
             "text_trigger_modes", "responses", "methods", "sweep", "sweep_methods", "test_sets", "shots", "seeds",
             "train", "eval", "threads"}
TRAIN_KEYS = {"preset", "lr", "batch_size", "epochs", "max_steps", "save_every", "weight_decay",
              "warmup_ratio", "max_len", "cache_vision"}
EVAL_KEYS = {"n", "scorers", "batch_size", "beams", "max_new_tokens", "target", "matcher", "pattern",
             "halves", "spice_jars"}
INFERENCE_KEYS = {"prompt_filter", "magnitude_prune"}
#: keys of a `responses` entry (robustit poison's --response-mode options and --target-pool)
RESPONSE_KEYS = {"mode", "phrase", "position", "source_word", "target_word", "target_pool"}
#: short names of inference options in cell ids
_INFERENCE_TAGS = {"prompt_filter": "pf", "magnitude_prune": "mp"}
SHIPPED = Path(__file__).resolve().parent.parent / "resources" / "specs"


@dataclass
class MethodSpec:
    """One tuning method row: registry name, its parameters, the label reports use, and the
    inference-time defenses its evaluations run with (``{}``: none)."""

    name: str
    params: Dict[str, Any] = field(default_factory=dict)
    label: str = ""
    inference: Dict[str, Any] = field(default_factory=dict)


@dataclass
class Spec:
    """A parsed, validated spec (see the module docstring for the keys)."""

    name: str
    description: str = ""
    model: str = "embedded"
    data: str | None = None
    train_split: str = "train"
    train_size: int = 0
    attacks: List[str] = field(default_factory=lambda: ["none"])
    rates: List[float] = field(default_factory=lambda: [0.01])
    text_trigger_modes: List[str] = field(default_factory=lambda: ["paper"])
    responses: List[Dict[str, Any]] = field(default_factory=lambda: [{}])
    methods: List[MethodSpec] = field(default_factory=lambda: [MethodSpec("vanilla")])
    sweep: Dict[str, List[Any]] = field(default_factory=dict)
    sweep_methods: List[str] = field(default_factory=lambda: ["robustit"])
    test_sets: List[str] = field(default_factory=lambda: ["test-a", "test-b"])
    shots: List[int] = field(default_factory=lambda: [0])
    seeds: List[int] = field(default_factory=lambda: [0])
    train: Dict[str, Any] = field(default_factory=dict)
    eval: Dict[str, Any] = field(default_factory=dict)
    threads: int = 0

    def canonical(self) -> Dict[str, Any]:
        """The spec as plain JSON data; a method without inference options has no ``inference``
        entry, so specs written before that key existed keep their hash."""
        data = asdict(self)
        if data["responses"] == [{}]:  # specs written before the key existed keep their hash
            del data["responses"]
        for method in data["methods"]:
            if not method["inference"]:
                del method["inference"]
        return data

    def sha256(self) -> str:
        """Hash of what defines the results (the description and threads do not)."""
        data = {k: v for k, v in self.canonical().items() if k not in ("description", "threads")}
        return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()


def load_spec(path_or_name: str) -> Spec:
    """Read a spec file, or a shipped spec by name (``quick``, ``paper``, ...)."""
    path = Path(path_or_name)
    if not path.exists():
        shipped = {p.stem: p for p in SHIPPED.glob("*.yaml")}
        if path_or_name not in shipped:
            raise ConfigError(f"--spec {path_or_name}: no such file and not a shipped spec; shipped "
                              f"specs: {sorted(shipped)}")
        path = shipped[path_or_name]
    return parse_spec(_read_mapping(path), str(path))


def _read_mapping(path: Path) -> Dict:
    import yaml

    try:
        data = yaml.safe_load(path.read_text())  # YAML is a superset of JSON
    except (OSError, yaml.YAMLError) as exc:
        raise ConfigError(f"--spec {path}: cannot read it as YAML/JSON ({exc})") from exc
    if not isinstance(data, dict):
        raise ConfigError(f"--spec {path}: expected a mapping of keys (name, attacks, methods, ...)")
    return data


def parse_spec(data: Dict, where: str = "spec") -> Spec:
    """Validate a spec mapping: unknown keys, attacks, methods, modes and values are named."""
    _no_unknown(data, SPEC_KEYS, where)
    if not data.get("name"):
        raise ConfigError(f"{where}: 'name' is required")
    values = {k: v for k, v in data.items() if v is not None}
    values["methods"] = [_method(m, where) for m in data.get("methods", ["vanilla"])]
    for key in ("attacks", "rates", "text_trigger_modes", "responses", "test_sets", "shots", "seeds",
                "sweep_methods"):
        if key in values and not isinstance(values[key], list):
            values[key] = [values[key]]
    spec = Spec(**values)
    _check(spec, where)
    return spec


def _no_unknown(data: Dict, valid: set, where: str) -> None:
    unknown = sorted(set(data) - valid)
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {unknown}; valid keys: {sorted(valid)}")


def _method(item: Any, where: str) -> MethodSpec:
    if isinstance(item, str):
        item = {"name": item}
    if not isinstance(item, dict) or "name" not in item:
        raise ConfigError(f"{where}: each method is a name or a mapping with 'name'; got {item!r}")
    _no_unknown(item, {"name", "params", "label", "inference"}, f"{where}: method {item.get('name')!r}")
    inference = item.get("inference") or {}
    if not isinstance(inference, dict):
        raise ConfigError(f"{where}: method {item['name']!r}: `inference` must be a mapping such as "
                          f"{{prompt_filter: realistic}}; got {inference!r}")
    return MethodSpec(item["name"], dict(item.get("params") or {}), item.get("label", ""), dict(inference))


def _check(spec: Spec, where: str) -> None:
    from ..attacks import ATTACKS
    from ..attacks.base import TEXT_TRIGGER_MODES
    from ..train.methods import METHODS
    from ..train import robustit_method  # noqa: F401  (registers robustit)

    for attack in spec.attacks:
        if attack != "none" and attack not in ATTACKS.names():
            raise ConfigError(f"{where}: unknown attack {attack!r}; valid: none, {', '.join(ATTACKS.names())}")
    for m in spec.methods:
        if m.name not in METHODS.names():
            raise ConfigError(f"{where}: unknown method {m.name!r}; valid: {', '.join(METHODS.names())}")
    for mode in spec.text_trigger_modes:
        if mode not in TEXT_TRIGGER_MODES:
            raise ConfigError(f"{where}: unknown text_trigger_mode {mode!r}; valid: {list(TEXT_TRIGGER_MODES)}")
    for response in spec.responses:
        check_response(response, f"{where}: responses")
    for rate in spec.rates:
        if not 0 < float(rate) <= 1:
            raise ConfigError(f"{where}: rate {rate} is outside (0, 1]")
    bad_shots = [s for s in spec.shots if s not in (0, 1)]
    if bad_shots:
        raise ConfigError(f"{where}: shots must be 0 or 1; got {bad_shots}")
    _no_unknown(spec.train, TRAIN_KEYS, f"{where}: train")
    _no_unknown(spec.eval, EVAL_KEYS, f"{where}: eval")
    if not isinstance(spec.sweep, dict) or not all(isinstance(v, list) and v for v in spec.sweep.values()):
        raise ConfigError(f"{where}: sweep must map parameter names to non-empty lists")
    if spec.train_size < 0:
        raise ConfigError(f"{where}: train_size must be >= 0 (0: all samples)")
    _check_method_params(spec, where)
    for method in spec.methods:
        check_inference(method.inference, f"{where}: method {method.name!r}: inference")
    _check_unique_cells(spec, where)


def check_inference(inference: Dict[str, Any], where: str) -> None:
    """Refuse unknown inference options and bad values (a blacklist that does not load, a share
    outside (0, 1)), naming the option and the valid ones."""
    from ..defenses.magnitude_prune import check_share
    from ..defenses.prompt_filter import PromptFilter

    _no_unknown(inference, INFERENCE_KEYS, where)
    if "prompt_filter" in inference:
        value = inference["prompt_filter"]
        if not isinstance(value, str) or not value:
            raise ConfigError(f"{where}: `prompt_filter` must be perfect, realistic or a blacklist file; "
                              f"got {value!r}")
        PromptFilter.from_spec(value)
    if "magnitude_prune" in inference:
        if check_share(inference["magnitude_prune"], f"{where}: magnitude_prune") == 0:
            raise ConfigError(f"{where}: `magnitude_prune` 0 switches pruning off; leave the key out "
                              f"instead (the cell would repeat the one without it)")


def check_response(response: Any, where: str) -> None:
    """A `responses` entry: a mapping of RESPONSE_KEYS whose values make a valid ResponseConfig."""
    from ..attacks.responses import ResponseConfig

    if not isinstance(response, dict):
        raise ConfigError(f"{where}: each entry is a mapping such as {{mode: label}}; got {response!r}")
    _no_unknown(response, RESPONSE_KEYS, where)
    ResponseConfig(**{k: v for k, v in response.items() if k != "target_pool"})
    if "target_pool" in response and response.get("mode", "replace") != "replace":
        raise ConfigError(f"{where}: target_pool applies to mode replace only")


def _check_unique_cells(spec: Spec, where: str) -> None:
    """Two method entries that expand to the same cells would overwrite each other's results."""
    seen = set()
    for key in expand(spec):
        cid = cell_id(key)
        if cid in seen:
            raise ConfigError(f"{where}: two method entries give the same cell {cid}; remove the "
                              f"duplicate from `methods`")
        seen.add(cid)


def _check_method_params(spec: Spec, where: str) -> None:
    """Build every method once so a bad parameter fails before any work starts."""
    from ..train.methods import METHODS

    for method in expand_methods(spec):
        try:
            METHODS.get(method.name)(method.params)
        except ConfigError as exc:
            raise ConfigError(f"{where}: method {method.name!r}: {exc}") from exc


def expand_methods(spec: Spec) -> List[MethodSpec]:
    """Methods with the sweep crossed into those named in ``sweep_methods``."""
    names, grids = list(spec.sweep), [spec.sweep[k] for k in spec.sweep]
    out = []
    for m in spec.methods:
        if not names or (m.label or m.name) not in spec.sweep_methods:
            out.append(m)
            continue
        for values in itertools.product(*grids):
            out.append(MethodSpec(m.name, {**m.params, **dict(zip(names, values))}, m.label,
                                  dict(m.inference)))
    return out


def expand(spec: Spec) -> List[Dict[str, Any]]:
    """Every cell key, in run order: cells sharing a training run are adjacent (also the cells
    of method entries that differ only in ``inference``)."""
    keys = []
    for seed, (attack, rate, mode, response), method in itertools.product(
            spec.seeds, _poisonings(spec), expand_methods(spec)):
        for test_set, shots in itertools.product(spec.test_sets, spec.shots):
            keys.append({"attack": attack, "rate": rate, "text_trigger_mode": mode, "method": method.name,
                         "params": method.params, "test_set": test_set, "shots": shots, "seed": seed,
                         "inference": dict(method.inference), "response": dict(response)})
    runs = {r: i for i, r in enumerate(dict.fromkeys(run_id(k) for k in keys))}
    return sorted(keys, key=lambda k: runs[run_id(k)])  # stable: the order within a run is kept


def _poisonings(spec: Spec) -> List[Tuple[str, float, str, Dict[str, Any]]]:
    out = []
    for attack in spec.attacks:
        if attack == "none":
            out.append(("none", 0.0, "paper", {}))
        else:
            out += [(attack, float(r), m, resp) for r in spec.rates for m in spec.text_trigger_modes
                    for resp in spec.responses]
    return out


def response_id(response: Dict[str, Any]) -> str:
    """``label-circle-banana``, ``inject``, ``poolbanana`` ...; ``""`` for the default (the target)."""
    if not response:
        return ""
    mode = response.get("mode", "replace")
    tags = {"replace": [f"pool{response['target_pool']}" if "target_pool" in response else "replace"],
            "inject": ["inject"] + [_fmt(response[k]) for k in ("position", "phrase") if k in response],
            "label": ["label", response.get("source_word", "circle"), response.get("target_word", "banana")]}
    return "-".join(_fmt(t) for t in tags[mode])


def poison_id(key: Dict[str, Any]) -> str:
    if key["attack"] == "none":
        return "none"
    base = f"{key['attack']}-{key['rate']:g}-{key['text_trigger_mode']}"
    resp = response_id(key.get("response") or {})
    return f"{base}-{resp}" if resp else base


def method_id(key: Dict[str, Any]) -> str:
    params = "-".join(f"{k}{_fmt(v)}" for k, v in sorted(key["params"].items()))
    return f"{key['method']}-{params}" if params else key["method"]


def run_id(key: Dict[str, Any]) -> str:
    """The training run a cell belongs to (shared by its test sets and shot counts)."""
    return f"{poison_id(key)}__{method_id(key)}__s{key['seed']}"


def inference_id(key: Dict[str, Any]) -> str:
    """``pfrealistic-mp0.2`` for a key's inference options; ``""`` when it has none (or none
    recorded: cell records written before the field existed)."""
    options = key.get("inference") or {}
    return "-".join(f"{_INFERENCE_TAGS.get(k, k)}{_fmt(v)}" for k, v in sorted(options.items()))


def cell_id(key: Dict[str, Any]) -> str:
    """``RUN__TEST__Kshot``, with ``__INFERENCE`` appended when the cell has inference options."""
    base = f"{run_id(key)}__{key['test_set']}__{key['shots']}shot"
    inference = inference_id(key)
    return f"{base}__{inference}" if inference else base


def _fmt(value: Any) -> str:
    text = f"{value:g}" if isinstance(value, float) else str(value)
    return "".join(c if c.isalnum() or c in ".+" else "_" for c in text)


def parse_shard(text: str | None) -> Tuple[int, int]:
    """``I/N`` (1-based) -> (I, N); None -> (1, 1)."""
    if not text:
        return 1, 1
    try:
        i, n = (int(x) for x in text.split("/"))
    except ValueError:
        raise ConfigError(f"--shard {text!r}: expected I/N with integers, e.g. 1/4") from None
    if n < 1 or not 1 <= i <= n:
        raise ConfigError(f"--shard {text}: need 1 <= I <= N (e.g. 1/{max(n, 1)} .. {max(n, 1)}/{max(n, 1)})")
    return i, n


def shard_keys(keys: List[Dict[str, Any]], shard: Tuple[int, int]) -> List[Dict[str, Any]]:
    """The slice of the grid for shard (I, N): whole training runs are dealt round-robin, so a
    run's cells never split across machines and every cell lands in exactly one shard."""
    i, n = shard
    runs = list(dict.fromkeys(run_id(k) for k in keys))
    mine = {r for j, r in enumerate(runs) if j % n == i - 1}
    return [k for k in keys if run_id(k) in mine]
