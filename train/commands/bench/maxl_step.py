"""`python -m train.commands.bench step --method maxl`: MAXL's two updates timed apart, θ1's step and θ2's meta step
(look-ahead, second-order gradient, optimizer), this trainer's path against the official code's way in
the same run: fp32, NCHW, a per-sample torch DataLoader, and the look-ahead as fast weights (an
OrderedDict of θ1 − α∇θ1) through a functional forward, differentiated twice. The trainer computes the
same gradient by forward mode (`--maxl-meta-gradient forward`), with bf16 autocast where the hardware
has it (`--trainer-precision`), channels_last and the resident loader."""
from __future__ import annotations

import statistics
import time

import torch

from train.commands.bench.common import RoundStreams
from train.config import TrainConfig
from train.run import bench_data, build_training, one_process

UPDATES = ("learner", "meta")


class PreparedMaxl(RoundStreams):
    def __init__(self, path: str, settings: dict, model_name: str, split, batch: int, order: str, warmup: int,
                 device: torch.device, workers: int):
        config = TrainConfig(method="maxl", model=model_name, batch_size=batch, precision=settings["precision"],
                             channels_last=settings["channels_last"], maxl_order=order, maxl_interleave=True,
                             maxl_meta_gradient="graph" if path == "paper" else "forward",
                             lr=0.01, momentum=0.0, weight_decay=0.0, schedule="cosine", transforms="none",
                             loader=settings["loader"], loader_workers=workers, iterations=10**4,
                             kernels="torch" if path == "paper" else "auto")
        self.path, self.settings, self.device, self.batch = path, settings, device, batch
        torch.manual_seed(0)
        run = build_training(config, one_process(device), bench_data(split), fused_optimizer=settings["fused_optimizer"])
        self.precision, self.method, self.loader, self.step = run.precision, run.method, run.train_loader, run.step
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
