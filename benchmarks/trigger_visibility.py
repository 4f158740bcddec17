"""How visible is each attack's image trigger to the frozen vision encoder and the base adapter?

    python benchmarks/trigger_visibility.py --data work/world [--model embedded] [--n 256]
        [--attacks badnet,blended,...] [--out FILE.json]

A backdoor can only ride on the image if the trigger moves the features the tuned part sees.
For each attack, on the first N images of ``test-a`` (triggers prepared exactly as
``robustit poison --model MODEL`` prepares them on the training split, reusing cached learned
triggers), it measures, on mean-pooled features of the frozen encoder (B, Dv) and of the base
model's adapter output (B, D):

* ``shift``: mean ||f(T(x)) - f(x)|| / ||f(x)||, how far the trigger moves an image;
* ``coherence``: mean cosine between each image's shift and the mean shift; near 1, the trigger
  adds one direction whatever the image (a learnable signature), near 0, image-specific noise;
* ``probe``: 5-fold cross-validated accuracy of a logistic regression telling triggered from
  clean features (0.5 = invisible), each image in one fold only.

Prints one row per attack and writes the figures with the configuration to ``--out``.
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
from types import SimpleNamespace

import numpy as np
import torch

ALL = "badnet,blended,sig,ssba,ftrojan,trojvqa,vltrojan"


def pooled_features(model, images: torch.Tensor, batch: int = 64):
    """(B, 3, H, W) -> (encoder (B, Dv), adapter (B, D)) mean-pooled, float64 numpy."""
    enc, ada = [], []
    with torch.no_grad():
        for i in range(0, len(images), batch):
            vis = model.encode_images(images[i:i + batch].unsqueeze(1))  # (b, 1, P, Dv)
            enc.append(vis[:, 0].mean(1))
            ada.append(model.adapt(vis)[:, 0].mean(1))  # (b, N, D) -> (b, D)
    return torch.cat(enc).double().numpy(), torch.cat(ada).double().numpy()


def visibility(clean: np.ndarray, triggered: np.ndarray, seed: int = 0) -> dict:
    """shift, coherence and probe accuracy of (N, D) clean vs triggered features."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import GroupKFold, cross_val_score
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    delta = triggered - clean
    shift = np.linalg.norm(delta, axis=1) / np.linalg.norm(clean, axis=1).clip(1e-12)
    mean = delta.mean(0)
    cos = delta @ mean / (np.linalg.norm(delta, axis=1) * np.linalg.norm(mean)).clip(1e-12)
    x = np.concatenate([clean, triggered])
    y = np.r_[np.zeros(len(clean)), np.ones(len(triggered))]
    groups = np.r_[np.arange(len(clean)), np.arange(len(clean))]  # an image and its twin together
    probe = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000, C=1.0, random_state=seed))
    acc = cross_val_score(probe, x, y, groups=groups, cv=GroupKFold(n_splits=5))
    return {"shift": float(shift.mean()), "coherence": float(cos.mean()), "probe": float(acc.mean())}


def main() -> None:
    from robustit.cli.common import open_split
    from robustit.cli.poison import make_attack, make_attack_context
    from robustit.models.factory import load_base
    from robustit.data.batching import ImageStore

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", required=True, help="world root (`robustit data build`)")
    ap.add_argument("--model", default="embedded", help="frozen base model (default: the shipped one)")
    ap.add_argument("--n", type=int, default=256, help="test-a images to measure on (default 256)")
    ap.add_argument("--attacks", default=ALL, help=f"comma-separated (default {ALL})")
    ap.add_argument("--out", default=None, help="write the figures and configuration as JSON here")
    args = ap.parse_args()
    torch.manual_seed(0)
    torch.set_num_threads(1)
    model, _ = load_base(args.model)
    model.eval()
    test = open_split(args.data, "test-a")
    ids = [s.image_ids[0] for s in test.samples[: args.n]]
    images = ImageStore(test, ids).batch([[i] for i in ids])[:, 0]
    clean = pooled_features(model, images)
    opts = SimpleNamespace(model=args.model, cache=None, trigger_seed=0, param=[], quiet=True,
                           text_trigger_mode="paper")
    ctx = make_attack_context(opts, open_split(args.data, "train"))
    rows = {}
    print(f"{'attack':10s} {'enc shift':>9s} {'enc coh':>8s} {'enc probe':>9s} "
          f"{'ada shift':>9s} {'ada coh':>8s} {'ada probe':>9s}")
    for name in [a.strip() for a in args.attacks.split(",") if a.strip()]:
        attack = make_attack(opts, name, ctx)
        trig = pooled_features(model, attack.apply_image(images, ids))
        rows[name] = {"encoder": visibility(clean[0], trig[0]), "adapter": visibility(clean[1], trig[1])}
        e, a = rows[name]["encoder"], rows[name]["adapter"]
        print(f"{name:10s} {e['shift']:9.3f} {e['coherence']:8.3f} {e['probe']:9.3f} "
              f"{a['shift']:9.3f} {a['coherence']:8.3f} {a['probe']:9.3f}")
    if args.out:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()
        record = {"config": vars(args), "seed": 0, "torch": torch.__version__, "python": platform.python_version(),
                  "git_commit": commit, "attacks": rows}
        with open(args.out, "w") as fh:
            json.dump(record, fh, indent=1)


if __name__ == "__main__":
    main()
