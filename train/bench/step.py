"""`python train/bench.py step`: whole training steps (loader, views, forward, joint-label loss,
backward, optimizer; all-reduce under torchrun), this trainer's path against the papers' path
(torch DataLoader, fp32, NCHW, torch.rot90 stacking, eager torch losses) in the same run."""
from __future__ import annotations

import resource
import tempfile
import time
from pathlib import Path

import torch

import kernels
from models import build_backbone
from models.hsakd import HsakdNetwork
from pipeline import phases
from pipeline.batch import LoaderSettings
from pipeline.datasets import build_splits, channel_statistics
from pipeline.loaders import build_loader
from pipeline.views import ViewExpander
from train.bench.loaders import cifar_shaped
from train.bench.common import append_json_lines, available_cores, bench_device, device_name, print_header
from train.config import TrainConfig
from train.methods import build_method
from train.mfu import flops_per_view, peak_flops
from train.profiling import PhaseClock, breakdown
from train.optim import autocast, build_optimizer, build_scaler, build_scheduler, resolve_precision
from train.step import TrainStep

PATHS = {  # name → the settings that differ between this trainer and the papers' code
    "trainer": dict(loader="resident", precision="auto", channels_last=True, kernels="auto"),
    "paper": dict(loader="torch", precision="fp32", channels_last=False, kernels="torch"),
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


def measure(path: str, settings: dict, model_name: str, method_name: str, family_name: str, split, batch: int,
            steps: int, warmup: int, device: torch.device, workers: int, teacher: str = "") -> dict:
    config = TrainConfig(method=method_name, transforms=family_name, model=model_name, batch_size=batch,
                         precision=settings["precision"], channels_last=settings["channels_last"],
                         kernels=settings["kernels"], schedule="cosine", lr=0.05, teacher=teacher)
    precision = resolve_precision(config, device)
    input_dtype = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]
    method = build_method(config)
    family = kernels.get_family(family_name)
    mean, std = channel_statistics(split.images[:1024])
    expander = ViewExpander(family, mean, std, input_dtype if device.type == "cuda" else torch.float32,
                            settings["channels_last"], "torch" if path == "paper" else "auto")
    loader = build_loader(settings["loader"], split, LoaderSettings(expander, device, batch, train=True,
                                                                    workers=workers))
    torch.manual_seed(0)
    model = method.build_model(model_name, split.num_classes, family, device, settings["channels_last"])
    optimizer = build_optimizer(config, model, device)
    step = TrainStep(model, model, method, optimizer, build_scheduler(config, optimizer, warmup + steps + 1),
                     build_scaler(precision, device), None, lambda: autocast(precision, device))

    def batches():
        epoch = 0
        while True:
            loader.set_epoch(epoch)
            yield from loader
            epoch += 1

    stream = batches()
    for _ in range(warmup):
        step(next(stream))
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
    wait = 0.0
    start = time.perf_counter()
    for _ in range(steps):
        fetch = time.perf_counter()
        current = next(stream)
        wait += time.perf_counter() - fetch
        step(current)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    seconds = time.perf_counter() - start
    shares = phase_shares(step, stream, max(2, steps // 4), device)
    num_transforms = family.num_transforms
    sample = next(stream).views
    flops = flops_per_view(model, sample, getattr(method, "teacher", None))
    peak, peak_source = peak_flops(device, precision)
    images_per_s = steps * batch / seconds
    memory = (torch.cuda.max_memory_allocated(device) if device.type == "cuda"
              else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)
    return {"benchmark": "step", "path": path, "model": model_name, "method": method_name, "transforms": family_name,
            "teacher_model": method.provenance().get("teacher_model"),
            "num_transforms": num_transforms, "batch": batch, "device": str(device), "precision": precision,
            "loader": settings["loader"], "channels_last": settings["channels_last"], "kernels": settings["kernels"],
            "images_per_s": round(images_per_s, 1), "views_per_s": round(images_per_s * num_transforms, 1),
            "ms_per_step": round(1e3 * seconds / steps, 2), "loader_wait_share": round(wait / seconds, 4),
            "compute_s": round(seconds - wait, 4), "loader_wait_s": round(wait, 4),
            "peak_memory_bytes": int(memory), "memory_kind": "device" if device.type == "cuda" else "host peak RSS",
            "flops_per_view": flops, "peak_flops": peak, "peak_source": peak_source,
            "mfu": round(flops * images_per_s * num_transforms / peak, 5), "phase_share": shares,
            "teacher_share": shares["teacher"]}


def run(models=("resnet32", "resnet18_cifar"), num_transforms=(1, 4), data=("synthetic", "digits"), batch: int = 128,
        steps: int = 20, warmup: int = 5, num_images: int = 4096, workers: int = 0, paths=("trainer", "paper"),
        output: str | None = None, method: str = "auto", teacher_model: str = "",
        trainer_precision: str = "auto") -> list[dict]:
    """`method` auto: baseline at M = 1, sla at M = 4; hsakd_student distils from an untrained
    `teacher_model` (default: the student's own architecture). `trainer_precision` is the trainer
    path's --precision (the paper path is fp32, as the papers' code)."""
    device = bench_device()
    settings = {**PATHS, "trainer": {**PATHS["trainer"], "precision": trainer_precision}}
    print(f"device {device_name(device)}, {available_cores()} cores, torch threads {torch.get_num_threads()}, "
          f"batch {batch}, {steps} timed steps after {warmup}")
    print_header(f"{'model':<16}{'M':>3} {'data':<10}{'path':<9}{'img/s':>9}{'views/s':>10}{'ms/step':>9}"
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
                results = {path: measure(path, settings[path], model_name, method_name, family_name, split, batch,
                                         steps, warmup, device, workers, teacher) for path in paths}
                baseline = results.get("paper", {}).get("images_per_s")
                for path, record in results.items():
                    record["data"] = data_name
                    record["vs_paper"] = round(record["images_per_s"] / baseline, 2) if baseline else None
                    records.append(record)
                    ratio = f"{record['vs_paper']:.2f}x" if baseline else "-"
                    print(f"{model_name:<16}{m:>3} {data_name:<10}{path:<9}{record['images_per_s']:>9,.0f}"
                          f"{record['views_per_s']:>10,.0f}{record['ms_per_step']:>9.1f}"
                          f"{100 * record['loader_wait_share']:>6.1f}%{100 * record['teacher_share']:>7.1f}%"
                          f"{record['peak_memory_bytes'] / 2**20:>9,.0f}"
                          f"{100 * record['mfu']:>7.2f}%{ratio:>10}")
    if records:
        print(f"MFU peak: {records[0]['peak_source']} = {records[0]['peak_flops'] / 1e12:.2f} TFLOP/s "
              f"({records[0]['precision']}); the paper path's peak is its own precision's")
    scratch.cleanup()
    append_json_lines(output, records)
    return records
