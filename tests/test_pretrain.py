"""Pretraining: the whole model trains, the optional scene head, exact resume, the base folder."""

import json

import pytest
import torch

from robustit.errors import ConfigError
from robustit.models.factory import load_base
from robustit.train.config import TrainConfig
from robustit.train.loop import train
from robustit.train.methods import METHODS, Pretrain
from robustit.train.pretrain import pretrain
from robustit.train.scene_supervision import SceneHead, attribute_vocabulary, scene_attributes

from tiny import tiny_dataset, tiny_model

SCENE = {"objects": [{"shape": "star", "colour": "red", "size": "small", "row": 0, "col": 2}],
         "background": {"kind": "flat"}, "seed": 1}


def _with_scenes(n=16):
    data = tiny_dataset(n)
    for s in data.samples[::2]:
        s.meta["scene"] = SCENE
    return data


def test_scene_attributes_are_in_the_vocabulary():
    attrs = scene_attributes(SCENE)
    assert set(attrs) <= set(attribute_vocabulary())
    assert {"colour:red", "shape:star", "object:red-star", "cell02:red", "count:1"} <= set(attrs)


def test_scene_head_ignores_samples_without_a_scene():
    head = SceneHead(8)
    targets = head.targets([{"scene": SCENE}, {}])
    assert targets[0].sum() == len(scene_attributes(SCENE)) and (targets[1] == -1).all()
    assert head.targets([{}, {}]) is None


def test_latents_pooling_sees_which_latent_holds_what_and_mean_pooling_does_not():
    torch.manual_seed(0)
    out = torch.randn(2, 1, 4, 8)  # (B, T, N, D)
    swapped = out[:, :, torch.tensor([1, 0, 2, 3])]
    mean, latents = SceneHead(8), SceneHead(8, pool="latents", num_latents=4)
    assert latents.linear.in_features == 32 and mean.linear.in_features == 8
    assert torch.allclose(mean.features(out), mean.features(swapped))
    assert not torch.allclose(latents.features(out), latents.features(swapped))
    metas = [{"scene": SCENE}, {"scene": SCENE}]
    assert latents.loss(out, metas).item() != pytest.approx(latents.loss(swapped, metas).item())


def test_pretrain_with_latents_scene_head_builds_it_from_the_model(tmp_path):
    cfg = TrainConfig(method="pretrain", max_steps=2, batch_size=8, save_every=0, log_every=1,
                      max_len=48, method_params={"scene_loss_weight": 1.0, "scene_pool": "latents"})
    model = tiny_model()
    train(model, _with_scenes(), cfg, tmp_path / "run", progress=False)
    log = [json.loads(line) for line in (tmp_path / "run" / "logs" / "loss.jsonl").read_text().splitlines()]
    assert all("scene_loss" in row for row in log)
    method = Pretrain(cfg.method_params)
    method.setup(model)
    width = model.hook_point_width(model.spec.default_hook_point)
    assert method.head.linear.in_features == model.config.num_latents * width


def test_pretrain_with_scene_loss_trains_everything_and_resumes_exactly(tmp_path):
    cfg = TrainConfig(method="pretrain", method_params={"scene_loss_weight": 1.0}, max_steps=4,
                      batch_size=8, save_every=2, log_every=1, lr=3e-3, max_len=48)
    data = _with_scenes()
    straight = tiny_model()
    train(straight, data, cfg, tmp_path / "a", progress=False)
    log = [json.loads(line) for line in (tmp_path / "a" / "logs" / "loss.jsonl").read_text().splitlines()]
    assert all("scene_loss" in row for row in log)
    assert not (tmp_path / "a" / "checkpoint").exists()  # pretraining writes a base folder instead

    calls = {"n": 0}
    original = Pretrain.loss

    def crashing(self, model, batch, gen):
        calls["n"] += 1
        if calls["n"] == 4:
            raise KeyboardInterrupt
        return original(self, model, batch, gen)

    Pretrain.loss = crashing
    try:
        with pytest.raises(KeyboardInterrupt):
            train(tiny_model(), data, cfg, tmp_path / "b", progress=False)  # killed after step 3
    finally:
        Pretrain.loss = original
    resumed = tiny_model()
    summary = train(resumed, data, cfg, tmp_path / "b", progress=False)
    assert summary["resumed_from_step"] == 2
    for (n, p), (_, q) in zip(straight.named_parameters(), resumed.named_parameters()):
        assert torch.equal(p, q), n


def test_pretrain_rejects_unknown_or_negative_parameters():
    with pytest.raises(ConfigError, match="scene_loss_weight"):
        Pretrain({"scene_weight": 1})
    with pytest.raises(ConfigError, match="scene_loss_weight"):
        METHODS.get("pretrain")({"scene_loss_weight": -1})
    with pytest.raises(ConfigError, match="scene_pool must be one of"):
        Pretrain({"scene_pool": "max"})


def test_pretrain_writes_a_loadable_base_folder(tmp_path):
    data = tiny_dataset(16, name="pretrain")
    from tiny import tiny_config

    summary = pretrain(data, [], tmp_path / "base", tmp_path / "run",
                       TrainConfig(method="pretrain", max_steps=2, batch_size=8, save_every=0, max_len=48),
                       model_cfg=tiny_config(), vocab_size=300, progress=False)
    model, info = load_base(str(tmp_path / "base"))
    meta = json.loads((tmp_path / "base" / "config.json").read_text())
    assert meta["pretraining"]["parameters"] == sum(p.numel() for p in model.parameters())
    assert summary["steps"] == 2 and len(info.sha256) == 64


def test_pretrain_cli_passes_the_scene_pool_only_when_asked():
    from robustit.cli import build_parser
    from robustit.cli.pretrain import _method_params

    parse = lambda *a: build_parser().parse_args(["pretrain", "--data", "w", "--out", "o", *a])  # noqa: E731
    assert _method_params(parse()) == {"scene_loss_weight": 0.05}  # the shipped command's config
    assert _method_params(parse("--scene-pool", "latents")) == {"scene_loss_weight": 0.05,
                                                                "scene_pool": "latents"}
    assert _method_params(parse("--scene-loss-weight", "0")) == {}
    with pytest.raises(SystemExit):
        parse("--scene-pool", "max")
