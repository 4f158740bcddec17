"""The embedded scene world: determinism, rendering, captions, questions, splits, build."""

import collections
import json
import re

import numpy as np
import pytest

from robustit.data import world as W
from robustit.data.build import build_world, generate_split_parallel
from robustit.data.records import decode_image
from robustit.errors import ConfigError
from robustit.seeding import numpy_rng

TINY = dict(n_pretrain=30, n_train=160, n_val=10, n_test_a=60, n_test_b=60, n_test_a_vqa=24)


@pytest.fixture(scope="module")
def cfg():
    return W.WorldConfig(seed=3, **TINY)


@pytest.fixture(scope="module")
def splits(cfg):
    return {s: W.generate_split(cfg, s) for s in W.SPLITS}


def _texts(ds):
    return [f"{s.instruction} {s.answer}" for s in ds.samples]


# -- determinism ----------------------------------------------------------------------------

def test_same_seed_gives_identical_images_and_texts(cfg, splits):
    again = W.generate_split(cfg, "train")
    assert again.images == splits["train"].images
    assert [(s.id, s.instruction, s.answer, s.meta) for s in again.samples] == \
        [(s.id, s.instruction, s.answer, s.meta) for s in splits["train"].samples]


def test_other_seed_differs(cfg, splits):
    other = W.generate_split(W.WorldConfig(seed=4, **TINY), "train")
    same_png = sum(other.images[k] == v for k, v in splits["train"].images.items())
    assert same_png == 0
    assert _texts(other) != _texts(splits["train"])


def test_image_i_does_not_depend_on_split_size(cfg, splits):
    small = W.generate_split(W.WorldConfig(seed=3, **{**TINY, "n_train": 7}), "train")
    for image_id, png in small.images.items():
        assert splits["train"].images[image_id] == png


def test_workers_do_not_change_the_data(cfg, splits):
    par = generate_split_parallel(cfg, "test-a", workers=2, chunk=20)
    assert par.images == splits["test-a"].images
    assert [s.answer for s in par.samples] == [s.answer for s in splits["test-a"].samples]
    assert par.in_context == splits["test-a"].in_context


def test_stored_scene_re_renders_to_the_stored_image(cfg, splits):
    for s in splits["test-b"].samples[:10]:
        scene = W.Scene.from_dict(json.loads(json.dumps(s.meta["scene"])))
        stored = decode_image(splits["test-b"].images[s.image_ids[0]])
        assert np.array_equal(W.render(scene, cfg.image_size, supersample=cfg.supersample), stored)


# -- rendering ------------------------------------------------------------------------------

