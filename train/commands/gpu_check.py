"""`make gpu-check` (`python -m train.commands.gpu_check [--dry-run]`): the GPU path checked on one device in minutes.

Each check runs as a child process with a time limit; the table at the end has one line per check (PASS, FAIL
or SKIP, and its figure) and gpu-check/report.json holds the same with each check's output tail and every
package's version. On a machine without a CUDA device it says so and checks nothing; `--dry-run` prints what
it would run.

A GPU node may have no network and an image whose packages break the checks (numpy 2.5 removed np.row_stack,
which numba-cuda 0.30 registers, so nothing CUDA imports). `make wheelhouse PYTHON_VERSION=3.12`, run where
the package index answers, downloads the few wheels the checks need beside the image's own torch (WHEELS)
into wheelhouse/; when the checks' imports fail, gpu-check installs those wheels into gpu-check/site-packages,
a folder of its own that only its children see, and reports what it installed.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
OUT = REPO / "gpu-check"
PYTHON = sys.executable
STEP_BENCH = [PYTHON, "-m", "train.commands.bench", "step", "--models", "resnet20", "--data", "synthetic",
              "--num-transforms", "4", "--batch", "512", "--steps", "10", "--warmup", "5"]  # sla_sd's shape, 32 px
SMALL_RUN = ["--dataset", "digits", "--image-size", "32", "--model", "resnet20", "--epochs", "15",
             "--batch-size", "128", "--device", "cuda", "--log-every", "5"]


@dataclass
class Check:
    key: str  # what --only names
    name: str
    command: list[str]
    timeout_s: int
    figure: callable = field(default=lambda output: "")  # output text → the figure the table shows


DEFAULT_BUDGET_S = 450  # all checks together: the command ends within 8 minutes on one H100/H200
PACKAGES = ("torch", "numpy", "numba", "numba-cuda", "pytest", "nvidia-dali-cuda120", "ffcv", "scikit-learn")
CHECK_IMPORTS = ("torch", "numpy", "numba.cuda", "pytest", "sklearn")  # what every check's child imports
# The wheels beside the image's torch, numba and scikit-learn (about 19 MiB for CPython 3.12 on x86-64): numpy
# below 2.5, the numba-cuda requirements.txt takes, and pytest with its own requirements.
WHEELS = ("numpy>=2.0,<2.5", "numba-cuda==0.30.4", "pytest>=8", "pluggy", "iniconfig", "packaging")
WHEELHOUSE = REPO / "wheelhouse"
WHEEL_PLATFORMS = ("manylinux_2_17_x86_64", "manylinux2014_x86_64", "manylinux_2_28_x86_64", "any")


def last_json_lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()] if path.is_file() else []


def pytest_counts(output: str) -> str:
    summary = [line for line in output.splitlines() if re.search(r"\d+ (passed|failed|skipped|error)", line)]
    return summary[-1].strip("= ") if summary else ""


def run_summary(run_dir: Path) -> dict:
    records = last_json_lines(run_dir / "metrics.jsonl")
    return next((r for r in records if r["kind"] == "summary"), {})


def profile_figure(_output: str) -> str:
    records = last_json_lines(OUT / "runs" / "profile" / "metrics.jsonl")
    profile = next((r for r in records if r["kind"] == "profile"), None)
    if profile is None:
        return ""
    busy = profile.get("device_busy_share")
    return f"{profile['mean_step_ms']:.1f} ms/step, GPU busy {100 * busy:.0f}%" if busy is not None else ""


def step_bench_figure(name: str):
    """The figure of a step bench check that wrote gpu-check/`name`: each trainer path's img/s against the paper
    path's, naming both precisions."""
    def figure(_output: str) -> str:
        records = last_json_lines(OUT / name)
        paper = next((r["precision"] for r in records if r["path"] == "paper"), "?")
        labels = {"trainer": "graph", "trainer_eager": "eager"}
        return ", ".join(f"{labels[r['path']]} {r['images_per_s']:,.0f} img/s {r['vs_paper']:.2f}x vs paper "
                         f"({r['precision']} vs {paper}{', TF32' if r.get('tf32') else ''}), MFU {100 * r['mfu']:.1f}%, "
                         f"loader wait {100 * r['loader_wait_share']:.0f}% of the step"
                         for r in records if r["path"] in labels)
    return figure


