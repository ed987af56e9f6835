"""The real ``medtune`` command line for tests: run it as a user would, check its one-line errors."""

from __future__ import annotations

import os
import subprocess
import sys


def medtune(*args, stdin=None, cwd=None, env=None, quiet=False) -> subprocess.CompletedProcess:
    """Run ``python -m medtune [-q] ARGS`` and return the finished process (any exit code)."""
    env = {**os.environ, "PYTHONWARNINGS": "ignore", **(env or {})}
    return subprocess.run([sys.executable, "-m", "medtune", *(["-q"] if quiet else []), *map(str, args)],
                          check=False, input=stdin, capture_output=True, text=True, cwd=cwd, env=env,
                          timeout=600)


def assert_one_line_error(proc, pattern: str) -> None:
    """Exit code 2, no traceback, and exactly one ``error:`` line, containing ``pattern``."""
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    lines = [ln for ln in proc.stderr.splitlines() if ln.startswith("error:")]
    assert len(lines) == 1 and pattern in lines[0], proc.stderr


def one_error_line(proc) -> str:
    """The whole of stderr, which must be one line, of a run that failed on bad input (exit 2)."""
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    (line,) = proc.stderr.strip().splitlines()
    return line
