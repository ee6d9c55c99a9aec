"""The processes below a process, from Linux /proc (a task's `children` file lists zombies too; elsewhere,
or where the kernel does not keep those files, no process has children here)."""
from __future__ import annotations

from pathlib import Path


def child_pids(pid: int | str = "self") -> list[int]:
    try:
        return [int(child) for task in Path(f"/proc/{pid}/task").iterdir()
                for child in (task / "children").read_text().split()]
    except OSError:  # the process (or one of its threads) ended while being read
        return []


def descendants(pid: int | str = "self") -> list[int]:
    """Every process below `pid`, children before their own children."""
    children = child_pids(pid)
    return children + [grandchild for child in children for grandchild in descendants(child)]


def command_line(pid: int | str = "self") -> bytes:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return b""