def loader_bench_figure(_output: str) -> str:
    return ", ".join(f"{r['loader']} {r['vs_torch']:.2f}x" for r in last_json_lines(OUT / "bench-loader.jsonl")
                     if r.get("data") == "cifar-shaped")


def copy_bandwidth_gb_s() -> float:
    """The device's measured copy rate (read + write), the roof a memory-bound kernel is compared with."""
    import torch

    source = torch.empty(256 * 2**20, dtype=torch.uint8, device="cuda")
    target = torch.empty_like(source)
    target.copy_(source)
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(20):
        target.copy_(source)
    end.record()
    torch.cuda.synchronize()
    return 2 * 20 * source.numel() / (start.elapsed_time(end) / 1e3) / 1e9


def kernel_bench_figure(_output: str) -> str:
    records = [r for r in last_json_lines(OUT / "bench-kernels.jsonl") if r.get("backend") == "cuda"]
    if not records:
        return ""
    roof = copy_bandwidth_gb_s()
    best = max(records, key=lambda r: r["gb_per_s"])
    return f"best {best['kernel']} {best['gb_per_s']:.0f} GB/s = {100 * best['gb_per_s'] / roof:.0f}% of copy {roof:.0f} GB/s"


def checks() -> list[Check]:
    runs = OUT / "runs"
    torchrun = [PYTHON, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=1"]
    return [  # the headline figures early: a check the shared budget cannot fit is SKIP
        Check("gpu-tests", "pytest -m gpu (loaders, families, precisions, resume, syncs)",
              [PYTHON, "-m", "pytest", "-m", "gpu", "-q", "-rfEs", "-s", "-p", "no:cacheprovider", "tests"], 300,
              pytest_counts),
        Check("bench-step", "bench step (sla, ResNet-20, M = 4, batch 512: graph on, off, papers' path)",
              [*STEP_BENCH, "--paths", "trainer,trainer_eager,paper", "--output", str(OUT / "bench-step.jsonl")], 120,
              step_bench_figure("bench-step.jsonl")),
        Check("cuda-kernels", "CUDA kernels vs float64 on the device",
              [PYTHON, "-m", "pytest", "-q", "-rfE", "-p", "no:cacheprovider", "tests/test_kernels.py", "-k", "cuda"], 120,
              pytest_counts),
        Check("nccl", "torchrun, NCCL, one GPU", [*torchrun, "train/main.py", *SMALL_RUN, "--out-dir", str(runs),
                                          "--run-name", "nccl"], 120,
              lambda _: (lambda s: f"{s.get('images_per_s', 0):,.0f} img/s, test SD {s.get('test', {}).get('SD')}")(
                  run_summary(runs / "nccl"))),
        Check("profile", "--profile window", [PYTHON, "train/main.py", *SMALL_RUN, "--epochs", "1", "--profile", "5:5",
                                   "--out-dir", str(runs), "--run-name", "profile"], 90, profile_figure),
        Check("bench-step-tf32", "bench step, both paths fp32 with TF32",
              [*STEP_BENCH, "--paths", "trainer,paper", "--trainer-precision", "fp32", "--tf32",
               "--output", str(OUT / "bench-step-tf32.jsonl")], 90, step_bench_figure("bench-step-tf32.jsonl")),
        Check("bench-step-bf16", "bench step, both paths bf16",
              [*STEP_BENCH, "--paths", "trainer,paper", "--trainer-precision", "bf16", "--paper-precision", "bf16",
               "--output", str(OUT / "bench-step-bf16.jsonl")], 90, step_bench_figure("bench-step-bf16.jsonl")),
        Check("bench-kernels", "bench kernels (GB/s vs the device's copy rate)",
              [PYTHON, "-m", "train.commands.bench", "kernels", "--batches", "256,1024", "--classes", "100,1000",
               "--repeats", "20", "--output", str(OUT / "bench-kernels.jsonl")], 120, kernel_bench_figure),
        Check("bench-loader", "bench loader", [PYTHON, "-m", "train.commands.bench", "loader", "--folder-images", "0", "--epochs", "1",
                               "--output", str(OUT / "bench-loader.jsonl")], 120, loader_bench_figure),
    ]


def has_cuda() -> bool:
    try:
        import torch
    except ImportError:
        return False
    return torch.cuda.is_available()


def package_versions(site: Path | None = None) -> dict[str, str | None]:
    """Every package the checks import, as their children see it (`site` first where wheels were installed
    there; None: missing), for the report."""
    from importlib import metadata

    search = ([str(site)] if site else []) + sys.path
    found = {name: next(metadata.distributions(name=name, path=search), None) for name in PACKAGES}
    return {name: dist.version if dist else None for name, dist in found.items()}


def child_environment(site: Path | None) -> dict[str, str]:
    """The checks' environment: the repository, and the private site-packages first where one was filled."""
    paths = [str(site)] if site else []
    return {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [*paths, str(REPO), os.environ.get("PYTHONPATH")]))}


