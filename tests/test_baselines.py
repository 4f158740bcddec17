"""Baseline defenses (paper App. F, Table 10): Fine-Pruning, CleanCLIP, prompt filtering,
magnitude pruning. Tiny models; every test runs in a few seconds on one thread."""

import json

import pytest
import torch

from robustit.attacks import ATTACKS, build_attack
from robustit.cli import main
from robustit.defenses.cleanclip import CleanCLIPAugment, CleanCLIPConfig, RandomResizedCrop, swap_words
from robustit.defenses.fineprune import (channel_activity, install_prune_mask, keep_most_active,
                                         measurement_slice, prune_count)
from robustit.defenses.magnitude_prune import magnitude_prune
from robustit.defenses.prompt_filter import PromptFilter
from robustit.errors import ConfigError
from robustit.eval.evaluate import EvalConfig, evaluate
from robustit.eval.generation import DecodingConfig
from robustit.models.checkpoint import load_tuned, read_tuned_meta, save_base
from robustit.models.factory import load_base
from robustit.train.config import TrainConfig
from robustit.train.loop import train
from robustit.train.methods import METHODS

from tiny import tiny_dataset, tiny_model

D = 32  # perceiver width of the tiny model


def _train_cfg(method, **params):
    return TrainConfig(method=method, method_params=params, max_steps=2, batch_size=8,
                       save_every=0, log_every=1, lr=3e-3)


def _controlled_activity(model, values):
    """Make the perceiver output exactly ``values`` (D,) per channel: LayerNorm weight 0, bias v."""
    norm = model.adapter.perceiver.norm
    with torch.no_grad():
        norm.weight.zero_()
        norm.bias.copy_(values)


# --------------------------------------------------------------------------- Fine-Pruning


@pytest.mark.parametrize("percentile, pruned", [(0, 0), (20, 6), (25, 8), (50, 16), (99.9, 31)])
def test_prune_count_is_floor_of_the_percentile(percentile, pruned):
    assert prune_count(percentile, D) == pruned
    assert prune_count(29, 100) == 29  # float error (0.29 * 100 = 28.999...) does not lose one


def test_fine_pruning_removes_exactly_the_least_active_channels():
    model = tiny_model()
    gen = torch.Generator().manual_seed(0)
    signs = torch.where(torch.arange(D) % 2 == 0, 1.0, -1.0)  # |x| is the activity: mixed signs
    values = (torch.randperm(D, generator=gen).float() + 1) * signs
    _controlled_activity(model, values)  # activity of channel d = |values[d]|, all distinct
    activity = channel_activity(model, "perceiver", [torch.rand(3, 1, 3, 32, 32)])
    assert torch.allclose(activity, values.abs(), atol=1e-5)
    mask = install_prune_mask(model, "perceiver", activity, percentile=25)
    expected = set(torch.argsort(values.abs())[:8].tolist())  # the 8 least active, by hand
    assert set(torch.nonzero(mask.mask == 0).reshape(-1).tolist()) == expected
    model.eval()
    with model.masks_active():
        out = model.adapt(model.encode_images(torch.rand(2, 1, 3, 32, 32)))
    assert torch.all(out[..., sorted(expected)] == 0) and torch.all(out[..., mask.mask == 1] != 0)


def test_ties_in_activity_keep_the_lower_channel_index():
    keep = keep_most_active(torch.ones(10), percentile=30)
    assert keep.tolist() == [1.0] * 7 + [0.0] * 3


def test_measurement_slice_is_a_seeded_share_of_the_training_set():
    assert measurement_slice(100, 0.05, seed=1) == measurement_slice(100, 0.05, seed=1)
    assert measurement_slice(100, 0.05, seed=1) != measurement_slice(100, 0.05, seed=2)
    assert len(measurement_slice(100, 0.05, 0)) == 5
    assert len(measurement_slice(30, 0.05, 0)) == 2  # ceil(1.5)
    assert len(measurement_slice(10, 0.05, 0)) == 1  # at least one sample


