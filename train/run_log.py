"""The run directory (config, command, git revision, JSON lines) and the terminal output, rank 0 only."""
from __future__ import annotations

import dataclasses
import json
import math
import shlex
import subprocess
import sys
import time
from pathlib import Path

from pipeline.image_set import write_error


def git_revision() -> str:
    try:
        result = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5,
                                cwd=Path(__file__).resolve().parent)
        dirty = subprocess.run(["git", "status", "--porcelain"], capture_output=True, text=True, timeout=5,
                               cwd=Path(__file__).resolve().parent).stdout.strip()
        return result.stdout.strip() + ("+dirty" if dirty else "") if result.returncode == 0 else "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def format_duration(seconds: float) -> str:
    seconds = int(max(seconds, 0))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}h{minutes:02d}m{secs:02d}s" if hours else f"{minutes}m{secs:02d}s"


def strict_json(value):
    """`value` with every non-finite float as null: JSON has no NaN or Infinity, and strict readers (jq,
    JavaScript's JSON.parse) refuse Python's bare NaN tokens."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {key: strict_json(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [strict_json(item) for item in value]
    return value


class RunLog:
    def __init__(self, run_dir: Path, enabled: bool):
        self.run_dir = run_dir
        self.enabled = enabled
        self.metrics_path = run_dir / "metrics.jsonl"

    def write_manifest(self, config, extra: dict) -> None:
        """The run's first files: the directory is made here, so a run refused before it leaves nothing."""
        if not self.enabled:
            return
        resolved = {**dataclasses.asdict(config), **extra}
        files = {"config.json": json.dumps(resolved, indent=2, default=str), "git_revision.txt": git_revision(),
                 "command.txt": shlex.join([sys.executable, *sys.argv])}
        path = self.run_dir
        try:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            for name, text in files.items():
                path = self.run_dir / name
                path.write_text(text + "\n")
        except OSError as error:
            raise write_error(path, error) from error

    def record(self, kind: str, **fields) -> None:
        """One JSON line in metrics.jsonl: kind is "step", "epoch", "test" or "summary"."""
        if not self.enabled:
            return
        line = json.dumps(strict_json({"kind": kind, "time": round(time.time(), 3), **fields}), allow_nan=False) + "\n"
        try:
            with open(self.metrics_path, "a") as f:
                f.write(line)
        except OSError as error:
            raise write_error(self.metrics_path, error, "the lines before this one are kept") from error

    def print(self, *parts) -> None:
        if self.enabled:
            print(*parts, flush=True)


def accuracy_line(results: dict) -> str:
    """SD, SI, AG first, then any other score a method reports (HSAKD's branches, an online peer)."""
    others = [k for k in results if k not in ("SD", "SI", "AG", "images") and not k.endswith("_per_class")]
    scores = [k for k in ("SD", "SI", "AG") if k in results] + others
    return "  ".join(f"{score} {results[score]:6.2f}%" for score in scores)


def summary_table(rows: list[tuple[str, str]]) -> str:
    width = max(len(name) for name, _ in rows)
    rule = "-" * (width + 40)
    return "\n".join([rule, *(f"{name:<{width}}  {value}" for name, value in rows), rule])
