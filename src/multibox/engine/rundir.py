"""Run folders that one run owns: a lock against concurrent runs, and fresh numbered folders.

    out = fresh_out_dir("runs/bccd")    # runs/bccd, else runs/bccd2, runs/bccd3, ...
    with RunLock(out):                  # a second run into ``out`` fails at once
        ...

The lock is a file ``.lock`` in the folder holding the owner's process id, host and start
time, created atomically (``O_EXCL``). A lock whose process is gone (a killed run on this
host) is taken over with a warning; one held by a live process is an error that names it.
"""

from __future__ import annotations

import logging
import os
import socket
import time

log = logging.getLogger(__name__)

LOCK_NAME = ".lock"


class RunDirError(ValueError):
    """A run folder that cannot be used: another run writes there, or it holds a finished run."""


def holds_run(path: str) -> bool:
    """Whether ``path`` holds a run's checkpoint (``last.pt``)."""
    return os.path.isfile(os.path.join(path, "last.pt"))


def lock_owner(path: str) -> dict | None:
    """``{"pid", "host", "since"}`` of the live run holding ``path``'s lock, else None
    (no lock, or a stale one left by a process of this host that no longer exists)."""
    try:
        with open(os.path.join(path, LOCK_NAME)) as f:
            pid, host, since = (f.read().split("\t") + ["", "", ""])[:3]
        owner = {"pid": int(pid), "host": host, "since": since.strip()}
    except (OSError, ValueError):
        return None
    if owner["host"] == socket.gethostname() and not _alive(owner["pid"]):
        return None
    return owner


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def fresh_out_dir(path: str) -> str:
    """``path``, or ``path2``, ``path3``, ...: the first that holds no run's checkpoint and that
    no running process has locked."""
    candidate, n = path, 1
    while holds_run(candidate) or lock_owner(candidate) is not None:
        n += 1
        candidate = f"{path.rstrip(os.sep)}{n}"
    return candidate


class RunLock:
    """Exclusive use of a run folder by this process (re-entrant within it)."""

    def __init__(self, out_dir: str) -> None:
        self.out_dir = out_dir
        self.path = os.path.join(out_dir, LOCK_NAME)
        self.held = False

    def acquire(self) -> RunLock:
        os.makedirs(self.out_dir, exist_ok=True)
        for _ in range(2):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                owner = lock_owner(self.out_dir)
                if owner is not None and owner["pid"] == os.getpid() and owner["host"] == socket.gethostname():
                    return self  # this process holds it already (the CLI, then the trainer)
                if owner is not None:
                    raise RunDirError(
                        f"{self.out_dir}: another run is writing to this folder (process {owner['pid']} on "
                        f"{owner['host']}, since {owner['since']}); wait for it to end or choose another --out "
                        f"(if that run is gone, delete {self.path})"
                    ) from None
                log.warning(f"{self.out_dir}: taking over the lock of a run that ended without releasing it")
                try:
                    os.remove(self.path)
                except FileNotFoundError:
                    pass
                continue
            with os.fdopen(fd, "w") as f:
                f.write(f"{os.getpid()}\t{socket.gethostname()}\t{time.strftime('%Y-%m-%d %H:%M:%S')}\n")
            self.held = True
            return self
        raise RunDirError(f"{self.out_dir}: could not take the folder's lock ({self.path})")

    def release(self) -> None:
        if self.held:
            self.held = False
            try:
                os.remove(self.path)
            except FileNotFoundError:
                pass

    def __enter__(self) -> RunLock:
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()
