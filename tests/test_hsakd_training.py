"""HSAKD end to end: a teacher and then a student trained from train/main.py as a user would, a frozen
teacher that stays frozen, a frozen backbone, online mutual distillation, two processes, and the
errors for a teacher that does not fit."""
import json
import shutil
import sys

import pytest
import torch

import kernels
from conftest import DIGITS_8PX, REPO, made_once, run_child, subprocess_env
from pipeline.batch import Batch
from train.main import main, train
from train.methods import build_method
from train.methods.run_checkpoints import file_sha256
from two_rank_runs import output, save_untrained_teacher

TINY = ["--dataset", "digits", *DIGITS_8PX, "--batch-size", "64", "--log-every", "5"]


def records(run_dir, kind):
    return [r for r in map(json.loads, (run_dir / "metrics.jsonl").read_text().splitlines()) if r["kind"] == kind]


def run_main_script(*argv):
    env = subprocess_env()
    env["OMP_NUM_THREADS"] = str(max(1, torch.get_num_threads()))  # one process may use every core
    return run_child([sys.executable, str(REPO / "train" / "main.py"), *TINY, *argv], env=env, timeout=300)


@pytest.fixture(scope="session")
def teacher_run(tmp_path_factory, worker_id):
    """Command one: a resnet8 teacher with a joint classifier after each of its three stages, trained once for
    every pytest-xdist worker by main() in the worker that asks first (command two, the student, is a process of
    its own)."""
    def make(out):
        assert main([*TINY, "--method", "hsakd_teacher", "--model", "resnet8", "--epochs", "4", "--out-dir", str(out),
                     "--run-name", "teacher"]) == 0

    return made_once(tmp_path_factory, worker_id, "hsakd-teacher", make) / "teacher"


def test_teacher_then_student_from_the_command_line(teacher_run, tmp_path):
    teacher_test = records(teacher_run, "test")[0]
    assert {"SI", "branch1", "branch2", "branch3"} <= set(teacher_test)
    # Command two: a resnet8 student distilled from the teacher's best checkpoint.
    result = run_main_script("--method", "hsakd_student", "--model", "resnet8", "--teacher",
                             str(teacher_run / "best.pt"), "--teacher-model", "resnet8", "--epochs", "3",
                             "--out-dir", str(tmp_path), "--run-name", "student")
    run_dir = tmp_path / "student"
    summary = records(run_dir, "summary")[0]
    assert summary["test"]["SI"] > 40.0, summary["test"]  # chance is 10%
    steps = records(run_dir, "step")
    assert {"head_ce", "head_kl", "branch1_kl", "branch2_kl", "branch3_kl"} <= set(steps[0])
    assert steps[-1]["loss"] < 0.8 * steps[0]["loss"]
    # The run records which teacher it learned from, in the manifest and in its checkpoints.
    sha = file_sha256(teacher_run / "best.pt")
    manifest = json.loads((run_dir / "config.json").read_text())
    assert manifest["teacher_sha256"] == sha and manifest["teacher_model"] == "resnet8"
    for name in ("last.pt", "best.pt"):
        payload = torch.load(run_dir / name, map_location="cpu", weights_only=True)
        assert payload["provenance"]["teacher_sha256"] == sha
    assert "teacher         resnet8 from" in result.stdout


def test_the_teacher_stays_frozen_while_the_student_trains(teacher_run, tiny_config):
    torch.manual_seed(0)
    config = tiny_config(method="hsakd_student", teacher=str(teacher_run / "best.pt"))
    method = build_method(config)
    family = kernels.get_family("rotation")
    student = method.build_model("resnet8", 10, family, torch.device("cpu"), channels_last=True)
    before = {name: value.clone() for name, value in method.teacher.state_dict().items()}
    assert any("running_mean" in name for name in before)
    optimizer = torch.optim.SGD(student.parameters(), lr=0.1, momentum=0.9)
    student.train()
    for step in range(3):
        views = torch.randn(8 * 4, 3, 16, 16).contiguous(memory_format=torch.channels_last)
        batch = Batch(views, torch.randint(0, 10, (8,)), torch.arange(8))
        losses = method.losses(method.forward(student, batch.views), batch.labels)
        optimizer.zero_grad()
        losses["loss"].backward()
        optimizer.step()
    after = method.teacher.state_dict()
    assert not method.teacher.training
    assert all(torch.equal(before[name], after[name]) for name in before)  # weights and BN statistics
    assert all(p.grad is None and not p.requires_grad for p in method.teacher.parameters())
    assert all(p.grad is not None for p in student.parameters())


