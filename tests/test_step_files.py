"""A training step stays short to read: the project files one steady-state turn of the loop passes through for
sla_sd, from the batch's fetch through the optimizer, the profiler and the clock to the next fetch, are few
(README's layout lists them)."""
import sys

from conftest import REPO

from train.config import TrainConfig
from train.throughput import TrainingClock

MOST_FILES = 12  # the loop, its clock and its signal poll included; outside a profile window a phase mark is
# contextlib.nullcontext (pipeline/phases.py), and the kernels, backend and view tables are resolved at build


def files_of_one_step(monkeypatch, tmp_path, **settings) -> set[str]:
    from train.main import train

    seen: set[str] = set()
    prefix = str(REPO) + "/"

    def record(frame, event, arg):
        path = frame.f_code.co_filename
        if event == "call" and path.startswith(prefix) and "/site-packages/" not in path:
            seen.add(path[len(prefix):])

    step_done = TrainingClock.step_done

    def done(self):  # from the end of step 3 to the end of step 4: one whole turn of the loop
        step_done(self)
        if self.steps == 3:
            sys.setprofile(record)
        elif self.steps == 4:
            sys.setprofile(None)

    monkeypatch.setattr(TrainingClock, "step_done", done)
    values = dict(dataset="digits", image_size=16, model="resnet8", batch_size=16, epochs=1, samples_per_class=8,
                  log_every=50, out_dir=str(tmp_path / "runs"), run_name="files")
    train(TrainConfig(**values, **settings))
    return seen - {"tests/test_step_files.py"}


def test_an_sla_step_crosses_few_project_files(monkeypatch, tmp_path):
    files = files_of_one_step(monkeypatch, tmp_path, method="sla_sd")
    assert "train/step.py" in files and "kernels/ops.py" in files  # the window held a whole step
    assert "train/throughput.py" in files  # the loop's clock: the window was a whole turn of the loop
    files |= {"train/loop.py"}  # the loop itself, already running when the window opens
    assert len(files) <= MOST_FILES, "\n".join(sorted(files))
