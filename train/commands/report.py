"""Render a run's figures from its metrics.jsonl.

    python -m train.commands.report runs/<run>            # writes runs/<run>/figures/*.png

Figures: loss parts over steps, validation SD/SI/AG accuracy over epochs, images/s over time,
and (after a run with --profile) the phase breakdown of a step.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, no display needed
import matplotlib.pyplot as plt  # noqa: E402

from pipeline.image_set import WriteError, write_error  # noqa: E402


def read_metrics(run_dir: Path) -> list[dict]:
    path = run_dir / "metrics.jsonl"
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist; pass a run directory (runs/<name>)")
    records = []
    for number, line in enumerate(path.read_text().splitlines(), 1):
        if line.strip():
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError:
                raise ValueError(f"{path}:{number} is not a JSON line") from None
    return records


def of_kind(records: list[dict], kind: str) -> list[dict]:
    return [record for record in records if record.get("kind") == kind]


def save(figure, path: Path) -> Path:
    """Written whole or not at all (a half-written PNG is removed), like the checkpoints."""
    figure.tight_layout()
    try:
        figure.savefig(path, dpi=120)
    except OSError as error:
        path.unlink(missing_ok=True)
        raise write_error(path, error, "the figures written before it are kept") from error
    finally:
        plt.close(figure)
    return path


def loss_figure(steps: list[dict], out: Path) -> Path:
    figure, axes = plt.subplots(figsize=(7, 4))
    not_losses = ("kind", "time", "epoch", "step", "lr", "images_per_s", "views_per_s", "mfu", "data_time_s",
                  "compute_time_s", "grad_cosine")
    parts = list(dict.fromkeys(key for s in steps for key in s if key not in not_losses))  # MAXL's passes differ
    for part in parts:
        logged = [s for s in steps if part in s]
        axes.plot([s["step"] for s in logged], [s[part] for s in logged], label=part,
                  linewidth=2 if part == "loss" else 1)
    axes.set(xlabel="step", ylabel="loss (interval mean)", title="training loss and its parts")
    axes.legend()
    return save(figure, out / "loss.png")


def accuracy_figure(epochs: list[dict], out: Path) -> Path:
    figure, axes = plt.subplots(figsize=(7, 4))
    for score in ("SD", "SI", "AG", "aux_agreement"):
        if score in epochs[0]:
            axes.plot([e["epoch"] for e in epochs], [e[score] for e in epochs], marker="o", label=score)
    axes.set(xlabel="epoch", ylabel="validation accuracy (%)", title="SD / SI / AG accuracy")
    axes.legend()
    return save(figure, out / "accuracy.png")


def gradient_similarity_figure(steps: list[dict], out: Path) -> Path:
    """MAXL with --log-grad-similarity: cos(∇L_pri, ∇L_aux) on the shared layers (the paper's usefulness)."""
    figure, axes = plt.subplots(figsize=(7, 4))
    logged = [s for s in steps if "grad_cosine" in s]
    axes.plot([s["step"] for s in logged], [s["grad_cosine"] for s in logged], marker=".")
    axes.axhline(0, color="grey", linewidth=0.5)
    axes.set(xlabel="step", ylabel="cosine similarity", ylim=(-1, 1),
             title="primary vs auxiliary gradient on the shared layers")
    return save(figure, out / "grad_similarity.png")


def throughput_figure(steps: list[dict], out: Path) -> Path:
    figure, axes = plt.subplots(figsize=(7, 4))
    start = steps[0]["time"]
    axes.plot([s["time"] - start for s in steps], [s["images_per_s"] for s in steps], marker=".")
    axes.set(xlabel="seconds since the first logged step", ylabel="images/s", title="throughput")
    axes.set_ylim(bottom=0)
    return save(figure, out / "throughput.png")


def phase_figure(profile: dict, out: Path) -> Path:
    figure, axes = plt.subplots(figsize=(7, 4))
    names = list(profile["phase_share"])
    shares = [100 * profile["phase_share"][name] for name in names]
    axes.barh(names[::-1], shares[::-1])
    axes.set(xlabel="share of step time (%)", title=f"step phases ({profile['mean_step_ms']:.1f} ms/step)")
    axes.text(0.99, 0.02, profile["verdict"], transform=axes.transAxes, ha="right", fontsize=8, wrap=True)
    return save(figure, out / "phases.png")


def render(run_dir: Path) -> list[Path]:
    records = read_metrics(run_dir)
    out = run_dir / "figures"
    out.mkdir(exist_ok=True)
    steps, epochs, profiles = of_kind(records, "step"), of_kind(records, "epoch"), of_kind(records, "profile")
    written = []
    if steps:
        written += [loss_figure(steps, out), throughput_figure(steps, out)]
        if any("grad_cosine" in s for s in steps):
            written.append(gradient_similarity_figure(steps, out))
    if epochs:
        written.append(accuracy_figure(epochs, out))
    if profiles:
        written.append(phase_figure(profiles[-1], out))
    if not written:
        raise ValueError(f"{run_dir / 'metrics.jsonl'} holds no step, epoch or profile records yet")
    return written


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m train.commands.report", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run_dir", type=Path)
    args = parser.parse_args(argv)
    try:
        for path in render(args.run_dir):
            print(path)
    except (FileNotFoundError, ValueError, WriteError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