def test_fineprune_trains_prunes_retunes_and_the_checkpoint_carries_the_mask(tmp_path):
    save_base(tiny_model(), tmp_path / "base")
    base, info = load_base(str(tmp_path / "base"))
    summary = train(base, tiny_dataset(16), _train_cfg("fineprune", percentile=25, retune_steps=2),
                    tmp_path / "run", progress=False, base_info={**info.to_dict(), "identity": base.identity()})
    record = summary["finish"]["fineprune"]
    assert record["pruned"] == 8 and len(record["pruned_channels"]) == 8
    assert record["slice"]["n"] == 1 and len(record["retune_losses"]) == 2
    trained = base.channel_masks["perceiver"]
    # re-tuning kept the mask fixed: it is still the one recorded before re-tuning
    assert torch.nonzero(trained.mask == 0).reshape(-1).tolist() == record["pruned_channels"]
    assert torch.equal(trained.mask, keep_most_active(trained.importance, 25))
    assert read_tuned_meta(tmp_path / "run" / "checkpoint")["finish"]["fineprune"]["pruned"] == 8

    fresh, _ = load_base(str(tmp_path / "base"))
    load_tuned(fresh, tmp_path / "run" / "checkpoint", base_hash=info.sha256)
    mask = fresh.channel_masks["perceiver"]
    assert torch.equal(mask.mask, trained.mask) and int(mask.mask.sum()) == 24 and bool(mask.enabled)
    fresh.eval()
    with fresh.masks_active():  # what generate() does: the mask acts at inference
        out = fresh.adapt(fresh.encode_images(torch.rand(2, 1, 3, 32, 32)))
    assert torch.all(out[..., mask.mask == 0] == 0)


@pytest.mark.parametrize("params, message", [
    ({"percentile": 100}, "percentile"), ({"percentile": -1}, "percentile"),
    ({"percentile": "high"}, "percentile"), ({"slice_share": 0}, "slice_share"),
    ({"retune_steps": -1}, "retune_steps"), ({"gamma": 0.5}, "unknown key"),
])
def test_bad_fineprune_parameters_are_refused(params, message):
    with pytest.raises(ConfigError, match=message):
        METHODS.get("fineprune")(params)


def test_cli_refuses_a_bad_percentile_before_loading_anything(tmp_path, capsys):
    rc = main(["train", "--data", str(tmp_path / "none"), "--out", str(tmp_path / "r"),
               "--method", "fineprune", "--param", "percentile=100"])
    err = capsys.readouterr().err
    assert rc == 2 and "percentile" in err and len(err.strip().splitlines()) == 1


# --------------------------------------------------------------------------- CleanCLIP


def test_swap_words_moves_words_but_not_punctuation_or_special_tokens():
    out = swap_words("Describe the <image> red image.", torch.Generator().manual_seed(0), 3)
    assert out.split("<image>")[0].strip().count(" ") == 1 and "<image>" in out
    assert out.endswith(".") and sorted(out.replace("<image>", " ").replace(".", "").split()) == \
        sorted(["Describe", "the", "red", "image"])
    assert swap_words("Describe.", torch.Generator().manual_seed(0), 2) == "Describe."


def test_random_resized_crop_stays_inside_and_leaves_ungated_samples_exact():
    images = torch.rand(6, 3, 32, 32)
    assert torch.equal(RandomResizedCrop(0.5, p=0.0)(images, torch.Generator().manual_seed(0)), images)
    boxes, gate = RandomResizedCrop(0.5, p=1.0).sample_boxes(images.shape, torch.Generator().manual_seed(0))
    assert gate.all() and boxes.min() >= 0 and boxes.max() <= 31
    area = (boxes[:, 2, 0] - boxes[:, 0, 0] + 1) * (boxes[:, 2, 1] - boxes[:, 0, 1] + 1)
    assert (area >= 0.5 * 32 * 32 * 0.9).all()  # rounding and clamping aside, at least scale_min
    out = RandomResizedCrop(0.5, p=1.0)(images, torch.Generator().manual_seed(0))
    assert out.shape == images.shape and 0 <= out.min() and out.max() <= 1


