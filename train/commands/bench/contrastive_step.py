"""`python -m train.commands.bench step --method simclr|simclr_v2|moco_v2|byol|dim`: whole contrastive steps (random views per
image, forward, loss, backward, optimizer, momentum update) on this trainer's path (resident loader, views
made for the batch on the device, `--precision auto`, channels_last) against the reference way (a
DataLoader whose workers augment one PIL image at a time, fp32, NCHW: train/commands/bench/pil_views.py), the
paths alternating over rounds in one run; loader wait reported for both. The reference's workers run only
during its own rounds: each round forks them afresh and takes one untimed step (their prefetch queue fills,
as in a running epoch), and its end shuts them down, so their prefetching never runs in another path's round.
`--paths trainer_compiled` adds the trainer's path under torch.compile (`--compile`).

Each path's MFU is the step's model FLOPs (counted once, on the reference's first warm-up step: its
convolutions at their full size, padding included, its matmuls, the momentum network's forward) over its
time and its precision's peak (train/mfu.py); `vs_paper_at_peak` is the ratio a step running at the bf16 peak
would reach, the ceiling of the trainer's `vs_paper` on this machine."""
from __future__ import annotations

import statistics
import time

import torch
from torch.utils.flop_counter import FlopCounterMode

from pipeline.batch import Batch
from pipeline.random_views import MultiCropViews, get_recipe
from train.commands.bench.common import RoundStream, TimedRounds, endless_batches
from train.commands.bench.pil_views import pil_view_loader
from train.config import TrainConfig
from train.methods import build_method
from train.mfu import peak_flops
from train.run import bench_data, build_training, one_process


# the trainer's path; the same under torch.compile (`--compile`; its compilation is the warm-up's time, reported as
# setup_s)
TRAINER_PATHS = ("trainer", "trainer_compiled")


def reference_batches(loader, device: torch.device):
    """[B, V, C, S, S] from the workers → the interleaved [B·V, C, S, S] layout on the device."""
    epoch = 0
    while True:
        for views, labels in loader:
            if isinstance(views, (list, tuple)):  # multi-crop: two sizes
                views = MultiCropViews(*(group.to(device).flatten(0, 1) for group in views))
            else:
                views = views.to(device).flatten(0, 1)
            labels = labels.to(device)
            yield Batch(views, labels, torch.zeros_like(labels))
        epoch += 1


class PreparedContrastive(TimedRounds):
    def __init__(self, path: str, method_name: str, model_name: str, split, batch: int, warmup: int,
                 device: torch.device, workers: int, trainer_precision: str):
        trainer = path in TRAINER_PATHS
        config = TrainConfig(method=method_name, model=model_name, batch_size=batch, transforms="none",
                             precision=trainer_precision if trainer else "fp32", channels_last=trainer,
                             lr=0.05, schedule="cosine", queue_size=1024, loader_workers=workers, iterations=10**4,
                             compile=path == "trainer_compiled")
        self.path, self.device, self.batch = path, device, batch
        data = bench_data(split)
        reference_loader = None
        if not trainer:  # the papers' per-sample PIL views in DataLoader workers, fresh each round (common.py)
            recipe = get_recipe(build_method(config).training_view_recipe())
            reference_loader = pil_view_loader(split.images, split.labels, recipe, data.mean, data.std, batch,
                                               workers, persistent_workers=False)
        torch.manual_seed(0)
        run = build_training(config, one_process(device), data, train_loader=reference_loader,
                             fused_optimizer=trainer)
        self.precision, self.method, self.step, self.views_per_image = (run.precision, run.method, run.step,
                                                                        run.views_per_image)
        if trainer:
            self.stream = endless_batches(run.train_loader)
        else:
            self.round_stream = RoundStream(lambda: reference_batches(reference_loader, device),
                                            lambda current: self.step(current))
        self.clear_rounds()
        start = time.perf_counter()
        self.start_round()
        self.flops_per_step = None
        if not trainer:  # the model FLOPs of a step: the reference runs every convolution at its full size
            with FlopCounterMode(display=False) as counter:
                self.step(next(self.stream))
            self.flops_per_step = counter.get_total_flops()
        for _ in range(warmup):
            self.step(next(self.stream))
        self.end_round()
        self.setup_seconds = time.perf_counter() - start



def run(method_name: str, model_name: str, split, data_name: str, batch: int, steps: int, warmup: int,
        rounds: int, device: torch.device, workers: int, paths, trainer_precision: str) -> list[dict]:
    workers = workers or max(1, torch.get_num_threads())
    prepared = {path: PreparedContrastive(path, method_name, model_name, split, batch, warmup, device, workers,
                                          trainer_precision) for path in paths}
    for round_index in range(rounds):
        order = list(prepared.values())
        for path in order if round_index % 2 == 0 else reversed(order):
            path.time_round(steps)
    flops = next((path.flops_per_step for path in prepared.values() if path.flops_per_step), None)
    records = []
    for name, path in prepared.items():
        median = statistics.median(path.seconds)
        wait = path.waits[path.seconds.index(sorted(path.seconds)[len(path.seconds) // 2])]
        record = {"benchmark": "step", "method": method_name, "path": name, "model": model_name, "data": data_name,
                  "batch": batch, "views_per_image": path.views_per_image, "device": str(device), "precision": path.precision,
                  "rounds": rounds, "setup_s": round(path.setup_seconds, 1),
                  "images_per_s": round(steps * batch / median, 1),
                  "ms_per_step": round(1e3 * median / steps, 2), "loader_wait_share": round(wait / median, 4),
                  "round_images_per_s": [round(steps * batch / s, 1) for s in path.seconds],
                  "page_faults_per_step": round(statistics.median(path.page_faults) / steps)}
        if flops:
            peak, peak_source = peak_flops(device, path.precision)
            record.update(flops_per_step=flops, peak_flops=peak, peak_source=peak_source,
                          mfu=round(flops * steps / median / peak, 6))
        if "paper" in prepared:
            paper_round = statistics.median(prepared["paper"].seconds)
            record["vs_paper"] = round(paper_round / median, 2)
            if flops and name != "paper":  # the paper's step over a step's FLOPs at the bf16 peak
                record["vs_paper_at_peak"] = round(paper_round / steps / (flops / peak_flops(device, "bf16")[0]), 2)
        records.append(record)
    return records
