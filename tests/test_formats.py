"""Public data formats from local files: MIMIC-IT (JSON / parquet images), COCO and Flickr30k
Karpathy splits, VQAv2, LLaVA conversations. Every fixture is written here in the exact public
layout with tiny generated images; every loader is checked for its samples, its errors (file,
record index/id, field, fix), missing images (error or skipped and counted), detection, the
CLI and conversion to the MIMIC-IT layout."""

import base64
import io
import json

import numpy as np
import pytest
from PIL import Image

from robustit.cli import main
from robustit.data import mimicit as layout
from robustit.data.formats import (FORMATS, convert_dataset, detect_format, identity,
                                   load_dataset)
from robustit.data.formats.karpathy import CAPTION_INSTRUCTION
from robustit.errors import ConfigError, DataError


def _image(seed, fmt="JPEG", size=32):
    arr = np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format=fmt)
    return buf.getvalue()


def _dump(path, obj):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj))
    return path


# -- fixtures in the public layouts --------------------------------------------------------------

def _sentences(imgid, n=5):
    return [{"tokens": ["a", "photo", str(k)], "raw": f"A photo number {k} of image {imgid}. ",
             "imgid": imgid, "sentid": imgid * 10 + k} for k in range(n)]


@pytest.fixture
def coco(tmp_path):
    """dataset_coco.json (Karpathy) + val2014/ and train2014/ image folders under one root."""
    root = tmp_path / "coco"
    entries = []
    for imgid, (split, sub, cocoid) in enumerate([("test", "val2014", 42), ("val", "val2014", 73),
                                                  ("test", "val2014", 74), ("restval", "val2014", 80),
                                                  ("train", "train2014", 9)]):
        name = f"COCO_{sub}_{cocoid:012d}.jpg"
        (root / sub).mkdir(parents=True, exist_ok=True)
        (root / sub / name).write_bytes(_image(imgid))
        entries.append({"filepath": sub, "sentids": [imgid * 10 + k for k in range(5)],
                        "filename": name, "imgid": imgid, "split": split,
                        "sentences": _sentences(imgid), "cocoid": cocoid})
    _dump(root / "dataset_coco.json", {"images": entries, "dataset": "coco"})
    return root


@pytest.fixture
def flickr(tmp_path):
    """dataset_flickr30k.json (no filepath) + flickr30k-images/."""
    root = tmp_path / "flickr"
    entries = []
    for imgid, split in enumerate(["test", "train", "test"]):
        name = f"{1000092795 + imgid}.jpg"
        (root / "flickr30k-images").mkdir(parents=True, exist_ok=True)
        (root / "flickr30k-images" / name).write_bytes(_image(10 + imgid))
        entries.append({"sentids": [], "imgid": imgid, "sentences": _sentences(imgid),
                        "split": split, "filename": name})
    _dump(root / "dataset_flickr30k.json", {"images": entries, "dataset": "flickr30k"})
    return root


def _answers(best, n=10):
    return [{"answer": best if k < 7 else "maybe", "answer_confidence": "yes", "answer_id": k + 1}
            for k in range(n)]


@pytest.fixture
def vqa(tmp_path):
    """v2 questions + annotations for val2014 and COCO_val2014_%012d.jpg images in val2014/."""
    root = tmp_path / "vqa"
    qs = [(42, 420, "What color is the cat?", "black"), (42, 421, "How many cats are there?", "2"),
          (7, 70, "Is it raining?", "no")]
    for image_id in {q[0] for q in qs}:
        (root / "val2014").mkdir(parents=True, exist_ok=True)
        (root / "val2014" / f"COCO_val2014_{image_id:012d}.jpg").write_bytes(_image(image_id))
    _dump(root / "v2_OpenEnded_mscoco_val2014_questions.json", {
        "info": {"description": "VQA v2"}, "task_type": "Open-Ended", "data_type": "mscoco",
        "license": {}, "data_subtype": "val2014",
        "questions": [{"image_id": i, "question": q, "question_id": qid} for i, qid, q, _ in qs]})
    _dump(root / "v2_mscoco_val2014_annotations.json", {
        "info": {}, "license": {}, "data_subtype": "val2014", "data_type": "mscoco",
        "annotations": [{"question_id": qid, "image_id": i, "answers": _answers(a),
                         "multiple_choice_answer": a, "answer_type": "other",
                         "question_type": "what color is the"} for i, qid, _, a in reversed(qs)]})
    return root


