"""Does a model use the image? LM loss on held-out samples with the right vs shuffled images.

    python benchmarks/image_reliance.py --model work/base --data work/world [--split val] [--n 256]

Prints both losses and their gap; a model that ignores the image shows no gap.
"""

import argparse

import torch


def losses(model, dataset, n: int, batch: int = 32):
    from robustit.data.batching import ImageStore, encode_pairs

    samples = dataset.samples[:n]
    store = ImageStore(dataset, [s.image_ids[0] for s in samples])
    right, shuffled = [], []
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for i in range(0, len(samples), batch):
            chunk = samples[i:i + batch]
            enc = encode_pairs(model.tokenizer, model.template, [s.instruction for s in chunk],
                               [s.answer for s in chunk], 96)
            images = store.batch([s.image_ids[:1] for s in chunk])
            perm = torch.randperm(len(chunk), generator=g)
            right.append(model(**enc, images=images).loss.item())
            shuffled.append(model(**enc, images=images[perm]).loss.item())
    return sum(right) / len(right), sum(shuffled) / len(shuffled)


def main() -> None:
    from robustit.cli.common import open_split
    from robustit.models.factory import load_model

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="embedded")
    ap.add_argument("--tuned", default=None)
    ap.add_argument("--data", required=True)
    ap.add_argument("--split", default="val")
    ap.add_argument("--n", type=int, default=256)
    args = ap.parse_args()
    torch.set_num_threads(1)
    model, _, _ = load_model(args.model, args.tuned)
    r, s = losses(model, open_split(args.data, args.split), args.n)
    print(f"loss with the right images {r:.3f}, shuffled images {s:.3f}, gap {s - r:+.3f}")


if __name__ == "__main__":
    main()
