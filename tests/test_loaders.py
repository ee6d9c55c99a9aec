"""Every loader honours one batch contract and serves the same pixels: resident, torch, DALI, FFCV (on the CPU)."""
import json
import sys

import numpy as np
import pytest
import torch

import kernels
from pipeline import datasets
from kernels.reference import crop_and_flip
from pipeline.batch import LoaderSettings
from pipeline.datasets import DataError
from pipeline.loaders import LOADERS, build_loader
from pipeline.resident import fits_on_device
from pipeline.views import ViewExpander

from conftest import REPO, run_child
from image_folders import make_image_folder

BATCH = 24  # global batch in source images; odd-sized eval tails below


@pytest.fixture(scope="module")
def digits():
    return datasets.build_splits("digits", "unused", 16, 0.1, seed=0)


@pytest.fixture(scope="module")
def beton_dir(tmp_path_factory):
    """One .beton cache for the tests that serve digits: a .beton is keyed by its split's fingerprint, so they
    share one written file (each write starts an interpreter, pipeline/beton_writer.py)."""
    return tmp_path_factory.mktemp("digits-betons")


def settings_for(splits, directory, family="rotation", **overrides):
    values = dict(expander=ViewExpander(kernels.get_family(family), splits.mean, splits.std),
                  device=torch.device("cpu"), global_batch=BATCH, train=True, seed=3, workers=2,
                  cache_dir=str(directory / "betons"))
    values.update(overrides)
    return LoaderSettings(**values)


def epoch_batches(name, split, settings, epoch=0):
    loader = build_loader(name, split, settings, split_name="digits-part")
    loader.set_epoch(epoch)
    batches = list(loader)
    assert len(batches) == len(loader)
    return batches


@pytest.mark.parametrize("name", LOADERS)
@pytest.mark.parametrize("train", [True, False])
def test_batch_contract(name, train, digits, beton_dir):
    split = digits.val  # 144 images
    settings = settings_for(digits, beton_dir, train=train, workers=1)
    threads = torch.get_num_threads()
    batches = epoch_batches(name, split, settings)
    assert torch.get_num_threads() == threads  # FFCV sets torch's process-wide count to its workers' otherwise
    served = torch.cat([batch.indices for batch in batches])
    for batch in batches:
        b = len(batch.labels)
        assert batch.views.shape == (b * 4, 3, 16, 16) and batch.views.dtype == torch.float32
        assert batch.views.is_contiguous(memory_format=torch.channels_last)
        assert batch.labels.dtype == torch.int64 and batch.indices.dtype == torch.int64
        assert torch.equal(batch.labels, torch.from_numpy(split.labels)[batch.indices])
        if train:
            assert b == BATCH
    if train:  # a seeded shuffle of distinct images, the ragged tail dropped
        assert len(served) == len(split) // BATCH * BATCH and len(set(served.tolist())) == len(served)
        assert served.tolist() != sorted(served.tolist())
    else:  # every image once, in order
        assert served.tolist() == list(range(len(split)))


@pytest.mark.parametrize("name", [n for n in LOADERS if n != "resident"])
def test_without_augmentation_every_loader_serves_the_resident_views(name, digits, beton_dir):
    split = digits.val
    for mode, overrides in (("train", dict(train=True, crop_padding=-1)), ("eval", dict(train=False))):
        settings = settings_for(digits, beton_dir, **overrides)
        reference = epoch_batches("resident", split, settings)
        expected = {}
        for batch in reference:
            for b, index in enumerate(batch.indices.tolist()):
                expected[index] = batch.views[4 * b:4 * b + 4]
        for batch in epoch_batches(name, split, settings):
            for b, index in enumerate(batch.indices.tolist()):
                assert torch.equal(batch.views[4 * b:4 * b + 4], expected[index]), (mode, index)
        if mode == "eval" or name != "ffcv":  # ffcv shuffles with its own (seeded) permutation
            assert [b.indices.tolist() for b in reference] == \
                [b.indices.tolist() for b in epoch_batches(name, split, settings)]


