"""A throwaway PostgreSQL server for tests: initdb into a temp dir, pg_ctl start on a free port.

    with PostgresServer() as pg:       # raises Unavailable (tests skip) when none can start
        store = FeedbackStore.open(pg.url)

The binaries come from ``$MEDTUNE_PG_BIN`` or Debian's ``/usr/lib/postgresql/<version>/bin``
(``apt-get install postgresql``; .ci/run does). PostgreSQL refuses to run as root, so as root the
server runs as the ``postgres`` user (or ``nobody``) through ``runuser``, owning its data dir.
"""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import shutil
import subprocess
import tempfile
from pathlib import Path

from tests.helpers.servers import free_port


class Unavailable(Exception):
    """Why no PostgreSQL server could start here (the test skips with it)."""


def pg_bin() -> Path | None:
    given = os.environ.get("MEDTUNE_PG_BIN")
    found = [given] if given else sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=_version)
    for folder in reversed(found):
        if (Path(folder) / "initdb").is_file() and (Path(folder) / "pg_ctl").is_file():
            return Path(folder)
    return None


def _version(folder: str) -> float:
    try:
        return float(Path(folder).parent.name)
    except ValueError:
        return 0.0


class PostgresServer:
    """A server on 127.0.0.1:``port`` with trust auth; ``url`` is its ``postgresql://`` URL."""

    def __init__(self, user: str = "medtune"):
        self.bin = pg_bin()
        if self.bin is None:
            raise Unavailable("no PostgreSQL server binaries (initdb, pg_ctl): apt-get install postgresql, "
                              "or set MEDTUNE_PG_BIN (see .ci/run)")
        self.user, self.port = user, free_port()
        self.root = Path(tempfile.mkdtemp(prefix="medtune-pg-"))  # not under pytest's 0700 root-owned tmp
        self.data, self.log = self.root / "data", self.root / "server.log"
        self.run_as = self._unprivileged() if os.geteuid() == 0 else None
        self.url = f"postgresql://{user}@127.0.0.1:{self.port}/postgres"

    def _unprivileged(self) -> str:
        for name in ("postgres", "nobody"):
            try:
                pwd.getpwnam(name)
            except KeyError:
                continue
            if shutil.which("runuser"):
                return name
        raise Unavailable("running as root with no 'postgres' or 'nobody' user and runuser to start PostgreSQL as")

    def _run(self, *args: str, timeout: float = 120) -> None:
        cmd = [str(self.bin / args[0]), *args[1:]]
        if self.run_as:
            cmd = ["runuser", "-u", self.run_as, "--", *cmd]
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise Unavailable(f"{args[0]} failed: {exc}") from None
        if proc.returncode != 0:
            tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
            log = self.log.read_text(errors="replace").strip().splitlines()[-3:] if self.log.exists() else []
            raise Unavailable(f"{args[0]} exited {proc.returncode}: {' | '.join(tail + log)}")

    def __enter__(self) -> PostgresServer:
        if self.run_as:
            entry = pwd.getpwnam(self.run_as)
            os.chown(self.root, entry.pw_uid, entry.pw_gid)
        try:
            self._run("initdb", "-D", str(self.data), "-U", self.user, "-A", "trust", "-E", "UTF8", "--no-sync")
            self._run("pg_ctl", "-D", str(self.data), "-l", str(self.log), "-w", "-t", "60", "-o",
                      f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1 -F", "start")
        except Unavailable:
            shutil.rmtree(self.root, ignore_errors=True)
            raise
        return self

    def __exit__(self, *exc) -> None:
        with contextlib.suppress(Unavailable):  # already gone
            self._run("pg_ctl", "-D", str(self.data), "-m", "immediate", "-w", "stop", timeout=60)
        shutil.rmtree(self.root, ignore_errors=True)
