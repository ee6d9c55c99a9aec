"""What every benchmark command shares: the device it measures, its table header, its JSON lines."""
from __future__ import annotations

import contextlib
import json
import os
import resource
import subprocess
import sys
import time

import torch


def bench_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def device_name(device: torch.device) -> str:
    return torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"


def available_cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def print_header(header: str) -> None:
    print(header)
    print("-" * len(header))


def append_json_lines(path: str | None, records: list[dict]) -> None:
    if path:
        with open(path, "a") as f:
            f.writelines(json.dumps(record) + "\n" for record in records)


@contextlib.contextmanager
def busy_processes(count: int):
    """`count` processes that spin on a core each while the block runs: a reproducible stand-in for another job
    loading the machine (`--background-load`)."""
    spinners = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(count)]
    try:
        yield
    finally:
        for spinner in spinners:
            spinner.kill()
            spinner.wait()


def endless_batches(loader):
    """The loader's batches, epoch after epoch (reshuffled each), for as many steps as a benchmark times."""
    epoch = 0
    while True:
        loader.set_epoch(epoch)
        yield from loader
        epoch += 1


class RoundStream:
    """A reference loader's batches for one round of timed steps at a time, so that its worker processes run in
    its own rounds only: `open` starts a new iterator and takes one untimed step, which fills their prefetch
    queue as in a running epoch; `close` ends the iterator and `stop_workers` (for a loader whose workers
    persist: pipeline/torch_loader.py) stops them. Running workers would prefetch during another path's round:
    taking that path's cores and starting the next reference round with a full queue (the torch loader keeps
    4 batches per worker ready)."""

    def __init__(self, make_stream, untimed_step, stop_workers=lambda: None):
        self.make_stream, self.untimed_step, self.stop_workers = make_stream, untimed_step, stop_workers
        self.stream = None

    def open(self):
        self.stream = self.make_stream()
        self.untimed_step(next(self.stream))
        return self.stream

    def close(self) -> None:
        if self.stream is not None:
            self.stream.close()
            self.stream = None
        self.stop_workers()


class RoundStreams:
    """A path whose `stream` is, for a reference loader with worker processes, each round's own (`round_stream`
    set); other paths set `stream` once."""
    round_stream: RoundStream | None = None

    def stream_from(self, loader, fresh_workers_each_round: bool, untimed_step) -> None:
        """The loader's batches, epoch after epoch: from one kept iterator, or (a DataLoader with worker
        processes: the papers' torch loader) from each round's own."""
        if fresh_workers_each_round:
            self.round_stream = RoundStream(lambda: endless_batches(loader), untimed_step, loader.close)
        else:
            self.stream = endless_batches(loader)

    def start_round(self) -> None:
        """Untimed, before the round's first timed step."""
        if self.round_stream is not None:
            self.stream = self.round_stream.open()

    def end_round(self) -> None:
        """Untimed, after the round's last timed step."""
        if self.round_stream is not None:
            self.round_stream.close()


class TimedRounds(RoundStreams):
    """Rounds of whole steps, timed with the loader's wait counted apart; a subclass sets `step`, `device` and
    `stream` or `round_stream` (RoundStreams).
    GPU work is synchronised at each round's ends."""
    seconds: list[float]  # per timed round
    waits: list[float]
    page_faults: list[int]  # minor page faults of this process (a DataLoader's workers not counted)

    def clear_rounds(self) -> None:
        self.seconds, self.waits, self.page_faults = [], [], []

    def time_round(self, steps: int) -> None:
        self.start_round()
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        faults_before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        wait, start = 0.0, time.perf_counter()
        for _ in range(steps):
            fetch = time.perf_counter()
            current = next(self.stream)
            wait += time.perf_counter() - fetch
            self.step(current)
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        self.seconds.append(time.perf_counter() - start)
        self.waits.append(wait)
        self.page_faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults_before)
        self.end_round()
