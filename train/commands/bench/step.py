"""`python -m train.commands.bench step`: whole training steps (loader, views, forward, joint-label loss,
backward, optimizer; all-reduce under torchrun), this trainer's path against the papers' path
(torch DataLoader, fp32, NCHW, torch.rot90 stacking, eager torch losses) in the same run, the paths taking
turns over rounds; the papers' DataLoader workers run in its own rounds only (common.RoundStream)."""
from __future__ import annotations

import os
import resource
import statistics
import tempfile
from pathlib import Path

import torch

import kernels
from models import build_backbone
from models.hsakd import HsakdNetwork
from pipeline import phases
from pipeline.datasets import build_splits
from train.commands.bench.loaders import cifar_shaped
from train.commands.bench.common import (append_json_lines, available_cores, bench_device, busy_processes, device_name,
                                print_header, TimedRounds)
from train.config import TrainConfig
from train.graph_step import WARMUP_STEPS
from train.mfu import flops_per_view, peak_flops, tf32_enabled
from train.profiling import PhaseClock, breakdown
from train.run import bench_data, build_training, one_process

PATHS = {  # name → the settings that differ between this trainer and the papers' code
    "trainer": dict(loader="resident", precision="auto", channels_last=True, kernels="auto", fused_optimizer=True,
                    cuda_graph="auto"),
    "trainer_eager": dict(loader="resident", precision="auto", channels_last=True, kernels="auto",
                          fused_optimizer=True, cuda_graph="off"),  # the trainer with its step not captured
    "paper": dict(loader="torch", precision="fp32", channels_last=False, kernels="torch", fused_optimizer=False,
                  cuda_graph="off"),
}


def write_untrained_teacher(path: Path, model_name: str, num_classes: int, family) -> str:
    """A teacher checkpoint with random weights: the student step's cost does not depend on what it learned."""
    torch.manual_seed(1)
    network = HsakdNetwork(build_backbone(model_name), num_classes, family.num_transforms)
    torch.save({"model": network.state_dict(),
                "config": {"method": "hsakd_teacher", "model": model_name, "transforms": family.name}}, path)
    return str(path)


def phase_shares(step, stream, steps: int, device: torch.device) -> dict[str, float]:
    """Each phase's share of step time over `steps` more steps, from the phase clock (which synchronises
    the GPU at phase boundaries, so these steps are kept apart from the timed ones)."""
    clock = PhaseClock(device)
    phases.set_clock(clock)
    try:
        for _ in range(steps):
            clock.begin_step()
            with phases.phase("data"):
                current = next(stream)
            step(current)
            clock.end_step()
    finally:
        phases.set_clock(None)
    shares = breakdown(clock, None, clock.step_time)["phase_share"]
    return {name: round(share, 4) for name, share in shares.items()}


