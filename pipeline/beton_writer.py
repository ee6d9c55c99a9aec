"""The process that writes .beton files: FFCV's DatasetWriter in a new interpreter, watched.

FFCV's writer forks its workers. A fork of a process that runs other threads (a training rank
has DALI's, gloo's and OpenMP's) can leave a lock held forever in the child, so the writer runs
in a new interpreter (`python -m pipeline.beton_writer`; not multiprocessing's spawn, which
re-imports the caller's main script). The interpreter is started on a process's first write and
serves its later ones (jobs pickled on its stdin, one status line back each): starting it, mostly
`import ffcv`, takes seconds. FFCV's writer waits for its workers' row count without checking that
they live; a watchdog thread ends the writer process with an error when one dies (an exception, a
signal) instead of waiting forever, and the next write starts a new one.
"""
from __future__ import annotations

import atexit
import os
import pickle
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np

from .datasets import DataError
from .image_set import WriteError, write_error
from .imagenet_crops import load_rgb
from .processes import child_pids, command_line

UNREADABLE = -1  # the label of a row whose file could not be decoded
REPO = Path(__file__).resolve().parents[1]


class WriterProcess:
    """This process's writer interpreter: started on first use, kept for later writes, ended at exit."""

    def __init__(self):
        self.child: subprocess.Popen | None = None
        self.lock = threading.Lock()  # one job at a time on the pipe
        atexit.register(self.close)

    def write(self, job: bytes) -> str:
        """Send one pickled job; the writer's answer: "written", "failed-os ERRNO MESSAGE", "failed", or "" when the
        process ended."""
        with self.lock:
            if self.child is None or self.child.poll() is not None:
                import_path = os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))
                self.child = subprocess.Popen([sys.executable, "-m", "pipeline.beton_writer"], stdin=subprocess.PIPE,
                                              stdout=subprocess.PIPE, env={**os.environ, "PYTHONPATH": import_path})
            try:
                self.child.stdin.write(job)
                self.child.stdin.flush()
                return self.child.stdout.readline().decode().strip()
            except BrokenPipeError:
                return ""

    def close(self) -> None:
        if self.child is not None and self.child.poll() is None:
            self.child.stdin.close()  # end of jobs: the writer exits
            try:
                self.child.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.child.kill()


WRITER = WriterProcess()


LOW_SPACE = 16 * 2**20


def check_free_space(split, write_mode: str, folder: Path, destination: Path) -> None:
    """Raw pixels take a known size: a disk without room for them is named before an hour of writing, not after."""
    if write_mode != "raw" or getattr(split, "images", None) is None:
        return
    needed = int(split.images.nbytes * 1.05) + LOW_SPACE
    free = shutil.disk_usage(folder).free
    if free < needed:
        raise WriteError(f"could not write {destination}: no space left on device (it needs about "
                         f"{needed / 2**20:.0f} MiB, {free / 2**20:.0f} MiB are free); nothing was kept")


def write_in_new_process(split, partial: Path, write_mode: str, jpeg_quality: int, workers: int,
                         max_resolution: int | None, destination: Path) -> None:
    """Write `split`'s rows to `partial` (on its way to `destination`); on failure, remove it and raise WriteError
    for a file system error (one line), else DataError (the writer process has printed the cause)."""
    check_free_space(split, write_mode, partial.parent, destination)
    job = pickle.dumps((split, str(partial), write_mode, jpeg_quality, workers, max_resolution))
    answer = WRITER.write(job)
    if answer.startswith("failed-os "):  # an OSError in the writer: its errno and message
        partial.unlink(missing_ok=True)
        number, _, message = answer.removeprefix("failed-os ").partition(" ")
        raise write_error(destination, OSError(int(number), message), "nothing was kept")
    if answer != "written":
        partial.unlink(missing_ok=True)
        free = shutil.disk_usage(partial.parent).free
        if free < LOW_SPACE:  # FFCV's workers report a full disk only as a traceback of their own
            raise WriteError(f"could not write {destination}: no space left on device ({free / 2**20:.1f} MiB free); "
                             "nothing was kept")
        how = "reported an error" if answer else f"exited with code {WRITER.child.wait()}"
        raise DataError(f"writing {destination} failed: the writer process {how} (its error is printed above)")


def write_rows(split, partial: str, write_mode: str, jpeg_quality: int, workers: int,
               max_resolution: int | None) -> None:
    """The writer process's work."""
    from ffcv.fields import IntField, RGBImageField
    from ffcv.writer import DatasetWriter

    fields = {"image": RGBImageField(write_mode="jpg" if write_mode == "jpg" else "raw", jpeg_quality=jpeg_quality,
                                     max_resolution=max_resolution),
              "label": IntField(), "index": IntField()}
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


def serve() -> None:
    """The writer process: jobs from stdin until it closes, a status line for each on stdout (FFCV's own output
    goes to stderr, so that nothing else reaches the status pipe)."""
    status = os.fdopen(os.dup(sys.stdout.fileno()), "wb")
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())
    threading.Thread(target=end_if_a_worker_dies, name="beton-watchdog", daemon=True).start()
    while True:
        try:
            job = pickle.load(sys.stdin.buffer)
        except EOFError:
            return
        try:
            write_rows(*job)
            reply = b"written\n"
        except OSError as error:  # a full disk, a size limit: the caller names it in one line
            reply = f"failed-os {error.errno or 0} {error.strerror or error}\n".encode()
        except Exception:  # reported to the caller, which raises; this process serves the next write
            import traceback

            traceback.print_exc()
            reply = b"failed\n"
        status.write(reply)
        status.flush()


if __name__ == "__main__":
    serve()
