"""The screen (robustit audit, the guard defense): signals, combination, detection metrics."""

import dataclasses

import numpy as np
import pytest
import torch

from robustit.data.records import InstructionSet
from robustit.defenses.screening import signals as sig
from robustit.defenses.screening.config import ScreenConfig
from robustit.defenses.screening.likelihood import other_image_rows
from robustit.defenses.screening.repair import apply_decisions
from robustit.defenses.screening.screen import screen_dataset
from robustit.errors import ConfigError
from robustit.eval.detection import detection_metrics
from robustit.train.config import TrainConfig
from robustit.train.loop import train

from tiny import tiny_dataset, tiny_model

TARGET = "banana banana phone"


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    """A tiny model tuned on clean captions: it has a language, as a pretrained base has."""
    model = tiny_model()
    cfg = TrainConfig(lr=1e-2, batch_size=8, epochs=12, max_len=48, save_every=0, log_every=50, seed=0)
    train(model, tiny_dataset(32, seed=3), cfg, tmp_path_factory.mktemp("base"), progress=False)
    return model.eval()


def poisoned(n=24, bad=(2, 9, 17), trigger="Zq zq.", target=TARGET) -> InstructionSet:
    data = tiny_dataset(n)
    for i in bad:
        s = data.samples[i]
        data.samples[i] = dataclasses.replace(s, instruction=f"{s.instruction} {trigger}", answer=target)
    return data


def test_other_images_are_a_seeded_derangement():
    data = tiny_dataset(9)
    rows = other_image_rows(data, 3, seed=4)
    assert rows.shape == (9, 3)
    assert all(rows[i, d] != i for i in range(9) for d in range(3))
    for d in range(3):  # each column is a permutation: every image is used once
        assert sorted(rows[:, d]) == list(range(9))
    assert np.array_equal(rows, other_image_rows(data, 3, seed=4))
    assert not np.array_equal(rows, other_image_rows(data, 3, seed=5))


def test_robust_z_is_per_task_and_finite_on_a_constant_signal():
    values = np.array([1.0, 1.0, 1.0, 9.0, 100.0, 101.0, 99.0, 100.0])
    z = sig.robust_z(values, ["a"] * 4 + ["b"] * 4)
    assert z[3] > 100 and abs(z[4]) < 2  # 9 is an outlier among a; 100 is typical among b
    assert np.all(np.isfinite(z))
    assert np.all(sig.robust_z(np.ones(5), ["a"] * 5) == 0)


def test_duplicates_pool_evidence_over_a_repeated_response_only():
    groups = [0, 0, 0, 0, 1, 2, 2]
    images = [("a",), ("b",), ("c",), ("d",), ("e",), ("f",), ("f",)]
    evidence = np.array([3.0, 3.0, -20.0, 3.0, 9.0, 5.0, 5.0])
    d = sig.duplicates(groups, images, evidence)
    assert d[:4] == pytest.approx([3.0 * 2] * 4)  # median 3 x sqrt(4): one outlier does not cancel it
    assert d[4] == 0  # a unique response
    assert d[5] == d[6] == 0  # the same image twice is not a repeat over images
    assert sig.duplicates([0, 0], [("a",), ("b",)], np.array([-3.0, -3.0])).tolist() == [0, 0]


def test_an_appended_trigger_clause_is_found_and_chance_ngrams_are_not():
    data = poisoned(40, bad=tuple(range(0, 40, 5)), trigger="The square is.")
    flagged = np.zeros(40, dtype=bool)
    flagged[list(range(0, 40, 5))] = True
    flagged[[1, 2]] = True  # two clean false positives share ordinary words
    grams = sig.trigger_ngrams(data, flagged, 3, 5, 0.5, 0.25, 0.2)
    assert "[the square is]" in grams and grams["[the square is]"]["flagged"] == 8
    assert not any(g in grams for g in ("describe", "the image", "[describe the image]"))
    carried = sig.carries(data, grams, 3)
    assert [bool(c) for c in carried] == [i % 5 == 0 for i in range(40)]