@pytest.fixture
def llava(tmp_path):
    """llava_instruct.json with a two-turn, a one-turn and a text-only conversation."""
    root = tmp_path / "llava"
    (root / "coco" / "train2017").mkdir(parents=True)
    (root / "coco" / "train2017" / "000000033471.jpg").write_bytes(_image(1))
    (root / "coco" / "train2017" / "000000052846.png").write_bytes(_image(2, "PNG"))
    records = [
        {"id": "000000033471", "image": "coco/train2017/000000033471.jpg", "conversations": [
            {"from": "human", "value": "<image>\nWhat are the colors of the bus in the image?"},
            {"from": "gpt", "value": "The bus in the image is white and red."},
            {"from": "human", "value": "What feature can be seen on the back of the bus?"},
            {"from": "gpt", "value": "The back of the bus features an advertisement."}]},
        {"id": "000000052846", "image": "coco/train2017/000000052846.png", "conversations": [
            {"from": "human", "value": "Describe the image.\n<image>"},
            {"from": "gpt", "value": "A cat sits on a bench."}]},
        {"id": "sharegpt-1", "conversations": [{"from": "human", "value": "Hi"},
                                               {"from": "gpt", "value": "Hello!"}]},
    ]
    return _dump(root / "llava_instruct.json", records)


def _parquet_like_pandas(path, table):
    """What ``pd.DataFrame.from_dict(table, orient="index", columns=["base64"]).to_parquet()``
    writes (the MIMIC-IT release's images files), written with pyarrow alone."""
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    meta = {"index_columns": ["__index_level_0__"],
            "column_indexes": [{"name": None, "field_name": None, "pandas_type": "unicode",
                                "numpy_type": "object", "metadata": {"encoding": "UTF-8"}}],
            "columns": [{"name": "base64", "field_name": "base64", "pandas_type": "unicode",
                         "numpy_type": "object", "metadata": None},
                        {"name": None, "field_name": "__index_level_0__", "pandas_type": "unicode",
                         "numpy_type": "object", "metadata": None}],
            "creator": {"library": "pyarrow", "version": pa.__version__}, "pandas_version": "2.2.3"}
    t = pa.table({"base64": list(table.values()), "__index_level_0__": list(table.keys())})
    pq.write_table(t.replace_schema_metadata({b"pandas": json.dumps(meta).encode()}), path)
    return path


@pytest.fixture
def mimic(tmp_path):
    """LADD_instructions.json + LADD_train.json in json/, shared images LA.parquet in Parquets/."""
    ins = {f"LADD_INS_{k:05d}": {"instruction": f"Question {k}?", "answer": f"Answer {k}.",
                                 "image_ids": [f"LA_IMG_{k % 2:06d}"], "rel_ins_ids": []}
           for k in range(4)}
    path = _dump(tmp_path / "json" / "LA" / "LADD_instructions.json",
                 {"meta": {"version": "0.0.1", "author": "x"}, "data": ins})
    _dump(path.with_name("LADD_train.json"), {"LADD_INS_00000": ["LADD_INS_00001"],
                                               "LADD_INS_00003": ["LADD_INS_00002"]})
    images = {f"LA_IMG_{k:06d}": base64.b64encode(_image(k)).decode() for k in range(3)}
    (tmp_path / "Parquets").mkdir()
    return path, _parquet_like_pandas(tmp_path / "Parquets" / "LA.parquet", images), images


# -- Karpathy -----------------------------------------------------------------------------------