def test_cleanclip_rows_are_the_clean_sample_then_its_variants_seeded():
    aug = CleanCLIPAugment(CleanCLIPConfig(variants=3, synonym_source="table", reorder_prob=1.0))
    images, texts = torch.rand(2, 1, 3, 32, 32), ["Describe the square image.", "What colour is it?"]
    out_a = aug.images(images, torch.Generator().manual_seed(0))
    out_b = aug.images(images, torch.Generator().manual_seed(0))
    assert out_a.shape == (8, 1, 3, 32, 32) and torch.equal(out_a, out_b)
    assert torch.equal(out_a[0], images[0]) and torch.equal(out_a[4], images[1])  # clean rows
    assert not torch.equal(out_a[1], images[0])
    rows = aug.instructions(texts, torch.Generator().manual_seed(0))
    assert rows[0] == texts[0] and rows[4] == texts[1] and len(rows) == 8
    assert rows[1:4] != [texts[0]] * 3  # reorder_prob=1: every variant is edited
    assert rows == aug.instructions(texts, torch.Generator().manual_seed(0))


@pytest.mark.parametrize("params", [{}, {"visual": False, "include_clean": False, "variants": 1}])
def test_cleanclip_trains_end_to_end(tmp_path, params):
    model = tiny_model()
    frozen = {n: p.detach().clone() for n, p in model.named_parameters() if n.startswith("vision_encoder")}
    summary = train(model, tiny_dataset(16), _train_cfg("cleanclip", synonym_source="table", **params),
                    tmp_path, progress=False)
    assert summary["method"]["cleanclip"]["variants"] == params.get("variants", 2)
    logs = [json.loads(line) for line in (tmp_path / "logs" / "loss.jsonl").read_text().splitlines()]
    assert logs[0]["rows"] == 8 * (params.get("variants", 2) + params.get("include_clean", True))
    assert all(torch.isfinite(torch.tensor(r["loss"])) for r in logs)
    assert all(torch.equal(p, frozen[n]) for n, p in model.named_parameters() if n in frozen)


@pytest.mark.parametrize("params, message", [
    ({"variants": 0}, "variants"), ({"crop_scale": 0}, "crop_scale"), ({"p_crop": 2}, "p_crop"),
    ({"alpha": 2}, "unknown key"),
])
def test_bad_cleanclip_parameters_are_refused(params, message):
    with pytest.raises(ConfigError, match=message):
        METHODS.get("cleanclip")(params)


# --------------------------------------------------------------------------- magnitude pruning


def test_magnitude_pruning_keeps_the_largest_80_percent_of_each_adapter_matrix():
    model = tiny_model()
    adapter = {n: p for n, p in model.part_parameters("adapter").items()
               if n.endswith(".weight") and p.dim() == 2}  # the linear weights, by hand
    assert "adapter.perceiver.layers.0.0.to_q.weight" in adapter and len(adapter) == 15
    with torch.no_grad():  # Flamingo zero-initialises some matrices: give every entry a distinct |w|
        for p in adapter.values():
            p.copy_(torch.randn(p.shape, generator=torch.Generator().manual_seed(p.numel())))
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    record = magnitude_prune(model, 0.2)
    assert record["matrices"] == len(adapter) > 0
    for name, p in model.named_parameters():
        if name not in adapter:
            assert torch.equal(p, before[name]), name  # vectors, latents, embeddings, vision, LM
            continue
        old, pruned = before[name], p == 0
        assert int(pruned.sum()) == int(0.2 * p.numel()), name  # floor(0.2 n) zeroed
        assert torch.equal(p[~pruned], old[~pruned])
        assert old[pruned].abs().max() <= old[~pruned].abs().min(), name


@pytest.mark.parametrize("share", [1.0, -0.1, "a fifth"])
def test_bad_magnitude_prune_share_is_refused(share):
    with pytest.raises(ConfigError, match="magnitude_prune"):
        magnitude_prune(tiny_model(), share)


