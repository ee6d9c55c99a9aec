import os
import signal
import subprocess
import sys
from pathlib import Path

# Under pytest-xdist (`make test` runs one worker per core) each worker computes on its share of the cores, set
# before torch and Numba start their thread pools. Two processes whose pools each hold a thread per core spin
# against each other in OpenMP's waits: two one-thread torch processes whose Numba pools kept two threads ran a
# 10 s test in 130 s each. The children the tests start inherit it.
if int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1")) > 1:
    _threads = str(max(1, (os.cpu_count() or 1) // int(os.environ["PYTEST_XDIST_WORKER_COUNT"])))
    for _name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "NUMBA_NUM_THREADS"):
        os.environ[_name] = _threads

import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from pipeline.processes import descendants  # noqa: E402
from two_rank_runs import DIGITS_8PX, TWO_RANK_RUN  # noqa: E402,F401  (tiny_config's image_size and crop_padding
# are DIGITS_8PX's; the tests import both from here)


@pytest.hookimpl(trylast=True)
def pytest_configure(config):
    """A fresh clone: under pytest-xdist the controller, before it starts the workers, trains a few steps on digits
    in this process to fill Numba's cache with the kernels a training run compiles. Otherwise both workers and the
    first torchrun ranks and other children, all started at once, compiled the same kernels (about 6 s of CPU
    each on a Zen 4) before any of them had written the cache."""
    import contextlib
    import io
    import tempfile

    if hasattr(config, "workerinput") or not config.pluginmanager.hasplugin("dsession"):
        return  # a worker, or pytest without workers
    if any((REPO / "kernels" / "__pycache__").glob("cpu.*.nbi")) or "NUMBA_CACHE_DIR" in os.environ:
        return  # compiled before (or cached elsewhere)
    from train.main import main

    with tempfile.TemporaryDirectory() as out, contextlib.redirect_stdout(io.StringIO()):
        main([*DIGITS_8PX, "--model", "resnet8", "--samples-per-class", "2", "--batch-size", "8", "--epochs", "1",
              "--val-split", "20", "--out-dir", out, "--run-name", "numba-cache"])


def pytest_collection_modifyitems(config, items):
    """The longest tests (marked `distributed`: each launches torchrun) go first, so that pytest-xdist's workers
    do not end on one of them while the others idle; tests marked `gpu` are skipped where no CUDA device answers."""
    import torch

    items.sort(key=lambda item: "distributed" not in item.keywords)  # stable: otherwise in file order
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU; none is present")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(autouse=True)
def seeded_random_streams():
    """Every test starts from the same seeds, so a random input is the same input on every run."""
    import random

    import numpy as np
    import torch

    random.seed(0)
    np.random.seed(0)
    torch.manual_seed(0)


@pytest.fixture
def tiny_config(tmp_path):
    """A TrainConfig for a few seconds of training on digits at 8×8 (DIGITS_8PX) with the smallest ResNet."""
    from train.config import TrainConfig

    def make(**overrides):
        values = dict(dataset="digits", image_size=8, crop_padding=1, model="resnet8", batch_size=64, epochs=3,
                      lr=0.1, out_dir=str(tmp_path / "runs"), run_name="tiny", log_every=5, eval_batch_size=256,
                      schedule="cosine", warmup_iterations=0)
        values.update(overrides)
        return TrainConfig(**values)

    return make


@pytest.fixture
def ffcv_interpreted(monkeypatch):
    """FFCV loaders built in this test run their pipelines in Python (tests/ffcv_interpreted.py says when)."""
    import pipeline.ffcv_loader as ffcv_loader
    from ffcv_interpreted import interpreted

    monkeypatch.setattr(ffcv_loader.FfcvLoader, "_build", interpreted(ffcv_loader.FfcvLoader._build))


def pause_resume_and_compare(config, tmp_path, straight: dict, after_pause=None) -> tuple[dict, dict]:
    """Train `config` one epoch as run "resumed", call `after_pause(checkpoint)`, resume it to the end, and
    check that its weights and test scores equal the finished run "straight" (summary `straight`); returns
    both final checkpoints."""
    import dataclasses

    import torch

    from train.main import train

    paused = train(dataclasses.replace(config, run_name="resumed", stop_after_epochs=1))
    assert paused["completed"] is False
    checkpoint = tmp_path / "runs" / "resumed" / "last.pt"
    if after_pause is not None:
        after_pause(torch.load(checkpoint, weights_only=True))
    resumed = train(dataclasses.replace(config, run_name="x", resume=str(checkpoint)))
    a = torch.load(tmp_path / "runs" / "straight" / "last.pt", weights_only=True)
    b = torch.load(checkpoint, weights_only=True)
    for name, tensor in a["model"].items():
        assert torch.equal(tensor, b["model"][name]), name
    assert resumed["test"] == straight["test"]
    return a, b


def torchrun_command(nproc: int, *args: str) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}", *args]


