"""The tuning loop: trainable set, learning, frozen parts untouched, resume, caching."""

import json

import pytest
import torch

from robustit.data.records import InstructionSet
from robustit.errors import DataError
from robustit.train.config import TrainConfig
from robustit.train.loop import train
from robustit.train.methods import METHODS, VanillaIT

from tiny import tiny_dataset, tiny_model


def _cfg(**kw):
    base = dict(lr=3e-3, batch_size=8, epochs=2, max_len=48, save_every=0, log_every=1, seed=0)
    base.update(kw)
    return TrainConfig(**base)


def _losses(run_dir):
    return [json.loads(line)["lm_loss"] for line in (run_dir / "logs" / "loss.jsonl").read_text().splitlines()]


def test_loss_falls_and_frozen_parts_stay_bit_identical(tmp_path):
    model = tiny_model()
    frozen_before = {n: p.detach().clone() for n, p in model.named_parameters()
                     if n.startswith(("vision_encoder", "language_model.transformer.h"))}
    train(model, tiny_dataset(32), _cfg(epochs=10, lr=1e-2), tmp_path, progress=False)
    losses = _losses(tmp_path)
    assert sum(losses[-4:]) / 4 < 0.7 * sum(losses[:4]) / 4
    for n, p in model.named_parameters():
        if n in frozen_before:
            assert torch.equal(p, frozen_before[n]), n
    summary = json.loads((tmp_path / "train.json").read_text())
    assert summary["trainable_parameters"] == sum(p.numel() for p in model.parameters() if p.requires_grad)
    assert (tmp_path / "checkpoint" / "tuned.safetensors").exists()
    assert list((tmp_path / "logs").glob("events.out.tfevents.*"))


class _Crash(Exception):
    pass


def test_resume_continues_exactly_where_it_stopped(tmp_path, monkeypatch):
    data = tiny_dataset(32)
    straight = tiny_model()
    train(straight, data, _cfg(max_steps=8, save_every=4), tmp_path / "a", progress=False)

    calls = {"n": 0}
    original = VanillaIT.loss

    def crashing(self, model, batch, gen):
        calls["n"] += 1
        if calls["n"] == 6:
            raise _Crash()
        return original(self, model, batch, gen)

    monkeypatch.setattr(VanillaIT, "loss", crashing)
    with pytest.raises(_Crash):
        train(tiny_model(), data, _cfg(max_steps=8, save_every=4), tmp_path / "b", progress=False)
    assert not (tmp_path / "b" / "checkpoint").exists()  # nothing half-written
    monkeypatch.setattr(VanillaIT, "loss", original)
    resumed = tiny_model()
    summary = train(resumed, data, _cfg(max_steps=8, save_every=4), tmp_path / "b", progress=False)
    assert summary["resumed_from_step"] == 4
    for (n, a), (_, b) in zip(straight.named_parameters(), resumed.named_parameters()):
        assert torch.equal(a, b), n


def test_cached_vision_features_give_the_same_training(tmp_path):
    data = tiny_dataset(16)
    a, b = tiny_model(), tiny_model()
    train(a, data, _cfg(max_steps=3, cache_vision=True), tmp_path / "a", progress=False)
    train(b, data, _cfg(max_steps=3, cache_vision=False), tmp_path / "b", progress=False)
    for (n, p), (_, q) in zip(a.named_parameters(), b.named_parameters()):
        assert torch.allclose(p, q, atol=1e-6), n


def test_same_seed_same_run(tmp_path):
    data = tiny_dataset(16)
    a, b = tiny_model(), tiny_model()
    train(a, data, _cfg(max_steps=3), tmp_path / "a", progress=False)
    train(b, data, _cfg(max_steps=3), tmp_path / "b", progress=False)
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))


def test_empty_split_is_refused(tmp_path):
    with pytest.raises(DataError, match="empty"):
        train(tiny_model(), InstructionSet("train", [], {}), _cfg(), tmp_path, progress=False)


def test_methods_registry_knows_vanilla_and_pretrain():
    assert {"vanilla", "pretrain"} <= set(METHODS.names())
