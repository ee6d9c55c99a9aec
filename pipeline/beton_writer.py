"""The process that writes a .beton: FFCV's DatasetWriter in a new interpreter, watched.

FFCV's writer forks its workers. A fork of a process that runs other threads (a training rank
has DALI's, gloo's and OpenMP's) can leave a lock held forever in the child, so the writer runs
in a new interpreter (`python -m pipeline.beton_writer`, its job pickled on stdin; not
multiprocessing's spawn, which re-imports the caller's main script). FFCV's writer then waits
for its workers' row count without checking that they live; a watchdog thread ends the write
with an error when one dies (an exception, a signal) instead of waiting forever.
"""
from __future__ import annotations

import os
import pickle
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np

from .datasets import DataError
from .imagenet_crops import load_rgb
from .processes import child_pids, command_line

UNREADABLE = -1  # the label of a row whose file could not be decoded
REPO = Path(__file__).resolve().parents[1]


def write_in_new_process(split, partial: Path, write_mode: str, jpeg_quality: int, workers: int,
                         max_resolution: int | None, destination: Path) -> None:
    """Write `split`'s rows to `partial` (on its way to `destination`); on failure, remove it and raise DataError
    (the writer process has printed the cause)."""
    job = pickle.dumps((split, str(partial), write_mode, jpeg_quality, workers, max_resolution))
    import_path = os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))
    writer = subprocess.run([sys.executable, "-m", "pipeline.beton_writer"], input=job,
                            env={**os.environ, "PYTHONPATH": import_path})
    if writer.returncode != 0:
        partial.unlink(missing_ok=True)
        raise DataError(f"writing {destination} failed: the writer process exited with code {writer.returncode} "
                        "(its error is printed above)")


def write_rows(split, partial: str, write_mode: str, jpeg_quality: int, workers: int,
               max_resolution: int | None) -> None:
    """The writer process's work."""
    from ffcv.fields import IntField, RGBImageField
    from ffcv.writer import DatasetWriter

    fields = {"image": RGBImageField(write_mode="jpg" if write_mode == "jpg" else "raw", jpeg_quality=jpeg_quality,
                                     max_resolution=max_resolution),
              "label": IntField(), "index": IntField()}
    threading.Thread(target=end_if_a_worker_dies, name="beton-watchdog", daemon=True).start()
    DatasetWriter(partial, fields, num_workers=max(1, workers)).from_indexed_dataset(Rows(split), chunksize=256)


def end_if_a_worker_dies(poll_s: float = 0.5) -> None:
    """Ends this process (code 1) when one of FFCV's writer workers exits with an error or a signal. FFCV never
    joins its workers, so a failed one stays a zombie: its status is read without reaping it (WNOWAIT)."""
    own_command = command_line()  # the workers are forks of this process: the same command line
    while True:
        for pid in child_pids():
            try:
                status = os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT)
            except ChildProcessError:
                continue
            if status is None or (status.si_code == os.CLD_EXITED and status.si_status == 0):
                continue
            how = f"code {status.si_status}" if status.si_code == os.CLD_EXITED else f"signal {status.si_status}"
            print(f"FFCV's writer worker {pid} ended with {how}; the .beton is not written", file=sys.stderr,
                  flush=True)
            for sibling in child_pids():  # the other workers, not multiprocessing's resource tracker
                if sibling != pid and command_line(sibling) == own_command:
                    os.kill(sibling, signal.SIGKILL)
            os._exit(1)
        time.sleep(poll_s)


class Rows:
    """The (image, label, index) rows FFCV's writer asks for by position."""

    def __init__(self, split):
        self.split = split

    def __len__(self) -> int:
        return len(self.split)

    def __getitem__(self, index: int):
        if not self.split.streaming:
            return self.split.images[index], int(self.split.labels[index]), int(index)
        image, _ = load_rgb(self.split.files[index])
        if image is None:
            return np.zeros((8, 8, 3), dtype=np.uint8), UNREADABLE, int(index)
        return np.asarray(image), int(self.split.labels[index]), int(index)


if __name__ == "__main__":
    write_rows(*pickle.load(sys.stdin.buffer))
