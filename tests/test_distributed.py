"""Two CPU processes under torchrun (gloo): disjoint shards, averaged gradients, rank 0 alone writes."""
import json

import pytest

from conftest import REPO, run_child, torchrun_command

pytestmark = pytest.mark.distributed


def test_shards_and_gradient_averaging(quick_torchrun_verdicts):
    verdict = quick_torchrun_verdicts["distributed"]
    assert verdict["world_size"] == 2
    assert verdict["shards_disjoint"] and verdict["shard_sizes"] == [50, 50]
    assert verdict["local_gradients_differ"]  # otherwise the averaging check would prove nothing
    assert verdict["max_gradient_error"] < 1e-6


def test_main_trains_under_torchrun_with_two_processes(straight_two_rank_run):
    run_dir = straight_two_rank_run  # TWO_RANK_RUN: 200 images // 32 = 6 steps × 3 epochs, logged every 4
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    steps = [r["step"] for r in records if r["kind"] == "step"]
    assert steps == sorted(set(steps)) and steps[-1] == 18
    assert len([r for r in records if r["kind"] == "summary"]) == 1
    assert json.loads((run_dir / "config.json").read_text())["world_size"] == 2
    assert (run_dir / "stdout.txt").read_text().count("best val") == 1  # only rank 0 prints


def test_global_batch_must_split_across_ranks(tmp_path):
    command = torchrun_command(2, str(REPO / "train" / "main.py"), "--image-size", "16", "--model", "resnet8",
                               "--batch-size", "63", "--out-dir", str(tmp_path))
    result = run_child(command, expect=None, timeout=300)
    assert "error: global batch 63 is not divisible by the world size 2" in result.stderr
    assert "Traceback" not in result.stderr.split("error: global batch")[0]


def test_a_checkpoint_gives_each_rank_back_its_own_random_streams(quick_torchrun_verdicts):
    verdict = quick_torchrun_verdicts["rng"]
    assert verdict["own_stream_restored"] and verdict["ranks_differ"], verdict
