"""``audit.html``: the top suspects (image, instruction, response, signals) and the score
histograms, one self-contained page (inline CSS, images as data URIs). No torch."""

from __future__ import annotations

import base64
import io
from typing import Dict, List, Optional

from .html import CSS, esc


def histogram_png(rows: List[dict], keys: List[str], threshold: float) -> bytes:
    """One panel per key: the distribution of that z-scored signal (and the combined score),
    log-scaled counts, the decision threshold as a line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(keys), figsize=(3.2 * len(keys), 2.6), squeeze=False)
    for ax, key in zip(axes[0], keys):
        values = [r[key] for r in rows if r.get(key) is not None]  # None: not computed for that sample
        ax.hist(values, bins=60, color="#4a6fa5", log=True)
        ax.axvline(threshold, color="#b33", lw=1)
        ax.set_title(key, fontsize=9)
        ax.tick_params(labelsize=7)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90)
    plt.close(fig)
    return buf.getvalue()


def _img(data: Optional[bytes]) -> str:
    if not data:
        return ""
    mime = "jpeg" if data[:2] == b"\xff\xd8" else "png"
    return f'<img style="width:96px" src="data:image/{mime};base64,{base64.b64encode(data).decode()}">'


def audit_page(summary: dict, rows: List[dict], samples: Dict[str, dict], images: Dict[str, bytes],
               top: int = 40, detection: Optional[dict] = None) -> str:
    """The page.

    Args:
        summary: the audit's summary (counts, trigger n-grams, config, timings).
        rows: per-sample rows (id, task, signals, z, score, flagged), any order.
        samples: id -> {"instruction", "answer", "image_ids"}.
        images: image id -> encoded bytes (first image of each suspect is shown).
        top: suspects shown, highest score first.
        detection: precision / recall ... when a manifest was given (evaluation only).
    """
    threshold = summary["config"]["threshold"]
    zkeys = [k for k in rows[0] if k.startswith("z_")] + ["score"] if rows else ["score"]
    hist = base64.b64encode(histogram_png(rows, zkeys, threshold)).decode() if rows else ""
    ranked = sorted(rows, key=lambda r: -r["score"])[:top]
    head = ("<tr><th>#</th><th>image</th><th>id</th><th>task</th><th>instruction</th><th>response</th>"
            "<th>score</th><th>flagged</th><th>strongest signals</th></tr>")
    body = []
    for k, r in enumerate(ranked, 1):
        s = samples.get(r["id"], {})
        strongest = sorted(((r[z], z[2:]) for z in zkeys if z.startswith("z_") and r.get(z) is not None),
                           reverse=True)[:2]
        body.append("<tr>" + "".join([
            f"<td>{k}</td>", f"<td>{_img(images.get((s.get('image_ids') or [''])[0]))}</td>",
            f"<td>{esc(r['id'])}</td>", f"<td>{esc(r['task'])}</td>", f"<td>{esc(s.get('instruction', ''))}</td>",
            f"<td>{esc(s.get('answer', ''))}</td>", f'<td class="num">{r["score"]:.2f}</td>',
            f"<td>{'yes' if r['flagged'] else ''}</td>",
            f"<td>{esc(', '.join(f'{n} {v:.1f}' for v, n in strongest))}"
            f"{esc(' ngram: ' + r['trigger_ngram']) if r.get('trigger_ngram') else ''}</td>"]) + "</tr>")
    grams = summary.get("trigger_ngrams") or {}
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>robustit audit</title>"
             f"<style>{CSS}</style></head><body>", "<h1>robustit audit</h1>",
             f'<p id="summary">{summary["n_flagged"]} of {summary["n_samples"]} samples flagged '
             f'({100 * summary["share_flagged"]:.2f} %) at threshold {threshold:g} (robust z); signals: '
             f'{esc(", ".join(summary["config"]["signals"]))}; {summary["seconds"].get("total", 0):.1f} s.</p>']
    if grams:
        parts.append("<p>Instruction n-grams carried by the suspects and almost no one else (a text "
                     "trigger?): " + esc("; ".join(f"'{g}' ({v['flagged']}/{v['count']})"
                                                   for g, v in grams.items())) + "</p>")
    if detection:
        parts.append("<h2>Against the manifest (evaluation only; read after scoring)</h2><pre>"
                     + esc(", ".join(f"{k} {v}" for k, v in detection.items())) + "</pre>")
    parts += ["<h2>Score histograms</h2>", f'<img src="data:image/png;base64,{hist}">' if hist else "",
              f"<h2>Top {len(ranked)} suspects</h2>", f"<table>{head}{''.join(body)}</table>",
              "<h2>Configuration</h2><pre>" + esc(summary["config"]) + "</pre></body></html>"]
    return "\n".join(parts)