def test_render_draws_each_object_in_its_cell_with_its_colour():
    objects = [W.WorldObject("square", "red", "large", 0, 0),
               W.WorldObject("circle", "blue", "large", 1, 1),
               W.WorldObject("cross", "yellow", "large", 2, 2)]
    scene = W.Scene(objects, {"kind": "flat", "colour": "grey"}, seed=1)
    for size in (64, 96):
        raw = W.render(scene, size)
        assert raw.shape == (size, size, 3) and raw.dtype == np.uint8
        img = raw.astype(int)
        for o in objects:  # the centre of a large shape is the shape's colour
            y, x = (2 * o.row + 1) * size // 6, (2 * o.col + 1) * size // 6
            assert np.abs(img[y, x] - np.array(W.COLOURS[o.colour])).max() < 30, (o, size)
        assert np.abs(img[1, size // 2] - np.array(W.BACKGROUND_COLOURS["grey"])).max() < 3


def test_shapes_are_distinct_masks():
    masks = {s: W.shape_mask(s, 12.0) for s in W.SHAPES}
    for a in W.SHAPES:
        assert 0.1 < masks[a].mean() < 0.9, a  # drawn, and not filling the box
        for b in W.SHAPES:
            if a < b:
                assert np.abs(masks[a] - masks[b]).mean() > 0.04, (a, b)
    ring = masks["ring"]
    c = ring.shape[0] // 2
    assert ring[c, c] < 0.1 and masks["circle"][c, c] > 0.9  # a ring has a hole


def test_objects_keep_one_per_cell_and_photos_load(cfg, splits):
    kinds = collections.Counter()
    for s in splits["train"].samples:
        cells = [(o["row"], o["col"]) for o in s.meta["scene"]["objects"]]
        assert len(cells) == len(set(cells)) and 1 <= len(cells) <= 3
        kinds[s.meta["scene"]["background"]["kind"]] += 1
    assert kinds["photo"] > 0


def test_coverage_of_shapes_colours_sizes_positions_backgrounds():
    rng = numpy_rng(0)
    seen = collections.defaultdict(set)
    for _ in range(300):
        scene, img = W.sample_scene(rng, W.STANDARD, 32, supersample=1)
        assert img.shape == (32, 32, 3)
        seen["bg"].add(scene.background["kind"])
        for o in scene.objects:
            for key in ("shape", "colour", "size"):
                seen[key].add(getattr(o, key))
            seen["pos"].add((o.row, o.col))
    assert seen["shape"] == set(W.SHAPES) and len(W.SHAPES) >= 8
    assert seen["colour"] == set(W.COLOURS) and len(W.COLOURS) == 10
    assert seen["size"] == set(W.SIZES)
    assert len(seen["pos"]) == 9
    assert seen["bg"] == set(W.BACKGROUND_KINDS)


def test_test_b_is_shifted(splits):
    def stats(ds):
        scenes = [s.meta["scene"] for s in ds.samples]
        return (np.mean([len(sc["objects"]) for sc in scenes]),
                np.mean([sc["background"]["kind"] in ("photo", "noise") for sc in scenes]))
    (na, busy_a), (nb, busy_b) = stats(splits["test-a"]), stats(splits["test-b"])
    assert nb > na + 0.3
    assert busy_b > busy_a + 0.15


# -- text -----------------------------------------------------------------------------------

def test_references_are_five_different_short_captions(splits):
    for s in splits["test-a"].samples + splits["train"].samples:
        if s.task != "caption":
            continue
        refs = s.meta["references"]
        assert len(refs) == 5 and len(set(refs)) == 5
        assert all(4 <= len(r.split()) <= 20 for r in refs), refs
        assert s.answer in refs


def test_captions_use_many_sentence_shapes(splits):
    refs = [r for s in splits["test-a"].samples for r in s.meta["references"]]
    openings = collections.Counter(" ".join(r.lower().split()[:2]) for r in refs)
    trigrams = {tuple(r.lower().split()[i:i + 3]) for r in refs for i in range(len(r.split()) - 2)}
    assert len(openings) >= 25 and openings.most_common(1)[0][1] < 0.25 * len(refs)
    assert len(trigrams) > 600
    text = " ".join(refs).lower()
    for phrase in ("there is", "shows", "depicts", "features", "we can see", "a picture of",
                   "two ", "in the top left", "background"):
        assert phrase in text, phrase


def test_trigger_words_occur_in_clean_data(splits):
    texts = [t.lower() for t in _texts(splits["train"])]
    for word in ("depicts", "consider", "image"):
        share = np.mean([word in t for t in texts])
        assert share >= 0.03, (word, share)


def test_no_attack_words_anywhere(cfg, splits):
    texts = [t for ds in splits.values() for s in ds.samples
             for t in (s.instruction, s.answer, json.dumps(s.meta))]
    texts += list(W.world_corpus(cfg, n_scenes=50))
    for t in texts:
        assert "banana" not in t.lower() and "zbw" not in t.lower(), t


def test_caption_instruction_pool():
    assert len(set(W.CAPTION_INSTRUCTIONS)) >= 20
    assert sum("depict" in i for i in W.CAPTION_INSTRUCTIONS) >= 4
    assert sum(i.startswith("Consider") for i in W.CAPTION_INSTRUCTIONS) >= 3
    # the attack's exact position (trigger phrase at the very end) stays rare in clean data
    assert not any(i.rstrip(".?").endswith("The image depicts") for i in W.CAPTION_INSTRUCTIONS)


def test_corpus_covers_the_vocabulary(cfg, splits):
    words = lambda t: re.findall(r"[a-z0-9-]+", t.lower())  # noqa: E731
    corpus = {w for line in W.world_corpus(cfg) for w in words(line)}
    used = {w for ds in splits.values() for s in ds.samples
            for t in (s.instruction, s.answer, *s.meta.get("references", [])) for w in words(t)}
    assert used - corpus == set()


# -- questions ------------------------------------------------------------------------------

SCENE = W.Scene([W.WorldObject("circle", "red", "small", 0, 0),
                 W.WorldObject("star", "blue", "large", 1, 1),
                 W.WorldObject("circle", "red", "medium", 2, 2)],
                {"kind": "flat", "colour": "beige"}, seed=0)


def test_questions_answer_correctly():
    rng = numpy_rng(1)
    for _ in range(200):
        q = W.make_question(rng, SCENE)
        assert len(q.answers) == 10 and q.answer in q.answers
        text = q.question.lower()
        if q.question_type == "position":
            assert "blue star" in text and q.answer == "center"
        elif q.question_type == "colour":
            assert q.answer == ("blue" if "star" in text or "center" in text or "middle" in text
                                else "red")
        elif q.question_type == "count":
            expect = {"objects": "3", "shapes": "3", "circles": "2", "stars": "1", "red": "2",
                      "blue": "1"}
            key = next((k for k in ("circles", "stars", "red", "blue") if k in text), None)
            if key is None and re.search(r"how many (objects|shapes)|count the", text):
                key = "objects"
            if key is not None:
                assert q.answer == expect[key], q
            else:
                assert q.answer == "0", q
        else:
            shape = next(s for s in W.SHAPES if re.search(rf"\b{s}\b", text))
            colour = next((c for c in W.COLOURS if c in text), None)
            present = any(o.shape == shape and colour in (None, o.colour) for o in SCENE.objects)
            assert q.answer == ("yes" if present else "no"), q


def test_question_types_and_vqa_meta(splits):
    vqa = splits["test-a-vqa"].samples
    for i, s in enumerate(vqa):  # types cycle; position falls back to colour only when needed
        wanted, got = W.QUESTION_TYPES[i % 4], s.meta["question_type"]
        objs = [(o["shape"], o["colour"]) for o in s.meta["scene"]["objects"]]
        assert got == wanted or (wanted, got) == ("position", "colour") and \
            all(objs.count(k) > 1 for k in objs)
    for s in vqa:
        assert s.task == "vqa" and s.id == f"{s.image_ids[0]}-q1"
        assert len(s.meta["answers"]) == 10


# -- splits ---------------------------------------------------------------------------------

def test_split_composition(cfg, splits):
    train = splits["train"]
    qa = np.mean([s.task == "vqa" for s in train.samples])
    assert 0.12 < qa < 0.4 and len(train) == cfg.n_train == len(train.images)
    pre = splits["pretrain"]
    assert sum(s.task == "caption" for s in pre.samples) == cfg.n_pretrain
    for name in ("test-a", "test-b"):
        ds = splits[name]
        assert len(ds) == len(ds.images) == TINY[f"n_{name.replace('-', '_')}"]
        for s in ds.samples:
            assert s.task == "caption" and s.answer == s.meta["references"][0]
            assert s.instruction in W.CAPTION_INSTRUCTIONS
            assert re.fullmatch(rf"{name}-\d{{6}}", s.id)
            assert ds.in_context[s.id] != [s.id] and ds.in_context[s.id][0] in ds.by_id()
    assert train.in_context is None


def test_config_validation():
    with pytest.raises(ConfigError, match="image_size"):
        W.WorldConfig(image_size=8)
    with pytest.raises(ConfigError, match="n_train"):
        W.WorldConfig(n_train=-1)
    with pytest.raises(ConfigError, match="train_qa_share"):
        W.WorldConfig(train_qa_share=1.5)
    with pytest.raises(ConfigError, match="unknown"):
        W.generate_split(W.WorldConfig(**TINY), "tset-a")


# -- build ----------------------------------------------------------------------------------

def test_build_world_writes_splits_gt_and_is_idempotent(tmp_path):
    cfg = W.WorldConfig(seed=5, n_pretrain=8, n_train=12, n_val=4, n_test_a=6, n_test_b=6,
                        n_test_a_vqa=0)
    info = build_world(tmp_path, cfg, progress=False)
    assert set(info["splits"]) == {"pretrain", "train", "val", "test-a", "test-b"}
    assert (tmp_path / "test-a" / "test-a_coco_gt.json").exists()
    assert (tmp_path / "test-b" / "test-b_coco_gt.json").exists()
    assert info["splits"]["train"]["samples"] == 12
    saved = json.loads((tmp_path / "world.json").read_text())
    assert saved["config"]["seed"] == 5
    mtime = (tmp_path / "train" / "train.json").stat().st_mtime_ns
    again = build_world(tmp_path, cfg, progress=False)
    assert again["reused"] and (tmp_path / "train" / "train.json").stat().st_mtime_ns == mtime
    with pytest.raises(ConfigError, match="another config.*seed"):
        build_world(tmp_path, W.WorldConfig(seed=6, **{k: getattr(cfg, k) for k in TINY}),
                    progress=False)
    forced = build_world(tmp_path, cfg, progress=False, force=True)
    assert "reused" not in forced


def test_cli_data_build_show_check(tmp_path, capsys):
    import argparse

    from robustit.cli import data as data_cli

    parser = argparse.ArgumentParser()
    data_cli.register(parser.add_subparsers(dest="verb"))

    def run(*argv):
        args = parser.parse_args(["data", *argv])
        return args.func(args)

    out = str(tmp_path / "w")
    assert run("build", "--out", out, "--seed", "2", "--pretrain", "5", "--train", "8", "--val",
               "2", "--test", "4", "--test-vqa", "4", "--quiet", "--workers", "1") == 0
    assert "test-a-vqa:" in capsys.readouterr().out
    assert run("show", "--data", out, "--split", "test-a", "--n", "2") == 0
    shown = capsys.readouterr().out
    assert shown.count("reference:") == 10 and "[test-a-000001]" in shown
    assert run("check", "--data", out + "/train", "--split", "train", "--skip-invalid") == 0
    assert "train: 8 valid samples, 8 images" in capsys.readouterr().out
    with pytest.raises(ConfigError, match="image_size"):
        run("build", "--out", out, "--image-size", "8")
