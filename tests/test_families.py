"""Real Hugging Face families (LLaVA, BLIP-2, IDEFICS) behind the LVLM protocol.

Tiny random-weight models (50-100K parameters) are saved as local HF folders, then loaded with
``load_base(folder)`` exactly like a real checkpoint. The vision encoders take 24x24 images and
the data is 32x32, so every path exercises the resize.
"""

import json

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from robustit.data.records import encode_png
from robustit.errors import CheckpointError, DataError
from robustit.eval.victim import text_features_fn, vision_features_fn
from robustit.models.factory import load_base, load_model
from robustit.models.hf_lvlm import expand_image_tokens, to_pixels
from robustit.models.hf_tiny import build_tiny, save_tiny
from robustit.data.batching import ImageStore, encode_pairs
from robustit.train.config import TrainConfig
from robustit.train.loop import train

from tiny import poison_train_eval_via_cli, tiny_dataset

FAMILIES = ["llava", "blip2", "idefics"]


@pytest.fixture(scope="module")
def bases(tmp_path_factory):
    root = tmp_path_factory.mktemp("bases")
    return {family: save_tiny(family, root / family, image_size=24) for family in FAMILIES}


def _batch(model, n=2, size=32):
    enc = encode_pairs(model.tokenizer, model.template, ["Describe the image.", "What colour"][:n],
                       ["a red square", "red"][:n], 64)
    return enc, torch.rand(n, 1, 3, size, size, generator=torch.Generator().manual_seed(1))


def _hf_reference_logits(model, enc, images, n_slots):
    """The HF model's own forward (pixel_values, N image tokens per image), read at our positions."""
    px = to_pixels(images, model.images, torch.float32)
    ids, mask = enc["input_ids"], enc["attention_mask"]
    if model.spec.name == "idefics":  # one token per image; text after it attends to it
        seen = ((ids == model.image_token_id).cumsum(1) > 0).long().unsqueeze(-1)
        return model.hf(input_ids=ids, attention_mask=mask, pixel_values=px.unflatten(0, images.shape[:2]),
                        image_attention_mask=seen, use_cache=False).logits
    ids, mask, last = expand_image_tokens(ids, mask, model.image_token_id, n_slots, model.tokenizer.pad_token_id)
    logits = model.hf(input_ids=ids, attention_mask=mask, pixel_values=px, use_cache=False).logits
    return logits.gather(1, last.unsqueeze(-1).expand(-1, -1, logits.shape[-1]))


@pytest.mark.parametrize("family", FAMILIES)
def test_logits_equal_the_hf_models_own_forward(family):
    model = build_tiny(family)
    enc, images = _batch(model, size=24)
    ours = model(**enc, images=images)
    ref = _hf_reference_logits(model, enc, images, ours.adapter_out.shape[2])
    assert ours.logits.shape == (*enc["input_ids"].shape, len(model.tokenizer))
    assert torch.allclose(ours.logits, ref, atol=1e-5)
    assert torch.isfinite(ours.loss)  # enc holds labels


def test_image_tokens_expand_in_place_and_positions_map_back():
    ids = torch.tensor([[5, 1, 7, 8, 1, 9], [0, 0, 1, 7, 1, 3]])  # 1 = <image>, 0 = left padding
    out, mask, last = expand_image_tokens(ids, (ids != 0).long(), image_id=1, n=3, pad_id=0)
    assert out.tolist() == [[5, 1, 1, 1, 7, 8, 1, 1, 1, 9], [0, 0, 1, 1, 1, 7, 1, 1, 1, 3]]
    assert mask.tolist() == [[1] * 10, [0, 0] + [1] * 8]
    assert last.tolist() == [[0, 3, 4, 5, 8, 9], [0, 1, 4, 5, 8, 9]]
    assert torch.equal(out.gather(1, last), ids)
    with pytest.raises(DataError, match="same number"):
        expand_image_tokens(ids[:, 2:], torch.ones_like(ids[:, 2:]), image_id=1, n=3, pad_id=0)