class PreparedPath(TimedRounds):
    """One path's loader, model and step, built once so that rounds of timed steps can alternate between paths."""

    def __init__(self, path: str, settings: dict, model_name: str, method_name: str, family_name: str, split,
                 batch: int, warmup: int, total_steps: int, device: torch.device, workers: int, teacher: str = ""):
        self.model_name = model_name
        config = TrainConfig(method=method_name, transforms=family_name, model=model_name, batch_size=batch,
                             precision=settings["precision"], channels_last=settings["channels_last"],
                             kernels=settings["kernels"], loader=settings["loader"], loader_workers=workers,
                             schedule="cosine", lr=0.05, teacher=teacher, iterations=warmup + total_steps + 1,
                             cuda_graph=settings["cuda_graph"])
        self.path, self.settings, self.device, self.batch = path, settings, device, batch
        torch.manual_seed(0)
        run = build_training(config, one_process(device), bench_data(split), fused_optimizer=settings["fused_optimizer"])
        self.precision, self.method, self.family, self.loader = run.precision, run.method, run.family, run.train_loader
        self.model, self.step = run.model, run.step
        self.stream_from(self.loader, settings["loader"] == "torch", self.step)  # the papers' workers: per round
        self.start_round()
        for _ in range(max(warmup, WARMUP_STEPS + 1)):  # a captured step is captured here, not in a timed round
            self.step(next(self.stream))
        self.end_round()
        self.clear_rounds()

    def record(self, steps: int) -> dict:
        """The median round's figures, plus every round's images/s (the spread shows how steady the machine was)."""
        device, batch = self.device, self.batch
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        self.start_round()
        shares = phase_shares(self.step, self.stream, max(2, steps // 4), device)
        num_transforms = self.family.num_transforms
        sample = next(self.stream).views
        self.end_round()
        flops = flops_per_view(self.model, sample, getattr(self.method, "teacher", None))
        peak, peak_source = peak_flops(device, self.precision)
        seconds = statistics.median(self.seconds)
        wait = self.waits[self.seconds.index(sorted(self.seconds)[len(self.seconds) // 2])]
        images_per_s = steps * batch / seconds
        memory = (torch.cuda.max_memory_allocated(device) if device.type == "cuda"
                  else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)
        settings = self.settings
        return {"benchmark": "step", "path": self.path, "model": self.model_name, "method": self.method.name,
                "transforms": self.family.name, "teacher_model": self.method.provenance().get("teacher_model"),
                "num_transforms": num_transforms, "batch": batch, "device": str(device), "precision": self.precision,
                "tf32": tf32_enabled() if device.type == "cuda" else None,
                "loader": settings["loader"], "channels_last": settings["channels_last"],
                "kernels": settings["kernels"], "rounds": len(self.seconds),
                "images_per_s": round(images_per_s, 1), "views_per_s": round(images_per_s * num_transforms, 1),
                "round_images_per_s": [round(steps * batch / s, 1) for s in self.seconds],
                "page_faults_per_step": round(statistics.median(self.page_faults) / steps),
                "ms_per_step": round(1e3 * seconds / steps, 2), "loader_wait_share": round(wait / seconds, 4),
                "compute_s": round(seconds - wait, 4), "loader_wait_s": round(wait, 4),
                "peak_memory_bytes": int(memory), "memory_kind": "device" if device.type == "cuda" else "host peak RSS",
                "flops_per_view": flops, "peak_flops": peak, "peak_source": peak_source,
                "mfu": round(flops * images_per_s * num_transforms / peak, 5), "phase_share": shares,
                "teacher_share": shares["teacher"]}


def measure_paths(paths, settings: dict, model_name: str, method_name: str, family_name: str, split, batch: int,
                  steps: int, warmup: int, rounds: int, device: torch.device, workers: int,
                  teacher: str = "") -> dict[str, dict]:
    """Builds every path, then times `rounds` rounds of `steps` steps, the paths taking turns within each round
    (a slow spell of the machine lands on both); each path reports its median round, and each round's ratio
    against the paper path is kept."""
    prepared = {}
    for path in paths:
        prepared[path] = PreparedPath(path, settings[path], model_name, method_name, family_name, split, batch,
                                      warmup, rounds * steps, device, workers, teacher)
    for round_index in range(rounds):
        order = list(prepared.values())
        for path in order if round_index % 2 == 0 else reversed(order):
            path.time_round(steps)
    records = {name: path.record(steps) for name, path in prepared.items()}
    if "paper" in prepared:
        paper = prepared["paper"].seconds
        for name, path in prepared.items():
            records[name]["round_vs_paper"] = [round(p / s, 2) for p, s in zip(paper, path.seconds)]
    return records


def run(models=("resnet32", "resnet18_cifar"), num_transforms=(1, 4), data=("synthetic", "digits"), batch: int = 128,
        steps: int = 20, warmup: int = 5, num_images: int = 4096, workers: int = 0, paths=("trainer", "paper"),
        output: str | None = None, method: str = "auto", teacher_model: str = "",
        trainer_precision: str = "auto", rounds: int = 1, background_load: int = 0, paper_precision: str = "fp32",
        tf32: bool = False) -> list[dict]:
    """`method` auto: baseline at M = 1, sla at M = 4; hsakd_student distils from an untrained
    `teacher_model` (default: the student's own architecture). `trainer_precision` is the trainer
    paths' --precision, `paper_precision` the paper path's (fp32, as the papers' code, by default); `tf32`
    lets both sides' fp32 matmuls and convolutions run in TF32 on a GPU (torch's default: convolutions only).
    `rounds` alternates the paths that many times; `background_load` busy processes compete for the cores
    while everything runs."""
    if rounds < 1:
        raise ValueError(f"--rounds must be at least 1, got {rounds}")
    if tf32:
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
    with busy_processes(background_load):
        return _run(models, num_transforms, data, batch, steps, warmup, num_images, workers, paths, output, method,
                    teacher_model, trainer_precision, rounds, background_load, paper_precision)


def _run(models, num_transforms, data, batch, steps, warmup, num_images, workers, paths, output, method,
         teacher_model, trainer_precision, rounds, background_load, paper_precision="fp32") -> list[dict]:
    device = bench_device()
    settings = {**PATHS, **{name: {**PATHS[name], "precision": trainer_precision} for name in ("trainer",
                                                                                            "trainer_eager")},
                "paper": {**PATHS["paper"], "precision": paper_precision}}
    print(f"device {device_name(device)}, {available_cores()} cores, torch threads {torch.get_num_threads()}, "
          f"batch {batch}, {rounds} round(s) of {steps} timed steps after {warmup}, "
          f"{background_load} busy background process(es), OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY', '')!r}, "
          f"NUMBA_NUM_THREADS={os.environ.get('NUMBA_NUM_THREADS', '')!r}")
    if method in ("simclr", "simclr_v2", "moco_v2", "moco_v3", "byol", "dim", "swav"):
        return _run_contrastive(method, models, data, batch, steps, warmup, num_images, workers, paths, output,
                                rounds, device, trainer_precision)
    if method == "maxl":
        return _run_maxl(models, data, batch, steps, warmup, num_images, workers, paths, output, settings, rounds,
                         device)
    print_header(f"{'model':<16}{'M':>3} {'data':<10}{'path':<14}{'img/s':>9}{'views/s':>10}{'ms/step':>9}"
                 f"{'wait':>7}{'teacher':>8}{'mem MB':>9}{'MFU':>8}{'vs paper':>10}")
    scratch = tempfile.TemporaryDirectory(prefix="bench-teacher-")
    records = []
    sources = {"synthetic": lambda: cifar_shaped(num_images),
               "digits": lambda: build_splits("digits", "unused", 32, 0.1, 0).train}
    for data_name in data:
        split = sources[data_name]()
        for model_name in models:
            for m in num_transforms:
                if m not in (1, 4):
                    raise ValueError(f"step bench supports M ∈ {{1, 4}}, got {m}")
                family_name = "rotation" if m == 4 else "none"
                method_name = method if method != "auto" else ("sla" if m == 4 else "baseline")
                teacher = ""
                if method_name == "hsakd_student":
                    teacher = write_untrained_teacher(Path(scratch.name) / f"{model_name}-{m}.pt",
                                                      teacher_model or model_name, split.num_classes,
                                                      kernels.get_family(family_name))
                results = measure_paths(paths, settings, model_name, method_name, family_name, split, batch,
                                        steps, warmup, rounds, device, workers, teacher)
                baseline = results.get("paper", {}).get("images_per_s")
                for path, record in results.items():
                    record["data"] = data_name
                    record["background_load"] = background_load
                    record["vs_paper"] = round(record["images_per_s"] / baseline, 2) if baseline else None
                    records.append(record)
                    ratio = f"{record['vs_paper']:.2f}x" if baseline else "-"
                    print(f"{model_name:<16}{m:>3} {data_name:<10}{path:<14}{record['images_per_s']:>9,.0f}"
                          f"{record['views_per_s']:>10,.0f}{record['ms_per_step']:>9.1f}"
                          f"{100 * record['loader_wait_share']:>6.1f}%{100 * record['teacher_share']:>7.1f}%"
                          f"{record['peak_memory_bytes'] / 2**20:>9,.0f}"
                          f"{100 * record['mfu']:>7.2f}%{ratio:>10}")
                if rounds > 1 and baseline:
                    print(f"{'':<16}rounds vs paper: "
                          + ", ".join(f"{r:.2f}x" for r in results["trainer"]["round_vs_paper"]))
    if records:
        print(f"MFU peak: {records[0]['peak_source']} = {records[0]['peak_flops'] / 1e12:.2f} TFLOP/s "
              f"({records[0]['precision']}); the paper path's peak is its own precision's")
    scratch.cleanup()
    append_json_lines(output, records)
    return records


def _run_table(header: str, data, models, num_images: int, output, measure, row, footer=None) -> list[dict]:
    """One table of a method-specific bench: `measure(model_name, split, data_name)` gives its records,
    `row(record)` prints each, `footer(records)` a closing line (or None)."""
    print_header(header)
    sources = {"synthetic": lambda: cifar_shaped(num_images),
               "digits": lambda: build_splits("digits", "unused", 32, 0.1, 0).train}
    records = []
    for data_name in data:
        split = sources[data_name]()
        for model_name in models:
            for record in measure(model_name, split, data_name):
                records.append(record)
                print(row(record))
    closing = footer(records) if footer else None
    if closing:
        print(closing)
    append_json_lines(output, records)
    return records


def ratio_text(record: dict) -> str:
    return f"{record['vs_paper']:.2f}x" if "vs_paper" in record else "-"


def _run_maxl(models, data, batch, steps, warmup, num_images, workers, paths, output, settings, rounds,
              device) -> list[dict]:
    from train.commands.bench import maxl_step

    return _run_table(
        f"{'model':<16}{'data':<10}{'update':<9}{'order':<8}{'path':<9}{'precision':<10}{'img/s':>9}"
        f"{'ms/step':>10}{'vs paper':>10}", data, models, num_images, output,
        lambda model_name, split, data_name: maxl_step.run(model_name, split, data_name, batch, steps, warmup,
                                                           rounds, device, workers, settings, paths),
        lambda r: (f"{r['model']:<16}{r['data']:<10}{r['update']:<9}{r['maxl_order']:<8}{r['path']:<9}"
                   f"{r['precision']:<10}{r['images_per_s']:>9,.0f}{r['ms_per_step']:>10.1f}{ratio_text(r):>10}"))


def _run_contrastive(method, models, data, batch, steps, warmup, num_images, workers, paths, output, rounds, device,
                     trainer_precision) -> list[dict]:
    from train.commands.bench import contrastive_step

    return _run_table(
        f"{'model':<16}{'data':<10}{'method':<11}{'path':<22}{'precision':<10}{'img/s':>9}{'ms/step':>10}"
        f"{'wait':>8}{'faults':>8}{'setup s':>9}{'MFU':>8}{'vs paper':>10}{'at peak':>9}", data, models, num_images,
        output,
        lambda model_name, split, data_name: contrastive_step.run(method, model_name, split, data_name, batch, steps,
                                                                  warmup, rounds, device, workers, paths,
                                                                  trainer_precision),
        lambda r: (f"{r['model']:<16}{r['data']:<10}{r['method']:<11}{r['path']:<22}{r['precision']:<10}"
                   f"{r['images_per_s']:>9,.0f}{r['ms_per_step']:>10.1f}{100 * r['loader_wait_share']:>7.1f}%"
                   f"{r['page_faults_per_step']:>8,}{r['setup_s']:>9.1f}"
                   + (f"{100 * r['mfu']:>7.1f}%" if "mfu" in r else f"{'-':>8}") + f"{ratio_text(r):>10}"
                   + (f"{r['vs_paper_at_peak']:>8.2f}x" if "vs_paper_at_peak" in r else f"{'-':>9}")),
        footer=lambda records: (f"MFU: the reference step's model FLOPs over each path's time and its precision's "
                                f"peak ({records[0]['peak_source']}, and the fp32 one for the reference); at peak: "
                                f"the vs paper of a step at the bf16 peak") if records and "mfu" in records[0]
        else None)