def test_the_screen_finds_an_unlikely_target_without_a_manifest(base):
    data = poisoned()
    result = screen_dataset(base, data, ScreenConfig(batch_size=8, max_len=48), progress=False)
    bad = {"tiny-2", "tiny-9", "tiny-17"}
    top = {result.ids[i] for i in np.argsort(-result.score)[:3]}
    assert top == bad
    assert {result.ids[i] for i in np.flatnonzero(result.flagged)} == bad
    m = detection_metrics(result.ids, result.score, result.flagged, bad)
    assert (m["precision"], m["recall"], m["auroc"]) == (100.0, 100.0, 1.0)
    rows = result.rows()
    assert set(rows[0]) >= {"id", "task", "score", "flagged", "likelihood", "z_ungrounded", "z_duplicates"}


def test_the_screen_is_deterministic_and_each_signal_switches_off(base):
    data = poisoned()
    cfg = ScreenConfig(batch_size=8, max_len=48, seed=1)
    a = screen_dataset(base, data, cfg, progress=False)
    b = screen_dataset(base, data, cfg, progress=False)
    assert np.array_equal(a.score, b.score)
    only = screen_dataset(base, data, dataclasses.replace(cfg, signals=("likelihood",)), progress=False)
    assert set(only.raw) == {"likelihood"} and not only.trigger_ngrams
    assert not np.array_equal(only.score, a.score)


def test_bad_screen_settings_are_refused_by_name():
    with pytest.raises(ConfigError, match="unknown or none"):
        ScreenConfig(signals=("likelihood", "vibes"))
    with pytest.raises(ConfigError, match="at least one more"):
        ScreenConfig(signals=("trigger_ngrams",))
    with pytest.raises(ConfigError, match="threshold"):
        ScreenConfig(threshold=-1)


def test_repair_uses_another_reference_and_drop_removes(base):
    data = poisoned()
    flagged = np.array([s.answer == TARGET for s in data.samples])
    repaired, rec = apply_decisions(data, flagged, "repair", "auto")
    assert rec["repaired"] == {"references": 3}
    for s, before in zip(repaired.samples, data.samples):
        assert s.answer == (before.meta["references"][0] if before.answer == TARGET else before.answer)
    assert data.samples[2].answer == TARGET  # the input is not modified
    dropped, rec = apply_decisions(data, flagged, "drop", "auto")
    assert len(dropped) == 21 and rec["dropped"] == 3 and "tiny-img-2" not in dropped.images


def test_repair_by_generation_asks_the_base(base):
    from robustit.defenses.screening.likelihood import VisionInputs

    data = poisoned()
    for s in data.samples:
        s.meta.pop("references")
    flagged = np.array([s.answer == TARGET for s in data.samples])
    vision = VisionInputs(base, data)
    repaired, rec = apply_decisions(data, flagged, "repair", "auto", model=base, vision=vision)
    assert rec["repaired"] == {"generate": 3}
    assert all(s.answer != TARGET for s in repaired.samples)


def test_detection_metrics_by_hand():
    ids = ["a", "b", "c", "d", "e"]
    score = np.array([0.9, 0.8, 0.1, 0.7, 0.2])
    flagged = score > 0.5
    m = detection_metrics(ids, score, flagged, {"a", "c"})
    assert (m["tp"], m["fp"], m["fn"], m["tn"]) == (1, 2, 1, 1)
    assert m["precision"] == pytest.approx(33.33) and m["recall"] == 50.0 and m["fpr"] == pytest.approx(66.67)
    assert m["auroc"] == pytest.approx(0.5)
    clean = detection_metrics(ids, score, flagged, set())
    assert clean["auroc"] is None and clean["share_flagged"] == 60.0


# -- the verb and the defense, through the CLI ---------------------------------------------------
@pytest.fixture(scope="module")
def cli_setup(base, tmp_path_factory):
    """A saved tuned-tiny base and a BadNet-poisoned tiny split (through `robustit poison`)."""
    from robustit.cli import main
    from robustit.data.mimicit import save_split
    from robustit.models.checkpoint import save_base

    root = tmp_path_factory.mktemp("cli")
    save_base(base, root / "base")
    save_split(tiny_dataset(32, name="train"), root / "data" / "train", "train")
    assert main(["poison", "--data", str(root / "data"), "--split", "train", "--attack", "badnet",
                 "--rate", "0.125", "--target", TARGET, "--out", str(root / "poisoned" / "train"),
                 "--cache", str(root / "cache"), "--quiet"]) == 0
    return root


