"""Bad input ends in one line naming the problem, exit status 2, no traceback."""
import sys

import pytest

from conftest import DIGITS_8PX, REPO, run_child
from train.config import PRESETS
from train.main import main


def run_main(capsys, *argv):
    status = main(list(argv))
    err = capsys.readouterr().err.strip()
    return status, err


@pytest.mark.parametrize("argv,message", [
    (["--method", "slaa"], "unknown method 'slaa'; valid: baseline, da, mt, sla, sla_sd"),
    (["--model", "resnet21"], "unknown model 'resnet21'; valid: resnet8, resnet20"),
    (["--transforms", "rotate"], "unknown transformation family 'rotate'; valid: none, rotation"),
    (["--dataset", "mnist"], "unknown dataset 'mnist'; valid: digits, mnist5k, cifar10, cifar100, folder"),
    (["--preset", "nope"], f"unknown preset 'nope'; valid: {', '.join(sorted(PRESETS))}"),
    (["--loader", "magic"], "unknown loader 'magic'"),
    (["--precision", "fp8"], "unknown precision 'fp8'"),
    (["--schedule", "linear"], "unknown schedule 'linear'"),
    (["--batch-size", "5000"], "fewer than one global batch of 5000"),
    (["--method", "simclr", "--views", "dim"], "simclr pairs two views of each image, but --views dim makes 1"),
    (["--method", "byol", "--views", "simclr+2x8"], "byol pairs two views of each image, but --views simclr+2x8 makes 4"),
])
def test_unknown_names_and_impossible_settings(capsys, tmp_path, argv, message):
    status, err = run_main(capsys, *argv, "--image-size", "16", "--out-dir", str(tmp_path))
    assert status == 2
    assert err.startswith("error: ") and message in err and "\n" not in err


def test_missing_dataset_and_resume_paths(capsys, tmp_path, monkeypatch):
    from pipeline import datasets

    monkeypatch.setattr(datasets, "CIFAR_URL", "http://127.0.0.1:9/")
    status, err = run_main(capsys, "--dataset", "cifar10", "--data-root", str(tmp_path / "nothing"))
    assert status == 2 and "cifar-10-batches-py not found" in err and "cifar-10-python.tar.gz" in err
    status, err = run_main(capsys, "--resume", str(tmp_path / "missing.pt"), "--image-size", "16")
    assert status == 2 and f"--resume checkpoint {tmp_path / 'missing.pt'} does not exist" in err
    (tmp_path / "broken.pt").write_bytes(b"not a checkpoint")
    status, err = run_main(capsys, "--resume", str(tmp_path / "broken.pt"), "--image-size", "16")
    assert status == 2 and "cannot be read" in err


def test_resume_with_an_incompatible_config_is_refused(capsys, tiny_config, tmp_path):
    from train.main import train

    train(tiny_config(method="sla", epochs=1, samples_per_class=10, run_name="first"))
    checkpoint = tmp_path / "runs" / "first" / "last.pt"
    status, err = run_main(capsys, "--resume", str(checkpoint), "--method", "sla", "--model", "resnet20",
                           *DIGITS_8PX, "--samples-per-class", "10", "--batch-size", "64")
    assert status == 2 and "was made with model='resnet8', but this run has model='resnet20'" in err
    # the optimizer's state brings back its own learning rate: another --lr would be ignored, so it is refused
    status, err = run_main(capsys, "--resume", str(checkpoint), "--method", "sla", "--model", "resnet8",
                           *DIGITS_8PX, "--samples-per-class", "10", "--batch-size", "64", "--lr", "0.2")
    assert status == 2 and "was made with lr=0.1, but this run has lr=0.2" in err


def test_no_traceback_reaches_the_terminal(tmp_path):
    result = run_child([sys.executable, str(REPO / "train" / "main.py"), "--method", "nope"], expect=2, timeout=120)
    from train.methods import METHODS

    assert list(METHODS)[:8] == ["baseline", "da", "mt", "sla", "sla_sd", "hsakd_teacher", "hsakd_student",
                                 "hsakd_online"]
    assert result.stderr.strip().splitlines() == [f"error: unknown method 'nope'; valid: {', '.join(METHODS)}"]


def test_a_run_without_validation_images_is_refused_in_one_line_for_every_method(tmp_path, capsys):
    from train.main import main
    from train.methods import METHODS

    for method in METHODS:
        assert main(["--method", method, "--val-split", "0", "--out-dir", str(tmp_path)]) == 2, method
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("error: --val-split 0 holds out no validation images"), err
    assert not list(tmp_path.iterdir())  # refused before a run directory was made


def bad_folder(root, kind):
    """A data folder with one thing wrong: no class folders, class folders without images, or only broken files."""
    root.mkdir()
    if kind in ("classes without images", "only broken images"):
        for name in ("cat", "dog"):
            (root / name).mkdir()
            if kind == "only broken images":
                (root / name / "0.jpg").write_bytes(b"not a jpeg")
    return root


@pytest.mark.parametrize("kind,message", [
    ("no class folders", "has no class sub-folders"),
    ("classes without images", "holds no"),
    ("only broken images", ""),
])
def test_a_bad_image_folder_is_one_line(capsys, tmp_path, kind, message):
    root = bad_folder(tmp_path / "data", kind)
    status, err = run_main(capsys, "--dataset", "folder", "--data-root", str(root), "--image-size", "16",
                           "--out-dir", str(tmp_path / "runs"))
    assert status == 2 and err.startswith("error: ") and "\n" not in err and message in err, err
    assert not (tmp_path / "runs").exists()  # refused before a run directory was made


def test_a_teacher_or_pretrained_file_that_is_missing_is_one_line(capsys, tmp_path):
    for flag, method in (("--teacher", "hsakd_student"), ("--pretrained", "linear_eval")):
        status, err = run_main(capsys, "--method", method, flag, str(tmp_path / "missing.pt"), "--image-size", "16",
                               "--out-dir", str(tmp_path / "runs"))
        assert status == 2 and err.startswith("error: ") and "missing.pt" in err and "\n" not in err, (flag, err)
