"""The faults a long run meets: a rerun over a finished run, a full disk, a torchrun restart. Each ends in one
line naming what happened and what was kept, or continues the run exactly."""
import json
import resource
import signal
import sys
import time

import psutil
import pytest
import torch

from conftest import DIGITS_8PX, REPO, TWO_RANK_RUN, run_child, subprocess_env, torchrun_command
from train.main import main

TINY = [*DIGITS_8PX, "--model", "resnet8", "--samples-per-class", "10", "--batch-size", "32", "--log-every", "100"]


def one_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    return err[0]


def kinds(run_dir) -> list[str]:
    return [json.loads(line)["kind"] for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_a_rerun_over_a_run_is_refused_unless_it_resumes_or_overwrites(tmp_path, capsys):
    argv = [*TINY, "--epochs", "1", "--out-dir", str(tmp_path), "--run-name", "r"]
    assert main(argv) == 0
    run_dir = tmp_path / "r"
    before = {name: (run_dir / name).read_bytes() for name in ("metrics.jsonl", "last.pt", "best.pt")}
    capsys.readouterr()
    assert main(argv) == 2
    assert one_line(capsys) == (f"error: {run_dir} already holds a finished run; continue it with --resume auto, "
                                "choose another --run-name, or replace it with --overwrite")
    assert {name: (run_dir / name).read_bytes() for name in before} == before  # nothing was touched
    assert main([*argv, "--overwrite"]) == 0
    assert "--overwrite: the run that was in" in capsys.readouterr().out
    assert kinds(run_dir).count("summary") == 1  # the old run's lines went with it


def test_resume_auto_continues_the_run_directory_exactly(tmp_path, capsys):
    argv = [*TINY, "--epochs", "3", "--out-dir", str(tmp_path)]
    assert main([*argv, "--run-name", "straight"]) == 0
    assert main([*argv, "--run-name", "paused", "--stop-after-epochs", "1"]) == 0
    capsys.readouterr()
    assert main([*argv, "--run-name", "paused", "--resume", "auto"]) == 0
    assert f"--resume auto: continuing from {tmp_path / 'paused' / 'last.pt'}" in capsys.readouterr().out
    straight = torch.load(tmp_path / "straight" / "last.pt", weights_only=True)["model"]
    resumed = torch.load(tmp_path / "paused" / "last.pt", weights_only=True)["model"]
    assert all(torch.equal(tensor, resumed[name]) for name, tensor in straight.items())
    # with nothing to continue from, --resume auto starts the run
    assert main([*argv, "--epochs", "1", "--run-name", "new", "--resume", "auto"]) == 0
    assert "has no last.pt yet, so the run starts from the beginning" in capsys.readouterr().out


def limited_file_size(size: int):
    def apply():  # in the child: a file may not grow past `size` bytes (EFBIG, as a full disk gives ENOSPC)
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (size, size))
    return apply


def test_a_checkpoint_that_cannot_be_written_is_one_line_and_the_previous_one_is_kept(tmp_path):
    argv = [*TINY, "--epochs", "3", "--out-dir", str(tmp_path), "--run-name", "r"]
    assert main([*argv, "--stop-after-epochs", "1"]) == 0
    last, best = tmp_path / "r" / "last.pt", tmp_path / "r" / "best.pt"
    kept = {path: path.read_bytes() for path in (last, best)}
    result = run_child([sys.executable, str(REPO / "train" / "main.py"), *argv, "--resume", "auto"], expect=2,
                       timeout=120, preexec_fn=limited_file_size(200_000))  # only the child has the limit
    # best.pt is written first when epoch 2 improves on validation, else last.pt: the first write fails either way
    written = best if "/best.pt:" in result.stderr else last
    assert result.stderr.strip().splitlines()[-1] == (f"error: could not write {written}: the file size limit was "
                                                      f"reached; the previous {written.name} is kept as it was")
    assert "Traceback" not in result.stderr
    assert all(path.read_bytes() == kept[path] for path in kept) and torch.load(last, weights_only=True)["epoch"] == 1
    assert sorted(p.name for p in last.parent.iterdir() if p.name.startswith(".")) == []  # no temporary file


def test_report_figures_and_beton_files_that_cannot_be_written_are_one_line(tmp_path, monkeypatch):
    from pipeline import beton_writer
    from pipeline.datasets import build_splits
    from pipeline.image_set import WriteError

    assert main([*TINY, "--epochs", "1", "--out-dir", str(tmp_path), "--run-name", "r"]) == 0
    import matplotlib.font_manager  # noqa: F401  (builds matplotlib's font cache, which a fresh machine lacks,
    # before the child runs under the file size limit: its own warning about that cache is not the report's line)
    result = run_child([sys.executable, "-m", "train.commands.report", str(tmp_path / "r")], expect=2,
                       timeout=120, preexec_fn=limited_file_size(4_000))
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: could not write {tmp_path / 'r' / 'figures'}"), lines
    assert "the file size limit was reached; the figures written before it are kept" in lines[0]
    # A .beton of raw pixels larger than the free space is refused before writing
    splits = build_splits("digits", "data", 16, 0.1, 0, 10, 1.0, False)
    monkeypatch.setattr(beton_writer.shutil, "disk_usage", lambda _: type("Usage", (), {"free": 2**20})())
    with pytest.raises(WriteError, match=r"could not write .*x\.beton: no space left on device \(it needs about "
                                         r"\d+ MiB, 1 MiB are free\); nothing was kept"):
        beton_writer.write_in_new_process(splits.train, tmp_path / "x.partial", "raw", 90, 1, None,
                                          tmp_path / "x.beton")


@pytest.mark.distributed
def test_a_torchrun_restart_continues_from_the_last_checkpoint(tmp_path, straight_two_rank_run):
    """Two gloo ranks under --max-restarts=1; rank 1 is killed once the first checkpoint exists (two epochs
    before the end). The restarted workers continue from it and end with the weights of an uninterrupted run."""
    command = torchrun_command(2, "--max-restarts=1", str(REPO / "train" / "main.py"), *TWO_RANK_RUN,
                               "--out-dir", str(tmp_path), "--run-name", "restarted")
    with psutil.Popen(command, env=subprocess_env(), stdout=open(tmp_path / "out.txt", "w"),
                      stderr=open(tmp_path / "err.txt", "w")) as agent:
        deadline, killed = time.monotonic() + 180, None
        while killed is None and agent.poll() is None and time.monotonic() < deadline:
            if (tmp_path / "restarted" / "last.pt").exists():
                ranks = [p for p in agent.children(recursive=True) if p.environ().get("RANK") == "1"]
                if ranks:
                    ranks[0].kill()
                    killed = ranks[0].pid
            time.sleep(0.02)
        try:
            status = agent.wait(timeout=240)
        except psutil.TimeoutExpired:
            agent.kill()
            status = None
    output = (tmp_path / "out.txt").read_text() + (tmp_path / "err.txt").read_text()
    assert killed and status == 0, output[-3000:]
    assert f"torchrun restart 1: continuing from {tmp_path / 'restarted' / 'last.pt'}" in output, output[-3000:]
    assert json.loads((tmp_path / "restarted" / "config.json").read_text())["restarts"] == 1
    straight = torch.load(straight_two_rank_run / "last.pt", weights_only=True)["model"]
    restarted = torch.load(tmp_path / "restarted" / "last.pt", weights_only=True)["model"]
    assert all(torch.equal(tensor, restarted[name]) for name, tensor in straight.items())
    assert kinds(tmp_path / "restarted").count("summary") == 1
