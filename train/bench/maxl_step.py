"""`python -m train.bench step --method maxl`: MAXL's two updates timed apart, θ1's step and θ2's meta step
(look-ahead, second-order gradient, optimizer), this trainer's path against the official code's way in
the same run: fp32, NCHW, a per-sample torch DataLoader, and the look-ahead as fast weights (an
OrderedDict of θ1 − α∇θ1) through a functional forward, differentiated twice. The trainer computes the
same gradient by forward mode (`--maxl-meta-gradient forward`), with bf16 autocast where the hardware
has it (`--trainer-precision`), channels_last and the resident loader."""
from __future__ import annotations

import statistics
import time
from types import SimpleNamespace

import torch

import kernels
from pipeline.batch import LoaderSettings
from pipeline.datasets import channel_statistics
from pipeline.loaders import build_loader
from pipeline.views import ViewExpander
from train.bench.common import RoundStreams
from train.config import TrainConfig
from train.methods import build_method
from train.optim import autocast, build_optimizer, build_scaler, build_scheduler, resolve_precision
from train.step import TrainStep

UPDATES = ("learner", "meta")


class PreparedMaxl(RoundStreams):
    def __init__(self, path: str, settings: dict, model_name: str, split, batch: int, order: str, warmup: int,
                 device: torch.device, workers: int):
        config = TrainConfig(method="maxl", model=model_name, batch_size=batch, precision=settings["precision"],
                             channels_last=settings["channels_last"], maxl_order=order, maxl_interleave=True,
                             maxl_meta_gradient="graph" if path == "paper" else "forward",
                             lr=0.01, momentum=0.0, weight_decay=0.0, schedule="cosine", transforms="none")
        self.path, self.settings, self.device, self.batch = path, settings, device, batch
        self.precision = resolve_precision(config, device)
        self.method = build_method(config)
        self.method.see_data(SimpleNamespace(num_classes=split.num_classes))
        family = kernels.get_family("none")
        mean, std = channel_statistics(split.images[:1024])
        expander = ViewExpander(family, mean, std, torch.float32, settings["channels_last"],
                                "torch" if path == "paper" else "auto")
        self.loader = build_loader(settings["loader"], split, LoaderSettings(expander, device, batch, train=True,
                                                                             workers=workers))
        torch.manual_seed(0)
        model = self.method.build_model(model_name, split.num_classes, family, device, settings["channels_last"])
        optimizer = build_optimizer(config, model, fused=settings["fused_optimizer"])
        base = TrainStep(model, model, self.method, optimizer, build_scheduler(config, optimizer, 10**6),
                         build_scaler(self.precision, device), None, lambda: autocast(self.precision, device))
        self.step = self.method.make_step(base, 10**6)
        self.stream_from(self.loader, settings["loader"] == "torch", self.untimed_step)
        self.seconds = {update: [] for update in UPDATES}
        self.start_round()
        for _ in range(warmup):
            self.untimed_step(next(self.stream))
        self.end_round()

    def untimed_step(self, current) -> None:
        self.step.update_learner(current)
        self.step.update_generator(current)

    def _sync(self):
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def time_round(self, steps: int) -> None:
        """`steps` batches (the loader's time counted with θ1's step), each update timed on its own."""
        self.start_round()
        totals = dict.fromkeys(UPDATES, 0.0)
        for _ in range(steps):
            self._sync()
            start = time.perf_counter()
            current = next(self.stream)
            self.step.update_learner(current)
            self._sync()
            middle = time.perf_counter()
            self.step.update_generator(current)
            self._sync()
            totals["learner"] += middle - start
            totals["meta"] += time.perf_counter() - middle
        self.end_round()
        for update in UPDATES:
            self.seconds[update].append(totals[update])


def run(model_name: str, split, data_name: str, batch: int, steps: int, warmup: int, rounds: int,
        device: torch.device, workers: int, settings: dict, paths, orders=("second",)) -> list[dict]:
    records = []
    for order in orders:
        prepared = {path: PreparedMaxl(path, settings[path], model_name, split, batch, order, warmup, device, workers)
                    for path in paths}
        for round_index in range(rounds):
            order_of_paths = list(prepared.values())
            for path in order_of_paths if round_index % 2 == 0 else reversed(order_of_paths):
                path.time_round(steps)
        for path_name, path in prepared.items():
            for update in UPDATES:
                seconds = statistics.median(path.seconds[update])
                record = {"benchmark": "step", "method": "maxl", "update": update, "maxl_order": order,
                          "path": path_name, "model": model_name, "data": data_name, "batch": batch,
                          "device": str(device), "precision": path.precision, "loader": path.settings["loader"],
                          "channels_last": path.settings["channels_last"], "rounds": rounds,
                          "images_per_s": round(steps * batch / seconds, 1), "ms_per_step": round(1e3 * seconds / steps, 2)}
                if "paper" in prepared:
                    paper = statistics.median(prepared["paper"].seconds[update])
                    record["vs_paper"] = round(paper / seconds, 2)
                records.append(record)
    return records
