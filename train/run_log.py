"""The run directory (config, command, git revision, JSON lines) and the terminal output, rank 0 only."""
from __future__ import annotations

import dataclasses
import json
import shlex
import subprocess
import sys
import time
from pathlib import Path


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


class RunLog:
    def __init__(self, run_dir: Path, enabled: bool):
        self.run_dir = run_dir
        self.enabled = enabled
        self.metrics_path = run_dir / "metrics.jsonl"
        if enabled:
            run_dir.mkdir(parents=True, exist_ok=True)

    def write_manifest(self, config, extra: dict) -> None:
        if not self.enabled:
            return
        resolved = {**dataclasses.asdict(config), **extra}
        (self.run_dir / "config.json").write_text(json.dumps(resolved, indent=2, default=str) + "\n")
        (self.run_dir / "command.txt").write_text(shlex.join([sys.executable, *sys.argv]) + "\n")
        (self.run_dir / "git_revision.txt").write_text(git_revision() + "\n")

    def record(self, kind: str, **fields) -> None:
        """One JSON line in metrics.jsonl: kind is "step", "epoch", "test" or "summary"."""
        if not self.enabled:
            return
        with open(self.metrics_path, "a") as f:
            f.write(json.dumps({"kind": kind, "time": round(time.time(), 3), **fields}) + "\n")

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