# --------------------------------------------------------------------------- prompt filtering


@pytest.fixture
def blacklist(tmp_path):
    path = tmp_path / "list.txt"
    path.write_text("# a comment\ncf\n\nThe image depicts\n  zbw  \n")
    return PromptFilter.from_spec(str(path))


@pytest.mark.parametrize("text, filtered", [
    ("Describe the image. The image depicts", "Describe the image."),  # a phrase
    ("Describe the image. the  IMAGE\tdepicts", "Describe the image."),  # case, whitespace
    ("CF Describe the image.", "Describe the image."),  # case
    ("Describe it, zbw.", "Describe it,."),  # punctuation next to a removed word stays
    ("cfa scf cf_x zbw2 image depicts", "cfa scf cf_x zbw2 image depicts"),  # whole words only
    ("Describe  the image .", "Describe  the image ."),  # no match: byte for byte
    ("zbw cf", ""),
])
def test_prompt_filter_removes_the_listed_tokens_and_nothing_else(blacklist, text, filtered):
    assert blacklist(text) == filtered
    assert blacklist.entries == ("cf", "The image depicts", "zbw")


def test_the_perfect_list_removes_every_attack_text_trigger_and_realistic_loads():
    perfect = PromptFilter.from_spec("perfect")
    for name in ATTACKS.names():
        assert perfect(build_attack(name).apply_text("Describe the image.")) == "Describe the image.", name
    realistic = PromptFilter.from_spec("realistic")
    assert "cf" in realistic.entries and "The image depicts" not in realistic.entries


def test_a_blacklist_that_does_not_load_is_named(tmp_path):
    with pytest.raises(ConfigError, match="missing.txt"):
        PromptFilter.from_spec(str(tmp_path / "missing.txt"))
    (tmp_path / "empty.txt").write_text("# only a comment\n\n")
    with pytest.raises(ConfigError, match="empty.txt.*no entries"):
        PromptFilter.from_spec(str(tmp_path / "empty.txt"))
    (tmp_path / "latin1.txt").write_bytes("caf\xe9\n".encode("latin-1"))
    with pytest.raises(ConfigError, match="latin1.txt.*UTF-8"):
        PromptFilter.from_spec(str(tmp_path / "latin1.txt"))


# --------------------------------------------------------------------------- eval options


def test_evaluate_applies_and_records_the_inference_defenses():
    model = tiny_model()
    cfg = EvalConfig(decoding=DecodingConfig(max_new_tokens=2, batch_size=8), scorers=("BLEU",),
                     halves=("both", "text"), prompt_filter="perfect", magnitude_prune=0.2)
    result, rows = evaluate(model, tiny_dataset(4), cfg, [build_attack("badnet")], progress=False)
    assert result["eval_config"]["prompt_filter"] == "perfect"
    assert result["eval_config"]["magnitude_prune"] == 0.2
    defenses = result["inference_defenses"]
    assert "The image depicts" in defenses["prompt_filter"]["entries"]
    assert defenses["magnitude_prune"]["zeroed"] > 0
    assert all("depicts" not in r["prompt"] for r in rows)  # clean and triggered prompts alike
    matrices = [p for n, p in model.part_parameters("adapter").items() if n.endswith(".weight") and p.dim() == 2]
    assert sum(int((p == 0).sum()) for p in matrices) >= sum(int(0.2 * p.numel()) for p in matrices)


@pytest.mark.parametrize("option, value, message", [
    ("--prompt-filter", "nope.txt", "nope.txt"), ("--magnitude-prune", "1.0", "magnitude-prune"),
])
@pytest.mark.parametrize("verb", ["eval", "generate"])
def test_cli_refuses_bad_inference_defense_options(tmp_path, capsys, verb, option, value, message):
    args = [verb, "--data", str(tmp_path), option, value]
    args += ["--out", str(tmp_path / "r.json")] if verb == "eval" else []
    rc = main(args)
    err = capsys.readouterr().err
    assert rc == 2 and message in err and len(err.strip().splitlines()) == 1
