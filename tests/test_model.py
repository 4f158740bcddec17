"""The embedded LVLM: parts, freezing, hooks, generation, checkpoints."""

import pytest
import torch

from robustit.errors import CheckpointError, ConfigError
from robustit.models.checkpoint import load_base_weights, load_tuned, save_base, save_tuned
from robustit.models.factory import load_base
from robustit.data.batching import encode_pairs

from tiny import tiny_model


def _batch(model, n=2):
    enc = encode_pairs(model.tokenizer, model.template, ["Describe the image."] * n,
                       ["a red square"] * n, 64)
    return enc, torch.rand(n, 1, 3, 32, 32, generator=torch.Generator().manual_seed(1))


def _open_gates(model):
    """Make the (identity-initialised) cross-attention blocks act: gates open, outputs non-zero."""
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for block in model.adapter.xattn:
            block.attn_gate.fill_(1.0)
            block.ff_gate.fill_(1.0)
            block.to_out.weight.copy_(torch.randn(block.to_out.weight.shape, generator=g) * 0.2)
            block.ff[-1].weight.copy_(torch.randn(block.ff[-1].weight.shape, generator=g) * 0.2)


def test_trainable_set_is_exactly_adapter_and_embeddings():
    model = tiny_model()
    n = model.freeze_for_tuning()
    trainable = {name for name, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(t.startswith(("adapter.", "language_model.transformer.wte",
                                           "language_model.lm_head")) for t in trainable)
    assert any(t.startswith("adapter.perceiver") for t in trainable)
    assert any(t.startswith("adapter.xattn") for t in trainable)
    assert not any(t.startswith(("vision_encoder", "language_model.transformer.h")) for t in trainable)
    assert n == sum(p.numel() for p in model.parameters() if p.requires_grad)


def test_labels_cover_only_the_response():
    model = tiny_model()
    enc, _ = _batch(model, 1)
    ids, labels = enc["input_ids"][0], enc["labels"][0]
    supervised = ids[labels != -100]
    text = model.tokenizer.decode(supervised)
    assert text.strip() == "a red square<|endofchunk|>"


def test_images_change_the_output_only_through_the_adapter():
    model = tiny_model().eval()
    enc, images = _batch(model)
    enc = {k: v for k, v in enc.items() if k != "labels"}
    closed = model(**enc, images=images).logits
    # at initialisation the blocks are an exact identity: images do not change the logits
    assert torch.allclose(closed, model(**enc, images=torch.rand_like(images)).logits)
    _open_gates(model)
    assert not torch.allclose(model(**enc, images=images).logits,
                              model(**enc, images=torch.rand_like(images)).logits)


@pytest.mark.parametrize("gate_init", [0.0, 1.0])
def test_cross_attention_blocks_start_as_identity_but_learn(gate_init):
    model = tiny_model(xattn_gate_init=gate_init)
    enc, images = _batch(model)
    out = model(**enc, images=images)
    out.loss.backward()
    block = model.adapter.xattn[0]
    # Zero gates (Flamingo) starve every weight of the block of gradient; zero output
    # projections behind open gates give the output projection a gradient from the first step.
    assert (block.to_out.weight.grad.abs().sum() > 0) == (gate_init != 0.0)
    assert block.to_q.weight.grad.abs().sum() == 0


def test_hooks_are_removed_after_forward_and_on_error():
    model = tiny_model()
    enc, images = _batch(model)
    model(**enc, images=images)
    assert all(not m._forward_pre_hooks for m in model.modules())
    with pytest.raises(RuntimeError):
        with model.conditioned(model.adapt(model.encode_images(images))):
            raise RuntimeError("boom")
    assert all(not m._forward_pre_hooks for m in model.modules())


def test_tokens_before_the_image_get_no_cross_attention():
    model = tiny_model().eval()
    _open_gates(model)
    tok = model.tokenizer
    ids = torch.tensor([tok("User: hi <image>User: Describe", add_special_tokens=False)["input_ids"]])
    mask = torch.ones_like(ids)
    img_pos = (ids[0] == model.image_token_id).nonzero()[0, 0]
    a = model(input_ids=ids, attention_mask=mask, images=torch.zeros(1, 1, 3, 32, 32)).logits
    b = model(input_ids=ids, attention_mask=mask, images=torch.ones(1, 1, 3, 32, 32)).logits
    assert torch.allclose(a[0, :img_pos], b[0, :img_pos])
    assert not torch.allclose(a[0, img_pos:], b[0, img_pos:])


@pytest.mark.parametrize("beams", [1, 3])
def test_generation_same_with_and_without_kv_cache(beams):
    model = tiny_model(seed=3).eval()
    _open_gates(model)
    images = torch.rand(3, 1, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    prompts = model.prompts(["Describe the image.", "What colour", "Describe"])
    cached = model.generate(prompts, images=images, max_new_tokens=6, num_beams=beams)
    uncached = model.generate(prompts, images=images, max_new_tokens=6, num_beams=beams, use_cache=False)
    assert cached == uncached
    singles = [model.generate([p], images=images[i:i + 1], max_new_tokens=6, num_beams=beams)[0]
               for i, p in enumerate(prompts)]
    assert singles == cached  # left padding does not change results


def test_one_shot_prompt_uses_two_images():
    model = tiny_model().eval()
    _open_gates(model)
    p = model.prompts(["Describe the image."], [[("Describe the image.", "a red square")]])
    assert p[0].count("<image>") == 2
    out = model.generate(p, images=torch.rand(1, 2, 3, 32, 32), max_new_tokens=4)
    assert isinstance(out[0], str)


def test_base_and_tuned_checkpoints_round_trip(tmp_path):
    model = tiny_model(seed=1)
    save_base(model, tmp_path / "base")
    loaded, info = load_base(str(tmp_path / "base"))
    for (n, a), (_, b) in zip(model.state_dict().items(), loaded.state_dict().items()):
        assert torch.equal(a, b), n
    with torch.no_grad():
        loaded.adapter.perceiver.latents.add_(1.0)
        loaded.language_model.transformer.wte.weight.mul_(2.0)
    save_tuned(loaded, tmp_path / "tuned", {"base": {"identity": loaded.identity(), "sha256": info.sha256}})
    fresh, info2 = load_base(str(tmp_path / "base"))
    load_tuned(fresh, tmp_path / "tuned", base_hash=info2.sha256)
    assert torch.equal(fresh.adapter.perceiver.latents, loaded.adapter.perceiver.latents)
    assert torch.equal(fresh.language_model.lm_head.weight, loaded.language_model.lm_head.weight)


def test_tuned_checkpoint_on_wrong_base_is_refused(tmp_path):
    a, b = tiny_model(seed=1), tiny_model(seed=1, lm_layers=3)
    save_tuned(a, tmp_path / "tuned", {"base": {"identity": a.identity(), "path": "base-a"}})
    with pytest.raises(CheckpointError, match="different base"):
        load_tuned(b, tmp_path / "tuned")


def test_missing_or_corrupt_base_gives_clear_error(tmp_path):
    with pytest.raises(CheckpointError, match="no such folder"):
        load_base(str(tmp_path / "nope"))
    model = tiny_model()
    save_base(model, tmp_path / "base")
    (tmp_path / "base" / "model.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(CheckpointError, match="corrupt"):
        load_base_weights(model, tmp_path / "base")


def test_unknown_hook_point_lists_the_known_ones():
    with pytest.raises(ConfigError, match="perceiver"):
        tiny_model().hook_module_path("nope")


def _positions_seen(model, prompts, images, **generate_kwargs):
    """The position_ids each LM call receives (after the model's own pre-hook)."""
    seen = []
    hook = model.language_model.register_forward_hook(
        lambda mod, args, kwargs, out: seen.append(kwargs.get("position_ids")), with_kwargs=True)
    try:
        out = model.generate(prompts, images=images, **generate_kwargs)
    finally:
        hook.remove()
    return out, seen


def test_chunk_positions_restart_each_in_context_example_and_leave_single_examples_alone():
    images = torch.rand(2, 2, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    absolute, chunked = tiny_model(seed=3).eval(), tiny_model(seed=3, chunk_positions=True).eval()
    _open_gates(absolute), _open_gates(chunked)
    one_shot = [chunked.template.few_shot([("Describe.", "A red ring.")], "What colour"),
                chunked.template.few_shot([("Describe the image please.", "A blue square at left.")], "Describe")]
    out, seen = _positions_seen(chunked, one_shot, images, max_new_tokens=3)
    ids = chunked.encode_prompts(one_shot)["input_ids"]
    first = seen[0]
    for row in range(2):
        image_at = (ids[row] == chunked.image_token_id).nonzero().flatten().tolist()
        assert len(image_at) == 2
        assert first[row, image_at[0]] == first[row, image_at[1]]  # the second chunk starts over
        query = first[row, image_at[1]:]
        assert torch.equal(query, torch.arange(len(query)) + first[row, image_at[0]])
    assert torch.equal(seen[1][:, 0], first[:, -1] + 1)  # decoding continues the last chunk
    # with the KV cache or without, the same continuation
    assert chunked.generate(one_shot, images=images, max_new_tokens=3, use_cache=False) == out
    # a single example: the same positions, so the same logits as absolute positions
    single = chunked.prompts(["Describe the image.", "What colour"])
    enc = chunked.encode_prompts(single)
    imgs = images[:, :1]
    a = absolute(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"], images=imgs).logits
    b = chunked(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"], images=imgs).logits
    real = enc["attention_mask"].bool()
    assert torch.equal(a[real], b[real])
