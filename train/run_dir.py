"""Where a run writes, and whether it starts there, continues there, or is refused.

- `--resume PATH` continues from that checkpoint, in its directory.
- `--resume auto`, and every torchrun restart (TORCHELASTIC_RESTART_COUNT > 0), continue from the run
  directory's last.pt where there is one and start from the beginning where there is none: torchrun's
  fault tolerance restarts the workers, and each worker picks up the latest checkpoint.
- A fresh start in a directory that already holds a run is refused unless `--overwrite` is given, which
  deletes that run's files first.

Rank 0 decides and every rank gets the same answer (`train.distributed.broadcast_from_main`), since a
timestamped name read on two ranks can straddle a second.
"""
from __future__ import annotations

import json
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

from train.config import TrainConfig

RUN_FILES = ("metrics.jsonl", "last.pt", "best.pt", "config.json", "command.txt", "git_revision.txt",
             "auto_transforms.json")
RUN_FOLDERS = ("figures", "auto")  # train/commands/report.py's plots, --transforms auto's trials
ELASTIC_ID = "TORCHELASTIC_RUN_ID"


@dataclass(frozen=True)
class RunStart:
    run_dir: Path
    resume_from: str  # a checkpoint to continue from, or "" to start from the beginning
    note: str  # what the log says about the choice ("" for a plain fresh start)


def restart_count() -> int:
    return int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0") or 0)


def holds_a_run(run_dir: Path) -> bool:
    return any((run_dir / name).exists() for name in ("metrics.jsonl", "last.pt", "best.pt"))


def describe_run(run_dir: Path) -> str:
    """"finished", or how far it got, from its metrics (a sentence fragment for the refusal)."""
    try:
        records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line]
    except (OSError, ValueError):
        return "a run"
    summaries = [r for r in records if r.get("kind") == "summary"]
    if summaries and summaries[-1].get("completed") is False:
        return f"a run that stopped ({summaries[-1].get('stopped_by')})"
    if summaries:
        return "a finished run"
    epochs = [r["epoch"] for r in records if r.get("kind") == "epoch" and "epoch" in r]
    return f"a run stopped after epoch {max(epochs)}" if epochs else "a run that did not finish an epoch"


def started_by_this_job(run_dir: Path) -> bool:
    """Whether the run in `run_dir` was started by this torchrun job (its manifest records the job's run id)."""
    run_id = os.environ.get(ELASTIC_ID)
    try:
        return bool(run_id) and json.loads((run_dir / "config.json").read_text()).get("elastic_run_id") == run_id
    except (OSError, ValueError):
        return False


def restarted_run_dir(out_dir: Path) -> Path | None:
    """Without --run-name, a restarted worker finds its run by the torchrun run id that the manifest records."""
    if not out_dir.is_dir():
        return None
    for manifest in sorted(out_dir.glob("*/config.json"), key=lambda p: p.stat().st_mtime, reverse=True):
        if started_by_this_job(manifest.parent):
            return manifest.parent
    return None


def clear_run(run_dir: Path) -> None:
    """--overwrite: only the files a run writes go, so a mistyped --out-dir cannot empty another folder."""
    for name in RUN_FILES:
        (run_dir / name).unlink(missing_ok=True)
    for name in RUN_FOLDERS:
        shutil.rmtree(run_dir / name, ignore_errors=True)
    for trace in run_dir.glob("trace*.json"):
        trace.unlink()


def plan_run(config: TrainConfig) -> RunStart:
    if config.resume and config.resume != "auto":
        checkpoint = Path(config.resume)
        return RunStart(checkpoint.resolve().parent, str(checkpoint), f"continuing from {checkpoint}")
    restarts, out_dir = restart_count(), Path(config.out_dir)
    found = restarted_run_dir(out_dir) if restarts and not config.run_name else None
    run_dir = found or out_dir / (config.run_name or time.strftime(f"%Y%m%d-%H%M%S-{config.method}-{config.dataset}"))
    # A restart continues its own job's run; another run in the directory gets the fresh start's rules.
    continues = config.resume == "auto" or (restarts and (not holds_a_run(run_dir) or started_by_this_job(run_dir)))
    if continues:
        why = f"torchrun restart {restarts}" if restarts else "--resume auto"
        last = run_dir / "last.pt"
        if last.is_file():
            return RunStart(run_dir, str(last), f"{why}: continuing from {last}")
        return RunStart(run_dir, "", f"{why}: {run_dir} has no last.pt yet, so the run starts from the beginning")
    if holds_a_run(run_dir):
        if not config.overwrite:
            raise ValueError(f"{run_dir} already holds {describe_run(run_dir)}; continue it with --resume auto, "
                             "choose another --run-name, or replace it with --overwrite")
        clear_run(run_dir)
        return RunStart(run_dir, "", f"--overwrite: the run that was in {run_dir} is deleted")
    return RunStart(run_dir, "", "")
