"""`python -m train.commands.bench kernels`: forward+backward medians of each kernel and backend, against the
eager torch composite measured in the same run (and a torch.compile'd composite on a GPU)."""
from __future__ import annotations

import statistics
import time

import torch

import kernels
from kernels import reference
from train.commands.bench.common import append_json_lines, bench_device, device_name, print_header
from train.graph_step import capture_cuda_graph, run_on_side_stream


def _seconds(function, device: torch.device) -> tuple[float, float]:
    """(host seconds, device seconds) of one call: on a GPU the host's time to issue it (launch overhead) and the
    device's time between CUDA events around it; on a CPU both are the call's time."""
    if device.type == "cuda":
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        begin = time.perf_counter()
        function()
        host = time.perf_counter() - begin
        end.record()
        end.synchronize()
        return host, start.elapsed_time(end) / 1e3
    begin = time.perf_counter()
    function()
    seconds = time.perf_counter() - begin
    return seconds, seconds


def interleaved_medians(functions: dict, device: torch.device, repeats: int, warmup: int = 3) -> dict:
    """name → (median host seconds, median device seconds), the functions taking turns within each repeat, so a
    slow spell of a shared machine lands on all of them alike and the ratios stay fair."""
    for function in functions.values():  # compilation and caches stay out of the numbers
        for _ in range(warmup):
            function()
    samples = {name: [] for name in functions}
    for _ in range(repeats):
        for name, function in functions.items():
            samples[name].append(_seconds(function, device))
    return {name: tuple(statistics.median(part) for part in zip(*values)) for name, values in samples.items()}


def captured(function, device: torch.device):
    """`function` captured once as a CUDA graph after warm-up calls on a side stream: its replay, one launch."""
    for _ in range(3):
        run_on_side_stream(function, device)
    replay, _ = capture_cuda_graph(function, device)
    return replay


def settle_host_allocator() -> None:
    """Allocates and frees a 24 MB buffer once. glibc then serves buffers up to that size from its heap
    instead of fresh mmap'd pages, the state a training process reaches after its first step. Without
    this, what ran earlier in the process decides whether each 1.6 MB logits-sized buffer page-faults,
    which moved the eager composite's time at B=256, N=100 by a factor of about three."""
    buffer = torch.empty(6 * 2**20, dtype=torch.float32)
    buffer.fill_(0.0)
    del buffer


def kernel_cases(batch: int, classes: int, num_transforms: int, device: torch.device):
    """name → (function of backend, fewest bytes a fused forward+backward must move)."""
    rows, columns = batch * num_transforms, classes * num_transforms
    logits = torch.randn(rows, columns, device=device, requires_grad=True)
    labels = torch.randint(0, classes, (batch,), device=device)
    student = torch.randn(rows, columns, device=device, requires_grad=True)
    teacher = torch.randn(rows, columns, device=device)
    images = torch.randint(0, 256, (batch, 32, 32, 3), dtype=torch.uint8, device=device)
    matrix_bytes = rows * columns * 4
    stats = dict(mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25))

    def joint_ce(backend):
        loss = (reference.joint_cross_entropy(logits, labels, num_transforms) if backend == "torch"
                else kernels.joint_cross_entropy(logits, labels, num_transforms, backend=backend))
        (grad,) = torch.autograd.grad(loss, logits)
        return grad

    def aggregate(backend):
        scores = (reference.aggregate_logits(logits, num_transforms) if backend == "torch"
                  else kernels.aggregate_logits(logits, num_transforms, backend=backend))
        (grad,) = torch.autograd.grad(scores.sum(), logits)
        return grad

    def distill(backend):
        loss = (reference.distillation_kl(student, teacher, 3.0) if backend == "torch"
                else kernels.distillation_kl(student, teacher, temperature=3.0, backend=backend))
        (grad,) = torch.autograd.grad(loss, student)
        return grad

    cases = {"joint_cross_entropy": (joint_ce, 2 * matrix_bytes),  # read logits, write gradient
             "aggregate_logits": (aggregate, matrix_bytes + rows * classes * 4),  # read the M diagonals, write gradient
             "distillation_kl": (distill, 3 * matrix_bytes)}  # read student and teacher, write gradient
    family = view_family(num_transforms)
    if family is not None:
        def views(backend):
            return kernels.expand_views(images, family, backend=backend, **stats)

        # read uint8 once, write the family's views in float32
        cases[f"expand_views({family.name})"] = (views, images.numel() * (1 + 4 * family.num_transforms))
        dataset = torch.randint(0, 256, (4 * batch, 32, 32, 3), dtype=torch.uint8, device=device)
        indices = torch.randperm(len(dataset), device=device)[:batch]
        offsets = torch.randint(0, 9, (batch, 2), device=device)
        flips = torch.rand(batch, device=device) < 0.5

        def gather(backend):  # the resident loader's batch: gather, crop, flip and views in one pass
            return kernels.gather_expand_views(dataset, indices, offsets, flips, 4, family, backend=backend, **stats)

        cases[f"gather_views({family.name})"] = (gather, images.numel() * (1 + 4 * family.num_transforms))
    return cases


def view_family(num_transforms: int):
    """The first transformation family with M views (the bytes of the view case follow it), or None."""
    return next((family for family in kernels.FAMILIES.values() if family.num_transforms == num_transforms), None)


def run(batches=(128, 256, 512), classes_list=(10, 100, 1000), num_transforms=4, repeats=20,
        output: str | None = None) -> list[dict]:
    device = bench_device()
    backends = ["torch", "cuda"] if device.type == "cuda" else ["torch", "cpu"]
    if device.type == "cpu":
        settle_host_allocator()
    print(f"device {device_name(device)}, "
          f"torch threads {torch.get_num_threads()}, M={num_transforms}, median of {repeats} forward+backward")
    print_header(f"{'kernel':<24}{'B':>5}{'N':>6}{'backend':>14}{'host µs':>10}{'device ms':>11}{'GB/s':>9}"
                 f"{'vs eager':>10}")
    records = []
    for classes in classes_list:
        for batch in batches:
            for name, (function, fewest_bytes) in kernel_cases(batch, classes, num_transforms, device).items():
                contenders = {backend: (lambda b=backend: function(b)) for backend in backends}
                if device.type == "cuda":
                    contenders["torch.compile"] = torch.compile(lambda: function("torch"))
                    for backend in backends:  # each backend inside a captured graph: its launches replayed as one
                        try:
                            contenders[f"{backend}+graph"] = captured(contenders[backend], device)
                        except RuntimeError as error:
                            print(f"{name}: the {backend} backend was not captured: {str(error).splitlines()[0]}")
                timings = interleaved_medians(contenders, device, repeats)
                for backend, (host, seconds) in timings.items():
                    record = {"kernel": name, "batch": batch, "classes": classes, "num_transforms": num_transforms,
                              "backend": backend, "device": str(device), "median_ms": round(seconds * 1e3, 4),
                              "host_us": round(host * 1e6, 1), "device_us": round(seconds * 1e6, 1),
                              "gb_per_s": round(fewest_bytes / seconds / 1e9, 2),
                              "speedup_vs_eager": round(timings["torch"][1] / seconds, 3)}
                    records.append(record)
                    print(f"{name:<24}{batch:>5}{classes:>6}{backend:>14}{record['host_us']:>10.1f}"
                          f"{record['median_ms']:>11.3f}{record['gb_per_s']:>9.2f}{record['speedup_vs_eager']:>9.2f}x")
    append_json_lines(output, records)
    return records