def import_problem(modules: tuple[str, ...], site: Path | None = None) -> str | None:
    """The last line a child prints when importing `modules` fails (None: they import)."""
    done = subprocess.run([PYTHON, "-c", "import " + ", ".join(modules)], env=child_environment(site),
                          capture_output=True, text=True, timeout=120)
    lines = (done.stderr or done.stdout).strip().splitlines()
    return None if done.returncode == 0 else (lines[-1] if lines else f"exit {done.returncode}")


def install_wheelhouse(wheelhouse: Path, site: Path) -> list[str]:
    """Installs every wheel of `wheelhouse` into `site` with no index and no dependencies: the file names."""
    wheels = sorted(wheelhouse.glob("*.whl"))
    if not wheels:
        raise ValueError(f"{wheelhouse} holds no wheels; run make wheelhouse where the package index answers")
    subprocess.run([PYTHON, "-m", "pip", "install", "--quiet", "--no-index", "--no-deps", "--upgrade", "--target",
                    str(site), *map(str, wheels)], check=True, capture_output=True, text=True, timeout=300)
    return [wheel.name for wheel in wheels]


def ensure_imports(modules: tuple[str, ...], wheelhouse: Path, site: Path) -> tuple[Path | None, list[str]]:
    """(the site-packages the checks need, the wheels installed there): none while `modules` import as they are;
    else the wheelhouse's wheels in `site`. Raises ValueError, naming the import that failed, where neither works."""
    problem = import_problem(modules)
    if problem is None:
        return None, []
    if not wheelhouse.is_dir():
        raise ValueError(f"the checks cannot import their packages ({problem}) and there is no {wheelhouse}: run "
                         f"make wheelhouse PYTHON_VERSION={sys.version_info.major}.{sys.version_info.minor} where "
                         "the package index answers and copy the folder here")
    installed = install_wheelhouse(wheelhouse, site)
    still = import_problem(modules, site)
    if still is not None:
        raise ValueError(f"the checks cannot import their packages ({problem}), nor with {wheelhouse}'s wheels "
                         f"installed in {site} ({still})")
    return site, installed


def download_wheels(folder: Path, python_version: str, find_links: str | None = None) -> list[str]:
    """`make wheelhouse`: WHEELS for CPython `python_version` on x86-64 Linux into `folder` (from `find_links`
    alone, with no index, where given: how the test runs it offline)."""
    if not re.fullmatch(r"3\.\d+", python_version):
        raise ValueError(f"PYTHON_VERSION takes a CPython version such as 3.12; got {python_version!r}")
    source = ["--no-index", "--find-links", find_links] if find_links else []
    platforms = [part for platform in WHEEL_PLATFORMS for part in ("--platform", platform)]
    subprocess.run([PYTHON, "-m", "pip", "download", "--quiet", "--dest", str(folder), "--only-binary=:all:",
                    "--no-deps", "--python-version", python_version, "--implementation", "cp", *platforms, *source,
                    *WHEELS], check=True, timeout=600)
    wheels = sorted(folder.glob("*.whl"))
    size = sum(wheel.stat().st_size for wheel in wheels)
    print(f"{folder}: {len(wheels)} wheels, {size / 2**20:.1f} MiB: {', '.join(wheel.name for wheel in wheels)}")
    return [wheel.name for wheel in wheels]


