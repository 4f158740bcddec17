"""Caption metrics agree with pycocoevalcap called directly, and survive its sharp edges."""

from __future__ import annotations

import os
import shutil
import zipfile

import pytest

import pycocoevalcap.meteor.meteor as meteor_mod
from pycocoevalcap.bleu.bleu import Bleu
from pycocoevalcap.cider.cider import Cider
from pycocoevalcap.rouge.rouge import Rouge
from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer

from robustit.errors import ConfigError, DataError, RobustITError
from robustit.eval import caption_metrics as cm
from robustit.eval.caption_metrics import score_captions

needs_java = pytest.mark.skipif(shutil.which("java") is None, reason="needs Java on PATH")

REFS = {
    "1": ["A dog runs on the grass.", "a brown dog running across a lawn", "Dog playing."],
    "2": ["Two cats sleep on a red sofa.", "cats on a couch", "two kittens napping on a sofa"],
    "3": ["A man rides a bike down the road.", "a person cycling", "A cyclist on a street."],
    "4": ["A plate of food with broccoli.", "vegetables on a plate", "dinner on a white plate"],
    "5": ["A red bus parked by the curb.", "a bus on a city street", "Red double decker bus."],
}
CANDS = {
    "1": "a dog running on the grass",
    "2": "",  # an empty generation
    "3": "...",  # punctuation only: empty after PTB tokenisation
    "4": "a plate with broccoli and food",
    "5": "a red bus on the street",
}
NO_METEOR = ("BLEU", "ROUGE_L", "CIDEr")


def _direct(gts_raw: dict, res_raw: dict, meteor) -> dict:
    """pycocoevalcap used the way its COCOEvalCap does, scaled x100."""
    tok = PTBTokenizer()
    gts = tok.tokenize({k: [{"caption": c} for c in v] for k, v in gts_raw.items()})
    res = tok.tokenize({k: [{"caption": c}] for k, c in res_raw.items()})
    out = {}
    bleu, _ = Bleu(4).compute_score(gts, res, verbose=0)
    out.update({f"BLEU_{i + 1}": 100 * b for i, b in enumerate(bleu)})
    if meteor is not None:
        out["METEOR"] = 100 * meteor.compute_score(gts, res)[0]
    out["ROUGE_L"] = 100 * float(Rouge().compute_score(gts, res)[0])
    out["CIDEr"] = 100 * float(Cider().compute_score(gts, res)[0])
    return out


@pytest.fixture(scope="module")
def scored():
    """One JVM for METEOR in this module: the direct call and score_captions share it."""
    mp = pytest.MonkeyPatch()
    mp.delenv(cm.SPICE_JARS_ENV, raising=False)
    shared = meteor_mod.Meteor()
    starts = []
    mp.setattr(meteor_mod, "Meteor", lambda: starts.append(1) or shared)
    try:
        direct = _direct(REFS, CANDS, shared)
        ours = score_captions(CANDS, REFS)
    finally:
        mp.undo()
    return direct, ours, starts, shared


@needs_java
def test_all_metrics_match_direct_pycocoevalcap(scored):
    direct, ours, _, _ = scored
    assert ours.n == 5
    assert set(ours.metrics) == set(cm.METRIC_KEYS)
    for key, value in direct.items():
        assert ours.metrics[key] == pytest.approx(value, rel=1e-9, abs=1e-9), key
    # sanity: real, non-trivial numbers on the 0-100 (CIDEr: 0-1000) scale
    assert 0 < ours.metrics["BLEU_1"] < 100 and 0 < ours.metrics["METEOR"] < 100
    assert ours.metrics["CIDEr"] > 10


@needs_java
def test_meteor_started_once_and_closed(scored):
    _, ours, starts, shared = scored
    assert starts == [1]
    assert shared.meteor_p.poll() is not None, "METEOR's JVM must not outlive the evaluation"
    assert set(ours.seconds) == {"tokenizer", "BLEU", "METEOR", "ROUGE_L", "CIDEr", "SPICE"}


@needs_java
def test_spice_is_none_with_a_note_when_jars_absent(scored):
    _, ours, _, _ = scored
    assert ours.metrics["SPICE"] is None
    note = " ".join(ours.notes)
    assert cm.SPICE_JARS_ENV in note and "spice_jars" in note
    assert "stanford-corenlp-3.6.0-models.jar" in note
    assert ours.to_dict()["metrics"]["SPICE"] is None


@needs_java
def test_all_empty_candidates_score_zero():
    cands = {k: "" for k in REFS}
    ours = score_captions(cands, REFS, scorers=NO_METEOR)
    assert all(v == pytest.approx(0.0, abs=1e-6) for v in ours.metrics.values())
    assert set(ours.metrics) == {"BLEU_1", "BLEU_2", "BLEU_3", "BLEU_4", "ROUGE_L", "CIDEr"}


@needs_java
def test_line_breaks_inside_a_caption_do_not_shift_later_captions():
    broken = dict(CANDS, **{"1": "a dog running\ron the\u2028grass"})
    ours = score_captions(broken, REFS, scorers=NO_METEOR)
    clean = score_captions(CANDS, REFS, scorers=NO_METEOR)
    assert ours.metrics == pytest.approx(clean.metrics)


def test_id_mismatch_names_count_and_ids():
    cands = dict(CANDS, extra="a cat")
    refs = dict(REFS, **{"9": ["a cat"], "10": ["a dog"]})
    with pytest.raises(ConfigError) as err:
        score_captions(cands, refs)
    msg = str(err.value)
    assert "1 candidate id(s) have no references ('extra')" in msg
    assert "2 reference id(s) have no candidate ('10', '9')" in msg


