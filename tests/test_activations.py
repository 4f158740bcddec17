"""The activation picture (Fig. 9): per-channel means, masks off, triggered twins, CLI, plot."""

import json

import pytest
import torch

from robustit.attacks import build_attack
from robustit.attacks.poison import poison_dataset, trigger_dataset
from robustit.cli import main
from robustit.data.mimicit import save_split
from robustit.errors import ConfigError
from robustit.eval.activations import channel_activation_means, choose_samples, hook_point_means
from robustit.models.checkpoint import save_base
from robustit.models.factory import load_base
from robustit.models.masks import ChannelMask
from robustit.data.batching import ImageStore
from robustit.train.config import TrainConfig
from robustit.train.loop import train

from tiny import tiny_dataset, tiny_model


def _hand_means(model, dataset):
    """mean |perceiver output| per channel over (B, T, N), computed directly: (D,)."""
    seen = []
    handle = model.adapter.perceiver.register_forward_hook(lambda m, a, out: seen.append(out))
    try:
        images = ImageStore(dataset).batch([s.image_ids for s in dataset.samples])
        with torch.no_grad():
            model.eval()
            model.adapt(model.encode_images(images))
    finally:
        handle.remove()
    return seen[0].abs().mean(dim=(0, 1, 2))


def _masked_model():
    """A tiny model whose perceiver mask zeroes the even channels (enabled, in train mode)."""
    model = tiny_model()
    width = model.hook_point_width("perceiver")
    mask = model.add_channel_mask("perceiver", ChannelMask(width, gamma=0.5))
    mask.set_mask(torch.arange(width) % 2 == 1)
    return model.train(), mask


def test_means_equal_a_hand_computation_with_the_masks_off():
    model, mask = _masked_model()
    data = tiny_dataset(10)
    res = channel_activation_means(model, data, "perceiver", n=6, batch_size=4, seed=1)
    assert model.training and int(mask.steps) == 0  # mode restored, statistics untouched
    want = _hand_means(model, choose_samples(data, 6, 1))
    assert res["n"] == 6 and len(res["ids"]) == 6
    assert len(res["channel_mean"]) == res["width"] == model.hook_point_width("perceiver")
    assert torch.allclose(torch.tensor(res["channel_mean"]), want, rtol=1e-5, atol=1e-7)
    zeroed = [d for d in range(res["width"]) if d % 2 == 0]
    assert all(res["channel_mean"][d] > 0 for d in zeroed)  # raw statistics: the mask did not act
    assert res["mask"] == [d % 2 for d in range(res["width"])]
    assert res["channel_mean_triggered"] is None
    assert not model.adapter.perceiver._forward_hooks  # the hook was removed


def test_the_choice_of_samples_is_seeded_and_capped_at_the_split():
    data = tiny_dataset(10)
    assert [s.id for s in choose_samples(data, 4, 3).samples] == [s.id for s in choose_samples(data, 4, 3).samples]
    assert [s.id for s in choose_samples(data, 4, 3).samples] != [s.id for s in choose_samples(data, 4, 4).samples]
    assert len(choose_samples(data, 50, 0)) == 10


def test_triggered_twins_come_from_the_attack():
    model, data, attack = tiny_model(), tiny_dataset(8), build_attack("badnet")
    res = channel_activation_means(model, data, "vision", n=5, batch_size=3, seed=0, attack=attack)
    twin = trigger_dataset(choose_samples(data, 5, 0), attack)
    want = hook_point_means(model, twin, "vision", batch_size=5)
    assert torch.allclose(torch.tensor(res["channel_mean_triggered"]), want, rtol=1e-5, atol=1e-7)
    assert res["channel_mean_triggered"] != res["channel_mean"]
    assert res["mask"] is None


def test_unknown_hook_point_lists_the_known_ones():
    with pytest.raises(ConfigError, match="perceiver.*vision"):
        channel_activation_means(tiny_model(), tiny_dataset(4), "fusion", n=2)


@pytest.fixture
def runs(tmp_path):
    """A base, a clean (vanilla) run, an AAR run, a data root and a badnet manifest."""
    save_base(tiny_model(), tmp_path / "base")
    for name, method, params in (("clean", "vanilla", {}), ("aar", "robustit", {"components": "aar"})):
        base, info = load_base(str(tmp_path / "base"))
        cfg = TrainConfig(method=method, method_params=params, max_steps=2, batch_size=8, save_every=0)
        train(base, tiny_dataset(16), cfg, tmp_path / name, progress=False,
              base_info={**info.to_dict(), "identity": base.identity()})
    save_split(tiny_dataset(8, name="test-a"), tmp_path / "data" / "test-a", "test-a")
    save_split(tiny_dataset(8, name="train"), tmp_path / "data" / "train", "train")
    _, manifest = poison_dataset(tiny_dataset(8, name="train"), build_attack("badnet"), rate=0.25)
    (tmp_path / "manifest.json").write_text(json.dumps(manifest))
    return tmp_path


def _args(root, *extra):
    return ["activations", "--model", str(root / "base"), "--data", str(root / "data"),
            "--split", "test-a", "--n", "5", *extra]


def test_cli_writes_the_json_and_the_png(runs, capsys):
    out, png = runs / "res" / "act.json", runs / "res" / "act.png"
    rc = main(_args(runs, "--tuned", str(runs / "clean"), "--tuned", str(runs / "aar" / "checkpoint"),
                    "--label", "clean", "--label", "aar", "--manifest", str(runs / "manifest.json"),
                    "--out", str(out), "--plot", str(png)))
    assert rc == 0, capsys.readouterr().err
    data = json.loads(out.read_text())
    assert set(data) == {"hook_point", "split", "n", "runs", "provenance"}
    assert (data["hook_point"], data["split"], data["n"]) == ("perceiver", "test-a", 5)
    clean, aar = data["runs"]
    for run in data["runs"]:
        assert set(run) == {"label", "tuned", "channel_mean", "channel_mean_triggered", "mask"}
        assert len(run["channel_mean"]) == len(run["channel_mean_triggered"]) == 32
    assert (clean["label"], clean["tuned"], clean["mask"]) == ("clean", str(runs / "clean"), None)
    assert set(aar["mask"]) == {0, 1} and sum(aar["mask"]) == 16
    assert data["provenance"]["versions"]["torch"]
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize("extra, message", [
    (["--tuned", "nowhere"], "no such run folder"),
    (["--tuned", "{root}/data"], "no tuned checkpoint"),
    (["--tuned", "{root}/clean", "--label", "a", "--label", "b"], "one --label per --tuned"),
    (["--tuned", "{root}/clean", "--hook-point", "fusion"], "perceiver"),
])
def test_cli_errors_are_one_clear_line(runs, capsys, extra, message):
    extra = [e.replace("{root}", str(runs)) for e in extra]
    rc = main(_args(runs, *extra, "--out", str(runs / "x.json")))
    err = capsys.readouterr().err
    assert rc == 2 and message in err and "Traceback" not in err
