"""Benchmarks, printed as tables with ratios against baselines measured in the same run.

    python -m train.commands.bench kernels [--batches 128,256,512] [--classes 10,100,1000] [--output bench.jsonl]
    python -m train.commands.bench step [--models resnet32,resnet18_cifar] [--data synthetic,digits] [--num-transforms 1,4] [--output bench.jsonl]
    python -m train.commands.bench step --models resnet32 --num-transforms 4 --data synthetic --rounds 5 --background-load 2
    python -m train.commands.bench step --method hsakd_student --models resnet8x4 --teacher-model resnet32x4 --num-transforms 4
    python -m train.commands.bench loader [--images 8192] [--folder-images 2048] [--batch 256] [--output bench.jsonl]
    python -m train.commands.bench loader --views simclr      (the contrastive methods' random views, 2 per image)
    python -m train.commands.bench loader --data jpeg-folder --images 20000 --image-size 224   (streamed JPEG folder,
                                                     ImageNet crops, peak memory per loader)
"""
from __future__ import annotations

import argparse

from pipeline.loaders import LOADERS as LOADER_NAMES


def integers(text: str) -> tuple[int, ...]:
    return tuple(int(part) for part in text.split(",") if part.strip())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m train.commands.bench", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    kernel_parser = commands.add_parser("kernels", help="loss and view kernels against the torch composite")
    kernel_parser.add_argument("--batches", type=integers, default=(128, 256, 512), help="source images B")
    kernel_parser.add_argument("--classes", type=integers, default=(10, 100, 1000), help="classes N")
    kernel_parser.add_argument("--num-transforms", type=int, default=4, help="views per image M")
    kernel_parser.add_argument("--repeats", type=int, default=50,
                               help="timed repetitions, backends taking turns (median reported)")
    kernel_parser.add_argument("--output", default=None, help="append one JSON line per measurement here")
    loader_parser = commands.add_parser("loader", help="every --loader against the torch DataLoader reference")
    loader_parser.add_argument("--data", default="arrays", choices=("arrays", "jpeg-folder"),
                               help="arrays: CIFAR-shaped arrays and a small decoded JPEG folder, in memory; "
                                    "jpeg-folder: a generated ImageNet-like folder, streamed")
    loader_parser.add_argument("--images", type=int, default=0, help="CIFAR-shaped images in memory (default 8192); "
                                                                     "--data jpeg-folder: JPEG files (4000)")
    loader_parser.add_argument("--image-size", type=int, default=224, help="--data jpeg-folder: crop side")
    loader_parser.add_argument("--steps", type=int, default=20, help="--data jpeg-folder: timed batches per loader")
    loader_parser.add_argument("--cache", default="data/bench", help="--data jpeg-folder: where the generated "
                                                                     "folder, its listing and .beton are kept")
    loader_parser.add_argument("--max-resolution", type=int, default=256, help="--data jpeg-folder: the ffcv "
                                                                              ".beton's longer-side cap")
    loader_parser.add_argument("--folder-images", type=int, default=2048, help="JPEG files in the folder case; 0 skips")
    loader_parser.add_argument("--batch", type=int, default=256, help="source images per batch")
    loader_parser.add_argument("--epochs", type=int, default=2, help="timed epochs after one warm-up epoch")
    loader_parser.add_argument("--transforms", default="rotation", help="transformation family (M views)")
    loader_parser.add_argument("--loaders", default=",".join(LOADER_NAMES), help="comma-separated subset")
    loader_parser.add_argument("--views", default="", help="a random-view recipe (simclr, byol, moco_v2): time the "
                                                           "contrastive view pass instead of the family's")
    loader_parser.add_argument("--output", default=None, help="append one JSON line per measurement here")
    step_parser = commands.add_parser("step", help="whole training steps against the papers' pipeline")
    step_parser.add_argument("--models", default="resnet32", help="comma-separated backbones, e.g. "
                                                                   "resnet32,resnet18_cifar")
    step_parser.add_argument("--num-transforms", type=integers, default=(1, 4), help="M: 1 (baseline) and/or 4 (SLA)")
    step_parser.add_argument("--data", default="synthetic", help="synthetic (CIFAR-shaped) and/or digits")
    step_parser.add_argument("--batch", type=int, default=128, help="source images per step")
    step_parser.add_argument("--steps", type=int, default=10, help="timed steps per round")
    step_parser.add_argument("--warmup", type=int, default=2, help="untimed steps first")
    step_parser.add_argument("--images", type=int, default=4096, help="synthetic images")
    step_parser.add_argument("--workers", type=int, default=0, help="loader workers; 0 = the cores")
    step_parser.add_argument("--paths", default="trainer,paper", help="trainer, trainer_eager (its step not captured "
                             "in a CUDA graph) and/or paper (contrastive methods: also trainer_compiled)")
    step_parser.add_argument("--method", default="auto", help="auto (baseline at M=1, sla at M=4) or a --method, "
                                                              "e.g. hsakd_student")
    step_parser.add_argument("--teacher-model", default="", help="hsakd_student: the (untrained) teacher's "
                                                                 "architecture; default the student's")
    step_parser.add_argument("--trainer-precision", default="auto", help="the trainer paths' --precision "
                                                                         "(auto, fp32, bf16)")
    step_parser.add_argument("--paper-precision", default="fp32", help="the paper path's --precision (fp32, as the "
                                                                       "papers' code, or bf16 for an equal match)")
    step_parser.add_argument("--tf32", action="store_true", help="GPU: fp32 matmuls and convolutions in TF32 on "
                                                                 "both paths (torch's default: convolutions only)")
    step_parser.add_argument("--rounds", type=int, default=1,
                             help="timed rounds, the paths taking turns (median round reported, each round's ratio "
                                  "printed)")
    step_parser.add_argument("--background-load", type=int, default=0,
                             help="busy processes competing for the cores during the run (load sensitivity)")
    step_parser.add_argument("--output", default=None, help="append one JSON line per configuration here")
    args = parser.parse_args(argv)
    if args.command == "step":
        from train.commands.bench.step import run

        names = lambda text: tuple(part for part in text.split(",") if part)  # noqa: E731
        run(names(args.models), args.num_transforms, names(args.data), args.batch, args.steps, args.warmup,
            args.images, args.workers, names(args.paths), args.output, args.method, args.teacher_model,
            args.trainer_precision, args.rounds, args.background_load, args.paper_precision, args.tf32)
    if args.command == "loader":
        if args.data == "jpeg-folder":
            from train.commands.bench.streaming_loaders import STREAMING_LOADERS, run

            chosen = tuple(n for n in args.loaders.split(",") if n in STREAMING_LOADERS) or STREAMING_LOADERS
            run(args.images or 4_000, args.image_size, args.batch, args.steps, 3, chosen, args.transforms,
                args.cache, args.output, args.max_resolution)
            return 0
        from train.commands.bench.loaders import run

        run(args.images or 8192, args.folder_images, args.batch, args.epochs, args.transforms,
            tuple(name for name in args.loaders.split(",") if name), args.output, args.views)
    if args.command == "kernels":
        from train.commands.bench.kernels import run

        run(args.batches, args.classes, args.num_transforms, args.repeats, args.output)
    return 0
