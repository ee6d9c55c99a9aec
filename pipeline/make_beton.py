"""Convert a dataset's splits to FFCV .beton files, the way the trainer splits them.

    python -m pipeline.make_beton --dataset digits --out-dir data/ffcv
    python -m pipeline.make_beton --dataset folder --data-root ~/images --image-size 64 --write-mode jpg
    python -m pipeline.make_beton --dataset folder --data-root ~/imagenet --image-size 224 \
        --write-mode jpg --max-resolution 256 --workers 16 --out-dir ~/imagenet/ffcv

A folder too large for memory (`--data-in-memory auto` decides as training does) is written by
streaming: FFCV's worker processes decode one file each at a time, with a progress bar, and every
image keeps its own size up to `--max-resolution` on its longer side (FFCV's meaning). Unreadable
files become blank rows that the loader skips and counts.

It writes <out-dir>/<dataset>-{train,val,test}.beton, each with a `.json` fingerprint of its
source. `train/main.py --loader ffcv --beton-dir <out-dir>` reads them, and refuses one made
from different data (another dataset, seed, split or image size). Use the same data settings
here as in training.
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipeline.beton import WRITE_MODES, write_beton  # noqa: E402
from pipeline.datasets import DATASETS, DataError, build_splits  # noqa: E402
from pipeline.image_set import WriteError  # noqa: E402
from pipeline.streaming import IN_MEMORY_CHOICES  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pipeline.make_beton", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", default="digits", choices=DATASETS)
    parser.add_argument("--data-root", default="data")
    parser.add_argument("--image-size", type=int, default=32)
    parser.add_argument("--val-split", type=float, default=0.1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--samples-per-class", type=int, default=0)
    parser.add_argument("--imbalance-ratio", type=float, default=1.0)
    parser.add_argument("--strict-images", action="store_true")
    parser.add_argument("--out-dir", default="data/ffcv")
    parser.add_argument("--write-mode", default="raw", choices=WRITE_MODES, help="raw pixels or JPEG")
    parser.add_argument("--jpeg-quality", type=int, default=95)
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="writer processes")
    parser.add_argument("--max-resolution", type=int, default=0,
                        help="streamed folders: cap on each stored image's longer side; 0 keeps every size")
    parser.add_argument("--data-in-memory", default="auto", choices=IN_MEMORY_CHOICES,
                        help="folder datasets: as train/main.py (the .beton must be made the way training reads)")
    args = parser.parse_args(argv)
    try:
        splits = build_splits(args.dataset, args.data_root, args.image_size, args.val_split, args.seed,
                              args.samples_per_class, args.imbalance_ratio, args.strict_images,
                              data_in_memory=args.data_in_memory, cache_dir=args.out_dir)
        for part in ("train", "val", "test"):
            split = getattr(splits, part)
            path = write_beton(split, Path(args.out_dir) / f"{args.dataset}-{part}.beton", args.write_mode,
                               args.jpeg_quality, args.workers, args.max_resolution or None)
            kind = "streamed, each at its own size" if split.streaming else "{}×{}".format(*split.image_shape[:2])
            print(f"{path}: {len(split)} images ({kind}), {args.write_mode}")
    except (DataError, ValueError, WriteError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