@pytest.mark.parametrize("flip", [True, False], ids=["flips", "no-flips"])
@pytest.mark.parametrize("name", LOADERS)
def test_augmentation_is_one_padded_crop_and_mirror_per_image_shared_by_its_views(name, flip, digits, beton_dir):
    """Each served image is one zero-padded crop of its source, mirrored or not, the same for its views; with
    flips off (--flip off, the digits' recipe) no image is mirrored."""
    split = digits.val
    padding = 2
    settings = settings_for(digits, beton_dir, crop_padding=padding, flip=flip)
    expander = settings.expander
    grid = [(top, left, mirror) for top in range(2 * padding + 1) for left in range(2 * padding + 1)
            for mirror in ((False, True) if flip else (False,))]
    offsets = torch.tensor([[top, left] for top, left, _ in grid])
    flips = torch.tensor([mirror for *_, mirror in grid])
    changed = mirrored = 0
    batch = epoch_batches(name, split, settings)[0]
    for b, index in enumerate(batch.indices.tolist()):
        source = torch.from_numpy(split.images[index]).expand(len(grid), -1, -1, -1)
        candidates = expander(crop_and_flip(source, offsets, flips, padding)).view(len(grid), 4, 3, 16, 16)
        served = batch.views[4 * b:4 * b + 4]
        matches = [k for k in range(len(grid)) if torch.equal(candidates[k], served)]
        assert matches, f"{name}: image {index} is not a padded crop{'/mirror' if flip else ''} of its source"
        changed += grid[matches[0]][:2] != (padding, padding) or grid[matches[0]][2]
        mirrored += all(grid[k][2] for k in matches)  # only a mirror gives this image
    assert changed > len(batch.labels) // 2  # the augmentation really moved most images
    if flip:  # half of 24 images, each mirrored with probability ½: none is a 2⁻²⁴ event
        assert mirrored > 0


@pytest.mark.parametrize("name", LOADERS)
def test_a_dataset_smaller_than_one_global_batch_is_refused(name, digits, beton_dir):
    tiny = digits.val.subset(np.arange(10))
    with pytest.raises(ValueError, match="fewer than one global batch of 24"):
        build_loader(name, tiny, settings_for(digits, beton_dir), split_name="tiny")


def test_resident_loader_refuses_data_that_does_not_fit(monkeypatch):
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (2**30, 2**34))
    with pytest.raises(ValueError, match="needs 2.00 GiB .* only 1.00 GiB is free; use --loader dali"):
        fits_on_device(2 * 2**30, torch.device("cuda", 0))


def test_dali_decodes_a_real_image_folder_with_a_corrupt_file_skipped(tmp_path):
    root = make_image_folder(tmp_path / "images")
    with pytest.warns(UserWarning, match="skipping unreadable image"):
        folder = datasets.load_image_folder(root, 16)
    assert len(folder.files) == len(folder) == 17 and not any("0.jpg" in f and "class_0" in f for f in folder.files)
    settings = settings_for(datasets.DatasetSplits(folder, folder, folder, (0.5,) * 3, (0.25,) * 3), tmp_path,
                            global_batch=5, train=False)
    batches = epoch_batches("dali", folder, settings)
    served = torch.cat([b.indices for b in batches])
    assert sorted(served.tolist()) == list(range(17))
    views = torch.cat([b.views for b in batches])
    assert views.shape == (17 * 4, 3, 16, 16) and torch.isfinite(views).all()
    # DALI decodes and resizes the files itself; its pixels agree with PIL's up to resampling differences
    pil = ViewExpander(kernels.get_family("rotation"), (0.5,) * 3, (0.25,) * 3)(
        torch.from_numpy(folder.images[served.numpy()]))
    assert (views - pil).abs().mean() * 0.25 * 255 < 3  # mean error under 3 grey levels of 255
    train = epoch_batches("dali", folder, settings_for(
        datasets.DatasetSplits(folder, folder, folder, (0.5,) * 3, (0.25,) * 3), tmp_path, global_batch=5))
    assert len(train) == 17 // 5 and all(len(b.labels) == 5 for b in train)