def torchrun_verdict(script: str, tmp_path: Path, *args: str, nproc: int = 2, timeout: int = 300) -> dict:
    """Run tests/`script` (a check of tests/torchrun_check.py) under torchrun and return its verdict."""
    import json

    verdict_path = tmp_path / f"{Path(script).stem}-verdict.json"
    run_child(torchrun_command(nproc, str(REPO / "tests" / script), str(verdict_path), *map(str, args)),
              timeout=timeout)
    return json.loads(verdict_path.read_text())


def made_once(tmp_path_factory, worker_id: str, name: str, make) -> Path:
    """A directory that `make(directory)` fills once for the whole test session: under pytest-xdist the first
    worker to ask makes it and the others wait for it (a lock in the base directory the workers share), then read
    what it left. A `make` that fails leaves nothing, and the next worker to ask tries again."""
    import shutil

    from filelock import FileLock

    shared = tmp_path_factory.getbasetemp() if worker_id == "master" else tmp_path_factory.getbasetemp().parent
    directory = shared / name
    with FileLock(str(shared / f"{name}.lock")):
        done = directory / ".made"
        if not done.is_file():
            shutil.rmtree(directory, ignore_errors=True)
            directory.mkdir()
            make(directory)
            done.touch()
    return directory


@pytest.fixture(scope="session")
def quick_torchrun_verdicts(tmp_path_factory, worker_id) -> dict:
    """tests/quick_checks.py's verdicts, {check: verdict, "runs": {run: [exit status on each rank]}}: one torchrun
    launch for every test that reads one. The runs (tests/two_rank_runs.py) are in `two_rank_runs_directory`."""
    import json

    return json.loads((two_rank_launch(tmp_path_factory, worker_id) / "quick_checks-verdict.json").read_text())


def two_rank_launch(tmp_path_factory, worker_id) -> Path:
    """The directory of tests/quick_checks.py's launch, made once for the test session."""
    from image_folders import make_odd_photo_folder
    from two_rank_runs import save_untrained_teacher

    def make(directory):
        make_odd_photo_folder(directory / "jpegs")  # streaming_shard_check's folder
        (directory / "runs").mkdir()
        save_untrained_teacher(directory / "runs" / "teacher.pt")  # what the two-rank student reads
        torchrun_verdict("quick_checks.py", directory, directory, timeout=600)

    return made_once(tmp_path_factory, worker_id, "quick-checks", make)


@pytest.fixture(scope="session")
def two_rank_runs_directory(tmp_path_factory, worker_id) -> Path:
    """Where the launch's trainings wrote their run directories and their output (tests/two_rank_runs.py)."""
    return two_rank_launch(tmp_path_factory, worker_id) / "runs"


@pytest.fixture(scope="session")
def straight_two_rank_run(two_rank_runs_directory) -> Path:
    """TWO_RANK_RUN under torchrun, never interrupted: what each interrupted copy of it must end equal to."""
    return two_rank_runs_directory / "straight"


def subprocess_env() -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    env.setdefault("OMP_NUM_THREADS", "1")
    env["PYTHONFAULTHANDLER"] = "1"  # a child aborted by run_child's timeout prints where it was
    return env


def signal_all(pids: list[int], signum: int) -> None:
    for pid in pids:
        try:
            os.kill(pid, signum)
        except ProcessLookupError:
            pass


def run_child(command: list[str], *, expect: int | None = 0, timeout: int = 600, env: dict | None = None,
              **kwargs) -> subprocess.CompletedProcess:
    """Run a child process with its output captured. If its exit status is not `expect` (None: any but 0),
    the failure shows the tails of its stdout and stderr, so a crash in a child is never a bare status. Past
    `timeout` seconds the child and every process below it (torchrun's ranks, their workers) are aborted
    (SIGABRT, then SIGKILL) and the failure shows what they printed, every thread's stack included: a hang is
    never a bare timeout either."""
    with subprocess.Popen(command, env=env or subprocess_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          text=True, **kwargs) as child:
        try:
            stdout, stderr = child.communicate(timeout=timeout)
            hung = False
        except subprocess.TimeoutExpired:  # SIGABRT first: PYTHONFAULTHANDLER makes each process print its stacks
            everyone = [child.pid, *descendants(child.pid)]  # torchrun starts each rank in a session of its own
            signal_all(everyone, signal.SIGABRT)
            try:
                stdout, stderr = child.communicate(timeout=20)
            except subprocess.TimeoutExpired:
                signal_all([*everyone, *descendants(child.pid)], signal.SIGKILL)
                stdout, stderr = child.communicate()
            hung = True
    if hung:
        pytest.fail(f"{' '.join(map(str, command[:4]))} ... still running after {timeout} s; aborted\n"
                    f"--- stdout tail ---\n{stdout[-4000:]}\n--- stderr tail ---\n{stderr[-12000:]}")
    result = subprocess.CompletedProcess(command, child.returncode, stdout, stderr)
    ok = result.returncode != 0 if expect is None else result.returncode == expect
    assert ok, (f"{' '.join(map(str, command[:4]))} ... exited {result.returncode} (expected "
                f"{'non-zero' if expect is None else expect})\n--- stdout tail ---\n{result.stdout[-2000:]}"
                f"\n--- stderr tail ---\n{result.stderr[-4000:]}")
    return result
