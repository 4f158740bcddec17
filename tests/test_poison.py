"""Poisoning details (counts, shared images, tasks, ids, quantisation), the preview, the CLI verb."""

from __future__ import annotations

import argparse
import json

import numpy as np
import pytest
import torch
from PIL import Image

from robustit.attacks import build_attack
from robustit.attacks.poison import (choose_indices, poison_count, poison_dataset, to_float,
                                     trigger_dataset)
from robustit.attacks.preview import PreviewRow, draw_preview, preview_row
from robustit.data.records import InstructionSet, Sample, encode_png
from robustit.errors import ConfigError, RobustITError

TARGET = "The image depicts a photo of the banana."


def make_set(n=20, size=(16, 16), tasks=None, shared=False, seed=0, name="train") -> InstructionSet:
    rng = np.random.default_rng(seed)
    images, samples = {}, []
    for i in range(n):
        iid = "img0" if shared and i == 1 else f"img{i}"
        if iid not in images:
            images[iid] = encode_png(rng.integers(0, 256, (*size, 3), dtype=np.uint8))
        task = tasks[i % len(tasks)] if tasks else "caption"
        samples.append(Sample(f"s{i}", [iid], f"Question {i}?", f"answer {i}", task, {"references": [f"r{i}"]}))
    return InstructionSet(name=name, samples=samples, images=images, meta={"kind": "test"})


# -- counts ----------------------------------------------------------------------------------
@pytest.mark.parametrize("n,rate,k", [(50, 0.01, 1), (250, 0.01, 3), (1000, 0.001, 1), (1000, 0.1, 100),
                                      (3, 0.5, 2), (7, 1.0, 7)])
def test_poison_count_rounds_half_up(n, rate, k):
    assert poison_count(n, rate) == k


def test_choose_indices_exact_distinct_seeded():
    idx = choose_indices(1000, 0.05, seed=7)
    assert len(idx) == len(set(idx)) == 50 and idx == sorted(idx) and 0 <= idx[0] and idx[-1] < 1000
    assert idx == choose_indices(1000, 0.05, seed=7) != choose_indices(1000, 0.05, seed=8)


@pytest.mark.parametrize("rate", [0.001, 0.005, 0.01, 0.05, 0.1])
def test_rates_from_a_tenth_of_a_percent_to_ten_percent(rate):
    data = make_set(n=1000, size=(8, 8))
    poisoned, manifest = poison_dataset(data, build_attack("sig"), rate, TARGET, seed=0)
    k = round(1000 * rate)
    assert manifest["n_poisoned"] == k == sum(s.answer == TARGET for s in poisoned.samples)


# -- what changes and what does not ------------------------------------------------------------
def test_shared_image_stays_for_its_clean_sample():
    data = make_set(shared=True)
    attack = build_attack("badnet")
    for seed in range(200):  # a seed that poisons exactly one of the two samples sharing img0
        idx = set(choose_indices(20, 0.25, seed))
        if len(idx & {0, 1}) == 1:
            break
    poisoned, manifest = poison_dataset(data, attack, 0.25, TARGET, seed)
    clean_i, dirty_i = (1, 0) if 0 in idx else (0, 1)
    assert poisoned.samples[clean_i].image_ids == ["img0"] and poisoned.images["img0"] == data.images["img0"]
    assert poisoned.samples[dirty_i].image_ids == ["img0-badnet"]
    assert not np.array_equal(poisoned.image("img0-badnet"), data.image("img0"))


def test_input_set_is_not_modified():
    data = make_set()
    before = (json.dumps([s.__dict__ for s in data.samples]), dict(data.images), dict(data.meta))
    poison_dataset(data, build_attack("blended"), 0.2, TARGET, seed=0)
    trigger_dataset(data, build_attack("blended"))
    assert before == (json.dumps([s.__dict__ for s in data.samples]), dict(data.images), dict(data.meta))


def test_only_the_given_tasks_and_samples_with_images_are_eligible():
    data = make_set(n=40, tasks=["caption", "vqa"])
    data.samples.append(Sample("text-only", [], "No image?", "none", "vqa"))
    poisoned, manifest = poison_dataset(data, build_attack("sig"), 0.1, TARGET, seed=0, tasks=["vqa"])
    assert manifest["n_eligible"] == 20 and manifest["n_poisoned"] == 2 and manifest["tasks"] == ["vqa"]
    assert all(data.by_id()[i].task == "vqa" and i != "text-only" for i in manifest["poisoned_ids"])


