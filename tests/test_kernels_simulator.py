"""Runs tests/test_kernels.py's `cuda` cases in Numba's CUDA simulator, in a process of its own:
NUMBA_ENABLE_CUDASIM must be set before numba is first imported."""
import os
import subprocess
import sys

from conftest import REPO, subprocess_env


def test_cuda_kernels_under_the_simulator():
    env = subprocess_env()
    env["NUMBA_ENABLE_CUDASIM"] = "1"
    result = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                             str(REPO / "tests" / "test_kernels.py")], cwd=REPO, env=env, capture_output=True,
                            text=True, timeout=900)
    summary = result.stdout.strip().splitlines()[-1] if result.stdout.strip() else result.stderr[-2000:]
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    assert " passed" in summary and "failed" not in summary, summary
    assert os.environ.get("NUMBA_ENABLE_CUDASIM") != "1"  # this process kept the real target
