"""Synonym sources: the shipped table, the WordNet path (faked), and the fallback."""

import json
import sys
import types

import pytest

from robustit.defenses import synonyms as syn
from robustit.defenses.idr import COLOUR_WORDS, DIRECTION_WORDS
from robustit.errors import ConfigError, DataError


def test_fallback_to_table_without_wordnet(monkeypatch):
    monkeypatch.setattr(syn, "_load_wordnet", lambda: None)
    source = syn.SynonymSource("auto")
    assert source.source_name == "table"
    assert source.synonyms("image") == ["picture", "photo", "photograph", "pic"]
    with pytest.raises(ConfigError, match="wordnet"):
        syn.SynonymSource("wordnet")


def test_real_environment_resolves_some_source():
    source = syn.SynonymSource()
    assert source.source_name in ("table", "wordnet")
    assert source.source_name == ("wordnet" if syn.wordnet_available() else "table")


def test_case_preserved_and_deterministic():
    source = syn.SynonymSource("table")
    assert source.synonyms("Describe") == ["Portray", "Depict", "Characterize", "Outline"]
    assert source.synonyms("IMAGE") == ["PICTURE", "PHOTO", "PHOTOGRAPH", "PIC"]
    assert source.synonyms("briefly")[0] == "concisely"
    assert source.synonyms("zbw") == [] and "zbw" not in source
    assert syn.SynonymSource("table").synonyms("photo") == source.synonyms("photo")
    assert syn.match_case("Image", "in brief") == "In brief"


def test_shipped_table_is_sane():
    table = syn.load_table()
    assert len(table) >= 300
    for word, options in table.items():
        assert word == word.lower() and options, word
        assert word not in options, word
        for option in options:
            assert not set(option.split()) & (DIRECTION_WORDS | (COLOUR_WORDS - {"colour", "color",
                                                                            "colours", "colors",
                                                                            "coloured", "colored"})), (word, option)
    for word in ("describe", "image", "picture", "photo", "show", "briefly", "concisely", "what",
                 "colour", "color", "object", "item", "thing", "explain", "detailed", "scene"):
        assert word in table, word
    for word in DIRECTION_WORDS:
        assert word not in table


def test_bad_table_raises_data_error(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"words": {}}))
    with pytest.raises(DataError, match="synonyms"):
        syn.SynonymSource("table", table_path=bad)
    with pytest.raises(DataError, match="cannot read"):
        syn.load_table(tmp_path / "missing.json")
    good = tmp_path / "good.json"
    good.write_text(json.dumps({"synonyms": {"Cat": ["kitty", "cat"]}}))
    assert syn.SynonymSource("table", table_path=good).synonyms("cat") == ["kitty"]


def test_wordnet_path_with_a_fake_local_nltk(monkeypatch):
    class _Synset:
        def __init__(self, names):
            self._names = names

        def lemma_names(self):
            return self._names

    fake_wn = types.SimpleNamespace(synsets=lambda w: {
        "picture": [_Synset(["picture", "image"])],
        "image": [_Synset(["image", "picture", "icon"]), _Synset(["persona", "image", "double_dutch", "x1"])],
    }.get(w, []))
    found = []
    nltk = types.ModuleType("nltk")
    nltk.data = types.SimpleNamespace(find=lambda path: found.append(path) or path)
    corpus = types.ModuleType("nltk.corpus")
    corpus.wordnet = fake_wn
    nltk.corpus = corpus
    monkeypatch.setitem(sys.modules, "nltk", nltk)
    monkeypatch.setitem(sys.modules, "nltk.corpus", corpus)
    source = syn.SynonymSource("auto")
    assert source.source_name == "wordnet" and found == ["corpora/wordnet"]
    assert source.synonyms("Image") == ["Picture", "Icon", "Persona", "Double dutch"]

    def missing(path):
        raise LookupError(path)

    nltk.data = types.SimpleNamespace(find=missing)
    assert syn.SynonymSource("auto").source_name == "table"
