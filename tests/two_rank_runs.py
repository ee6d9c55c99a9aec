"""The trainings of the two-rank launch (tests/quick_checks.py): train/main.py's main() called on both ranks, one
run after another, in the process group the checks used (a run leaves a group it did not start as it was). One
launch instead of one per run: each launch costs every rank seconds of imports before its first step. Each run's
printed output is kept per rank, `{name}.rank{R}.stdout` and `.stderr` in the output directory, and its exit
status goes in the launch's verdict."""
from __future__ import annotations

import contextlib
import os
from pathlib import Path

# The training tests' digits at their own 8×8 pixels: a quarter of the convolution work of 16×16, with a one-pixel
# crop shift (the 16×16 default's four scaled down).
DIGITS_8PX = ("--image-size", "8", "--crop-padding", "1")

# The two-rank run the torchrun fault tests interrupt (6 steps an epoch: 200 images, a global batch of 32).
TWO_RANK_RUN = (*DIGITS_8PX, "--model", "resnet8", "--samples-per-class", "20", "--batch-size", "32", "--epochs", "3",
                "--log-every", "4")

# What a stopped run was told: rank 1 raises SIGTERM after its step 3 (train/stopping.py RAISE_SIGNAL_AT).
STOP_RANK_1_AT_STEP_3 = "1:3:SIGTERM"


def save_untrained_teacher(path, num_classes=10, transforms="rotation", method="hsakd_teacher", model="resnet8"):
    """An HSAKD teacher checkpoint with untrained weights: what a student run reads, without training one."""
    import torch

    import kernels
    from models import build_backbone
    from models.hsakd import HsakdNetwork

    network = HsakdNetwork(build_backbone(model), num_classes, kernels.get_family(transforms).num_transforms)
    torch.save({"model": network.state_dict(), "config": {"method": method, "model": model,
                                                           "transforms": transforms}}, path)


def runs(out: Path) -> dict[str, tuple[tuple[str, ...], dict[str, str]]]:
    """{name: (main's arguments, environment for the run)}, in the order they run. `resumed` continues `stopped`,
    and the student reads the teacher file the launch's directory holds (teacher.pt, saved before)."""
    from train.stopping import RAISE_SIGNAL_AT

    at = ("--out-dir", str(out))
    return {
        "straight": ((*TWO_RANK_RUN, *at, "--run-name", "straight"), {}),
        "stopped": ((*TWO_RANK_RUN, *at, "--run-name", "stopped"), {RAISE_SIGNAL_AT: STOP_RANK_1_AT_STEP_3}),
        "resumed": ((*TWO_RANK_RUN, *at, "--run-name", "stopped", "--resume", "auto"), {}),
        "maxl": (("--method", "maxl", "--dataset", "digits", *DIGITS_8PX, "--model", "resnet8", "--epochs", "1",
                  "--batch-size", "32", "--samples-per-class", "16", "--aux-per-class", "2", "--log-every", "2",
                  *at, "--run-name", "maxl"), {}),
        "hsakd_student": (("--dataset", "digits", *DIGITS_8PX, "--batch-size", "64", "--log-every", "5",
                           "--method", "hsakd_student", "--model", "resnet8", "--teacher", str(out / "teacher.pt"),
                           "--epochs", "1", "--samples-per-class", "40", *at, "--run-name", "hsakd_student"), {}),
        "batch_63": (("--image-size", "16", "--model", "resnet8", "--batch-size", "63", *at), {}),
    }


def train_every_run(rank: int, out: Path) -> dict[str, int]:
    """Run each of `runs(out)` on this rank; {name: main's exit status on this rank}."""
    from train.main import main

    statuses = {}
    for name, (argv, environment) in runs(out).items():
        os.environ.update(environment)
        with open(out / f"{name}.rank{rank}.stdout", "w") as stdout, open(out / f"{name}.rank{rank}.stderr",
                                                                             "w") as stderr:
            with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
                statuses[name] = main(list(argv))
        for variable in environment:
            del os.environ[variable]
    return statuses


def output(out: Path, name: str, rank: int = 0, stream: str = "stdout") -> str:
    """What run `name` printed on `rank`."""
    return (out / f"{name}.rank{rank}.{stream}").read_text()