def test_plain_kd_distils_the_teachers_class_head_on_the_original_images(teacher_run, tiny_config, tmp_path):
    """kd, HSAKD's control: a plain student, no transformed views; its loss is CE + τ²·KL(teacher head ‖ student)
    (float64 reference; fp32 softmaxes over 10 classes agree to ~1e-6 relative)."""
    config = tiny_config(method="kd", teacher=str(teacher_run / "best.pt"), kd_temperature=4.0, epochs=1,
                         samples_per_class=20, run_name="kd")
    method = build_method(config)
    assert method.transform_family == "none"
    student = method.build_model("resnet8", 10, kernels.get_family("none"), torch.device("cpu"), channels_last=True)
    method.bind(kernels.get_family("none"), torch.device("cpu"))
    views = torch.randn(6, 3, 16, 16).contiguous(memory_format=torch.channels_last)
    labels = torch.tensor([0, 3, 5, 9, 1, 3])
    outputs = method.forward(student, views)
    losses = method.losses(outputs, labels)
    s, t = outputs["student"]["class"].double(), outputs["teacher"]["logits"].double()
    ce = torch.nn.functional.cross_entropy(s, labels)
    p_t = torch.softmax(t / 4.0, dim=1)
    kl = 16.0 * (p_t * (torch.log_softmax(t / 4.0, dim=1) - torch.log_softmax(s / 4.0, dim=1))).sum(1).mean()
    assert torch.allclose(losses["head_ce"].double(), ce, rtol=1e-5) and torch.allclose(losses["head_kl"].double(), kl,
                                                                                        rtol=1e-4, atol=1e-6)
    assert torch.allclose(losses["loss"].double(), ce + kl, rtol=1e-5, atol=1e-6)
    summary = train(config)
    assert summary["completed"] and set(summary["test"]) == {"images", "SI"}
    manifest = json.loads((tmp_path / "runs" / "kd" / "config.json").read_text())
    assert manifest["num_transforms"] == 1 and manifest["teacher_sha256"] == file_sha256(teacher_run / "best.pt")


@pytest.mark.distributed
def test_two_process_student_run(quick_torchrun_verdicts, two_rank_runs_directory):
    """tests/two_rank_runs.py's "hsakd_student": 400 images, a global batch of 64, one epoch, an untrained teacher."""
    assert quick_torchrun_verdicts["runs"]["hsakd_student"] == [0, 0]
    run_dir = two_rank_runs_directory / "hsakd_student"
    assert json.loads((run_dir / "config.json").read_text())["world_size"] == 2
    summary = records(run_dir, "summary")[0]
    assert summary["completed"] and summary["steps"] == 400 // 64
    assert output(two_rank_runs_directory, "hsakd_student").count("best val") == 1


def test_a_changed_teacher_file_refuses_the_resume(teacher_run, tiny_config, tmp_path):
    teacher_copy = tmp_path / "teacher.pt"
    shutil.copy(teacher_run / "best.pt", teacher_copy)
    paused = train(tiny_config(method="hsakd_student", teacher=str(teacher_copy), epochs=2, stop_after_epochs=1,
                               samples_per_class=30, run_name="paused"))
    assert not paused["completed"]
    shutil.copy(teacher_run / "last.pt", teacher_copy)  # another file at the same path
    with pytest.raises(ValueError, match="sha256"):
        train(tiny_config(method="hsakd_student", teacher=str(teacher_copy), epochs=2, samples_per_class=30,
                          resume=str(tmp_path / "runs" / "paused" / "last.pt")))


