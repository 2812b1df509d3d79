"""The stream lock: an exclusive ``flock`` on a stream's ``LOCK`` file, which names its holder.

A writer holds it while open, and so does ``compact``; the kernel releases it when the
holder dies, so a crashed writer never blocks the next one.
"""

from __future__ import annotations

import fcntl
import os
import socket
import time
from pathlib import Path

from gymux.stores.errors import StoreLockedError

__all__ = ["LOCK_FILE", "StreamLock", "lock_holder"]

LOCK_FILE = "LOCK"


class StreamLock:
    """An exclusive, non-blocking flock on a stream's ``LOCK`` file; the file names the
    holder. Writers take it, and so does maintenance (``role`` says who holds it)."""

    def __init__(self, stream_dir: Path, role: str = "", action: str | None = None) -> None:
        self.path = stream_dir / LOCK_FILE
        self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(self._fd, 512, 0).decode(errors="replace").strip()
            holder = holder or "holder unknown"
            os.close(self._fd)
            message = (
                f"cannot {action} {stream_dir}: a writer has it open ({holder}); "
                "close the writer first"
                if action
                else f"stream {stream_dir} already has a writer ({holder})"
            )
            raise StoreLockedError(message) from None
        prefix = f"{role} " if role else ""
        info = (
            f"{prefix}pid={os.getpid()} host={socket.gethostname()} "
            f"since={time.strftime('%FT%T')}\n"
        )
        os.ftruncate(self._fd, 0)
        os.pwrite(self._fd, info.encode(), 0)

    def release(self) -> None:
        if self._fd >= 0:
            os.ftruncate(self._fd, 0)
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = -1


def lock_holder(stream_dir: str | os.PathLike[str]) -> str | None:
    """Who holds the stream's writer lock (the LOCK file's text), or ``None`` if nobody.

    Probes with a non-blocking shared ``flock`` that is released at once."""
    path = Path(stream_dir) / LOCK_FILE
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            text = os.pread(fd, 512, 0).decode(errors="replace").strip()
            return text or "holder unknown"
        fcntl.flock(fd, fcntl.LOCK_UN)
        return None
    finally:
        os.close(fd)
