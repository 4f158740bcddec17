"""MIMIC-IT reading/writing: round trip, real-file extras, every bad input, skipping, COCO gt."""

import base64
import io
import json
import os
import shutil

import numpy as np
import pytest
from PIL import Image

from robustit.data import mimicit
from robustit.data.records import InstructionSet, Sample, encode_png
from robustit.data.world import WorldConfig, generate_split
from robustit.errors import DataError


def _png(seed=0, size=8):
    return encode_png(np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8))


def _b64(data):
    return base64.b64encode(data).decode()


def _write(folder, name, records, images=None, meta=None):
    """Write a split by hand (as a third party would) and return the folder."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{name}_instructions.json").write_text(json.dumps({"meta": meta or {}, "data": records}))
    if images is not None:
        (folder / f"{name}.json").write_text(json.dumps(images))
    return folder


def _rec(image_ids=("img1",), **extra):
    return {"instruction": "Describe the image.", "answer": "A red circle.",
            "image_ids": list(image_ids), "rel_ins_ids": [], **extra}


@pytest.fixture(scope="module")
def world_set():
    cfg = WorldConfig(seed=1, n_test_a=12)
    return generate_split(cfg, "test-a")


# -- round trip -----------------------------------------------------------------------------

def test_save_load_save_is_byte_identical(tmp_path, world_set):
    first = mimicit.save_split(world_set, tmp_path / "a")
    assert first == tmp_path / "a" / "test-a_instructions.json"
    loaded = mimicit.load_split(tmp_path / "a", "test-a")
    assert loaded.images == world_set.images
    assert [(s.id, s.image_ids, s.instruction, s.answer, s.task, s.meta) for s in loaded.samples] == \
        [(s.id, s.image_ids, s.instruction, s.answer, s.task, s.meta) for s in world_set.samples]
    assert loaded.in_context == world_set.in_context and loaded.meta == world_set.meta
    mimicit.save_split(loaded, tmp_path / "b")
    for fname in ("test-a_instructions.json", "test-a.json", "test-a_train.json"):
        assert (tmp_path / "a" / fname).read_bytes() == (tmp_path / "b" / fname).read_bytes(), fname


def test_save_under_another_name_and_stale_in_context_removed(tmp_path, world_set):
    mimicit.save_split(world_set, tmp_path, "copy")
    assert (tmp_path / "copy_train.json").exists()
    no_ctx = InstructionSet("copy", world_set.samples, world_set.images, {}, None)
    mimicit.save_split(no_ctx, tmp_path)
    assert not (tmp_path / "copy_train.json").exists()
    assert mimicit.load_split(tmp_path, "copy").in_context is None


def test_save_refuses_broken_sets(tmp_path):
    with pytest.raises(DataError, match="no samples"):
        mimicit.save_split(InstructionSet("x", [], {}), tmp_path)
    s = Sample("r1", ["nope"], "q", "a")
    with pytest.raises(DataError, match="'r1'.*nope"):
        mimicit.save_split(InstructionSet("x", [s], {}), tmp_path)
    with pytest.raises(DataError, match="file name"):
        mimicit.save_split(InstructionSet("../evil", [s], {"nope": _png()}), tmp_path)
    assert not list(tmp_path.iterdir())


def test_real_mimicit_records_keep_extras(tmp_path):
    records = {"LA_INS_00001": {"instruction": "What is it?", "answer": "A cat.",
                                "image_ids": ["LA_IMG_1"], "rel_ins_ids": ["LA_INS_00002"],
                                "source": "coco"},
               "LA_INS_00002": {"instruction": "Where?", "answer": "Left.",
                                "image_ids": ["LA_IMG_1"], "rel_ins_ids": []}}
    folder = _write(tmp_path, "LA", records, {"LA_IMG_1": _b64(_png())}, meta={"version": "0.0.1"})
    (folder / "LA_train.json").write_text(json.dumps({"LA_INS_00001": ["LA_INS_00002"]}))
    ds = mimicit.load_split(folder, "LA")
    first = ds.samples[0]
    assert first.task == "caption" and first.meta == {"source": "coco", "rel_ins_ids": ["LA_INS_00002"]}
    assert ds.meta == {"version": "0.0.1"} and ds.in_context == {"LA_INS_00001": ["LA_INS_00002"]}
    assert ds.image("LA_IMG_1").shape == (8, 8, 3) and len(ds.images) == 1


def test_image_paths_inside_the_folder_load(tmp_path):
    (tmp_path / "imgs").mkdir()
    (tmp_path / "imgs" / "a.png").write_bytes(_png(1))
    (tmp_path / "b.jpg").write_bytes(_png(2))  # content, not the suffix, decides the format
    records = {"r1": _rec(["A"]), "r2": {**_rec([]), "image_paths": ["imgs/../b.jpg"]}}
    ds = mimicit.load_split(_write(tmp_path, "s", records, {"A": "imgs/a.png"}), "s")
    assert ds.images["A"] == _png(1)
    assert ds.samples[1].image_ids == ["imgs/../b.jpg"] and ds.images["imgs/../b.jpg"] == _png(2)


# -- bad inputs -----------------------------------------------------------------------------

def _bad_image_cases(tmp_path):
    big = io.BytesIO()
    Image.new("1", (4200, 4200)).save(big, format="PNG")  # 17.6 Mpx, a few KB on disk
    (tmp_path.parent / "outside.png").write_bytes(_png())
    return {
        "missing id": ({}, "not in the images file"),
        "bad base64": ({"img1": "@@not base64@@"}, "not valid base64"),
        "not an image": ({"img1": _b64(b"hello, not a png")}, "could not be decoded"),
        "too large": ({"img1": _b64(big.getvalue())}, "over the limit"),
        "escaping path": ({"img1": "../outside.png"}, "leaves the dataset root"),
        "absolute path": ({"img1": str(tmp_path.parent / "outside.png")}, "absolute"),
        "missing file": ({"img1": "nowhere.png"}, "does not exist"),
    }


@pytest.mark.parametrize("case", ["missing id", "bad base64", "not an image", "too large",
                                  "escaping path", "absolute path", "missing file"])
def test_bad_images_name_file_record_and_fix(tmp_path, case):
    folder = tmp_path / "split"
    images, expect = _bad_image_cases(folder)[case]
    _write(folder, "s", {"rec-7": _rec()}, images)
    with pytest.raises(DataError) as err:
        mimicit.load_split(folder, "s")
    msg = str(err.value)
    assert expect in msg and "'rec-7'" in msg and "s.json" in msg, msg
    assert "skip" in msg or "re-create" in msg or "resize" in msg, msg


def test_image_paths_key_escaping_is_refused(tmp_path):
    folder = tmp_path / "split"
    (tmp_path / "secret.png").write_bytes(_png())
    _write(folder, "s", {"r9": {**_rec([]), "image_paths": ["../secret.png"]}})
    with pytest.raises(DataError, match=r"s_instructions.json: record 'r9'.*leaves the dataset root"):
        mimicit.load_split(folder, "s")


@pytest.mark.parametrize("field", ["instruction", "answer"])
def test_missing_field(tmp_path, field):
    rec = _rec()
    del rec[field]
    _write(tmp_path, "s", {"ok": _rec(), "r2": rec}, {"img1": _b64(_png())})
    with pytest.raises(DataError, match=rf"s_instructions.json: record 'r2' has no '{field}'; .*add it"):
        mimicit.load_split(tmp_path, "s")


def test_unparsable_json_gives_line_and_column(tmp_path):
    (tmp_path / "s_instructions.json").write_text('{"meta": {},\n "data": {"r1": {"instruction": }}}')
    with pytest.raises(DataError, match=r"s_instructions.json: not valid JSON \(line 2, column 33"):
        mimicit.load_split(tmp_path, "s")
    with pytest.raises(DataError, match="not valid JSON"):  # never skipped
        mimicit.load_split(tmp_path, "s", skip_invalid=True)
    _write(tmp_path, "t", {"r1": _rec()})
    (tmp_path / "t.json").write_text('{"img1": "abc"')
    with pytest.raises(DataError, match=r"t.json: not valid JSON \(line 1"):
        mimicit.load_split(tmp_path, "t")


def test_empty_missing_and_malformed_splits(tmp_path):
    _write(tmp_path, "empty", {}, {})
    with pytest.raises(DataError, match="empty_instructions.json: the split is empty"):
        mimicit.load_split(tmp_path, "empty")
    with pytest.raises(DataError, match=r"split 'nope' not found.*\['empty'\]"):
        mimicit.load_split(tmp_path, "nope")
    (tmp_path / "list_instructions.json").write_text("[1, 2]")
    with pytest.raises(DataError, match="MIMIC-IT layout"):
        mimicit.load_split(tmp_path, "list")
    _write(tmp_path, "ctx", {"r1": _rec()}, {"img1": _b64(_png())})
    (tmp_path / "ctx_train.json").write_text(json.dumps({"r1": ["ghost"]}))
    with pytest.raises(DataError, match=r"ctx_train.json: entry 'r1'.*ghost"):
        mimicit.load_split(tmp_path, "ctx")


# -- skipping -------------------------------------------------------------------------------

def test_skip_invalid_counts_and_never_raises_per_record(tmp_path):
    no_answer = _rec()
    del no_answer["answer"]
    records = {"good1": _rec(), "bad-missing": no_answer, "bad-img": _rec(["ghost"]),
               "bad-b64": _rec(["broken"]), "good2": _rec(["img1", "img2"]),
               "bad-type": "just a string"}
    images = {"img1": _b64(_png(1)), "img2": _b64(_png(2)), "broken": "%%%"}
    _write(tmp_path, "s", records, images)
    (tmp_path / "s_train.json").write_text(json.dumps({"good1": ["good2"], "good2": ["bad-img"]}))
    ds = mimicit.load_split(tmp_path, "s", skip_invalid=True)
    assert [s.id for s in ds.samples] == ["good1", "good2"]
    assert ds.meta["skipped"] == 4 and ds.meta["skipped_in_context"] == 1
    reasons = " ".join(ds.meta["skipped_reasons"])
    for rid in ("bad-missing", "bad-img", "bad-b64", "bad-type"):
        assert f"'{rid}'" in reasons
    assert set(ds.images) == {"img1", "img2"} and ds.in_context == {"good1": ["good2"]}
    mimicit.save_split(ds, tmp_path / "clean")  # skip counts are not written back
    assert "skipped" not in mimicit.load_split(tmp_path / "clean", "s").meta


def test_skip_invalid_with_nothing_left_is_an_error(tmp_path):
    _write(tmp_path, "s", {"r1": _rec(["ghost"])}, {})
    with pytest.raises(DataError, match="all 1 records are invalid.*'r1'"):
        mimicit.load_split(tmp_path, "s", skip_invalid=True)


def test_lazy_validation(tmp_path):
    _write(tmp_path, "s", {"r1": _rec()}, {"img1": _b64(b"garbage bytes")})
    ds = mimicit.load_split(tmp_path, "s", validate_images=False)
    with pytest.raises(DataError, match="could not be decoded"):
        ds.image("img1")
    with pytest.raises(DataError, match="'r1'"):
        mimicit.load_split(tmp_path, "s")  # small sets validate by default


# -- COCO ground truth ----------------------------------------------------------------------

def test_coco_gt_format(tmp_path, world_set):
    path = mimicit.save_coco_gt(world_set, tmp_path / "gt.json")
    gt = json.loads(path.read_text())
    assert set(gt) == {"info", "licenses", "type", "images", "annotations"}
    assert gt["type"] == "captions" and gt["licenses"] == []
    assert [im["id"] for im in gt["images"]] == [s.id for s in world_set.samples]
    assert len(gt["annotations"]) == 5 * len(world_set)
    assert len({a["id"] for a in gt["annotations"]}) == len(gt["annotations"])
    first = world_set.samples[0]
    assert [a["caption"] for a in gt["annotations"] if a["image_id"] == first.id] == \
        first.meta["references"]


def test_coco_gt_needs_references(tmp_path):
    img = {"i": _png()}
    with pytest.raises(DataError, match="record 'c1' has no meta\\['references'\\]"):
        mimicit.save_coco_gt(InstructionSet("test-x", [Sample("c1", ["i"], "q", "a")], img),
                             tmp_path / "gt.json")
    vqa_only = InstructionSet("v", [Sample("q1", ["i"], "q", "a", task="vqa")], img)
    with pytest.raises(DataError, match="no captioning samples"):
        mimicit.save_coco_gt(vqa_only, tmp_path / "gt.json")
    assert not (tmp_path / "gt.json").exists()


def test_atomic_write_leaves_no_temporaries(tmp_path, world_set):
    mimicit.save_split(world_set, tmp_path)
    assert sorted(os.listdir(tmp_path)) == ["test-a.json", "test-a_instructions.json",
                                            "test-a_train.json"]
    shutil.rmtree(tmp_path)