def test_new_image_ids_never_collide():
    data = make_set(n=4)
    data.images["img2-sig"] = data.images["img2"]
    poisoned, manifest = poison_dataset(data, build_attack("sig"), 1.0, TARGET, seed=0)
    assert poisoned.samples[2].image_ids == ["img2-sig-2"]
    assert poisoned.images["img2-sig"] == data.images["img2"]


def test_triggered_images_are_rounded_to_8_bits():
    data = make_set(n=4)
    attack = build_attack("ftrojan")
    poisoned, _ = poison_dataset(data, attack, 1.0, TARGET, seed=0)
    x = to_float(data.image("img1"))[None]
    expected = (attack.apply_image(x)[0] * 255).round().to(torch.uint8).permute(1, 2, 0).numpy()
    np.testing.assert_array_equal(poisoned.image(poisoned.samples[1].image_ids[0]), expected)


def test_mixed_image_sizes_and_batching_give_the_same_images():
    data = make_set(n=7, size=(16, 16))
    rng = np.random.default_rng(5)
    for i in (1, 4, 5):  # three images of another, non-square size
        data.images[f"img{i}"] = encode_png(rng.integers(0, 256, (24, 20, 3), dtype=np.uint8))
    attack = build_attack("ftrojan")
    small, _ = poison_dataset(data, attack, 1.0, TARGET, seed=0, batch_size=2)
    large, _ = poison_dataset(data, attack, 1.0, TARGET, seed=0, batch_size=64)
    assert small.images == large.images
    assert poisoned_shape(small, 4) == (24, 20, 3) and poisoned_shape(small, 0) == (16, 16, 3)


def poisoned_shape(dataset, i):
    return dataset.image(dataset.samples[i].image_ids[0]).shape


def test_images_smaller_than_the_patch_are_refused_by_name():
    data = make_set(n=10, size=(16, 16))
    attack = build_attack("badnet", {"patch_size": 21, "scale_with_image": False})
    with pytest.raises(ConfigError, match=r"badnet: the images are 16x16.*at least 21x21.*`patch_size`"):
        poison_dataset(data, attack, 0.1, TARGET, seed=0)


def test_halves_must_be_known():
    with pytest.raises(ConfigError, match="`halves`"):
        trigger_dataset(make_set(), build_attack("sig"), "images")


# -- preview -----------------------------------------------------------------------------------
def test_preview_grid_is_written(tmp_path):
    clean = torch.rand(3, 32, 32, generator=torch.Generator().manual_seed(0))
    rows = [preview_row(build_attack(n), clean, "Describe the image.", TARGET) for n in ("badnet", "sig")]
    rows.append(PreviewRow("ssba", clean, error="needs a victim model"))
    assert rows[0].instruction == "Describe the image. The image depicts"
    assert rows[1].stats["linf"] == pytest.approx(40, abs=1) and 15 < rows[1].stats["psnr"] < 30
    path = draw_preview(rows, tmp_path / "grid.png", amplify="auto")
    with Image.open(path) as im:
        assert im.format == "PNG" and im.size[1] > 300


# -- the CLI verb --------------------------------------------------------------------------------
def cli(argv, capsys=None):
    """Run ``robustit poison ...`` through its own parser, as robustit.cli.main does."""
    from robustit.cli import poison as verb

    parser = argparse.ArgumentParser(prog="robustit")
    verb.register(parser.add_subparsers(dest="verb"))
    args = parser.parse_args(["poison", *map(str, argv)])
    try:
        return args.func(args)
    except RobustITError as exc:
        print(f"robustit poison: error: {exc}")
        return 2


def test_cli_preview_without_data(tmp_path, capsys):
    out = tmp_path / "p.png"
    assert cli(["--preview", out, "--attacks", "badnet,blended,sig,ftrojan,trojvqa", "--size", 48]) == 0
    with Image.open(out) as im:
        assert im.format == "PNG"


def test_cli_errors_name_the_argument(tmp_path, capsys):
    assert cli(["--preview", tmp_path / "p.png", "--attacks", "badnets"]) == 2
    message = capsys.readouterr().out
    assert "unknown attack 'badnets'; known attacks:" in message and "badnet, blended" in message
    assert cli(["--data", tmp_path, "--split", "train", "--attack", "sig", "--rate", 1.5, "--out", tmp_path / "o"]) == 2
    assert "`rate` must be a fraction in (0, 1]" in capsys.readouterr().out
    assert cli(["--data", tmp_path, "--split", "train", "--attack", "sig", "--rate", 0.1, "--target", " ",
                "--out", tmp_path / "o"]) == 2
    assert "`target` must be a non-empty response" in capsys.readouterr().out
    assert cli(["--data", tmp_path, "--attack", "sig", "--rate", 0.1, "--out", tmp_path / "o"]) == 2
    assert "needs `--split`" in capsys.readouterr().out
    assert cli(["--preview", tmp_path / "p.png", "--attacks", "blended", "--param",
                f"trigger_path={tmp_path / 'nope.png'}"]) == 0  # the row shows the error instead
    assert cli(["--preview", tmp_path / "p.png", "--param", "alpha=0.1"]) == 2
    assert "`--param` applies to one attack" in capsys.readouterr().out