@pytest.mark.parametrize("family", FAMILIES)
def test_trainable_set_is_exactly_adapter_and_embeddings(family):
    model = build_tiny(family)
    n = model.freeze_for_tuning()
    trainable = {name for name, p in model.named_parameters() if p.requires_grad}
    allowed = model.spec.adapter + model.spec.embeddings
    assert trainable and all(t.startswith(allowed) for t in trainable)
    assert not any(t.startswith(model.spec.vision_encoder) for t in trainable)
    assert any(t.startswith(model.spec.adapter) for t in trainable)
    assert n == sum(p.numel() for p in model.parameters() if p.requires_grad)


@pytest.mark.parametrize("family", FAMILIES)
def test_load_base_detects_the_family_from_a_local_folder(bases, family):
    model, info = load_base(str(bases[family]))
    assert info.family == family == model.spec.name
    assert (bases[family] / "preprocessor_config.json").exists()
    built = build_tiny(family)
    for (name, a), (_, b) in zip(built.state_dict().items(), model.state_dict().items()):
        assert torch.equal(a, b), name
    assert model.image_size == 24 and model.template.to_dict()["format"] == built.template.to_dict()["format"]


def test_unknown_folder_names_the_families_tried(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "mystery",
                                                      "architectures": ["MysteryForVision"]}))
    with pytest.raises(CheckpointError, match="(?s)mystery.*llava.*blip2.*idefics"):
        load_base(str(tmp_path))
    with pytest.raises(CheckpointError, match="no such folder"):
        load_base(str(tmp_path / "absent"))


