"""One process per run directory: an exclusive lock file that a dead holder cannot leave behind.

``<run_dir>/.lock`` is held with ``flock`` for the whole run and records the holder (pid, host, boot id, start time)
for the refusal message. The kernel drops a ``flock`` when its process dies (``kill -9`` included) or the machine
reboots, so a lock left by a dead run never blocks a rerun. Where ``flock`` is not supported (some network file
systems) the file itself is the lock, taken with ``O_EXCL``; a holder on this host whose pid is gone, or that was
written before the last reboot, is stale and taken over. The file is removed when the run ends.
"""

from __future__ import annotations

import errno
import json
import os
import socket
from pathlib import Path
from types import TracebackType
from typing import Any, Self

from experiments.harness.rundir import RunRefused, disk_error, now_iso

try:
    import fcntl
except ImportError:  # not POSIX: the lock file alone
    fcntl = None  # type: ignore[assignment]

LOCK_FILE = ".lock"
_NO_FLOCK = {errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL}


class RunDirLocked(RunRefused):
    """Another live process holds the run directory."""

    def __init__(self, message: str, holder: dict[str, Any]) -> None:
        super().__init__(message)
        self.holder = holder


def boot_id() -> str | None:
    """This boot of this machine (Linux), to tell a lock of an earlier boot from a live one."""
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return None


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, another user's
        return True
    return True


def is_stale(holder: dict[str, Any]) -> bool:
    """Whether a lock record's process is certainly gone (only decidable for this host)."""
    if holder.get("host") != socket.gethostname():
        return False
    if holder.get("boot_id") and boot_id() and holder["boot_id"] != boot_id():
        return True
    pid = holder.get("pid")
    return not isinstance(pid, int) or not pid_alive(pid)


class RunLock:
    """``with RunLock(run_dir):`` holds ``run_dir/.lock``; raises :class:`RunDirLocked` naming the holder."""

    def __init__(self, run_dir: str | os.PathLike[str]) -> None:
        self.run_dir = Path(run_dir)
        self.path = self.run_dir / LOCK_FILE
        self._fd: int | None = None

    def _record(self) -> bytes:
        record = {"pid": os.getpid(), "host": socket.gethostname(), "boot_id": boot_id(), "since": now_iso()}
        return (json.dumps(record) + "\n").encode()

    def holder(self) -> dict[str, Any]:
        try:
            return json.loads(self.path.read_text() or "{}")
        except (OSError, ValueError):
            return {}

    def _refuse(self, holder: dict[str, Any]) -> RunDirLocked:
        who = f"pid {holder.get('pid', '?')} on host {holder.get('host', '?')}"
        since = f", since {holder['since']}" if holder.get("since") else ""
        return RunDirLocked(
            f"{self.run_dir} is in use by another bridgelab process ({who}{since}). Wait for it to finish or stop "
            f"it (kill {holder.get('pid', 'PID')} on {holder.get('host', 'that host')}), or give this run another "
            f"run_dir. If that process is gone, delete {self.path}.",
            holder,
        )

    def acquire(self) -> None:
        try:
            self.run_dir.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise disk_error(err, self.run_dir, "create the run directory") from err
        if fcntl is None:
            self._acquire_exclusive()
            return
        while True:
            try:
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666)
            except OSError as err:
                raise disk_error(err, self.path, "create the lock file") from err
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                raise self._refuse(self.holder()) from None
            except OSError as err:
                os.close(fd)
                if err.errno in _NO_FLOCK:
                    self._acquire_exclusive()
                    return
                raise disk_error(err, self.path, "lock") from err
            try:  # the holder that just released removed the file: lock the one now at the path instead
                same = os.stat(self.path).st_ino == os.fstat(fd).st_ino
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)
        try:
            os.ftruncate(fd, 0)
            os.write(fd, self._record())
        except OSError as err:
            os.close(fd)
            raise disk_error(err, self.path, "write the lock file") from err
        self._fd = fd

    def _acquire_exclusive(self) -> None:
        """The lock file itself is the lock (no ``flock``): stale records of dead holders are taken over."""
        for _ in range(2):
            try:
                fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
            except FileExistsError:
                holder = self.holder()
                if not is_stale(holder):
                    raise self._refuse(holder) from None
                self.path.unlink(missing_ok=True)
                continue
            except OSError as err:
                raise disk_error(err, self.path, "create the lock file") from err
            os.write(fd, self._record())
            self._fd = fd
            return
        raise self._refuse(self.holder())

    def release(self) -> None:
        if self._fd is None:
            return
        try:
            self.path.unlink(missing_ok=True)  # while still locked, so no one locks the old file after us
        finally:
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> Self:
        self.acquire()
        return self

    def __exit__(self, kind: type[BaseException] | None, err: BaseException | None, tb: TracebackType | None) -> None:
        self.release()
