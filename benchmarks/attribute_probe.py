"""How informative is the mean attribute BCE? Base rate vs a linear probe on raw pixels.

    python benchmarks/attribute_probe.py --data work/world [--steps 300]

Prints the per-label BCE of predicting base rates and of a linear probe on 16x16 average-pooled
pixels (held-out), with the scene-attribute vocabulary of ``robustit.train.scene_supervision``.
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


def main() -> None:
    from robustit.cli.common import open_split
    from robustit.train.batching import ImageStore
    from robustit.train.scene_supervision import SceneHead

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", required=True)
    ap.add_argument("--steps", type=int, default=300)
    args = ap.parse_args()
    torch.manual_seed(0)
    ds = open_split(args.data, "train")
    samples = [s for s in ds.samples if "scene" in s.meta][:4800]
    store = ImageStore(ds, [s.image_ids[0] for s in samples])
    x = F.avg_pool2d(store.batch([s.image_ids[:1] for s in samples])[:, 0], 4).flatten(1)
    metas = [s.meta for s in samples]
    head = SceneHead(x.shape[1])
    opt = torch.optim.Adam(head.parameters(), lr=3e-3)
    train_n = 4000
    for _ in range(args.steps):
        i = torch.randint(0, train_n, (64,)).tolist()
        loss = head.loss(x[i][:, None, None, :], [metas[j] for j in i])
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        held = head.loss(x[train_n:][:, None, None, :], metas[train_n:]).item()
    print(f"labels {len(head.vocab)}; base-rate BCE {base_rate_bce(metas, head):.4f}; "
          f"raw-pixel linear probe (held-out) {held:.4f}")


if __name__ == "__main__":
    main()
