"""Train a self-supervised label augmentation (SLA) model; the torchrun entry point.

    one process (CPU or one GPU):  torchrun --standalone --nproc_per_node=1 train/main.py
    one node, 8 GPUs:              torchrun --standalone --nproc_per_node=8 train/main.py --preset sla-cifar100-resnet32
    several nodes:                 torchrun --nnodes=2 --node_rank=R --rdzv_endpoint=HOST:PORT --nproc_per_node=8 train/main.py ...
    plain python works too:        python train/main.py --method sla --epochs 5

Every setting is a field of train/config.py:TrainConfig (`--help` lists them).
"""
from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # so `torchrun train/main.py` finds the packages

from pipeline.datasets import DataError
from pipeline.image_set import WriteError
from train.auto_transforms import choose_transforms
from train.config import PRESETS, TrainConfig, check_settings, config_from_namespace, parse_arguments
from train.distributed import broadcast_from_main, init_distributed, shutdown
from train.loop import fit
from train.methods import METHODS
from train.run import build, plan_on_main
from train.stopping import EXIT_DIVERGED, EXIT_PREEMPTED, PreemptionSignals


def train(config: TrainConfig) -> dict:
    """One run; a process group it starts is torn down before returning, on success and on error alike."""
    check_settings(config)
    context = init_distributed(config.device, config.dist_timeout_s)
    signals = None
    try:
        signals = PreemptionSignals(context)
        summary = run(config, context, signals)
    except BaseException:
        if signals is not None:
            signals.close()
        shutdown(context, failed=True)
        raise
    signals.close()
    shutdown(context)
    return summary


def run(config: TrainConfig, context, signals: PreemptionSignals) -> dict:
    """`fit(build(...))`; with --transforms auto, short trials of every family first, each itself a run scored on
    validation (train/auto_transforms.py)."""
    start = plan_on_main(config, context)
    trials = None
    if config.transforms == "auto":
        config, trials = choose_transforms(config, start.run_dir, lambda trial: run(trial, context, signals),
                                           lambda *parts: context.is_main and print(*parts, flush=True),
                                           lambda value: broadcast_from_main(value, context), context.is_main)
        if "stopped" in trials:  # a signal or a non-finite loss ended a trial, and so the run
            return trials["stopped"]
    return fit(build(config, context, start, signals, trials))


def main(argv: list[str] | None = None) -> int:
    debug = "--debug-errors" in (sys.argv[1:] if argv is None else argv)
    try:
        namespace = parse_arguments(argv)
        config = config_from_namespace(namespace)
        if namespace.list_presets:
            print("\n".join(sorted(PRESETS)))
            return 0
        if namespace.list_methods:
            print("\n".join(METHODS))
            return 0
        summary = train(config)
        stopped_by = summary.get("stopped_by", "")
        return EXIT_DIVERGED if stopped_by.startswith("non-finite") else EXIT_PREEMPTED if stopped_by else 0
    except (ValueError, DataError, FileNotFoundError, WriteError) as error:
        # A bad setting, bad data or a file that cannot be written is the user's to fix: one line, no traceback.
        if debug:
            raise
        print(f"error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