def test_make_beton_writes_fingerprinted_files_and_a_mismatch_is_refused(digits, tmp_path, ffcv_interpreted):
    out = tmp_path / "betons"
    run_child([sys.executable, "-m", "pipeline.make_beton", "--dataset", "digits", "--image-size", "16",
               "--out-dir", str(out)], cwd=REPO, timeout=300)
    for part in ("train", "val", "test"):
        meta = json.loads((out / f"digits-{part}.beton.json").read_text())
        assert meta["num_images"] == len(getattr(digits, part)) and len(meta["fingerprint"]) == 64
    settings = settings_for(digits, tmp_path, train=False, cache_dir=str(out))
    batches = epoch_batches_named("digits-val", digits.val, settings)
    assert torch.cat([b.indices for b in batches]).tolist() == list(range(len(digits.val)))
    with pytest.raises(DataError, match="digits-val.beton was made from different data"):
        build_loader("ffcv", digits.test, settings, split_name="digits-val")


BETON_WORKER_FAILS = """
import sys
from pathlib import Path
import numpy as np
from pipeline.beton import write_beton
from pipeline.datasets import DataError, ImageSet
# one raw row of 1700x1700x3 bytes (8.7 MB) is over FFCV's 8 MiB page: the worker writing it raises
split = ImageSet(np.zeros((2, 1700, 1700, 3), dtype=np.uint8), np.array([0, 1]), 2, ["a", "b"])
try:
    write_beton(split, Path(sys.argv[1]) / "big.beton")
except DataError as error:
    print("DataError:", error)
"""


def test_a_beton_writer_worker_that_fails_ends_the_write_with_an_error(tmp_path):
    """FFCV's writer waits for its workers' row count without checking that they live: without the watchdog in
    pipeline/beton_writer.py this child would never end (run_child's timeout fails the test then)."""
    done = run_child([sys.executable, "-c", BETON_WORKER_FAILS, str(tmp_path)], cwd=REPO, timeout=180)
    assert "Tried allocating" in done.stderr and "writer worker" in done.stderr, done.stderr[-2000:]
    assert f"DataError: writing {tmp_path / 'big.beton'} failed" in done.stdout, done.stdout
    assert not list(tmp_path.iterdir())  # neither a .beton nor a partial file is left


def epoch_batches_named(split_name, split, settings):
    return list(build_loader("ffcv", split, settings, split_name=split_name))


@pytest.mark.distributed
def test_two_ranks_cover_each_image_once_per_epoch_with_every_loader(quick_torchrun_verdicts):
    verdict = quick_torchrun_verdicts["shards"]
    assert set(verdict) == {f"{name}-{mode}" for name in LOADERS for mode in ("train", "eval")}
    for key, check in verdict.items():
        assert check["duplicates"] == 0, key
        assert check["per_rank_steps_equal"], key
        assert check["served"] == check["expected"], key


def test_training_on_a_folder_counts_the_skipped_file_in_the_summary(tiny_config, tmp_path):
    from train.main import train

    root = make_image_folder(tmp_path / "images")
    with pytest.warns(UserWarning, match="skipping unreadable image"):
        summary = train(tiny_config(dataset="folder", data_root=str(root), loader="dali", batch_size=4,
                                    eval_batch_size=4, epochs=1, val_split=2, loader_workers=1))
    assert summary["completed"] and summary["skipped_images"] == 1
    records = [json.loads(line) for line in (tmp_path / "runs" / "tiny" / "metrics.jsonl").read_text().splitlines()]
    assert [r["skipped_images"] for r in records if r["kind"] == "epoch"] == [1]