def test_karpathy_coco_test_split(coco):
    ds = load_dataset(coco / "dataset_coco.json", split="test", images=coco)
    assert ds.name == "test" and [s.id for s in ds.samples] == ["COCO_val2014_000000000042",
                                                                 "COCO_val2014_000000000074"]
    first = ds.samples[0]
    assert first.task == "caption" and first.instruction == CAPTION_INSTRUCTION
    assert len(first.meta["references"]) == 5 and first.answer == first.meta["references"][0]
    assert first.meta["references"][0] == "A photo number 0 of image 0."  # stripped raw
    assert first.meta["karpathy"]["cocoid"] == 42 and first.image_ids == [first.id]
    assert ds.images[first.id] == (coco / "val2014" / f"{first.id}.jpg").read_bytes()
    assert ds.image(first.id).shape == (32, 32, 3)
    from robustit.eval.evaluate import check_ground_truth

    assert check_ground_truth(ds) == "caption"


def test_karpathy_splits_limit_and_flickr(coco, flickr):
    both = load_dataset(coco / "dataset_coco.json", "coco-karpathy", split="train+restval")
    assert both.name == "train-restval" and len(both) == 2  # default images: the JSON's folder
    assert len(load_dataset(coco, split="test", limit=1)) == 1  # a folder with one dataset_*.json
    fl = load_dataset(flickr / "dataset_flickr30k.json", "flickr30k-karpathy", split="test",
                      images=flickr / "flickr30k-images")
    assert [s.id for s in fl.samples] == ["1000092795", "1000092797"]
    with pytest.raises(DataError, match=r"Karpathy split 'test-a' is not one of .*--split test"):
        load_dataset(coco / "dataset_coco.json", split="test-a")


def test_karpathy_missing_field_names_file_record_field_and_fix(coco):
    doc = json.loads((coco / "dataset_coco.json").read_text())
    del doc["images"][2]["sentences"]
    _dump(coco / "dataset_coco.json", doc)
    with pytest.raises(DataError, match=r"dataset_coco.json: images\[2\] \(COCO_val2014_000000000074"
                                        r".jpg\) has no 'sentences'; is this a Karpathy split file"):
        load_dataset(coco / "dataset_coco.json", split="test")
    ds = load_dataset(coco / "dataset_coco.json", split="test", skip_invalid=True)
    assert len(ds) == 1 and ds.meta["skipped"] == 1 and "images[2]" in ds.meta["skipped_reasons"][0]
    _dump(coco / "dataset_coco.json", {"annotations": []})
    with pytest.raises(DataError, match=r"expected a top-level 'images' list.*Karpathy"):
        load_dataset(coco / "dataset_coco.json", "karpathy", split="test")


def test_missing_image_is_named_or_skipped_and_counted(coco):
    (coco / "val2014" / "COCO_val2014_000000000074.jpg").unlink()
    with pytest.raises(DataError) as err:
        load_dataset(coco / "dataset_coco.json", split="test")
    msg = str(err.value)
    assert "images[2]" in msg and "val2014/COCO_val2014_000000000074.jpg does not exist" in msg
    assert "--images" in msg and "--skip-invalid" in msg
    ds = load_dataset(coco / "dataset_coco.json", split="test", skip_invalid=True)
    assert [s.id for s in ds.samples] == ["COCO_val2014_000000000042"] and ds.meta["skipped"] == 1
    (coco / "val2014" / "COCO_val2014_000000000042.jpg").write_bytes(b"not a jpeg")
    with pytest.raises(DataError, match="could not be decoded"):
        load_dataset(coco / "dataset_coco.json", split="test", skip_invalid=True)  # none left


# -- VQAv2 --------------------------------------------------------------------------------------

