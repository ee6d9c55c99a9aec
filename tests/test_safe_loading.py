"""Loading a checkpoint or a CIFAR file never runs code: a crafted pickle leaves no trace and ends in one line."""
import os
import pickle
import sys

import numpy as np
import pytest
import torch

from conftest import REPO, run_child
from pipeline import datasets
from pipeline.datasets import DataError
from train.commands import convert_checkpoint
from train.main import main
from train.checkpoint import read_checkpoint_file, restore_rng_states, rng_states


class WritesAMarker:
    """Unpickling this calls os.system: what an attacker's checkpoint would do."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def crafted_checkpoint(path, marker):
    torch.save({"model": {}, "config": {"method": "hsakd_teacher", "model": "resnet8"}, "x": WritesAMarker(marker)},
               path)
    return path


def assert_refused_in_one_line(stderr: str) -> None:
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "safe load refuses" in lines[0], lines
    assert "python -m train.commands.convert_checkpoint" in lines[0] and "posix.system" in lines[0]


def test_a_crafted_checkpoint_to_resume_runs_nothing_and_is_one_line_from_the_command_line(tmp_path):
    marker = tmp_path / "pwned"
    evil = crafted_checkpoint(tmp_path / "evil.pt", marker)
    result = run_child([sys.executable, str(REPO / "train" / "main.py"), "--resume", str(evil), "--image-size", "16",
                        "--out-dir", str(tmp_path / "runs")], expect=2, timeout=300)
    assert not marker.exists()
    assert_refused_in_one_line(result.stderr)


@pytest.mark.parametrize("flags", [["--method", "hsakd_student", "--teacher"],
                                   ["--method", "hsakd_teacher", "--frozen-backbone"]])
def test_a_crafted_teacher_or_backbone_runs_nothing_and_is_one_line(capsys, tmp_path, flags):
    marker = tmp_path / "pwned"
    evil = crafted_checkpoint(tmp_path / "evil.pt", marker)
    assert main([*flags, str(evil), "--image-size", "16", "--out-dir", str(tmp_path / "runs")]) == 2
    assert not marker.exists()
    assert_refused_in_one_line(capsys.readouterr().err)


def test_a_crafted_cifar_batch_runs_nothing(tmp_path):
    marker = tmp_path / "pwned"
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    rng = np.random.default_rng(1)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        batch = {b"data": rng.integers(0, 256, (4, 3072), dtype=np.uint8), b"labels": [1, 2, 3, 4]}
        if name == "data_batch_2":
            batch[b"labels"] = WritesAMarker(marker)
        (folder / name).write_bytes(pickle.dumps(batch))
    with pytest.raises(DataError, match=r"corrupt or unsafe CIFAR file .*data_batch_2.*refused to load posix\.system"):
        datasets.load_cifar("cifar10", str(tmp_path))
    assert not marker.exists()


def test_cifar_pickles_of_python_2_and_protocol_2_still_load(tmp_path):
    """The published files are protocol-2 pickles; Python 3 writes bytes in them through _codecs.encode."""
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    rng = np.random.default_rng(2)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        batch = {b"data": rng.integers(0, 256, (3, 3072), dtype=np.uint8), b"labels": [0, 9, 5],
                 b"filenames": [b"a.png", b"b.png", b"c.png"]}
        (folder / name).write_bytes(pickle.dumps(batch, protocol=2))
    train, test = datasets.load_cifar("cifar10", str(tmp_path))
    assert train.images.shape == (15, 32, 32, 3) and list(test.labels) == [0, 9, 5]


def test_rng_states_round_trip_through_the_safe_unpickler(tmp_path):
    import random

    random.seed(11), np.random.seed(12), torch.manual_seed(13)
    np.random.normal()  # leaves a cached gaussian in numpy's legacy state
    path = tmp_path / "rng.pt"
    torch.save({"rng": rng_states()}, path)
    expected = (random.random(), np.random.normal(), np.random.random(), torch.rand(3))
    random.seed(0), np.random.seed(0), torch.manual_seed(0)
    restore_rng_states(torch.load(path, weights_only=True)["rng"])
    again = (random.random(), np.random.normal(), np.random.random(), torch.rand(3))
    assert expected[:3] == again[:3] and torch.equal(expected[3], again[3])


def test_an_old_checkpoint_is_refused_then_converted(tmp_path, capsys):
    """Checkpoints written before this change pickled numpy's RNG state: refused with the way out, converted."""
    import random

    old_states = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    old = tmp_path / "old.pt"
    torch.save({"model": {"w": torch.ones(2)}, "config": {"method": "sla"}, "rng": old_states}, old)
    with pytest.raises(ValueError, match="convert it once: python -m train.commands.convert_checkpoint"):
        read_checkpoint_file(str(old), "--resume")
    assert convert_checkpoint.main([str(old), str(tmp_path / "new.pt")]) == 0
    new = read_checkpoint_file(str(tmp_path / "new.pt"), "--resume")
    assert torch.equal(new["model"]["w"], torch.ones(2))
    np.random.seed(5)
    restore_rng_states(new["rng"])
    assert np.random.random() == (np.random.set_state(old_states["numpy"]), np.random.random())[1]
    random.seed(5)
    restore_rng_states(new["rng"])
    assert random.random() == (random.setstate(old_states["python"]), random.random())[1]


def test_best_checkpoint_of_a_run_loads_safely(tiny_config, tmp_path):
    from train.main import train

    summary = train(tiny_config(method="sla", epochs=1, samples_per_class=10, run_name="safe"))
    loaded = {name: torch.load(tmp_path / "runs" / "safe" / name, weights_only=True)  # raises on anything but data
              for name in ("best.pt", "last.pt")}
    for payload in loaded.values():  # what the safe load gives back is the run's, whole
        assert payload["config"]["method"] == "sla" and payload["backbone"] == "resnet8"
        assert payload["model"] and all(isinstance(v, torch.Tensor) for v in payload["model"].values())
    last = loaded["last.pt"]
    assert last["step"] == summary["steps"] and last["best_score"] == summary["best_val"]
    assert loaded["best.pt"]["model"].keys() == last["model"].keys()
    assert set(last["rng"]) >= {"python", "numpy", "torch"}


def test_a_checkpoint_without_every_rank_s_streams_resumes_each_rank_from_rank_0_s_with_a_warning():
    from train.checkpoint import own_rng_states

    states = [{"rank": 0}, {"rank": 1}]
    assert own_rng_states({"rng": states[0], "rank_rng": states}, 1, 2) == {"rank": 1}
    assert own_rng_states({"rng": states[0]}, 0, 1) == {"rank": 0}  # one process: nothing is lost
    with pytest.warns(UserWarning, match="every rank resumes from rank 0's streams"):
        assert own_rng_states({"rng": states[0], "rank_rng": states}, 2, 4) == {"rank": 0}
