"""What does the vision path encode? Linear probes of scene attributes on three feature sets.

    python benchmarks/attribute_probe.py --data work/world [--model embedded] [--steps 300]

Features: raw pixels (16x16 average-pooled), the frozen vision encoder's output and the
perceiver's output of ``--model`` (both mean-pooled over tokens). For each, a linear probe is
trained on 4,000 train images (standardised features) and scored on 800 held-out ones by the
mean ROC AUC per attribute group (colour, shape, count, colour per cell; 0.5 = chance). The
base-rate BCE is printed to show why a mean BCE over the 283 mostly rare labels is no use as a
probe metric.
"""

import argparse
import math

import torch
import torch.nn.functional as F


def base_rate_bce(metas, head) -> float:
    targets = head.targets(metas)
    p = targets.mean(0)
    terms = [-(q * math.log(q) + (1 - q) * math.log(1 - q)) for q in p.tolist() if 0 < q < 1]
    return sum(terms) / targets.shape[1]


GROUPS = {"colour": "colour:", "shape": "shape:", "count": "count:", "colour per cell": "cell"}


def group_auc(logits, targets, vocab) -> dict:
    from sklearn.metrics import roc_auc_score

    out = {}
    for group, prefix in GROUPS.items():
        aucs = []
        for j, name in enumerate(vocab):
            keep = name.startswith(prefix) and (group != "colour per cell" or name.split(":")[1]
                                                in {v.split(":")[1] for v in vocab if v.startswith("colour:")})
            y = targets[:, j]
            if keep and 0 < y.sum() < len(y):
                aucs.append(roc_auc_score(y.numpy(), logits[:, j].numpy()))
        out[group] = sum(aucs) / len(aucs) if aucs else float("nan")
    return out


def probe(x, metas, steps: int, train_n: int = 4000):
    """Train a linear SceneHead on x[:train_n]; (held-out BCE, group AUCs)."""
    from robustit.train.scene_supervision import SceneHead

    torch.manual_seed(0)
    head = SceneHead(x.shape[1])
    opt = torch.optim.Adam(head.parameters(), lr=3e-3)
    for _ in range(steps):
        i = torch.randint(0, train_n, (64,)).tolist()
        loss = head.loss(x[i][:, None, None, :], [metas[j] for j in i])
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        held = head.loss(x[train_n:][:, None, None, :], metas[train_n:]).item()
        logits = head.linear(x[train_n:])
    return held, group_auc(logits, head.targets(metas[train_n:]), head.vocab)


def features(model, images, batch: int = 200):
    """Mean-pooled frozen vision features and perceiver outputs: (N, Dv), (N, D)."""
    vis, per = [], []
    with torch.no_grad():
        for k in range(0, len(images), batch):
            v = model.encode_images(images[k:k + batch][:, None])
            vis.append(v.mean(dim=(1, 2)))
            per.append(model.adapt(v).mean(dim=(1, 2)))
    return torch.cat(vis), torch.cat(per)


def train_fresh_vision(model_cfg, images, metas, steps: int, lr: float):
    """A fresh vision encoder (the base's sizes) trained on the attributes alone, summed BCE per
    sample, batch 32; returns an object with encode_images/adapt for ``features``."""
    from robustit.models.embedded import EmbeddedFlamingo
    from robustit.models.tokenizer import train_tokenizer
    from robustit.train.scene_supervision import SceneHead

    torch.manual_seed(0)
    tok = train_tokenizer(["a"], vocab_size=300)
    fresh = EmbeddedFlamingo(model_cfg.__class__(**{**model_cfg.__dict__, "vocab_size": len(tok)}), tok)
    head = SceneHead(model_cfg.vision_width)
    params = list(fresh.vision_encoder.parameters()) + list(head.parameters())
    opt = torch.optim.AdamW(params, lr=lr)
    for step in range(steps):
        i = torch.randint(0, 4000, (32,)).tolist()
        v = fresh.encode_images(images[i][:, None])
        targets = head.targets([metas[j] for j in i])
        logits = head.linear(v.mean(dim=(1, 2)))
        loss = F.binary_cross_entropy_with_logits(logits, targets, reduction="none").sum(1).mean()
        for g in opt.param_groups:
            g["lr"] = lr * min(1.0, (step + 1) / 50)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return fresh.eval()


def main() -> None:
    from robustit.cli.common import open_split
    from robustit.data.batching import ImageStore
    from robustit.train.scene_supervision import SceneHead

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", required=True)
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--model", default="embedded", help="base model whose features are probed")
    ap.add_argument("--train-vision-steps", type=int, default=0,
                    help="also train a fresh vision encoder on the attributes for N steps and probe it")
    ap.add_argument("--vision-lr", type=float, default=1e-3, help="learning rate for --train-vision-steps")
    args = ap.parse_args()
    from robustit.models.factory import load_base

    torch.set_num_threads(2)
    ds = open_split(args.data, "train")
    samples = [s for s in ds.samples if "scene" in s.meta][:4800]
    store = ImageStore(ds, [s.image_ids[0] for s in samples])
    images = store.batch([s.image_ids[:1] for s in samples])[:, 0]
    metas = [s.meta for s in samples]
    model, _ = load_base(args.model)
    vision, perceiver = features(model, images)
    print(f"labels {len(SceneHead(1).vocab)}; base-rate BCE {base_rate_bce(metas, SceneHead(1)):.4f}")
    sets = [("raw pixels 16x16", F.avg_pool2d(images, 4).flatten(1)),
            ("vision encoder (mean)", vision), ("perceiver (mean)", perceiver)]
    if args.train_vision_steps:
        fresh = train_fresh_vision(model.config, images, metas, args.train_vision_steps, args.vision_lr)
        sets.append((f"fresh ViT, {args.train_vision_steps} steps", features(fresh, images)[0]))
    for name, x in sets:
        x = (x - x[:4000].mean(0)) / (x[:4000].std(0) + 1e-6)
        _, auc = probe(x, metas, args.steps)
        print(f"{name:24s} AUC " +
              "  ".join(f"{g} {v:.3f}" for g, v in auc.items()))


if __name__ == "__main__":
    main()