def test_frozen_backbone_keeps_its_weights_and_only_branches_learn(tiny_config, tmp_path):
    train(tiny_config(method="baseline", epochs=1, samples_per_class=50, run_name="pretrained"))
    pretrained = torch.load(tmp_path / "runs" / "pretrained" / "best.pt", weights_only=True)["model"]
    summary = train(tiny_config(method="hsakd_teacher", frozen_backbone=str(tmp_path / "runs" / "pretrained" / "best.pt"),
                                epochs=2, samples_per_class=50, run_name="frozen"))
    trained = torch.load(tmp_path / "runs" / "frozen" / "last.pt", weights_only=True)["model"]
    backbone_keys = [k for k in pretrained if k.startswith("backbone.")]
    assert backbone_keys and all(torch.equal(pretrained[k], trained[k]) for k in backbone_keys)  # BN stats too
    assert torch.equal(pretrained["heads.class.weight"], trained["head.weight"])
    first = records(tmp_path / "runs" / "frozen", "step")[0]
    assert "head_ce" not in first and first["branch1_ce"] > records(tmp_path / "runs" / "frozen", "step")[-1]["branch1_ce"]
    assert summary["completed"]


def test_online_mutual_distillation_trains_both_networks(tiny_config, tmp_path):
    summary = train(tiny_config(method="hsakd_online", epochs=3, run_name="online"))
    steps = records(tmp_path / "runs" / "online", "step")
    assert steps[-1]["loss"] < 0.8 * steps[0]["loss"]
    assert {"a_loss", "b_loss"} <= set(steps[0])
    assert summary["test"]["SI"] > 20.0 and summary["test"]["peer"] > 20.0


@pytest.mark.parametrize("make,extra,message", [
    (lambda p: save_untrained_teacher(p, 7), [], "trained for 7 classes, but this run's data has 10"),
    (lambda p: save_untrained_teacher(p, 10, transforms="rotation2"), [],
     "trained with --transforms rotation2, but this run uses rotation (M=4)"),
    (lambda p: save_untrained_teacher(p, 10, method="sla"), [], "was trained with --method sla"),
    (lambda p: save_untrained_teacher(p, 10), ["--teacher-model", "wrn40_2"], "is a resnet8, but --teacher-model is wrn40_2"),
    (lambda p: save_untrained_teacher(p, 10), ["--model", "vgg8"], "has 3 stages, the student vgg8 4"),
    (lambda p: p.write_bytes(b"not a checkpoint"), [], "cannot be read"),
    (lambda p: None, [], "does not exist"),
])
def test_a_teacher_that_does_not_fit_is_refused(capsys, tmp_path, make, extra, message):
    path = tmp_path / "teacher.pt"
    make(path)
    argv = ["--method", "hsakd_student", "--teacher", str(path), "--image-size", "16", "--model", "resnet8",
            "--out-dir", str(tmp_path), *extra]
    assert main(argv) == 2
    assert message in capsys.readouterr().err


def test_a_student_needs_a_teacher(capsys, tmp_path):
    assert main(["--method", "hsakd_student", "--image-size", "16", "--out-dir", str(tmp_path)]) == 2
    assert "needs --teacher CKPT" in capsys.readouterr().err


def test_pair_presets_carry_the_paper_recipe(capsys, tmp_path):
    from train.config import PRESETS, resolve_config
    from train.optim import lr_factor

    pairs = [name for name in PRESETS if name.startswith("hsakd-cifar100-") and PRESETS[name]["method"] == "hsakd_student"]
    assert len(pairs) == 8
    config = resolve_config({"preset": "hsakd-cifar100-vgg13-mobilenetv2"})
    assert (config.model, config.teacher_model, config.lr, config.batch_size) == ("mobilenetv2", "vgg13", 0.01, 64)
    assert config.nesterov and config.weight_decay == 5e-4 and config.kd_temperature == 3.0
    assert config.decay_norm_and_bias  # the paper's SGD decays every parameter
    steps_per_epoch = 100
    total = config.epochs * steps_per_epoch
    factors = [lr_factor(epoch * steps_per_epoch, total, config) for epoch in (149, 150, 179, 180, 209, 210)]
    assert [round(f, 6) for f in factors] == [1.0, 0.1, 0.1, 0.01, 0.01, 0.001]  # ×0.1 at epochs 150/180/210
    assert resolve_config({"preset": "hsakd-cifar100-wrn40_2-wrn16_2"}).lr == 0.05
    # The pair preset still needs the teacher run's checkpoint.
    assert main(["--preset", "hsakd-cifar100-wrn40_2-wrn16_2", "--out-dir", str(tmp_path)]) == 2
    assert "needs --teacher CKPT" in capsys.readouterr().err
