"""Data sources, splits and their errors."""
import pickle

import numpy as np
import pytest

from pipeline import datasets
from pipeline.datasets import DataError

from image_folders import make_image_folder


def test_digits_are_real_rgb_and_split_stratified():
    splits = datasets.build_splits("digits", "unused", 32, 0.1, seed=0)
    assert splits.train.images.shape[1:] == (32, 32, 3) and splits.train.images.dtype == np.uint8
    assert len(splits.train) + len(splits.val) + len(splits.test) == 1797
    assert len(splits.test) == 360
    assert len(splits.val) == 144  # round(0.1 × 1437)
    expected_share = np.bincount(
        np.concatenate([splits.train.labels, splits.val.labels])) * 0.1
    assert np.abs(np.bincount(splits.val.labels, minlength=10) - expected_share).max() <= 1  # stratified
    assert splits.train.images.max() == 255 and splits.train.images.min() == 0
    again = datasets.build_splits("digits", "unused", 32, 0.1, seed=0)
    assert np.array_equal(again.val.labels, splits.val.labels)  # fixed, reproducible split


def test_mnist5k_is_a_fixed_stratified_split_of_mlxtends_digits():
    """5,000 real MNIST digits: 4,000 train and 1,000 test, 400 and 100 per class, the same split for every seed
    (stratified, seed 0), no image in both; 28×28 grey levels resized to RGB."""
    train, test = datasets.load_mnist5k(16)
    assert train.images.shape == (4000, 16, 16, 3) and test.images.shape == (1000, 16, 16, 3)
    assert train.images.dtype == np.uint8 and train.images.max() > 200 and train.images.min() == 0
    assert np.bincount(train.labels).tolist() == [400] * 10 and np.bincount(test.labels).tolist() == [100] * 10
    assert np.array_equal(train.images[..., 0], train.images[..., 2])  # grey: three equal channels
    seen = {image.tobytes() for image in train.images}
    assert not any(image.tobytes() in seen for image in test.images)
    assert "mnist5k" in datasets.DATASETS


def test_limited_and_long_tailed_subsets():
    limited = datasets.build_splits("digits", "unused", 16, 0.1, seed=0, samples_per_class=7)
    assert np.array_equal(np.bincount(limited.train.labels), np.full(10, 7))
    tail = datasets.build_splits("digits", "unused", 16, 0.1, seed=0, imbalance_ratio=10)
    counts = np.bincount(tail.train.labels)
    assert counts[0] >= 9 * counts[-1] and all(np.diff(counts) <= 0)


def image_keys(split) -> list[bytes]:
    return [image.tobytes() + bytes([label]) for image, label in zip(split.images, split.labels)]


@pytest.mark.parametrize("limits", [dict(samples_per_class=10), dict(imbalance_ratio=10)])
def test_the_unused_test_split_is_the_fixed_one_and_every_image_neither_trained_nor_validated(limits):
    fixed = datasets.build_splits("digits", "unused", 16, 0.1, seed=3, **limits)
    unused = datasets.build_splits("digits", "unused", 16, 0.1, seed=3, test_split="unused", **limits)
    assert image_keys(unused.train) == image_keys(fixed.train) and image_keys(unused.val) == image_keys(fixed.val)
    assert image_keys(unused.test)[:len(fixed.test)] == image_keys(fixed.test)
    # 1,797 digits: each image is in exactly one of train, val and the enlarged test split
    assert len(unused.train) + len(unused.val) + len(unused.test) == 1797
    train_full, _ = datasets.load_digits(16)
    added = set(image_keys(unused.test)[len(fixed.test):])
    assert added <= set(image_keys(train_full)) and not added & set(image_keys(fixed.train) + image_keys(fixed.val))
    if "samples_per_class" in limits:
        assert len(unused.test) == 1797 - 100 - 144  # 1,553: every image at 10 per class with 144 validating


def test_an_unused_test_split_is_refused_where_the_papers_fix_the_test_set(tmp_path):
    with pytest.raises(DataError, match="--test-split unused is for digits and mnist5k; cifar10's test split"):
        datasets.build_splits("cifar10", str(tmp_path), 32, 0.1, seed=0, test_split="unused")


def test_flips_follow_the_data_sets_recipe_unless_asked():
    assert [datasets.resolve_flip("auto", name) for name in ("digits", "mnist5k", "cifar10", "folder")] == \
        [False, False, True, True]
    assert datasets.resolve_flip("on", "digits") and not datasets.resolve_flip("off", "cifar100")


def write_cifar10(root, num_train=20, num_test=10, corrupt=None):
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        n = num_test if name == "test_batch" else num_train
        batch = {b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8), b"labels": list(rng.integers(0, 10, n))}
        (folder / name).write_bytes(b"garbage" if name == corrupt else pickle.dumps(batch))
    (folder / "batches.meta").write_bytes(pickle.dumps({b"label_names": [f"c{i}".encode() for i in range(10)]}))
    return folder


def test_cifar_pickles_load_in_hwc_layout(tmp_path):
    folder = write_cifar10(tmp_path)
    train, test = datasets.load_cifar("cifar10", str(tmp_path))
    assert train.images.shape == (100, 32, 32, 3) and test.images.shape == (10, 32, 32, 3)
    raw = pickle.loads((folder / "data_batch_1").read_bytes())
    assert np.array_equal(train.images[0, :, :, 1], raw[b"data"][0, 1024:2048].reshape(32, 32))
    assert train.class_names[3] == "c3"


def test_cifar_corrupt_and_missing_files_name_the_problem(tmp_path, monkeypatch):
    write_cifar10(tmp_path / "bad", corrupt="data_batch_3")
    with pytest.raises(DataError, match="corrupt or unsafe CIFAR file .*data_batch_3"):
        datasets.load_cifar("cifar10", str(tmp_path / "bad"))
    monkeypatch.setattr(datasets, "CIFAR_URL", "http://127.0.0.1:9/")  # nothing listens: fails at once
    with pytest.raises(DataError, match="cifar-100-python not found .*put cifar-100-python.tar.gz"):
        datasets.load_cifar("cifar100", str(tmp_path / "empty"))


def test_cifar_archive_checksum_is_verified(tmp_path):
    (tmp_path / "cifar-10-python.tar.gz").write_bytes(b"not the archive")
    with pytest.raises(DataError, match="md5 .* expected c58f30108f718f92721af3b95e74349a"):
        datasets.load_cifar("cifar10", str(tmp_path))


def test_image_folder_skips_corrupt_files_or_fails_when_strict(tmp_path):
    root = make_image_folder(tmp_path / "images")
    with pytest.warns(UserWarning, match="skipping unreadable image"):
        loaded = datasets.load_image_folder(root, 16)
    assert loaded.images.shape == (17, 16, 16, 3) and len(loaded.skipped_files) == 1
    with pytest.raises(DataError, match="unreadable image .*0.jpg"):
        datasets.load_image_folder(root, 16, strict=True)


def test_image_folder_errors(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        datasets.load_image_folder(tmp_path / "nowhere", 16)
    (tmp_path / "tree" / "cats").mkdir(parents=True)
    with pytest.raises(DataError, match="holds no images"):
        datasets.load_image_folder(tmp_path / "tree", 16)


def test_out_of_range_labels_are_refused():
    with pytest.raises(DataError, match=r"label 12 is outside \[0, 10\)"):
        datasets.ImageSet(np.zeros((2, 4, 4, 3), np.uint8), np.array([1, 12]), 10, [])
