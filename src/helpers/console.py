"""What a person sees in the terminal: one line per step and a bar for long work.

TensorFlow, absl, XNNPACK and Jupyter kernels write their start-up chatter straight to the
process's standard error (file descriptor 2, below Python's ``sys.stderr``), and kernels
inherit it. ``chatter_to`` points that descriptor at a log file for a while and hands back
the real terminal for the lines meant for the person.
"""
from __future__ import annotations

import os
import sys
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def chatter_to(log_path: str | Path):
    """Send fd 2 (this process's and its children's) to ``log_path``; yield the terminal."""
    log_path = Path(log_path)
    log_path.parent.mkdir(parents=True, exist_ok=True)
    sys.stderr.flush()
    saved = os.dup(2)
    log = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o666)
    terminal = os.fdopen(os.dup(saved), "w", buffering=1, encoding="utf-8", errors="replace")
    try:
        os.dup2(log, 2)
        yield terminal
    finally:
        sys.stderr.flush()
        os.dup2(saved, 2)
        for fd in (saved, log):
            os.close(fd)
        terminal.close()


def step_line(name: str, seconds: float, status: str) -> str:
    """``01_embed           12.3 s  ok``: one line per finished step."""
    return f"{name:<20}{seconds:7.1f} s  {status}"