@pytest.mark.parametrize("family", FAMILIES)
def test_generation_same_with_and_without_cache_and_alone_or_batched(family):
    model = build_tiny(family, seed=3)
    images = torch.rand(2, 1, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    prompts = model.prompts(["Describe the image.", "What colour"])
    cached = model.generate(prompts, images=images, max_new_tokens=4)
    assert cached == model.generate(prompts, images=images, max_new_tokens=4, use_cache=False)
    assert cached == [model.generate([p], images=images[i:i + 1], max_new_tokens=4)[0]
                      for i, p in enumerate(prompts)]
    beams = model.generate(prompts, images=images, max_new_tokens=4, num_beams=2)
    assert beams == model.generate(prompts, images=images, max_new_tokens=4, num_beams=2, use_cache=False)
    one_shot = model.prompts(["Describe the image."], [[("Describe the image.", "a red square")]])
    assert isinstance(model.generate(one_shot, images=torch.rand(1, 2, 3, 32, 32), max_new_tokens=3)[0], str)


@pytest.mark.parametrize("family", FAMILIES)
def test_images_of_any_size_are_resized_and_prompts_need_their_image_token(family):
    model = build_tiny(family)
    shapes = {tuple(model.encode_images(torch.rand(1, 1, 3, s, s)).shape) for s in (16, 24, 40)}
    assert len(shapes) == 1
    enc, images = _batch(model)
    cut = {k: v[:, 4:] for k, v in enc.items()}  # the image token is gone
    with pytest.raises(DataError, match="image"):
        model(**cut, images=images)
    vis = vision_features_fn(model)(torch.rand(2, 3, 32, 32))
    assert vis.shape[0] == 2 and vis.dim() == 3
    assert text_features_fn(model)(["a red square", "blue"]).shape[0] == 2


def test_image_store_resizes_mixed_sizes_and_names_undecodable_images():
    data = tiny_dataset(3, size=32)
    data.images[data.samples[1].image_ids[0]] = encode_png(np.zeros((40, 20, 3), np.uint8))
    assert ImageStore(data).data.shape == (3, 3, 32, 32)
    assert ImageStore(data, size=24).batch([[s.image_ids[0]] for s in data.samples]).shape == (3, 1, 3, 24, 24)
    data.images[data.samples[2].image_ids[0]] = b"not an image"
    with pytest.raises(DataError, match="tiny-img-2"):
        ImageStore(data)


@pytest.mark.parametrize("family", FAMILIES)
def test_training_changes_only_the_tuned_parts_and_the_checkpoint_round_trips(bases, family, tmp_path):
    model, info = load_base(str(bases[family]))
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    cfg = TrainConfig(method="robustit", max_steps=2, batch_size=4, lr=1e-2, save_every=0, log_every=1)
    train(model, tiny_dataset(8), cfg, tmp_path, base_info={**info.to_dict(), "identity": model.identity()},
          progress=False)
    tuned = set(model.trainable_parameter_names())
    changed = {n for n, p in model.named_parameters() if not torch.equal(p, before[n])}
    assert changed and changed <= tuned
    assert any(n.startswith(model.spec.adapter) for n in changed)
    assert any(n.startswith(model.spec.embeddings) for n in changed)
    saved = set(load_file(str(tmp_path / "checkpoint" / "tuned.safetensors")))
    assert {k for k in saved if not k.startswith("channel_masks.")} == tuned  # the tuned parts only
    loaded, _, meta = load_model(str(bases[family]), str(tmp_path / "checkpoint"))
    for (name, a), (_, b) in zip(model.state_dict().items(), loaded.state_dict().items()):
        assert torch.equal(a, b), name
    assert list(meta["channel_masks"]) == [model.spec.default_hook_point]


def _mask_acts_at_inference(model):
    """The AAR mask zeroes its channels of the hook point's output, and that changes the logits."""
    mask = model.channel_masks[model.spec.default_hook_point]
    assert bool(mask.enabled) and 0 < int(mask.mask.sum()) < mask.width
    enc, images = _batch(model)
    model.eval()
    out = model(**enc, images=images)
    assert torch.all(out.adapter_out[..., mask.mask == 0] == 0)
    mask.enabled.fill_(False)
    unmasked = model(**enc, images=images)
    mask.enabled.fill_(True)
    assert torch.any(unmasked.adapter_out[..., mask.mask == 0] != 0)
    assert not torch.allclose(out.logits, unmasked.logits)


@pytest.mark.parametrize("family", FAMILIES)
def test_poison_train_eval_end_to_end_through_the_cli(bases, family, tmp_path, capsys):
    base = str(bases[family])
    summaries, result, data = poison_train_eval_via_cli(base, tmp_path)
    for summary in summaries.values():
        assert summary["base"]["family"] == family and summary["steps"] == 2
    assert result["asr"]["badnet"]["both"]["n"] == 4
    assert result["prompt_template"] == load_base(base)[0].template.to_dict()
    assert len((tmp_path / "eval.generations.jsonl").read_text().splitlines()) == 4 * 4
    model, _, _ = load_model(base, str(tmp_path / "robustit" / "checkpoint"))
    _mask_acts_at_inference(model)


@pytest.mark.parametrize("family", FAMILIES)
def test_the_audit_screens_with_every_family(bases, tmp_path, family):
    from robustit.cli import main as cli
    from robustit.data.mimicit import save_split

    data = tiny_dataset(12)
    for i in (3, 7):
        data.samples[i].answer = "banana banana phone"
    save_split(data, tmp_path / "train", "train")
    assert cli(["audit", "--data", str(tmp_path / "train"), "--split", "train", "--model", str(bases[family]),
                "--out", str(tmp_path / "audit"), "--batch-size", "4", "--quiet"]) == 0
    record = json.loads((tmp_path / "audit" / "audit.json").read_text())
    rows = record["samples"]
    assert len(rows) == 12 and all(np.isfinite(r["likelihood"]) and r["likelihood"] > 0 for r in rows)
    assert record["base"]["family"] == family or family in json.dumps(record["base"])
