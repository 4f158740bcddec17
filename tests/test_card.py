"""The model card is rendered from result files, not typed by hand."""

from robustit.models.card import render


def _result(cider, asr=None):
    r = {"metrics": {"BLEU_1": 70.0, "BLEU_4": 30.25, "METEOR": None, "ROUGE_L": 55.0, "CIDEr": cider},
         "false_trigger_rate": {"rate_percent": 0.5}, "asr": {}, "counts": {"samples": 200}}
    if asr is not None:
        r["asr"] = {"blended": {"both": {"rate_percent": asr}, "image": {"rate_percent": 1.0}, "text": None}}
    return r


def test_card_lists_pretraining_and_metrics_from_the_files():
    config = {"family": "embedded-flamingo-gpt2", "config": {"lm_layers": 4},
              "pretraining": {"command": "robustit pretrain --data w", "wall_seconds": 123.4,
                              "parameters": 7700000, "samples_per_second": 30.5}}
    text = render(config, [("test-a zero-shot", _result(88.8))])
    assert "`robustit pretrain --data w`" in text and "123.4 s" in text and "7,700,000" in text
    assert "| test-a zero-shot | 70.0 | 30.2 | - | 55.0 | 88.8 | 200 |" in text


def test_card_says_on_which_machine_and_torch_the_weights_were_drawn():
    config = {"pretraining": {}, "python": None,
              "provenance": {"python": "3.12.3", "versions": {"torch": "2.11.0"},
                             "machine": {"platform": "Linux-gpu", "cpu_count": 16}}}
    assert "- machine: Linux-gpu, 16 CPUs, torch 2.11.0, python 3.12.3" in render(config, [])


def test_card_command_appends_the_note_after_the_tables(tmp_path):
    import json

    from robustit.models.card import main

    (tmp_path / "config.json").write_text(json.dumps({"pretraining": {"command": "robustit pretrain"}}))
    (tmp_path / "eval.json").write_text(json.dumps(_result(61.5)))
    (tmp_path / "note.md").write_text("Evaluated on 2026-11-30.\n")
    assert main(["--base", str(tmp_path), "--eval", f"clean={tmp_path / 'eval.json'}",
                 "--note", str(tmp_path / "note.md")]) == 0
    card = (tmp_path / "README.md").read_text()
    assert card.index("| clean |") < card.index("Evaluated on 2026-11-30.") and card.endswith(".\n")
