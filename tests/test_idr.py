"""IDR: visual / textual augmentations, label conflicts, and the consistency loss."""

import numpy as np
import pytest
import torch
from torch import nn

from robustit.data.template import SPECIAL_TOKENS
from robustit.defenses.idr import (
    IDRConfig,
    TextAugment,
    VisualAugment,
    consistency_loss,
    label_conflicts,
    pooled_embedding,
)
from robustit.defenses.synonyms import SynonymSource
from robustit.errors import ConfigError

torch.set_num_threads(1)

IDENTITY = dict(jitter_brightness=0.0, jitter_contrast=0.0, jitter_saturation=0.0, jitter_hue=0.0,
                p_flip=0.0, token_dropout=0.0, synonym_prob=0.0)
INSTR = "Describe the image briefly. What colour is the object in the picture?"


def _images(b=4, size=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    base = torch.rand(b, 3, 1, 1, generator=g)   # smooth colour blocks + a little texture
    return (0.8 * base + 0.2 * torch.rand(b, 3, size, size, generator=g)).clamp(0, 1)


def _gen(seed):
    return torch.Generator().manual_seed(seed)


# ----------------------------------------------------------------------------- visual


def test_visual_identity_is_exact():
    x = _images()
    y, _ = VisualAugment(IDRConfig(**IDENTITY))(x, _gen(0))
    assert torch.equal(y, x)


def test_visual_replay_reproduces_exactly_and_params_are_kept():
    aug = VisualAugment(IDRConfig(p_flip=0.5))
    x = _images(8)
    y, params = aug(x, _gen(3))
    snapshot = {k: {kk: vv.clone() for kk, vv in v.items()} for k, v in params.items()}
    y2, p2 = aug(x, params=params)
    assert torch.equal(y, y2) and p2 is params
    for k in snapshot:
        for kk in snapshot[k]:
            assert torch.equal(params[k][kk], snapshot[k][kk])
    y3, _ = aug(x, _gen(3))                       # same seed, same view
    assert torch.equal(y, y3)
    y4, _ = aug(x, _gen(4))
    assert not torch.equal(y, y4)


def test_visual_gates_are_per_sample_and_bit_exact():
    aug = VisualAugment(IDRConfig(p_jitter=0.5, p_flip=0.5))
    x = _images(16)
    y, p = aug(x, _gen(1))
    jit, flip = p["jitter"]["batch_prob"] > 0.5, p["flip"]["batch_prob"] > 0.5
    none, only_flip = ~jit & ~flip, ~jit & flip
    assert none.any() and only_flip.any() and jit.any()
    assert torch.equal(y[none], x[none])
    assert torch.equal(y[only_flip], x[only_flip].flip(-1))
    assert (y[jit] - x[jit]).abs().max() < 0.5    # slight: never a wholesale change
    assert not torch.equal(y[jit & ~flip], x[jit & ~flip])
    assert float(y.min()) >= 0.0 and float(y.max()) <= 1.0


def test_visual_gradient_reaches_input():
    x = _images(4).requires_grad_(True)
    y, _ = VisualAugment(IDRConfig(p_flip=1.0))(x, _gen(0))
    (y * torch.linspace(0, 1, y.numel()).reshape(y.shape)).sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0


def test_visual_requires_generator_and_shape():
    aug = VisualAugment()
    with pytest.raises(ConfigError, match="generator"):
        aug(_images())
    with pytest.raises(ConfigError, match="B, 3, H, W"):
        aug(torch.rand(3, 8, 8), _gen(0))


def test_label_conflicts_examples():
    flip_ok, hue_ok = label_conflicts([
        "A red circle on the left.",
        "What is to the Right-hand side of the square? A triangle.",
        "Describe the image. A small grey square and a white circle.",
        "What colour is it? Blue.",
        "A bright, tight frame.",          # 'bright'/'tight' contain 'right' but are other words
    ])
    assert flip_ok.tolist() == [False, False, True, True, True]
    assert hue_ok.tolist() == [False, True, True, False, True]


def test_label_aware_disables_flip_and_hue_per_sample():
    cfg = IDRConfig(p_flip=1.0, jitter_hue=0.3, label_aware=True)
    aug = VisualAugment(cfg)
    texts = ["the circle is left of the square", "a square", "a red square", "a circle"]
    x = _images(4)
    _, p = aug(x, _gen(0), texts=texts)
    assert p["flip"]["batch_prob"].tolist() == [0.0, 1.0, 1.0, 1.0]
    hue = p["jitter"]["hue_factor"]
    assert hue[2] == 0 and (hue[[0, 1, 3]] != 0).all()
    with pytest.raises(ConfigError, match="texts"):
        aug(x, _gen(0))


# ----------------------------------------------------------------------------- textual


def test_text_identity_returns_input_unchanged():
    aug = TextAugment(0.0, 0.0)
    odd = "  Describe   the <image> image.  "
    assert aug(odd, _gen(0)) == odd
    assert aug(INSTR, np.random.default_rng(0)) == INSTR


def test_text_deterministic_and_differs_across_seeds():
    aug = TextAugment(0.3, 0.5, synonyms=SynonymSource("table"))
    a = [aug(INSTR, _gen(s)) for s in range(10)]
    b = [aug(INSTR, _gen(s)) for s in range(10)]
    assert a == b
    assert len(set(a)) >= 8
    n1 = aug(INSTR, np.random.default_rng(5))
    assert n1 == aug(INSTR, np.random.default_rng(5))


def test_text_never_touches_special_tokens_and_never_empties():
    aug = TextAugment(0.9, 1.0, synonyms=SynonymSource("table"))
    text = "<image>Describe the image <answer> briefly <|endofchunk|> photo<image>"
    for seed in range(50):
        out = aug(text, _gen(seed))
        for tok in SPECIAL_TOKENS:
            assert out.count(tok) == text.count(tok)
        stripped = out
        for tok in SPECIAL_TOKENS:
            stripped = stripped.replace(tok, " ")
        assert stripped.split(), out           # at least one word survives
    # the protected tokens keep their order and surroundings
    out = TextAugment(0.0, 1.0, synonyms=SynonymSource("table"))(text, _gen(0))
    assert out.startswith("<image>") and out.endswith("<image>") and " <answer> " in out


def test_text_synonyms_keep_case_and_punctuation():
    aug = TextAugment(0.0, 1.0, synonyms=SynonymSource("table"))
    out = aug("Describe the image.", _gen(0))
    words = out.split()
    assert words[0] in {"Portray", "Depict", "Characterize", "Outline"}
    assert words[-1].endswith(".") and words[-1][:-1] in {"picture", "photo", "photograph", "pic"}


def test_text_dropout_moves_trailing_punctuation():
    aug = TextAugment(0.5, 0.0)
    seen = False
    for seed in range(40):
        out = aug("Describe the image.", _gen(seed))
        assert out.endswith("."), out
        if "image" not in out and out.endswith("."):
            seen = True
    assert seen


def test_text_validation():
    with pytest.raises(ConfigError, match="token_dropout"):
        TextAugment(1.0, 0.0)
    with pytest.raises(ConfigError, match="Generator"):
        TextAugment(0.1, 0.1)(INSTR, 0)


# ----------------------------------------------------------------------------- loss


def test_pooled_embedding_hand_computed():
    emb = torch.tensor([[[1.0, 2.0], [3.0, 4.0], [100.0, 100.0]],
                        [[5.0, 6.0], [7.0, 8.0], [9.0, 10.0]],
                        [[1.0, 1.0], [1.0, 1.0], [1.0, 1.0]]])
    mask = torch.tensor([[1, 1, 0], [1, 1, 1], [0, 0, 0]])
    out = pooled_embedding(emb, mask)
    assert torch.allclose(out, torch.tensor([[2.0, 3.0], [7.0, 8.0], [0.0, 0.0]]))
    assert torch.equal(pooled_embedding(emb, mask.bool()), out)


class _ToyAdapter(nn.Module):
    """Stands in for H: images (B,3,H,W) -> (B, T=1, N=4, D=8)."""

    def __init__(self):
        super().__init__()
        self.proj = nn.Linear(3 * 4 * 4, 4 * 8)

    def forward(self, x):
        x = nn.functional.adaptive_avg_pool2d(x, 4).flatten(1)
        return self.proj(x).reshape(x.shape[0], 1, 4, 8)


def _views(cfg, seed=0):
    torch.manual_seed(0)
    adapter, embed = _ToyAdapter(), nn.Embedding(50, 6)
    x = _images(4)
    x_aug, _ = VisualAugment(cfg)(x, _gen(seed))
    ta = TextAugment.from_config(cfg, SynonymSource("table"))
    texts = ["describe the image briefly", "what colour is the object", "show the picture",
             "count the items in the photo"]
    aug_texts = ta.batch(texts, _gen(seed))
    vocab = {w: i for i, w in enumerate(sorted({w for t in texts + aug_texts for w in t.split()}))}

    def encode(batch):
        ids = [[vocab[w] for w in t.split()] for t in batch]
        width = max(map(len, ids))
        pad = torch.tensor([i + [0] * (width - len(i)) for i in ids])
        mask = torch.tensor([[1] * len(i) + [0] * (width - len(i)) for i in ids])
        return pooled_embedding(embed(pad), mask)

    return adapter, embed, (adapter(x), adapter(x_aug), encode(texts), encode(aug_texts))


def test_loss_exactly_zero_for_identity_views():
    _, _, (h, h_aug, e, e_aug) = _views(IDRConfig(**IDENTITY))
    loss, parts = consistency_loss(h, h_aug, e, e_aug)
    assert loss.item() == 0.0 and parts["visual"].item() == 0.0 and parts["textual"].item() == 0.0


def test_loss_positive_and_gradients_reach_both_views_and_parameters():
    adapter, embed, (h, h_aug, e, e_aug) = _views(IDRConfig(p_flip=1.0, token_dropout=0.3, synonym_prob=0.5))
    h.retain_grad()
    h_aug.retain_grad()
    loss, parts = consistency_loss(h, h_aug, e, e_aug)
    assert parts["visual"] > 0 and parts["textual"] > 0
    assert torch.isclose(parts["imc"], parts["visual"] + parts["textual"])
    loss.backward()
    assert h.grad.abs().sum() > 0 and h_aug.grad.abs().sum() > 0
    assert torch.allclose(h.grad, -h_aug.grad)
    assert adapter.proj.weight.grad.abs().sum() > 0 and embed.weight.grad.abs().sum() > 0


def test_stop_grad_clean():
    h = torch.randn(2, 1, 3, 4, requires_grad=True)
    h_aug = torch.randn(2, 1, 3, 4, requires_grad=True)
    loss, _ = consistency_loss(h, h_aug, stop_grad_clean=True)
    loss.backward()
    assert h.grad is None and h_aug.grad.abs().sum() > 0


def test_relative_normalisation_is_scale_free_and_reductions():
    g = _gen(0)
    h = torch.randn(2, 1, 3, 4, generator=g)
    h_aug = h + 0.1 * torch.randn(2, 1, 3, 4, generator=g)
    raw, _ = consistency_loss(h, h_aug)
    raw10, _ = consistency_loss(10 * h, 10 * h_aug)
    assert torch.isclose(raw10, 100 * raw)
    rel, _ = consistency_loss(h, h_aug, normalise="relative")
    rel10, _ = consistency_loss(10 * h, 10 * h_aug, normalise="relative")
    assert torch.isclose(rel, rel10, rtol=1e-5)
    assert torch.isclose(rel, raw / h.pow(2).mean(), rtol=1e-5)
    summed, _ = consistency_loss(h, h_aug, reduction="sample_sum")
    assert torch.isclose(summed, raw * 12, rtol=1e-5)       # 12 elements per sample
    assert torch.isclose(consistency_loss(h, h_aug, normalise="relative", reduction="sample_sum")[0], rel)


def test_loss_terms_optional_and_errors():
    e, e_aug = torch.randn(3, 5), torch.randn(3, 5)
    loss, parts = consistency_loss(None, None, e, e_aug)
    assert parts["visual"] == 0 and torch.isclose(loss, (e - e_aug).pow(2).mean())
    with pytest.raises(ValueError, match="both views"):
        consistency_loss(torch.ones(2, 3), None)
    with pytest.raises(ValueError, match="no term"):
        consistency_loss(None, None)
    with pytest.raises(ValueError, match="shape"):
        consistency_loss(torch.ones(2, 3), torch.ones(2, 4))
    with pytest.raises(ConfigError, match="normalise"):
        consistency_loss(e, e_aug, normalise="l1")


def test_idr_config_validation():
    cfg = IDRConfig()
    assert cfg.alpha == 2.0 and cfg.lm_on_augmented and not cfg.lm_on_clean
    assert IDRConfig(lm_view="both").lm_on_clean
    for bad in (dict(alpha=-1), dict(jitter_brightness=1.0), dict(jitter_hue=0.6), dict(p_flip=1.5),
                dict(token_dropout=1.0), dict(synonym_prob=-0.1), dict(lm_view="x"),
                dict(normalise="l2"), dict(reduction="sum"), dict(synonym_source="web")):
        with pytest.raises(ConfigError, match=next(iter(bad))):
            IDRConfig(**bad)