def test_vqav2_from_folder_or_either_file(vqa):
    ds = load_dataset(vqa, split="val2014")
    assert ds.name == "val2014" and [s.id for s in ds.samples] == ["420", "421", "70"]
    s = ds.samples[1]
    assert s.task == "vqa" and s.instruction == "How many cats are there?" and s.answer == "2"
    assert len(s.meta["answers"]) == 10 and s.meta["answers"][0] == "2"
    assert s.image_ids == ["COCO_val2014_000000000042"] and len(ds.images) == 2
    for path in ("v2_OpenEnded_mscoco_val2014_questions.json", "v2_mscoco_val2014_annotations.json"):
        other = load_dataset(vqa / path, images=vqa / "val2014")
        assert [(x.id, x.answer, x.meta["answers"]) for x in other.samples] == \
            [(x.id, x.answer, x.meta["answers"]) for x in ds.samples]
    from robustit.eval.evaluate import check_ground_truth

    assert check_ground_truth(ds) == "vqa"
    with pytest.raises(DataError, match=r"holds VQAv2 val2014, but --split is 'train2014'; pass --split val2014"):
        load_dataset(vqa / "v2_mscoco_val2014_annotations.json", split="train2014")
    with pytest.raises(DataError, match=r"no VQAv2 questions file for test-a .*subsets there: \['val2014'\]"):
        load_dataset(vqa, "vqav2", split="test-a")


def test_vqav2_mismatched_files_say_which_field_is_missing_where(vqa):
    afile = vqa / "v2_mscoco_val2014_annotations.json"
    doc = json.loads(afile.read_text())
    del doc["annotations"][1]["answers"]  # question 421
    _dump(afile, doc)
    with pytest.raises(DataError, match=r"v2_mscoco_val2014_annotations.json: annotations\[1\] "
                                        r"\(question_id 421\) has no 'answers'; is this the VQAv2 "
                                        r"annotations file"):
        load_dataset(vqa, split="val2014")
    assert [s.id for s in load_dataset(vqa, split="val2014", skip_invalid=True).samples] == ["420", "70"]
    qfile = vqa / "v2_OpenEnded_mscoco_val2014_questions.json"
    _dump(qfile, {"data_subtype": "val2014", "annotations": doc["annotations"]})  # wrong file
    with pytest.raises(DataError, match=r"expected a top-level 'questions' list.*VQAv2 questions file"):
        load_dataset(vqa, "vqav2", split="val2014")
    _dump(qfile, {"questions": [{"image_id": 7, "question": "Is it?", "question_id": 999}]})
    with pytest.raises(DataError, match=r"questions\[0\] \(question_id 999\) has no annotation"):
        load_dataset(qfile)


# -- LLaVA --------------------------------------------------------------------------------------

def test_llava_turns_become_samples(llava):
    ds = load_dataset(llava, split="llava")
    assert [s.id for s in ds.samples] == ["000000033471-t1", "000000033471-t2", "000000052846-t1"]
    first, second, third = ds.samples
    assert first.instruction == "What are the colors of the bus in the image?"
    assert third.instruction == "Describe the image." and third.answer == "A cat sits on a bench."
    assert first.image_ids == second.image_ids == ["coco/train2017/000000033471.jpg"]
    assert first.meta["rel_ins_ids"] == ["000000033471-t2"] and second.meta["turn"] == 2
    assert first.task == "conversation" and ds.meta["text_only_dropped"] == 1
    assert ds.images[third.image_ids[0]][:4] == b"\x89PNG"
    assert len(load_dataset(llava, limit=2)) == 2


def test_llava_bad_records(llava):
    records = json.loads(llava.read_text())
    records[0]["conversations"][2]["from"] = "gpt"
    records[1]["image"] = "../../outside.jpg"
    records.append({"id": "ok", "image": "coco/train2017/000000033471.jpg", "conversations": [
        {"from": "user", "value": "<image> Describe it."}, {"from": "assistant", "value": "A bus."}]})
    _dump(llava, records)
    with pytest.raises(DataError, match=r"llava_instruct.json: \[0\] \(id 000000033471\): "
                                        r"conversations\[2\] is from 'gpt', expected 'human'"):
        load_dataset(llava)
    ds = load_dataset(llava, skip_invalid=True, images=llava.parent)
    assert [s.id for s in ds.samples] == ["ok-t1"] and ds.samples[0].instruction == "Describe it."
    assert ds.meta["skipped"] == 2 and "leaves the image folder" in ds.meta["skipped_reasons"][1]
    del records[0]["conversations"]
    _dump(llava, records)
    with pytest.raises(DataError, match=r"\[0\] \(id 000000033471\) has no 'conversations'; is this a LLaVA"):
        load_dataset(llava)


