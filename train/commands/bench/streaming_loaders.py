"""`python -m train.commands.bench loader --data jpeg-folder --images 20000 --image-size 224`: the streaming loaders
over a generated ImageNet-like folder (made once and cached: ~400×350 px JPEGs at quality 90), each in its
own process so that its peak memory is its own, against the torch DataLoader reference (PIL per sample)
measured in the same run. Every loader makes random-resized crops and M views per image (rotation, M = 4)
on the training device; a timed batch is one the training step could take.

FFCV reads a .beton written first, as `python -m pipeline.make_beton --dataset folder --write-mode jpg
--max-resolution 256` writes it (timed and measured on its own, once per folder: later runs reuse it):
its images are stored with the longer side at most 256 px, so it decodes fewer pixels than the others.

Peak memory is the proportional set size (PSS: shared pages split between the processes sharing them)
of the loader process and its workers together, sampled every 50 ms.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

from pipeline.processes import descendants
from train.commands.bench.common import append_json_lines, available_cores, bench_device, device_name, print_header

STREAMING_LOADERS = ("torch", "dali", "ffcv")


def tree_pss_bytes(pid: int) -> int:
    """PSS of a process and all its descendants (Linux /proc; 0 where unreadable)."""
    total = 0
    for member in (pid, *descendants(pid)):
        try:
            with open(f"/proc/{member}/smaps_rollup") as f:
                total += next(int(line.split()[1]) * 1024 for line in f if line.startswith("Pss:"))
        except (OSError, StopIteration, ValueError):
            continue
    return total


class PeakMemory:
    """Samples this process tree's PSS in a thread while the block runs; `.peak` in bytes."""

    def __enter__(self):
        self.peak, self.running = 0, True
        self.thread = threading.Thread(target=self._sample, daemon=True)
        self.thread.start()
        return self

    def _sample(self):
        while self.running:
            self.peak = max(self.peak, tree_pss_bytes(os.getpid()))
            time.sleep(0.05)

    def __exit__(self, *_):
        self.running = False
        self.thread.join()


def write_beton_once(root: str, image_size: int, max_resolution: int, cache_dir: str) -> dict:
    """The ffcv loader's .beton for the folder's training split, as make_beton writes it; skipped when present."""
    from pipeline.beton import write_beton
    from pipeline.datasets import build_splits

    path = Path(cache_dir) / f"bench-{Path(root).name}-train.beton"
    if path.exists():
        return {"seconds": 0.0, "peak_memory_bytes": 0, "path": str(path), "written": False}
    with PeakMemory() as memory:
        start = time.perf_counter()
        split = build_splits("folder", root, image_size, 0.0, 0, data_in_memory="no", cache_dir=cache_dir).train
        write_beton(split, path, "jpg", 90, available_cores(), max_resolution)
        seconds = time.perf_counter() - start
    return {"seconds": seconds, "peak_memory_bytes": memory.peak, "path": str(path), "written": True}


def in_subprocess(function: str, *arguments) -> dict:
    """`function(*arguments)` of this module in a fresh process (its own peak memory); its result, or an error."""
    command = [sys.executable, "-c", "import json, sys; sys.path.insert(0, sys.argv[1]); "
               "import train.commands.bench.streaming_loaders as bench; "
               "print('RESULT ' + json.dumps(getattr(bench, sys.argv[2])(*json.loads(sys.argv[3]))))",
               str(Path(__file__).resolve().parents[3]), function, json.dumps(arguments)]
    done = subprocess.run(command, capture_output=True, text=True)
    lines = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
    if done.returncode or not lines:
        return {"error": done.stderr.strip().splitlines()[-1] if done.stderr.strip() else f"exit {done.returncode}"}
    return json.loads(lines[-1][len("RESULT "):])