def planned(checks_to_run: list[Check], only: str, budget_s: float) -> list[Check]:
    """The checks --only names (comma-separated keys; all when empty), in order. Each may run for its own limit
    or what is left of the shared budget, whichever is less (`run_check` applies it)."""
    wanted = [key for key in only.split(",") if key]
    unknown = sorted(set(wanted) - {check.key for check in checks_to_run})
    if unknown:
        raise ValueError(f"--only: unknown check(s) {', '.join(unknown)}; valid: "
                         f"{', '.join(check.key for check in checks_to_run)}")
    if budget_s <= 0:
        raise ValueError(f"--budget-s must be > 0, got {budget_s:g}")
    return [check for check in checks_to_run if not wanted or check.key in wanted]


def run_check(check: Check, budget_left_s: float | None = None, site: Path | None = None) -> dict:
    """Runs one check within its limit, or within what is left of the budget where that is less (a check with no
    time left is SKIP, not run); `site`: the private site-packages its child imports first."""
    if budget_left_s is not None and budget_left_s < 1:
        return {"check": check.name, "status": "SKIP", "figure": "no time left in --budget-s", "seconds": 0.0,
                "command": " ".join(check.command), "exit_code": None, "output_tail": ""}
    if budget_left_s is not None and budget_left_s < check.timeout_s:
        check = Check(check.key, check.name, check.command, int(budget_left_s), check.figure)
    start = time.perf_counter()
    env = child_environment(site)
    try:
        done = subprocess.run(check.command, cwd=REPO, env=env, capture_output=True, text=True,
                              timeout=check.timeout_s)
        output, code = done.stdout + done.stderr, done.returncode
    except subprocess.TimeoutExpired as expired:
        output = f"{expired.stdout or ''}{expired.stderr or ''}\n(stopped after {check.timeout_s} s)"
        code = None
    counts = pytest_counts(output)
    status = "PASS" if code == 0 else "FAIL"
    if code == 0 and counts and "passed" not in counts and "skipped" in counts:
        status = "SKIP"
    try:
        figure = check.figure(output) if code == 0 else ""
    except Exception as error:  # a figure that cannot be read is a note, not a failed check
        figure = f"(figure unreadable: {error})"
    return {"check": check.name, "status": status, "figure": figure, "seconds": round(time.perf_counter() - start, 1),
            "command": " ".join(check.command), "exit_code": code, "output_tail": output[-12000:]}


def driver_cuda_version() -> str:
    """The CUDA version the NVIDIA driver supports, from nvidia-smi's header ("" where it does not answer)."""
    try:
        header = subprocess.run(["nvidia-smi"], capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.TimeoutExpired):
        return ""
    found = re.search(r"CUDA Version:\s*([0-9.]+)", header)
    return found.group(1) if found else ""