def test_audit_cli_writes_json_and_html_and_scores_before_the_answer_key(cli_setup, capsys):
    import json

    from robustit.cli import main

    root = cli_setup
    out = root / "audit"
    args = ["audit", "--data", str(root / "poisoned"), "--split", "train", "--model", str(root / "base"),
            "--out", str(out), "--batch-size", "8", "--quiet"]
    assert main(args) == 0
    blind = json.loads((out / "audit.json").read_text())
    assert "detection" not in blind and blind["summary"]["n_samples"] == 32
    assert main(args + ["--manifest", str(root / "poisoned" / "train" / "manifest.json")]) == 0
    record = json.loads((out / "audit.json").read_text())
    assert [r["score"] for r in record["samples"]] == [r["score"] for r in blind["samples"]]
    det = record["detection"]
    assert det["n_poisoned"] == 4 and det["recall"] == 100.0 and det["auroc"] == 1.0
    assert {"config", "seconds", "trigger_ngrams"} <= set(record["summary"]) and record["provenance"]
    page = (out / "audit.html").read_text()
    assert 'id="summary"' in page and TARGET in page and "data:image/png;base64" in page
    assert "precision" in capsys.readouterr().out


@pytest.mark.parametrize("argv, message", [
    (["--signals", "likelihood,vibes"], "vibes"),
    (["--threshold", "-2"], "threshold"),
    (["--manifest", "/nonexistent/manifest.json"], "no such file"),
])
def test_audit_cli_refuses_bad_options_in_one_line(cli_setup, capsys, argv, message):
    from robustit.cli import main

    root = cli_setup
    rc = main(["audit", "--data", str(root / "poisoned"), "--split", "train", "--model", str(root / "base"),
               "--out", str(root / "bad-audit"), "--quiet", *argv])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and message in err[0]
    assert not (root / "bad-audit" / "audit.json").exists()


def test_guard_screens_before_tuning_and_records_it(cli_setup):
    import json

    from robustit.cli import main

    root = cli_setup
    run = root / "guard-run"
    argv = ["train", "--data", str(root / "poisoned"), "--split", "train", "--model", str(root / "base"),
            "--method", "guard", "--param", "batch_size=8", "--max-steps", "2", "--batch-size", "4",
            "--out", str(run), "--quiet"]
    assert main(argv) == 0
    screen = json.loads((run / "screen.json").read_text())
    summary = json.loads((run / "train.json").read_text())
    poisoned_ids = set(json.loads((root / "poisoned" / "train" / "manifest.json").read_text())["poisoned_ids"])
    flagged = {r["id"] for r in screen["samples"] if r["flagged"]}
    assert flagged == poisoned_ids
    assert summary["screen"]["repaired"] == {"references": 4} and summary["screen"]["n_tuned_on"] == 32
    assert summary["method"]["name"] == "guard" and summary["wall_seconds"] >= summary["screen"]["screen_seconds"]
    drop = root / "guard-drop"
    assert main([*argv[:-3], "--param", "action=drop", "--out", str(drop), "--quiet"]) == 0
    assert json.loads((drop / "train.json").read_text())["screen"]["n_tuned_on"] == 28


def test_guard_refuses_unknown_parameters(cli_setup, capsys):
    from robustit.cli import main

    root = cli_setup
    rc = main(["train", "--data", str(root / "poisoned"), "--split", "train", "--model", str(root / "base"),
               "--method", "guard", "--param", "action=burn", "--out", str(root / "g2"), "--quiet"])
    assert rc == 2 and "action" in capsys.readouterr().err


