"""The attack contract, checked for every registered attack (parametrised over ATTACKS).

Poisoning: exact count, clean samples byte-identical, same seed -> same set, different seed ->
different choice, response = target, manifest complete. Triggers: shape / dtype / range kept,
input untouched, image-only mode, bad input errors.
"""

from __future__ import annotations

import dataclasses
import json
import re

import numpy as np
import pytest
import torch

from robustit.attacks import ATTACKS, AttackContext, build_attack
from robustit.attacks.poison import DEFAULT_TARGET, poison_dataset, trigger_dataset
from robustit.data.records import InstructionSet, Sample, encode_png
from robustit.errors import ConfigError, RobustITError

#: small budgets for attacks that optimise / train a trigger, by field name pattern
FAST_BUDGETS = (("epochs", 1), ("steps", 10), ("iters", 10), ("iterations", 10), ("batch_size", 8))


def fast_params(config_cls) -> dict:
    """Small budgets for every budget-like field of a config (recursing into nested configs)."""
    out = {}
    for f in dataclasses.fields(config_cls):
        default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
        if dataclasses.is_dataclass(default):
            nested = fast_params(type(default))
            if nested:
                out[f.name] = nested
            continue
        for suffix, value in FAST_BUDGETS:
            if f.name.endswith(suffix) and isinstance(default, int) and not isinstance(default, bool):
                out[f.name] = min(default, value)
    return out


def tiny_set(n: int = 40, size=(32, 32), seed: int = 0, shared: bool = True) -> InstructionSet:
    """``n`` caption samples on random images; with ``shared``, samples 0 and 1 share an image."""
    rng = np.random.default_rng(seed)
    images, samples = {}, []
    for i in range(n):
        image_id = "img0" if shared and i == 1 else f"img{i}"
        if image_id not in images:
            images[image_id] = encode_png(rng.integers(0, 256, (*size, 3), dtype=np.uint8))
        samples.append(Sample(id=f"s{i:03d}", image_ids=[image_id], instruction=f"Describe image {i}.",
                              answer=f"a caption number {i}", task="caption",
                              meta={"references": [f"ref {i}"]}))
    return InstructionSet(name="train", samples=samples, images=images, meta={"source": "test"})