def install_check() -> int:
    """After `make setup` on a machine whose NVIDIA driver answers: the torch build must be a CUDA one that the
    driver runs (same CUDA major, not newer) and must see the GPU."""
    import torch

    driver = driver_cuda_version()
    built = torch.version.cuda
    print(f"torch {torch.__version__}: {'CUDA ' + built if built else 'CPU-only'} build; "
          f"the driver supports CUDA {driver or '?'}; GPU visible: {torch.cuda.is_available()}")
    problem = ""
    if not built:
        problem = "this torch build has no CUDA"
    elif driver and built.split(".")[0] != driver.split(".")[0]:
        problem = f"torch's CUDA {built} and the driver's CUDA {driver} differ in major version"
    elif driver and tuple(map(int, built.split("."))) > tuple(map(int, driver.split("."))):
        problem = f"torch's CUDA {built} is newer than the driver's CUDA {driver}"
    elif not torch.cuda.is_available():
        problem = "torch cannot reach the GPU"
    if problem:
        print(f"error: {problem}. Install a torch 2.13 wheel built for the driver's CUDA major version "
              f"(PyTorch's own wheel index for that CUDA version), then run make setup again.", file=sys.stderr)
        return 1
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m train.commands.gpu_check", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dry-run", action="store_true", help="print the checks and their commands, run nothing")
    parser.add_argument("--install", action="store_true", help="only check that torch's CUDA build suits the "
                                                               "driver and sees the GPU (make setup runs it)")
    parser.add_argument("--only", default="", help="comma-separated check keys (default: every check; --dry-run "
                                                    "lists them)")
    parser.add_argument("--budget-s", type=float, default=DEFAULT_BUDGET_S,
                        help=f"seconds for all checks together (default: {DEFAULT_BUDGET_S})")
    parser.add_argument("--download-wheels", metavar="FOLDER", help="make wheelhouse: download the checks' wheels "
                                                                   "into FOLDER, run nothing")
    parser.add_argument("--python-version", default=f"{sys.version_info.major}.{sys.version_info.minor}",
                        help="--download-wheels: the GPU node's CPython version (default: this one's)")
    parser.add_argument("--find-links", help="--download-wheels from this folder alone, with no index")
    args = parser.parse_args(argv)
    if args.install:
        return install_check()
    if args.download_wheels:
        try:
            download_wheels(Path(args.download_wheels), args.python_version, args.find_links)
        except (ValueError, subprocess.CalledProcessError) as error:
            print(f"error: {error}", file=sys.stderr)
            return 2
        return 0
    try:
        to_run = planned(checks(), args.only, args.budget_s)
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    if args.dry_run:
        for check in to_run:
            print(f"{check.key}: {check.name}  (limit {check.timeout_s} s)\n    {' '.join(check.command)}")
        print(f"budget: {args.budget_s:g} s for all of them; limits add to {sum(c.timeout_s for c in to_run)} s")
        return 0
    if not has_cuda():
        print("no CUDA device: nothing checked")
        return 0
    import torch

    OUT.mkdir(exist_ok=True)
    print(f"gpu-check on {torch.cuda.get_device_name(0)}, torch {torch.__version__} (CUDA {torch.version.cuda})")
    try:
        site, installed = ensure_imports(CHECK_IMPORTS, WHEELHOUSE, OUT / "site-packages")
    except (ValueError, subprocess.CalledProcessError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    if installed:
        print(f"installed from {WHEELHOUSE} into {site}: {', '.join(installed)}")
    try:
        import nvidia.dali  # noqa: F401
    except ImportError:
        print("DALI is not installed: the DALI GPU checks are skipped")
    report = {"device": torch.cuda.get_device_name(0), "torch": torch.__version__, "cuda": torch.version.cuda,
              "driver": driver_cuda_version(), "packages": package_versions(site), "date": time.strftime("%Y-%m-%d"),
              "wheelhouse_installed": installed, "budget_s": args.budget_s, "checks": []}
    results = report["checks"]
    deadline = time.perf_counter() + args.budget_s
    for check in to_run:
        print(f"... {check.name}", flush=True)
        results.append(run_check(check, deadline - time.perf_counter(), site))
        print(f"    {results[-1]['status']} in {results[-1]['seconds']:.0f} s  {results[-1]['figure']}", flush=True)
        (OUT / "report.json").write_text(json.dumps(report, indent=1))  # after each check: a cut-off run keeps its part
    width = max(len(r["check"]) for r in results)
    print(f"\n{'check':<{width}}  status  {'seconds':>7}  figure")
    for r in results:
        print(f"{r['check']:<{width}}  {r['status']:<6}  {r['seconds']:>7.1f}  {r['figure']}")
    print(f"report: {OUT / 'report.json'}")
    return 0 if all(r["status"] != "FAIL" for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
