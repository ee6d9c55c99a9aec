"""Runs tests/test_kernels.py's `cuda` cases in Numba's CUDA simulator, in a process of its own:
NUMBA_ENABLE_CUDASIM must be set before numba is first imported."""
import sys

from conftest import REPO, run_child, subprocess_env


def test_cuda_kernels_under_the_simulator():
    env = subprocess_env()
    env["NUMBA_ENABLE_CUDASIM"] = "1"
    result = run_child([sys.executable, "-m", "pytest", "-v", "-p", "no:cacheprovider",
                        str(REPO / "tests" / "test_kernels.py")], cwd=REPO, env=env, timeout=900)
    summary = result.stdout.strip().splitlines()[-1]
    assert " passed" in summary and "failed" not in summary, summary
    passed = [line for line in result.stdout.splitlines() if line.endswith("PASSED") or " PASSED " in line]
    # The child ran the cuda backend in the simulator (its own check), and only that backend.
    assert any("test_the_simulator_runs_the_cuda_target" in line for line in passed), result.stdout[-3000:]
    assert any("[cuda" in line for line in passed) and not any("[cpu" in line for line in passed)