def time_one(name: str, root: str, image_size: int, batch: int, steps: int, warmup: int, cache_dir: str,
             transforms: str) -> dict:
    """One loader in this process: set-up (listing, .beton writing, compilation), warm-up, then timed steps."""
    import torch

    import kernels
    from pipeline.batch import LoaderSettings
    from pipeline.datasets import build_splits
    from pipeline.loaders import build_loader
    from pipeline.views import ViewExpander
    from train.commands.bench.common import endless_batches

    device = bench_device()
    with PeakMemory() as memory:
        start = time.perf_counter()
        splits = build_splits("folder", root, image_size, 0.0, 0, data_in_memory="no", cache_dir=cache_dir)
        dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
        expander = ViewExpander(kernels.get_family(transforms), splits.mean, splits.std, dtype)
        settings = LoaderSettings(expander, device, batch, train=True, cache_dir=cache_dir)
        loader = build_loader(name, splits.train, settings, split_name=f"bench-{Path(root).name}-train")
        batches = endless_batches(loader)
        for _ in range(warmup):
            next(batches)
        setup = time.perf_counter() - start
        images, start = 0, time.perf_counter()
        for _ in range(steps):
            images += len(next(batches).labels)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        seconds = time.perf_counter() - start
    return {"loader": name, "images_per_s": images / seconds, "images": images, "seconds": seconds,
            "setup_s": setup, "peak_memory_bytes": memory.peak, "train_images": len(splits.train)}


def run(num_images: int = 4_000, image_size: int = 224, batch: int = 256, steps: int = 20, warmup: int = 3,
        loaders: tuple[str, ...] = STREAMING_LOADERS, transforms: str = "rotation", cache: str = "data/bench",
        output: str | None = None, max_resolution: int = 256) -> list[dict]:
    from train.commands.bench.jpeg_folder import make_jpeg_folder

    import kernels

    device, cores = bench_device(), available_cores()
    views = kernels.get_family(transforms).num_transforms
    root = Path(cache) / f"jpeg-folder-{num_images}"
    start = time.perf_counter()
    make_jpeg_folder(root, num_images, classes=100)
    made = time.perf_counter() - start
    print(f"device {device_name(device)}, {cores} cores; {num_images} JPEGs in {root} (~400×350, quality 90; "
          f"{made:.0f} s to make or find); crops {image_size}², {transforms} M={views}, batch {batch}, "
          f"{steps} timed batches after {warmup}")
    cache_dir = str(Path(cache) / "cache")
    beton = None
    if "ffcv" in loaders:
        beton = in_subprocess("write_beton_once", str(root), image_size, max_resolution, cache_dir)
        if "error" in beton:
            print(f"ffcv .beton: failed: {beton['error']}")
        elif beton["written"]:
            print(f"ffcv .beton written in {beton['seconds']:.0f} s ({available_cores()} writer processes, "
                  f"max resolution {max_resolution}), peak memory {beton['peak_memory_bytes'] / 1e9:.2f} GB")
        else:
            print(f"ffcv .beton: reusing {beton['path']}")
    print_header(f"{'loader':<8}{'images/s':>10}{'views/s':>10}{'vs torch':>10}{'peak GB':>9}{'set-up s':>10}")
    results = {}
    for name in loaders:
        result = in_subprocess("time_one", name, str(root), image_size, batch, steps, warmup, cache_dir, transforms)
        if "error" in result:
            print(f"{name:<8}failed: {result['error']}")
            continue
        results[name] = result
    baseline = results.get("torch", {}).get("images_per_s")
    records = []
    for name, result in results.items():
        record = {"benchmark": "loader", "data": "jpeg-folder", "loader": name, "device": str(device),
                  "cores": cores, "batch": batch, "image_size": image_size, "num_transforms": views,
                  "files": num_images, "images_per_s": round(result["images_per_s"], 1),
                  "views_per_s": round(result["images_per_s"] * views, 1),
                  "vs_torch": round(result["images_per_s"] / baseline, 2) if baseline else None,
                  "peak_memory_gb": round(result["peak_memory_bytes"] / 1e9, 3), "setup_s": round(result["setup_s"], 1),
                  "max_resolution": max_resolution if name == "ffcv" else None}
        if name == "ffcv" and beton and beton.get("written"):
            record.update(beton_write_s=round(beton["seconds"], 1),
                          beton_write_peak_memory_gb=round(beton["peak_memory_bytes"] / 1e9, 3))
        records.append(record)
        ratio = f"{record['vs_torch']:.2f}x" if baseline else "-"
        print(f"{name:<8}{record['images_per_s']:>10,.0f}{record['views_per_s']:>10,.0f}{ratio:>10}"
              f"{record['peak_memory_gb']:>9.2f}{record['setup_s']:>10.1f}")
    print("set-up: listing, pipeline build, compilation and the warm-up batches; ffcv decodes its .beton's images "
          f"(longer side ≤ {max_resolution}), the others the original files")
    append_json_lines(output, records)
    return records