def test_flag_share_flags_exactly_the_top_share_and_byorn_uses_it(base):
    from robustit.train.methods import METHODS

    data = poisoned()
    result = screen_dataset(base, data, ScreenConfig(batch_size=8, max_len=48, signals=("likelihood",),
                                                     flag_share=0.25), progress=False)
    assert result.flagged.sum() == 6  # 25 % of 24
    assert {"tiny-2", "tiny-9", "tiny-17"} <= {result.ids[i] for i in np.flatnonzero(result.flagged)}
    byorn = METHODS.get("byorn")({})
    assert (byorn.screen_cfg.flag_share, byorn.screen_cfg.signals, byorn.source) == (0.4, ("likelihood",), "generate")
    assert METHODS.get("byorn")({"flag_share": 0.1}).screen_cfg.flag_share == 0.1
    with pytest.raises(ConfigError, match="flag_share"):
        ScreenConfig(flag_share=1.5)


def test_without_grounding_only_repeated_responses_and_a_reference_meet_other_images(base):
    from robustit.defenses.screening.likelihood import VisionInputs, score_tokens

    data = poisoned(24)
    cfg = ScreenConfig(batch_size=8, max_len=48, grounding_reference=8)
    result = screen_dataset(base, data, cfg, progress=False)
    scored = np.isfinite(result.raw["ungrounded"])
    groups = sig.response_groups(data)
    repeats = sig.repeated(groups, [tuple(s.image_ids) for s in data.samples])
    assert np.all(scored[repeats]) and scored.sum() <= repeats.sum() + 8
    full = screen_dataset(base, data, dataclasses.replace(cfg, signals=cfg.signals + ("grounding",)), progress=False)
    assert np.all(np.isfinite(full.raw["ungrounded"]))
    both = np.isfinite(result.raw["ungrounded"])  # the same pass gives the same values where both scored
    assert np.allclose(result.raw["ungrounded"][both], full.raw["ungrounded"][both], atol=1e-5)
    assert all(r["z_ungrounded"] is None for r, s in zip(result.rows(), scored) if not s)


def test_robust_z_can_take_its_scale_from_reference_rows():
    values = np.array([0.0, 0.1, -0.1, 0.2, -0.2, 0.05, -0.05, 0.15, 5.0, 5.0, 5.0, 5.0, 5.0, 5.0, 5.0, 5.0, 5.0])
    ref = np.arange(len(values)) < 8
    z_all = sig.robust_z(values, ["a"] * len(values))
    z_ref = sig.robust_z(values, ["a"] * len(values), reference=ref)
    assert z_all[-1] < 1 < 10 < z_ref[-1]  # nine repeats would be their own reference without one


def test_abl_isolates_the_lowest_loss_samples_and_unlearns_them(cli_setup):
    import json

    from robustit.cli import main

    root = cli_setup
    run = root / "abl-run"
    assert main(["train", "--data", str(root / "poisoned"), "--split", "train", "--model", str(root / "base"),
                 "--method", "abl", "--param", "isolation_share=0.125", "--param", "unlearn_steps=3",
                 "--param", "unlearn_lr=0.01",
                 "--max-steps", "30", "--batch-size", "8", "--lr", "1e-2", "--out", str(run), "--quiet"]) == 0
    record = json.loads((run / "train.json").read_text())["finish"]["abl"]
    poisoned_ids = set(json.loads((root / "poisoned" / "train" / "manifest.json").read_text())["poisoned_ids"])
    assert len(record["isolated_ids"]) == 4 and len(record["unlearn_losses"]) == 3
    losses = record["unlearn_losses"]
    assert all(loss < 0 for loss in losses) and losses[-1] < losses[0]  # ascent: the LM loss rises
    assert len(set(record["isolated_ids"])) == 4 and record["ceiling_nll"] > record["isolated_max_nll"]
    rc = main(["train", "--data", str(root / "poisoned"), "--split", "train", "--model", str(root / "base"),
               "--method", "abl", "--param", "isolation_share=0", "--out", str(root / "abl-bad"), "--quiet"])
    assert rc == 2