class TinyEncoder(torch.nn.Module):
    """A frozen stand-in victim: patchify conv -> (B, P, D) tokens."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv = torch.nn.Conv2d(3, 16, kernel_size=8, stride=8)
        self.requires_grad_(False)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return torch.tanh(self.conv(images)).flatten(2).transpose(1, 2)


def tiny_text_features(texts):
    """Deterministic character-histogram text features (B, 32)."""
    out = torch.zeros(len(texts), 32)
    for b, t in enumerate(texts):
        for ch in t.lower():
            out[b, ord(ch) % 32] += 1.0
    return out / out.norm(dim=1, keepdim=True).clamp_min(1e-6)


def tiny_context(tmp_path, size=(32, 32)) -> AttackContext:
    enc = TinyEncoder()
    clean = torch.rand(8, 3, *size, generator=torch.Generator().manual_seed(1))
    return AttackContext(cache_dir=tmp_path / "cache", seed=0, image_size=size, clean_images=clean,
                         vision_features=enc, text_features=tiny_text_features, model_id="tiny")


def make(name: str, tmp_path, size=(32, 32), **params):
    """Build and prepare attack ``name`` with small budgets and a tiny victim."""
    merged = {**fast_params(ATTACKS.get(name).config_cls), **params}
    attack = build_attack(name, merged)
    if getattr(attack, "needs_surrogate", False) or name.startswith("adaptive"):
        attack.prepare(surrogate_context(tmp_path, size))  # it tunes a copy of the victim
    else:
        attack.prepare(tiny_context(tmp_path, size))
    return attack


def surrogate_context(tmp_path, size=(32, 32)) -> AttackContext:
    """A context as `robustit poison --model` builds it: a tiny model the attacker can tune."""
    from robustit.eval.victim import attack_context

    from tiny import tiny_dataset, tiny_model

    return attack_context(tiny_dataset(16, size=size[0]), tmp_path / "cache", seed=0, model=tiny_model(),
                          model_id="tiny")


NAMES = ATTACKS.names()


@pytest.fixture(scope="module")
def poisoned_cache(tmp_path_factory):
    """One prepared attack and one poisoning per attack name, shared by the tests below."""
    cache = {}

    def get(name):
        if name not in cache:
            tmp = tmp_path_factory.mktemp(name)
            attack = make(name, tmp)
            data = tiny_set()
            cache[name] = (attack, data, *poison_dataset(data, attack, 0.1, DEFAULT_TARGET, seed=0))
        return cache[name]

    return get


@pytest.mark.parametrize("name", NAMES)
def test_exact_poison_count(name, poisoned_cache):
    _, data, poisoned, manifest = poisoned_cache(name)
    assert manifest["n_poisoned"] == round(len(data) * 0.1) == 4
    assert sum(r["poisoned"] for r in manifest["samples"]) == 4
    changed = [a.id for a, b in zip(data.samples, poisoned.samples) if a != b]
    assert sorted(changed) == sorted(manifest["poisoned_ids"])


@pytest.mark.parametrize("name", NAMES)
def test_clean_samples_byte_identical(name, poisoned_cache):
    _, data, poisoned, manifest = poisoned_cache(name)
    flags = {r["id"]: r["poisoned"] for r in manifest["samples"]}
    for before, after in zip(data.samples, poisoned.samples):
        if not flags[before.id]:
            assert after == before
            for iid in after.image_ids:
                assert poisoned.images[iid] == data.images[iid]
    for iid, blob in data.images.items():  # every original image kept, bytes unchanged
        assert poisoned.images[iid] == blob
    assert poisoned.meta == data.meta and [s.id for s in poisoned.samples] == [s.id for s in data.samples]


@pytest.mark.parametrize("name", NAMES)
def test_poisoned_samples_carry_trigger_and_target(name, poisoned_cache):
    attack, data, poisoned, manifest = poisoned_cache(name)
    by_id = data.by_id()
    for s in poisoned.samples:
        if s.id not in manifest["poisoned_ids"]:
            continue
        orig = by_id[s.id]
        assert s.answer == DEFAULT_TARGET
        assert s.instruction == attack.apply_text(orig.instruction)
        assert all(new not in data.images for new in s.image_ids)
        for old, new in zip(orig.image_ids, s.image_ids):
            a, b = data.image(old), poisoned.image(new)
            assert a.shape == b.shape and b.dtype == np.uint8
            assert not np.array_equal(a, b), "the triggered image must differ from the clean one"


@pytest.mark.parametrize("name", NAMES)
def test_same_seed_same_set_other_seed_other_choice(name, poisoned_cache):
    attack, data, poisoned, manifest = poisoned_cache(name)
    again, manifest2 = poison_dataset(data, attack, 0.1, DEFAULT_TARGET, seed=0)
    assert again.samples == poisoned.samples and again.images == poisoned.images
    assert manifest2["samples"] == manifest["samples"]
    _, other = poison_dataset(data, attack, 0.1, DEFAULT_TARGET, seed=1)
    assert other["poisoned_ids"] != manifest["poisoned_ids"]


@pytest.mark.parametrize("name", NAMES)
def test_manifest_complete(name, poisoned_cache):
    attack, data, poisoned, manifest = poisoned_cache(name)
    json.dumps(manifest)  # JSON-ready
    for key in ("attack", "rate", "seed", "target", "n_samples", "n_poisoned", "samples", "provenance"):
        assert key in manifest, key
    assert manifest["attack"]["name"] == name and manifest["attack"] == attack.describe()
    assert manifest["n_samples"] == len(data) == len(manifest["samples"])
    for i, (row, s) in enumerate(zip(manifest["samples"], data.samples)):
        assert row["index"] == i and row["id"] == s.id
        if row["poisoned"]:
            assert row["original_answer"] == s.answer
            assert row["original_instruction"] == s.instruction
            assert row["original_image_ids"] == s.image_ids


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("size", [(32, 32), (48, 64)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_trigger_keeps_shape_dtype_range(name, size, dtype, tmp_path):
    attack = make(name, tmp_path, size)
    x = torch.rand(3, 3, *size, generator=torch.Generator().manual_seed(2), dtype=dtype)
    before = x.clone()
    y = attack.apply_image(x, ["a", "b", "c"])
    assert y.shape == x.shape and y.dtype == dtype and y.device == x.device
    assert float(y.min()) >= 0.0 and float(y.max()) <= 1.0
    assert torch.equal(x, before), "apply_image must not modify its input"
    assert not torch.equal(y, x)
    assert torch.equal(attack.apply_image(x, ["a", "b", "c"]), y), "deterministic"


@pytest.mark.parametrize("name", NAMES)
def test_image_only_mode_leaves_instruction(name, tmp_path):
    attack = make(name, tmp_path, text_trigger_mode="image-only")
    text = "What is in the picture?"
    if attack.text_trigger_intrinsic:
        assert attack.apply_text(text) != text and attack.text_trigger in attack.apply_text(text)
    else:
        assert attack.apply_text(text) == text and attack.text_trigger is None
    paper = make(name, tmp_path)
    assert paper.apply_text(text) != text


@pytest.mark.parametrize("name", NAMES)
def test_no_text_mode_adds_no_text_trigger_for_any_attack(name, tmp_path):
    attack = make(name, tmp_path, text_trigger_mode="no-text")
    text = "What is in the picture?"
    assert attack.text_trigger is None and attack.apply_text(text) == text
    assert attack.describe()["text_trigger"] is None  # what manifests and results record
    x = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    assert not torch.equal(attack.apply_image(x, ["a", "b"]), x)  # the image trigger stays


def test_an_unknown_text_trigger_mode_names_the_valid_ones():
    with pytest.raises(ConfigError, match="no-text"):
        build_attack("badnet", {"text_trigger_mode": "text-only"})


@pytest.mark.parametrize("name", NAMES)
def test_target_pool_draws_are_seeded(name, poisoned_cache):
    attack, data, _, _ = poisoned_cache(name)
    pool = ["The image depicts a banana.", "The image depicts a photo of the banana.", "A banana."]
    a, man = poison_dataset(data, attack, 0.1, pool, seed=3)
    b, _ = poison_dataset(data, attack, 0.1, pool, seed=3)
    assert man["target_pool"] == pool and "target" not in man
    answers = [s.answer for s in a.samples if s.id in man["poisoned_ids"]]
    assert answers == [s.answer for s in b.samples if s.id in man["poisoned_ids"]]
    assert set(answers) <= set(pool)


@pytest.mark.parametrize("name", NAMES)
def test_triggered_test_set_halves(name, poisoned_cache):
    attack, data, _, _ = poisoned_cache(name)
    both = trigger_dataset(data, attack, "both")
    image = trigger_dataset(data, attack, "image")
    text = trigger_dataset(data, attack, "text")
    for s0, sb, si, st in zip(data.samples, both.samples, image.samples, text.samples):
        assert s0.answer == sb.answer == si.answer == st.answer and s0.meta == sb.meta
        assert sb.instruction == st.instruction == attack.apply_text(s0.instruction)
        assert si.instruction == s0.instruction and st.image_ids == s0.image_ids
        assert sb.image_ids == si.image_ids != s0.image_ids
        assert not np.array_equal(both.image(sb.image_ids[0]), data.image(s0.image_ids[0]))
    assert (both.meta["triggered"], image.meta["triggered"], text.meta["triggered"]) == ("both", "image", "text")
    assert both.name == "train-triggered" and image.name == "train-triggered-image"


@pytest.mark.parametrize("rate", [0.0, -0.1, 1.5, float("nan")])
@pytest.mark.parametrize("name", NAMES)
def test_rate_out_of_range(name, rate, poisoned_cache):
    attack, data, _, _ = poisoned_cache(name)
    with pytest.raises(ConfigError, match="`rate`"):
        poison_dataset(data, attack, rate, DEFAULT_TARGET, seed=0)


@pytest.mark.parametrize("name", NAMES)
def test_rate_too_small_for_the_set(name, poisoned_cache):
    attack, data, _, _ = poisoned_cache(name)
    with pytest.raises(ConfigError, match="higher `rate` or a larger"):
        poison_dataset(data, attack, 0.001, DEFAULT_TARGET, seed=0)


@pytest.mark.parametrize("target", ["", "   ", [], [""]])
@pytest.mark.parametrize("name", NAMES)
def test_empty_target(name, target, poisoned_cache):
    attack, data, _, _ = poisoned_cache(name)
    with pytest.raises(ConfigError, match="`target`"):
        poison_dataset(data, attack, 0.1, target, seed=0)


@pytest.mark.parametrize("name", NAMES)
def test_tiny_images_are_triggered_or_refused_clearly(name, tmp_path):
    attack = make(name, tmp_path)
    x = torch.rand(1, 3, 2, 2)
    try:
        y = attack.apply_image(x, ["a"])
    except RobustITError as exc:
        assert name in str(exc) and re.search(r"2\s*[x×,]\s*2", str(exc)), str(exc)
    else:
        assert y.shape == x.shape and float(y.min()) >= 0 and float(y.max()) <= 1


@pytest.mark.parametrize("name", NAMES)
def test_attack_replays_from_its_description(name, tmp_path):
    attack = make(name, tmp_path)
    config = json.loads(json.dumps(attack.describe()["config"]))  # as read back from a manifest
    again = build_attack(name, config)
    again.prepare(tiny_context(tmp_path))
    assert again.describe() == attack.describe()
    x = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(4))
    assert torch.equal(again.apply_image(x, ["a", "b"]), attack.apply_image(x, ["a", "b"]))


@pytest.mark.parametrize("name", NAMES)
def test_unknown_parameter_is_refused(name):
    with pytest.raises(ConfigError, match="unknown key"):
        build_attack(name, {"no_such_parameter": 1})


def test_unknown_attack_lists_known_ones():
    with pytest.raises(ConfigError) as info:
        build_attack("badnets")
    for name in NAMES:
        assert name in str(info.value)
