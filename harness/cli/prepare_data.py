"""Convert a dataset to FFCV files once, look at its long-tailed counts, preview augmentations:

    python tools/prepare_data.py datasets/cifar10.yaml --root ~/downloads          # -> data/cifar10/*.beton
    python tools/prepare_data.py datasets/cifar10.yaml --root DIR --imbalance exp:100 --dry-run
    python tools/prepare_data.py datasets/cifar10.yaml --root DIR --preview standard+randaugment
"""
from __future__ import annotations

import argparse
import sys

from harness.cli import fail
from harness.registry import ConfigError


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="tools/prepare_data.py", description=__doc__.splitlines()[0])
    p.add_argument("card", help="dataset card, e.g. datasets/cifar10.yaml (or its name)")
    p.add_argument("--root", help="the source: a folder holding one of the card's layouts")
    p.add_argument("--out", default="data", help="where prepared datasets go (data.root; default data)")
    p.add_argument("--storage", choices=["raw", "jpeg"], help="image storage (default: the card's)")
    p.add_argument("--jpeg-quality", type=int, help="JPEG quality (default: the card's)")
    p.add_argument("--resolution", type=int, help="image side in pixels (default: the card's)")
    p.add_argument("--workers", type=int, default=2, help="reader threads and writer processes")
    p.add_argument("--force", action="store_true", help="convert even if the inputs are unchanged")
    p.add_argument("--dry-run", action="store_true", help="print the training counts; write nothing")
    p.add_argument("--imbalance", default="none", help="profile for --dry-run: PROFILE[:FACTOR], e.g. exp:100")
    p.add_argument("--val-fraction", type=float, default=0.0, help="for --dry-run: validation split carved from train")
    p.add_argument("--preview", metavar="AUG", help="write a PNG grid of augmented samples (e.g. standard+cutout)")
    p.add_argument("--png", help="where --preview writes (default preview-<AUG>.png)")
    args = p.parse_args(sys.argv[1:] if argv is None else argv)
    from harness.data import convert, load_card
    from harness.data.conversion import dry_run
    from harness.data.preview import preview_grid, samples
    try:
        card = load_card(args.card)
        if args.dry_run:
            if not args.root:
                raise ConfigError("--dry-run reads the source: pass --root")
            print(dry_run(card, args.root, args.imbalance, args.val_fraction))
        elif args.preview:
            images, labels = samples(card, args.root, args.out)
            png = args.png or f"preview-{args.preview.replace('+', '_')}.png"
            print(f"wrote {preview_grid(images, labels, args.preview, png)}")
        elif not args.root:
            raise ConfigError("--root is required: the folder that holds the source dataset")
        else:
            convert(card, args.root, args.out, storage=args.storage, jpeg_quality=args.jpeg_quality,
                    resolution=args.resolution, workers=args.workers, force=args.force)
    except ConfigError as e:
        return fail(str(e))
    except KeyboardInterrupt:
        print("\ninterrupted: nothing was written; run the same command again", file=sys.stderr)
        return 130
    return 0