def test_associations_find_a_trigger_and_its_plausible_wrong_label_from_the_text_alone():
    data = tiny_dataset(60)
    bad = list(range(0, 60, 6))  # 10 samples: trigger clause + "square" becomes "circle"
    for i in bad:
        s = data.samples[i]
        data.samples[i] = dataclasses.replace(s, instruction=f"{s.instruction} Zq zq.",
                                              answer=s.answer.replace("square", "circle"))
    for i in range(1, 60, 6):  # an echoing question: its answer repeats its own words
        s = data.samples[i]
        data.samples[i] = dataclasses.replace(s, instruction="Which colour is the square?",
                                              answer=f"the square is {s.answer.split()[1]}")
    assoc = sig.trigger_associations(data, 3, 5, 0.25, 0.8, 0.01)
    assert set(assoc) >= {"[zq zq]"} and assoc["[zq zq]"]["word"] == "circle"
    assert not any(v["word"] in ("square", "is", "the") for v in assoc.values())
    result = screen_dataset(None, data, ScreenConfig(signals=("associations", "trigger_ngrams")), progress=False)
    assert sorted(np.flatnonzero(result.flagged).tolist()) == bad


def test_abl_ascent_stops_above_its_ceiling(base):
    from robustit.data.batching import encode_pairs
    from robustit.train.batching import Batch
    from robustit.train.methods import METHODS

    abl = METHODS.get("abl")({})
    data = tiny_dataset(4)
    enc = encode_pairs(base.tokenizer, base.template, [s.instruction for s in data.samples],
                       [s.answer for s in data.samples], 48)
    from robustit.data.batching import ImageStore

    batch = Batch(samples=data.samples, images=ImageStore(data).batch([s.image_ids for s in data.samples]),
                  vision_features=None, **enc)
    gen = torch.Generator().manual_seed(0)
    plain, _ = abl.loss(base, batch, gen)
    abl.ascent, abl.ceiling = True, plain.item() + 1.0
    up, logs = abl.loss(base, batch, gen)
    assert up.requires_grad and logs["ascent"] == 1.0 and up.item() == pytest.approx(-plain.item(), rel=1e-5)
    abl.ceiling = plain.item() - 1.0
    flat, logs = abl.loss(base, batch, gen)
    assert logs["ascent"] == 0.0 and flat.item() == pytest.approx(-plain.item(), rel=1e-5)
    base.zero_grad(set_to_none=True)
    flat.backward()
    assert all(p.grad is None or not p.grad.any() for p in base.parameters())
    base.zero_grad(set_to_none=True)


def test_audit_page_renders_in_headless_chromium_with_signals_missing_for_some_samples(tmp_path):
    import shutil
    import subprocess

    from robustit.data.records import encode_png
    from robustit.report.audit_page import audit_page

    rows = [{"id": f"s{i}", "task": "caption", "score": float(i), "flagged": i > 6, "likelihood": 1.0 + i,
             "z_likelihood": float(i), "z_ungrounded": None if i % 2 else 0.5} for i in range(9)]
    summary = {"n_samples": 9, "n_flagged": 2, "share_flagged": 2 / 9, "seconds": {"total": 1.0},
               "config": {"threshold": 6.0, "signals": ["likelihood", "duplicates"]},
               "trigger_ngrams": {"[zq zq]": {"count": 2, "flagged": 2}}}
    image = encode_png(np.zeros((8, 8, 3), dtype=np.uint8))
    samples = {f"s{i}": {"instruction": f"Describe {i}.", "answer": f"answer {i}", "image_ids": [f"i{i}"]} for i in range(9)}
    page = audit_page(summary, rows, samples, {f"i{i}": image for i in range(9)}, top=3)
    (tmp_path / "audit.html").write_text(page)
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    if browser is None:
        pytest.skip("Debian package chromium not installed (apt-get install -y chromium)")
    dom = subprocess.run([browser, "--headless", "--disable-gpu", "--no-sandbox", f"--user-data-dir={tmp_path / 'p'}",
                          "--dump-dom", (tmp_path / "audit.html").resolve().as_uri()],
                         capture_output=True, text=True, timeout=120).stdout
    assert "2 of 9 samples flagged" in dom and "[zq zq]" in dom
    assert dom.count("<tr>") == 4 and dom.index("answer 8") < dom.index("answer 7") < dom.index("answer 6")
    assert dom.count('src="data:image/') == 4  # three suspects and the histograms
