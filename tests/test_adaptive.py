"""The adaptive adversary (paper App. C.3): gradients through IDR's augmentation, the surrogate
of the victim's RobustIT tuning, the alternating schedule, caching and poisoning."""

from __future__ import annotations

import pytest
import torch

from robustit.attacks import build_attack
from robustit.attacks.adaptive import optimise_adaptive_patch, parse_schedule
from robustit.attacks.poison import poison_dataset, to_float
from robustit.defenses.idr import IDRConfig, VisualAugment
from robustit.errors import ConfigError
from robustit.eval.victim import attack_context

from tiny import tiny_dataset, tiny_model

#: a patch large enough to matter on the tiny 32 x 32 images (12 px, the reference side 32)
SMALL = {"patch_size": 12, "reference_size": 32, "steps": 20, "lr": 0.3, "max_images": 24}


@pytest.fixture(scope="module")
def context(tmp_path_factory):
    """A context built as `robustit poison --model` builds it, on the tiny model and data."""
    ctx = attack_context(tiny_dataset(24), tmp_path_factory.mktemp("cache"), seed=0, model=tiny_model(),
                         model_id="tiny")
    return ctx


def test_schedule_is_trigger_to_adapter_steps_and_0_0_is_refused():
    assert parse_schedule("5:1") == (5, 1) and parse_schedule("1:0") == (1, 0)
    for bad in ("0:0", "0:1", "5", "a:b", "5:-1"):
        with pytest.raises(ConfigError, match="schedule"):
            build_attack("adaptive-badnet", {"schedule": bad})
    with pytest.raises(ConfigError, match="poison_share"):
        build_attack("adaptive-badnet", {"poison_share": 0})


def test_the_patch_receives_gradients_through_the_idr_augmentation():
    attack = build_attack("adaptive-badnet", SMALL)
    logits = attack.initial_logits(12).requires_grad_(True)
    images = torch.rand(4, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    augment = VisualAugment(IDRConfig(p_flip=1.0))  # jitter every sample and flip every sample
    views, params = augment(attack.paste(images, torch.sigmoid(logits)), torch.Generator().manual_seed(1))
    assert not torch.allclose(views, attack.paste(images, torch.sigmoid(logits)))  # it did augment
    weights = torch.rand(views.shape, generator=torch.Generator().manual_seed(2))
    (views * weights).sum().backward()
    assert logits.grad is not None and logits.grad.abs().sum() > 0
    assert torch.isfinite(logits.grad).all()


def test_the_surrogate_trigger_loss_reaches_the_patch_and_leaves_the_surrogate(context):
    attack = build_attack("adaptive-badnet", SMALL)
    surrogate = context.surrogate({}, 1e-3)
    # the tiny model's cross-attention starts as an exact identity (zero output projections):
    # one tuning step first, as every round of the schedule starts with one
    surrogate.adapter_step(context.clean_images[:4], ["Describe the image."] * 4, ["a square"] * 4,
                           torch.Generator().manual_seed(0))
    before = [p.detach().clone() for p in surrogate.params]
    logits = attack.initial_logits(12).requires_grad_(True)
    x = attack.paste(context.clean_images[:4], torch.sigmoid(logits))
    loss, logs = surrogate.trigger_loss(x, [attack.apply_text("Describe the image.")] * 4,
                                        [attack.config.target] * 4, torch.Generator().manual_seed(0))
    loss.backward()
    assert logits.grad.abs().sum() > 0 and set(logs) == {"lm_loss", "masked_share"}
    assert all(p.grad is None for p in surrogate.params)
    assert all(p.requires_grad for p in surrogate.params)  # restored after the trigger's view
    assert all(torch.equal(a, b) for a, b in zip(before, surrogate.params))


def test_adapter_steps_tune_the_surrogate_and_its_aar_mask(context):
    attack = build_attack("adaptive-badnet", SMALL)
    surrogate = context.surrogate({}, 1e-3)
    mask = next(iter(surrogate.model.channel_masks.values()))
    before = [p.detach().clone() for p in surrogate.params]
    x = context.clean_images[:4]
    logs = surrogate.adapter_step(x, ["Describe the image."] * 4, [attack.config.target] * 4,
                                  torch.Generator().manual_seed(0))
    assert "imc" in logs and "loss" in logs  # RobustIT's loss: L_it + alpha * L_imc
    assert int(mask.steps) >= 1 and float(mask.mask.sum()) < mask.width  # AAR now masks channels
    assert any(not torch.equal(a, b) for a, b in zip(before, surrogate.params))
    share = surrogate.masked_share(torch.ones(2, mask.width))
    assert float(share) == pytest.approx(1 - mask.k / mask.width)


def test_the_attackers_objective_falls_over_a_few_steps_on_a_tiny_model(context):
    attack = build_attack("adaptive-badnet", SMALL)
    attack.progress = False
    surrogate = context.surrogate({}, 1e-3)
    patch, history = optimise_adaptive_patch(attack, surrogate, context.clean_images, context.clean_texts,
                                             torch.Generator().manual_seed(0))
    assert len(history["trigger"]) == 20 and len(history["adapter"]) == 4  # 4 rounds of 1 + 5
    assert sum(history["trigger"][-5:]) < sum(history["trigger"][:5])

    def objective(p):
        x = attack.paste(context.clean_images[:16], p)
        instructions = [attack.apply_text(t[0]) for t in context.clean_texts[:16]]
        torch.manual_seed(0)
        with torch.no_grad():
            return surrogate.trigger_loss(x, instructions, [attack.config.target] * 16,
                                          torch.Generator().manual_seed(0))[0].item()

    start = torch.sigmoid(attack.initial_logits(12))
    assert objective(patch) < objective(start)  # on the final surrogate, the same views
    assert patch.shape == (3, 12, 12) and 0 <= float(patch.min()) <= float(patch.max()) <= 1


def test_prepare_is_cached_seeded_and_poisons_with_the_learned_patch(context):
    attack = build_attack("adaptive-badnet", {**SMALL, "steps": 5})
    attack.progress = False
    attack.prepare(context)
    folder = context.cache_dir / attack.cache_key(context)
    assert (folder / "adaptive.json").exists() and attack.stats["trigger_steps"] == 5
    again = build_attack("adaptive-badnet", attack.describe()["config"])
    bare = attack_context(tiny_dataset(24), context.cache_dir, seed=0, model_id="tiny")  # no model
    assert bare.surrogate is None
    again.prepare(bare)  # from the cache
    assert torch.equal(again.patch, attack.patch)
    data = tiny_dataset(20, name="train")
    poisoned, manifest = poison_dataset(data, attack, 0.1, seed=0, context=context)
    row = next(r for r in manifest["samples"] if r["poisoned"])
    triggered = to_float(poisoned.image(row["image_ids"][0]))
    expected = attack.apply_image(to_float(data.image(row["original_image_ids"][0]))[None])[0]
    assert torch.allclose(triggered, expected, atol=1 / 255 + 1e-6)
    assert row["instruction"].endswith("The image depicts")


def test_prepare_without_a_surrogate_or_cache_names_what_is_missing(tmp_path):
    ctx = attack_context(tiny_dataset(8), tmp_path, seed=0, model_id="none")
    attack = build_attack("adaptive-badnet", SMALL)
    with pytest.raises(ConfigError, match=r"lacks \['surrogate'\].*--model"):
        attack.prepare(ctx)
    with pytest.raises(ConfigError, match="not prepared"):
        attack.apply_image(torch.rand(1, 3, 32, 32))