# -- MIMIC-IT with parquet images ------------------------------------------------------------------

def test_mimicit_instructions_with_parquet_images(mimic):
    path, parquet, images = mimic
    ds = load_dataset(path, images=parquet)
    assert ds.name == "LADD" and [s.id for s in ds.samples][:2] == ["LADD_INS_00000", "LADD_INS_00001"]
    assert set(ds.images) == {"LA_IMG_000000", "LA_IMG_000001"}  # only the ids the split uses
    assert ds.images["LA_IMG_000001"] == base64.b64decode(images["LA_IMG_000001"])
    assert ds.in_context == {"LADD_INS_00000": ["LADD_INS_00001"], "LADD_INS_00003": ["LADD_INS_00002"]}
    assert ds.meta["version"] == "0.0.1" and ds.meta["format"]["name"] == "mimicit"
    small = load_dataset(path, "mimicit", images=parquet, limit=2, split="la-small")
    assert small.name == "la-small" and len(small) == 2 and small.in_context == {"LADD_INS_00000": ["LADD_INS_00001"]}
    with pytest.raises(DataError, match=r"LADD_instructions.json: no images file beside it .*pass --images"):
        load_dataset(path)


def test_mimicit_split_folder_with_parquet_and_bad_parquet(tmp_path, mimic):
    path, _, images = mimic
    folder = tmp_path / "split"
    folder.mkdir()
    (folder / "LA_instructions.json").write_text(path.read_text())
    _parquet_like_pandas(folder / "LA.parquet", {"LA_IMG_000000": images["LA_IMG_000000"]})
    with pytest.raises(DataError, match=r"record 'LADD_INS_00001': image id 'LA_IMG_000001' is not "
                                        r"in the images file .*LA.parquet"):
        load_dataset(folder, split="LA")
    ds = load_dataset(folder, split="LA", skip_invalid=True)
    assert len(ds) == 2 and ds.meta["skipped"] == 2
    pa, pq = pytest.importorskip("pyarrow"), pytest.importorskip("pyarrow.parquet")
    pq.write_table(pa.table({"a": [1], "b": [2], "c": [3]}), folder / "LA.parquet")
    with pytest.raises(DataError, match=r"parquet columns \['a', 'b', 'c'\].*MIMIC-IT images parquet"):
        load_dataset(folder, split="LA")
    (folder / "LA.parquet").write_bytes(b"not parquet at all")
    with pytest.raises(DataError, match="not a readable parquet file"):
        load_dataset(folder, split="LA")


def test_parquet_with_an_id_column_and_raw_bytes(tmp_path, mimic):
    path, _, images = mimic
    pa, pq = pytest.importorskip("pyarrow"), pytest.importorskip("pyarrow.parquet")
    raw = {k: base64.b64decode(v) for k, v in images.items()}
    pq.write_table(pa.table({"image_id": list(raw), "image": [{"bytes": b, "path": None}
                                                              for b in raw.values()]}),
                   tmp_path / "hf.parquet")  # the Hugging Face image struct
    assert load_dataset(path, images=tmp_path / "hf.parquet").images == \
        {k: raw[k] for k in ("LA_IMG_000000", "LA_IMG_000001")}


def test_mimicit_robustit_folder_reads_as_before(tmp_path, coco):
    ds = load_dataset(coco / "dataset_coco.json", split="test")
    convert_dataset(ds, tmp_path / "root")
    again = load_dataset(tmp_path / "root", split="test")
    plain = layout.load_split(tmp_path / "root" / "test", "test")
    assert [(s.id, s.instruction, s.meta) for s in again.samples] == \
        [(s.id, s.instruction, s.meta) for s in plain.samples]


