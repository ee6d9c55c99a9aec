"""A training step stays short to read: the project files one steady-state step of sla_sd passes through, from
the batch's fetch to the optimizer, are few (README's layout lists them)."""
import sys

from conftest import REPO

from train.config import TrainConfig
from train.profiling import StepProfiler

MOST_FILES = 15


def files_of_one_step(monkeypatch, tmp_path, **settings) -> set[str]:
    from train.main import train

    seen: set[str] = set()
    prefix = str(REPO) + "/"

    def record(frame, event, arg):
        path = frame.f_code.co_filename
        if event == "call" and path.startswith(prefix) and "/site-packages/" not in path:
            seen.add(path[len(prefix):])

    begin_step, end_step = StepProfiler.begin_step, StepProfiler.end_step

    def begin(self, index):
        begin_step(self, index)
        if index == 3:
            sys.setprofile(record)

    def end(self, index):
        if index == 3:
            sys.setprofile(None)
        return end_step(self, index)

    monkeypatch.setattr(StepProfiler, "begin_step", begin)
    monkeypatch.setattr(StepProfiler, "end_step", end)
    values = dict(dataset="digits", image_size=16, model="resnet8", batch_size=16, epochs=1, samples_per_class=8,
                  log_every=50, out_dir=str(tmp_path / "runs"), run_name="files")
    train(TrainConfig(**values, **settings))
    return seen - {"tests/test_step_files.py"}


def test_an_sla_step_crosses_few_project_files(monkeypatch, tmp_path):
    files = files_of_one_step(monkeypatch, tmp_path, method="sla_sd")
    assert "train/step.py" in files and "kernels/ops.py" in files  # the window held a whole step
    files |= {"train/main.py"}  # the loop itself
    assert len(files) <= MOST_FILES, "\n".join(sorted(files))
