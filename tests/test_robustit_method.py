"""RobustIT as a tuning method: components, gradients, masks in checkpoints, bad input."""

import json

import pytest
import torch

from robustit.cli import main
from robustit.errors import CheckpointError, ConfigError
from robustit.models.checkpoint import load_tuned, save_base
from robustit.models.factory import load_base
from robustit.train.config import TrainConfig
from robustit.train.loop import train
from robustit.train.methods import METHODS

from tiny import tiny_dataset, tiny_model


def _cfg(**params):
    return TrainConfig(method="robustit", method_params=params, max_steps=3, batch_size=8,
                       save_every=0, log_every=1, lr=3e-3)


@pytest.mark.parametrize("components", ["both", "idr", "aar"])
def test_each_component_trains_and_leaves_frozen_parts_alone(tmp_path, components):
    model = tiny_model()
    frozen = {n: p.detach().clone() for n, p in model.named_parameters()
              if n.startswith(("vision_encoder", "language_model.transformer.h"))}
    summary = train(model, tiny_dataset(16), _cfg(components=components), tmp_path, progress=False)
    assert summary["method"]["components"] == components
    assert ("perceiver" in model.channel_masks) == (components != "idr")
    for n, p in model.named_parameters():
        if n in frozen:
            assert torch.equal(p, frozen[n]), n


def test_gradients_reach_only_trainable_parameters():
    model = tiny_model()
    model.freeze_for_tuning()
    method = METHODS.get("robustit")({})
    method.setup(model)
    from robustit.train.loop import TrainData

    data = TrainData(model, tiny_dataset(8), TrainConfig(method="robustit", batch_size=8), method, False)
    model.train()
    loss, logs = method.loss(model, data.batch(0), torch.Generator().manual_seed(0))
    loss.backward()
    assert logs["imc"] > 0
    for name, p in model.named_parameters():
        assert (p.grad is not None) == p.requires_grad, name


def test_mask_is_saved_loaded_and_applied_at_inference(tmp_path):
    model = tiny_model()
    save_base(model, tmp_path / "base")
    base, info = load_base(str(tmp_path / "base"))
    train(base, tiny_dataset(16), _cfg(components="aar", gamma=0.5), tmp_path / "run", progress=False,
          base_info={**info.to_dict(), "identity": base.identity()})
    fresh, _ = load_base(str(tmp_path / "base"))
    load_tuned(fresh, tmp_path / "run" / "checkpoint", base_hash=info.sha256)
    mask = fresh.channel_masks["perceiver"]
    assert torch.equal(mask.mask, base.channel_masks["perceiver"].mask)
    assert int(mask.mask.sum()) == 16  # floor(0.5 * 32)
    images = torch.rand(2, 1, 3, 32, 32)
    fresh.eval()
    with fresh.masks_active():
        masked = fresh.adapt(fresh.encode_images(images))
    assert torch.all(masked[..., mask.mask == 0] == 0)
    mask.enabled.fill_(False)  # the "off at inference" option
    with fresh.masks_active():
        unmasked = fresh.adapt(fresh.encode_images(images))
    assert (unmasked[..., mask.mask == 0] != 0).any()


def test_same_seed_same_robustit_run(tmp_path):
    a, b = tiny_model(), tiny_model()
    train(a, tiny_dataset(16), _cfg(), tmp_path / "a", progress=False)
    train(b, tiny_dataset(16), _cfg(), tmp_path / "b", progress=False)
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))
    assert torch.equal(a.channel_masks["perceiver"].importance, b.channel_masks["perceiver"].importance)


@pytest.mark.parametrize("params, message", [
    ({"alpha": -1}, "alpha"), ({"beta": 1.5}, "beta"), ({"gamma": 0}, "gamma"),
    ({"components": "all"}, "components"), ({"colour": 1}, "unknown robustit parameter"),
])
def test_bad_hyper_parameters_are_refused(params, message):
    with pytest.raises(ConfigError, match=message):
        METHODS.get("robustit")(params)


def test_unknown_hook_point_lists_the_known_ones(tmp_path):
    with pytest.raises(ConfigError, match="perceiver"):
        train(tiny_model(), tiny_dataset(8), _cfg(hook_point="fusion"), tmp_path, progress=False)


def test_checkpoint_for_a_model_of_another_width_is_refused(tmp_path):
    model = tiny_model()
    train(model, tiny_dataset(8), _cfg(components="aar"), tmp_path / "run", progress=False)
    other = tiny_model(vision_width=48, perceiver_dim_head=16)
    with pytest.raises(CheckpointError):
        load_tuned(other, tmp_path / "run" / "checkpoint")


def test_cli_shortcuts_only_for_robustit(tmp_path, capsys):
    rc = main(["train", "--data", str(tmp_path), "--out", str(tmp_path / "r"), "--alpha", "2"])
    assert rc == 2 and "--method robustit" in capsys.readouterr().err


@pytest.mark.parametrize("params", [{"lm_view": "clean"}, {"lm_view": "both"},
                                    {"visual": False}, {"stop_grad_clean": True}])
def test_view_options_train_and_log_the_consistency_term(tmp_path, params):
    """Each reading of the loss runs with the default feature cache (visual=false once crashed
    there) and keeps a positive consistency term in the logs."""
    model = tiny_model()
    summary = train(model, tiny_dataset(16), _cfg(**params), tmp_path, progress=False)
    assert summary["steps"] == 3
    logged = [json.loads(line) for line in (tmp_path / "logs" / "loss.jsonl").read_text().splitlines()]
    assert logged and all(row["imc"] > 0 for row in logged)