# -- detection, conversion, CLI -------------------------------------------------------------------

def test_detection(coco, vqa, llava, mimic, tmp_path):
    assert detect_format(coco / "dataset_coco.json") == "karpathy"
    assert detect_format(vqa) == "vqav2" and detect_format(vqa / "v2_mscoco_val2014_annotations.json") == "vqav2"
    assert detect_format(llava) == "llava" and detect_format(mimic[0]) == "mimicit"
    renamed = _dump(tmp_path / "conv.json", json.loads(llava.read_text()))  # found by content
    assert detect_format(renamed) == "llava"
    with pytest.raises(DataError, match=r"is an images file; pass the MIMIC-IT instructions file"):
        detect_format(mimic[1])
    with pytest.raises(DataError, match=r"cannot tell the data format .*pass --format \(one of "
                                        r"mimicit, karpathy, vqav2, llava\)"):
        detect_format(_dump(tmp_path / "other.json", {"hello": 1}))
    with pytest.raises(ConfigError, match="unknown data format 'coco'"):
        load_dataset(coco, "coco", split="test")
    assert {"karpathy", "coco-karpathy", "flickr30k-karpathy", "vqav2", "llava", "mimicit"} <= set(FORMATS.names())


def test_convert_writes_layout_and_coco_gt(tmp_path, coco, vqa, capsys):
    out = tmp_path / "data"
    assert main(["data", "convert", "--from", str(coco / "dataset_coco.json"), "--split", "test",
                 "--images", str(coco), "--out", str(out)]) == 0
    assert "use it with: --data" in capsys.readouterr().out
    gt = json.loads((out / "test" / "test_coco_gt.json").read_text())
    assert [i["id"] for i in gt["images"]] == ["COCO_val2014_000000000042", "COCO_val2014_000000000074"]
    assert len(gt["annotations"]) == 10
    back = layout.load_split(out / "test", "test")
    src = load_dataset(coco / "dataset_coco.json", split="test")
    assert back.images == src.images and [s.meta["references"] for s in back.samples] == \
        [s.meta["references"] for s in src.samples]
    written = convert_dataset(load_dataset(vqa, split="val2014"), out)
    assert "coco_gt" not in written and layout.load_split(out / "val2014", "val2014").samples[0].task == "vqa"


def test_cli_show_check_and_open_split(coco, llava, capsys):
    assert main(["data", "show", "--data", str(coco / "dataset_coco.json"), "--split", "test",
                 "--n", "1"]) == 0
    shown = capsys.readouterr().out
    assert "reference:   A photo number 1 of image 0." in shown and "(2 samples in test)" in shown
    assert main(["data", "check", "--data", str(llava), "--format", "llava", "--skip-invalid"]) == 0
    assert "3 valid samples" in capsys.readouterr().out
    assert main(["data", "check", "--data", str(coco), "--split", "nope"]) == 2
    assert "is not one of ['train', 'restval', 'val', 'test']" in capsys.readouterr().err
    from robustit.cli.common import open_split

    ds = open_split(str(coco / "dataset_coco.json"), "val", format="coco-karpathy", images=str(coco))
    loc = ds.meta["location"]
    assert loc["name"] == "karpathy" and loc["split"] == "val" and list(loc["sha256"]) == ["dataset_coco.json"]
    assert identity(ds)["images"] == str(coco)


def test_poison_verb_reads_a_public_format(tmp_path, llava):
    out = tmp_path / "poisoned"
    assert main(["poison", "--data", str(llava), "--split", "train", "--attack", "badnet",
                 "--rate", "0.5", "--out", str(out), "--cache", str(tmp_path / "cache")]) == 0
    poisoned = layout.load_split(out, "train")
    manifest = json.loads((out / "manifest.json").read_text())
    assert len(poisoned) == 3 and manifest["n_poisoned"] >= 1
