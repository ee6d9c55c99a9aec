"""Benchmarks, printed as tables with ratios against baselines measured in the same run.

    python train/bench.py kernels [--batches 128,256,512] [--classes 10,100,1000] [--output bench.jsonl]
    python train/bench.py loader [--images 8192] [--folder-images 2048] [--batch 256] [--output bench.jsonl]
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script from anywhere

from pipeline.loaders import LOADERS as LOADER_NAMES  # noqa: E402


def integers(text: str) -> tuple[int, ...]:
    return tuple(int(part) for part in text.split(",") if part.strip())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="train/bench.py", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    kernel_parser = commands.add_parser("kernels", help="loss and view kernels against the torch composite")
    kernel_parser.add_argument("--batches", type=integers, default=(128, 256, 512), help="source images B")
    kernel_parser.add_argument("--classes", type=integers, default=(10, 100, 1000), help="classes N")
    kernel_parser.add_argument("--num-transforms", type=int, default=4, help="views per image M")
    kernel_parser.add_argument("--repeats", type=int, default=20, help="timed repetitions (median reported)")
    kernel_parser.add_argument("--output", default=None, help="append one JSON line per measurement here")
    loader_parser = commands.add_parser("loader", help="every --loader against the torch DataLoader reference")
    loader_parser.add_argument("--images", type=int, default=8192, help="CIFAR-shaped images in memory")
    loader_parser.add_argument("--folder-images", type=int, default=2048, help="JPEG files in the folder case; 0 skips")
    loader_parser.add_argument("--batch", type=int, default=256, help="source images per batch")
    loader_parser.add_argument("--epochs", type=int, default=2, help="timed epochs after one warm-up epoch")
    loader_parser.add_argument("--transforms", default="rotation", help="transformation family (M views)")
    loader_parser.add_argument("--loaders", default=",".join(LOADER_NAMES), help="comma-separated subset")
    loader_parser.add_argument("--output", default=None, help="append one JSON line per measurement here")
    args = parser.parse_args(argv)
    if args.command == "loader":
        from train.bench_loaders import run

        run(args.images, args.folder_images, args.batch, args.epochs, args.transforms,
            tuple(name for name in args.loaders.split(",") if name), args.output)
    if args.command == "kernels":
        from train.bench_kernels import run

        run(args.batches, args.classes, args.num_transforms, args.repeats, args.output)
    return 0


if __name__ == "__main__":
    sys.exit(main())