@pytest.mark.parametrize("cands, refs, word", [
    ({}, {}, "empty"),
    ({"1": None}, {"1": ["a"]}, "expected a string"),
    ({"1": "a"}, {"1": []}, "non-empty list"),
    ({"1": "a"}, {"1": "a dog"}, "non-empty list"),
])
def test_bad_inputs_are_data_errors(cands, refs, word):
    with pytest.raises(DataError, match=word):
        score_captions(cands, refs, scorers=("BLEU",))


def test_unknown_scorer_is_a_config_error():
    with pytest.raises(ConfigError, match="scorers"):
        score_captions(CANDS, REFS, scorers=("BLEU", "WER"))


def test_missing_java_is_a_clear_error(monkeypatch):
    monkeypatch.setattr(cm, "java_path", lambda: None)
    with pytest.raises(RobustITError, match="Java"):
        score_captions(CANDS, REFS, scorers=("BLEU",))
    with pytest.raises(RobustITError, match="Java"):
        cm.check_environment(scorers=("BLEU",))


@needs_java
def test_check_environment_predicts_a_null_spice(monkeypatch):
    monkeypatch.delenv(cm.SPICE_JARS_ENV, raising=False)
    assert cm.check_environment(scorers=("BLEU",)) == []
    (note,) = cm.check_environment()
    assert "SPICE will be null" in note and cm.SPICE_JARS_ENV in note


@needs_java
def test_read_only_package_runs_from_an_identical_copy(tmp_path, monkeypatch):
    expected = score_captions(CANDS, REFS, scorers=NO_METEOR).metrics
    ro_pkg = tmp_path / "site" / "pycocoevalcap"
    shutil.copytree(cm.package_dir() / "tokenizer", ro_pkg / "tokenizer",
                    ignore=shutil.ignore_patterns("__pycache__"))
    for folder in (ro_pkg / "tokenizer", ro_pkg):
        folder.chmod(0o555)
    before = sorted(p.name for p in (ro_pkg / "tokenizer").iterdir())
    # Tests run as root, for whom 0555 does not block writes: detection is patched instead.
    monkeypatch.setattr(cm, "package_dir", lambda: ro_pkg)
    monkeypatch.setattr(cm, "package_is_writable", lambda folder: False)
    monkeypatch.setenv(cm.CACHE_ENV, str(tmp_path / "cache"))
    try:
        ours = score_captions(CANDS, REFS, scorers=NO_METEOR)
        again = score_captions(CANDS, REFS, scorers=NO_METEOR)  # reuses the copy
    finally:
        for folder in (ro_pkg, ro_pkg / "tokenizer"):
            folder.chmod(0o755)
    assert ours.metrics == expected and again.metrics == expected
    copy = cm.cache_root() / "tokenizer"
    assert (copy / "stanford-corenlp-3.4.1.jar").is_file()
    assert str(tmp_path / "cache") in str(copy)
    assert any("not writable" in n for n in ours.notes)
    assert sorted(p.name for p in (ro_pkg / "tokenizer").iterdir()) == before


def test_package_is_writable_detects_a_writable_folder(tmp_path):
    assert cm.package_is_writable(tmp_path)
    assert not cm.package_is_writable(tmp_path / "missing")


def _fake_jar(path):
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("META-INF/MANIFEST.MF", "Manifest-Version: 1.0\n")


def test_spice_jars_folder_without_the_jars_is_a_config_error(tmp_path, monkeypatch):
    _fake_jar(tmp_path / cm.CORENLP_JARS[0])  # models jar missing
    with pytest.raises(ConfigError, match="spice_jars.*stanford-corenlp-3.6.0-models.jar"):
        score_captions(CANDS, REFS, spice_jars=tmp_path)
    monkeypatch.setenv(cm.SPICE_JARS_ENV, str(tmp_path))
    with pytest.raises(ConfigError, match=cm.SPICE_JARS_ENV):
        score_captions(CANDS, REFS, scorers=("BLEU", "SPICE"))


@needs_java
def test_spice_links_user_jars_into_the_cached_copy(tmp_path, monkeypatch):
    """Fake (empty) jars: SPICE's Java fails, so SPICE is None with a note, never invented."""
    jars = tmp_path / "corenlp"
    jars.mkdir()
    for name in cm.CORENLP_JARS:
        _fake_jar(jars / name)
    monkeypatch.setenv(cm.CACHE_ENV, str(tmp_path / "cache"))
    monkeypatch.delenv("JDK_JAVA_OPTIONS", raising=False)
    ours = score_captions(CANDS, REFS, spice_jars=jars, scorers=("BLEU", "SPICE"))
    assert ours.metrics["SPICE"] is None
    assert any("SPICE jar failed" in n for n in ours.notes)
    lib = cm.cache_root() / "spice" / "lib"
    for name in cm.CORENLP_JARS:
        assert (lib / name).resolve() == (jars / name).resolve()
        assert not (cm.package_dir() / "spice" / "lib" / name).exists()  # site-packages untouched
    assert "JDK_JAVA_OPTIONS" not in os.environ
    assert ours.metrics["BLEU_1"] > 0


@needs_java
def test_meteor_session_closes_its_jvm():
    with cm.meteor_session() as meteor:
        proc = meteor.meteor_p
        assert proc.poll() is None
    assert proc.poll() is not None


def test_a_tokenizer_that_loses_captions_is_reported_not_misscored():
    class LosesOne:
        def tokenize(self, captions):
            return {k: [c["caption"] for c in caps][1:] if k == "b" else [c["caption"] for c in caps]
                    for k, caps in captions.items()}

    with pytest.raises(RobustITError, match="different number of captions for 1 id.*'b'"):
        cm._tokenize(LosesOne, {"a": ["a dog"], "b": ["a cat", "two cats"]})