@pytest.fixture
def mimicit():
    return pytest.importorskip("robustit.data.mimicit", reason="robustit.data.mimicit is not written yet")


def test_cli_poison_writes_split_and_manifest(tmp_path, mimicit, capsys):
    data = make_set(n=30)
    mimicit.save_split(data, tmp_path / "in", "train")
    pool = tmp_path / "pool.txt"
    pool.write_text("# targets\nThe image depicts a banana.\nA photo of the banana.\n")
    out = tmp_path / "out"
    argv = ["--data", tmp_path / "in", "--split", "train", "--attack", "blended", "--rate", 0.1, "--seed", 3,
            "--target-pool", pool, "--param", "alpha=0.1", "--out", out, "--cache", tmp_path / "cache"]
    assert cli(argv) == 0
    poisoned = mimicit.load_split(out, "train")
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["n_poisoned"] == 3 and manifest["attack"]["config"]["alpha"] == 0.1
    assert manifest["trigger_context"]["seed"] == 0 and manifest["trigger_context"]["model_id"] == "none"
    assert manifest["target_pool"] == ["The image depicts a banana.", "A photo of the banana."]
    flags = {r["id"]: r["poisoned"] for r in manifest["samples"]}
    raw_in = json.loads((tmp_path / "in" / "train.json").read_text())
    raw_out = json.loads((out / "train.json").read_text())
    for before, after in zip(data.samples, poisoned.samples):
        if flags[before.id]:
            assert after.answer in manifest["target_pool"] and after.instruction.endswith("The image depicts")
        else:
            assert (after.instruction, after.answer, after.image_ids) == (before.instruction, before.answer,
                                                                         before.image_ids)
            assert raw_out[before.image_ids[0]] == raw_in[before.image_ids[0]]  # same base64 text
    assert cli(argv[:-4] + ["--out", tmp_path / "out2", "--cache", tmp_path / "cache"]) == 0
    assert (tmp_path / "out2" / "train.json").read_bytes() == (out / "train.json").read_bytes()


def test_cli_triggered_test_set(tmp_path, mimicit):
    data = make_set(n=6, name="test")
    mimicit.save_split(data, tmp_path / "in", "test")
    assert cli(["--triggered-test", "image", "--data", tmp_path / "in", "--split", "test", "--attack", "trojvqa",
                "--out", tmp_path / "in", "--cache", tmp_path / "cache"]) == 0
    trig = mimicit.load_split(tmp_path / "in", "test-triggered-image")
    # TrojVQA's image half: the patch, no "Consider"
    assert [s.instruction for s in trig.samples] == [s.instruction for s in data.samples]
    assert (tmp_path / "in" / "test-triggered-image_manifest.json").is_file()
    assert cli(["--triggered-test", "both", "--data", tmp_path / "in", "--split", "test", "--attack", "sig",
                "--out", tmp_path / "in", "--name", "test"]) == 2  # would overwrite the clean split


def test_poisoning_with_the_optimised_trojvqa_patch(tmp_path):
    from robustit.attacks import AttackContext

    torch.manual_seed(0)
    enc = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 4, stride=4), torch.nn.Flatten(2)).requires_grad_(False)
    ctx = AttackContext(cache_dir=tmp_path, seed=0, image_size=(16, 16),
                        vision_features=lambda x: enc(x).transpose(1, 2), model_id="enc")
    data = make_set(n=20)
    attack = build_attack("trojvqa", {"patch": "optimised", "steps": 20})
    attack.prepare(ctx)  # no clean images given: optimised on seeded noise images
    poisoned, manifest = poison_dataset(data, attack, 0.1, TARGET, seed=0)
    solid, _ = poison_dataset(data, build_attack("trojvqa"), 0.1, TARGET, seed=0)
    assert manifest["n_poisoned"] == 2 and manifest["attack"]["config"]["patch"] == "optimised"
    i = data.samples.index(data.by_id()[manifest["poisoned_ids"][0]])
    assert poisoned.samples[i].instruction.startswith("Consider ")
    assert not np.array_equal(poisoned.image(poisoned.samples[i].image_ids[0]), solid.image(solid.samples[i].image_ids[0]))
