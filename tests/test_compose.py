"""The flamingo-compose family: a local CLIP folder + a local causal LM composed into a
Flamingo/Otter model, OpenFlamingo adapter checkpoints, and the CLI end to end.

Tiny random-weight parts (CLIP 24x24, GPT-2 / LLaMA of width 32) are saved as real HF folders
with their own tokenizer (no Flamingo tokens: composing adds them and resizes the embeddings).
"""

import json

import pytest
import torch
from safetensors.torch import load_file, save_file

from robustit.cli import main
from robustit.errors import CheckpointError
from robustit.models.compose import ComposeRecipe, compose, source_fingerprint
from robustit.models.factory import load_base, load_model
from robustit.models.openflamingo import adapter_to_openflamingo
from robustit.train.config import TrainConfig
from robustit.train.loop import train

from tiny import poison_train_eval_via_cli, tiny_dataset

SMALL = ["--perceiver-depth", "1", "--num-latents", "4", "--heads", "2", "--dim-head", "8", "--ff-mult", "2"]
SIZES = dict(perceiver_depth=1, num_latents=4, heads=2, dim_head=8, ff_mult=2)


def _lm_tokenizer():
    """A byte-level BPE with only GPT-2's <|endoftext|>: no <image>, <|endofchunk|>, pad."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    corpus = [f"User: Describe the image. GPT: a {c} square one {c} square What colour"
              for c in ("red", "green", "blue", "yellow")] * 20
    tok.train_from_iterator(corpus, trainers.BpeTrainer(
        vocab_size=280, special_tokens=["<|endoftext|>"], min_frequency=2, show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|endoftext|>", bos_token="<|endoftext|>")


def _save_vision(folder, whole_clip=False):
    from transformers import CLIPConfig, CLIPModel, CLIPVisionConfig, CLIPVisionModel

    vision = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                  image_size=24, patch_size=8)
    torch.manual_seed(1)
    if whole_clip:
        text = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                    vocab_size=99, max_position_embeddings=16, bos_token_id=0, eos_token_id=1, pad_token_id=1)
        CLIPModel(CLIPConfig(text_config=text, vision_config=vision, projection_dim=16)).save_pretrained(folder)
    else:
        CLIPVisionModel(CLIPVisionConfig(**vision)).save_pretrained(folder)
    return folder


def _save_lm(folder, kind):
    from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM

    tok = _lm_tokenizer()
    torch.manual_seed(2)
    if kind == "gpt2":
        lm = GPT2LMHeadModel(GPT2Config(vocab_size=len(tok), n_embd=32, n_layer=2, n_head=2, n_positions=128,
                                        bos_token_id=tok.eos_token_id, eos_token_id=tok.eos_token_id))
    else:
        lm = LlamaForCausalLM(LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64,
                                          num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=2,
                                          max_position_embeddings=128, bos_token_id=tok.eos_token_id,
                                          eos_token_id=tok.eos_token_id))
    lm.save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def parts(tmp_path_factory):
    root = tmp_path_factory.mktemp("parts")
    return {"vision": _save_vision(root / "clip-vision"), "clip": _save_vision(root / "clip", whole_clip=True),
            "gpt2": _save_lm(root / "gpt2", "gpt2"), "llama": _save_lm(root / "llama", "llama")}


def _compose_cli(parts, lm, out, vision="vision", every=1, extra=()):
    argv = ["compose", "--vision", str(parts[vision]), "--lm", str(parts[lm]), "--cross-attn-every",
            str(every), "--out", str(out), *SMALL, *extra]
    return main(argv)


@pytest.fixture(scope="module")
def composed(parts, tmp_path_factory):
    root = tmp_path_factory.mktemp("composed")
    assert _compose_cli(parts, "gpt2", root / "gpt2", every=2) == 0
    assert _compose_cli(parts, "llama", root / "llama", vision="clip") == 0
    return {"gpt2": root / "gpt2", "llama": root / "llama"}


def _of_state(model, value_seed=7):
    """The adapter's tensors renamed into OpenFlamingo's layout, with known values, both block
    aliases, and extras OpenFlamingo checkpoints carry (an LM weight, media time embeddings)."""
    g = torch.Generator().manual_seed(value_seed)
    known = {n: torch.randn(p.shape, generator=g) for n, p in model.adapter.named_parameters()}
    state = {}
    for name, t in known.items():
        if name.startswith("perceiver."):
            state[name] = t
            continue
        _, k, sub = name.split(".", 2)
        layer = model.adapter.xattn_layer_ids[int(k)]
        sub = sub if sub.startswith(("ff", "attn_gate")) else f"attn.{sub}"
        state[f"lang_encoder.gated_cross_attn_layers.{layer}.{sub}"] = t
        state[f"lang_encoder.transformer.h.{layer}.gated_cross_attn_layer.{sub}"] = t.clone()
    state["lang_encoder.transformer.wte.weight"] = torch.zeros(3, 4)
    state["perceiver.media_time_embs"] = torch.zeros(1, 1, model.config.vision_width)
    return known, state


@pytest.mark.parametrize("lm", ["gpt2", "llama"])
def test_composed_folder_loads_with_the_pretrained_parts_and_flamingo_tokens(parts, composed, lm):
    model, info = load_base(str(composed[lm]))
    assert info.family == model.spec.name == "flamingo-compose" and model.config.lm_family == lm
    tok = model.tokenizer
    assert len(tok) == len(_lm_tokenizer()) + 4  # <|endofchunk|>, <image>, <answer>, <PAD>
    assert tok.eos_token == "<|endofchunk|>" and tok.convert_tokens_to_ids("<image>") == model.image_token_id
    assert model.language_model.get_input_embeddings().weight.shape[0] == len(tok)
    assert json.loads((composed[lm] / "robustit_compose.json").read_text())["lm"].endswith(lm)
    src = load_file(str(parts[lm] / "model.safetensors"))
    ours = model.language_model.state_dict()
    block = next(k for k in src if ".1." in k and "weight" in k)  # a frozen LM block weight
    assert torch.equal(ours[block], src[block])
    clip = load_file(str(parts["vision" if lm == "gpt2" else "clip"] / "model.safetensors"))
    key = "encoder.layers.0.mlp.fc1.weight"  # a CLIPModel folder prefixes it with vision_model.
    assert torch.equal(model.vision_encoder.state_dict()[key], clip.get(key, clip.get(f"vision_model.{key}")))
    assert model.adapter.xattn_layer_ids == ([1] if lm == "gpt2" else [0, 1])  # OpenFlamingo's placement
    feats = model.encode_images(torch.rand(2, 1, 3, 32, 32))  # resized to 24, CLS dropped
    assert feats.shape == (2, 1, 9, 32)
    again, _ = compose(ComposeRecipe(vision=str(parts["vision" if lm == "gpt2" else "clip"]),
                                     lm=str(parts[lm]), cross_attn_every=2 if lm == "gpt2" else 1, **SIZES))
    for (name, a), (_, b) in zip(model.state_dict().items(), again.state_dict().items()):
        assert torch.equal(a, b), name  # composing is deterministic and the folder round-trips
    n = model.freeze_for_tuning()
    trainable = {name for name, p in model.named_parameters() if p.requires_grad}
    assert all(t.startswith(("adapter.", "language_model.lm_head", "language_model.transformer.wte",
                             "language_model.model.embed_tokens")) for t in trainable) and n > 0


def test_openflamingo_checkpoint_maps_onto_the_adapter(parts, composed, tmp_path):
    model, _ = load_base(str(composed["gpt2"]))
    known, state = _of_state(model)
    ckpt = tmp_path / "of.safetensors"
    save_file(state, str(ckpt))
    out = tmp_path / "with-of"
    assert _compose_cli(parts, "gpt2", out, every=2, extra=["--openflamingo-ckpt", str(ckpt)]) == 0
    loaded, _ = load_base(str(out))
    for name, p in loaded.adapter.named_parameters():
        assert torch.equal(p, known[name]), name
    report = json.loads((out / "config.json").read_text())["openflamingo"]
    assert report["loaded"] == len(known) and report["aliases_skipped"] == len(known) - len(
        [n for n in known if n.startswith("perceiver.")])
    assert report["unmapped_first"] == ["lang_encoder.transformer.wte.weight", "perceiver.media_time_embs"]
    exported = adapter_to_openflamingo(loaded, alias="transformer.h")  # the inverse mapping
    assert set(exported) == set(state) - {"lang_encoder.transformer.wte.weight", "perceiver.media_time_embs"}
    assert all(torch.equal(exported[k], state[k]) for k in exported)


def test_openflamingo_checkpoint_errors(parts, composed, tmp_path, capsys):
    model, _ = load_base(str(composed["gpt2"]))
    _, state = _of_state(model)
    name = "lang_encoder.gated_cross_attn_layers.1.attn.to_q.weight"
    bad = {**state, name: torch.zeros(5, 5)}
    save_file(bad, str(tmp_path / "bad.safetensors"))
    recipe = ComposeRecipe(vision=str(parts["vision"]), lm=str(parts["gpt2"]), cross_attn_every=2,
                           openflamingo_ckpt=str(tmp_path / "bad.safetensors"), **SIZES)
    with pytest.raises(CheckpointError, match=r"(?s)shapes differ.*to_q\.weight \(5, 5\) -> adapter\.xattn\.0\.to_q"):
        compose(recipe)
    save_file(state, str(tmp_path / "good.safetensors"))
    wrong_place = ComposeRecipe(**{**recipe.__dict__, "cross_attn_every": 1,
                                   "openflamingo_ckpt": str(tmp_path / "good.safetensors")})
    with pytest.raises(CheckpointError, match="before LM layers \\[1\\].*cross-attn-every|lacks"):
        compose(wrong_place)
    (tmp_path / "of.pt").write_bytes(b"not read")
    with pytest.raises(CheckpointError, match="safetensors only.*convert"):
        compose(ComposeRecipe(**{**recipe.__dict__, "openflamingo_ckpt": str(tmp_path / "of.pt")}))
    assert _compose_cli(parts, "gpt2", tmp_path / "x", extra=["--openflamingo-ckpt", str(tmp_path / "of.pt")]) == 2
    assert "never unpickles" in capsys.readouterr().err


def test_recipe_folder_and_changed_sources(parts, tmp_path):
    folder = tmp_path / "recipe"
    folder.mkdir()
    (folder / "robustit_compose.json").write_text(json.dumps(
        {"vision": str(parts["vision"]), "lm": str(parts["gpt2"]), **SIZES}))
    with pytest.raises(CheckpointError, match="recipe only.*robustit compose --recipe"):
        load_base(str(folder))
    assert main(["compose", "--recipe", str(folder / "robustit_compose.json")]) == 0
    assert load_base(str(folder))[1].family == "flamingo-compose"
    meta = json.loads((folder / "config.json").read_text())
    assert meta["sources"]["lm"] == source_fingerprint(parts["gpt2"])
    meta["sources"]["lm"] = "0" * 64
    (folder / "config.json").write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match="changed since it was composed"):
        load_base(str(folder))


def test_embedded_identity_keeps_its_old_keys():
    model, _ = load_base("embedded")
    assert "xattn_first" not in model.identity()["config"] and "vision_drop_cls" not in model.identity()["config"]


def test_training_changes_only_the_adapter_and_embeddings(composed, tmp_path):
    model, info = load_base(str(composed["llama"]))
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    cfg = TrainConfig(method="vanilla", max_steps=2, batch_size=4, lr=1e-2, save_every=0, log_every=1)
    train(model, tiny_dataset(8), cfg, tmp_path, base_info={**info.to_dict(), "identity": model.identity()},
          progress=False)
    tuned = set(model.trainable_parameter_names())
    changed = {n for n, p in model.named_parameters() if not torch.equal(p, before[n])}
    assert changed and changed <= tuned
    assert any(n.startswith("adapter.") for n in changed) and any("embed" in n for n in changed)


@pytest.mark.parametrize("lm", ["gpt2", "llama"])
def test_poison_train_eval_end_to_end_through_the_cli(composed, lm, tmp_path):
    base = str(composed[lm])
    summaries, result, data = poison_train_eval_via_cli(base, tmp_path)
    for summary in summaries.values():
        assert summary["base"]["family"] == "flamingo-compose" and summary["steps"] == 2
    assert result["asr"]["badnet"]["both"]["n"] == 4
    model, _, meta = load_model(base, str(tmp_path / "robustit" / "checkpoint"))
    assert list(meta["channel_masks"]) == ["perceiver"]
    assert main(["generate", "--model", base, "--tuned", str(tmp_path / "vanilla"), "--data", str(data),
                 "--split", "test-a", "--n", "2", "--max-new-tokens", "3",
                 "--out", str(tmp_path / "gen.jsonl")]) == 0
