"""JVM lifecycle helpers for environments that drive a Java simulator through py4j.

:class:`JavaProcess` owns one JVM started with py4j's ``launch_gateway`` (an ephemeral
port, ``--die-on-broken-pipe`` so the JVM exits when this Python process dies) and the
:class:`py4j.java_gateway.JavaGateway` connected to it. Its :meth:`JavaProcess.close` is
certain: it kills the process by pid (``SIGKILL``, then ``waitpid``) rather than asking the
JVM to shut down, so it works even while another thread is stuck in a call into the JVM
(that call then fails with a py4j network error). The simulators driven this way keep no
state worth flushing, so nothing is lost by killing them.

:func:`java_processes` lists live JVMs by a marker in their command line (through
``/proc``), for tests and diagnostics.

py4j is imported lazily, inside :meth:`JavaProcess.start`. py4j reports a JVM that went
away (killed, or closed by Ctrl-C) through the standard ``logging`` module, partly on the
*root* logger with full tracebacks; :func:`quiet_py4j` drops those records (the failure
itself reaches gymux as an exception, turned into one env error), so a dying JVM never
prints tracebacks.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import subprocess
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import structlog

from gymux.env_plugins.protocol import EnvError

__all__ = ["JavaProcess", "java_processes", "quiet_py4j", "require_java"]

_log = structlog.get_logger(__name__)


class _DropPy4J(logging.Filter):
    """Drops the records py4j logs, on its own loggers or on the root logger."""

    def __init__(self, folder: str) -> None:
        super().__init__()
        self._folder = folder

    def filter(self, record: logging.LogRecord) -> bool:
        return not (record.name.startswith("py4j") or record.pathname.startswith(self._folder))


_quiet_lock = threading.Lock()
_quieted = False


def quiet_py4j() -> None:
    """Keep py4j's logging (tracebacks of lost connections) off stderr; idempotent."""
    global _quieted
    with _quiet_lock:
        if _quieted:
            return
        import py4j  # type: ignore[import-untyped]

        folder = os.path.dirname(os.path.abspath(py4j.__file__)) + os.sep
        drop = _DropPy4J(folder)
        logging.getLogger().addFilter(drop)
        py4j_logger = logging.getLogger("py4j")
        py4j_logger.addFilter(drop)
        py4j_logger.propagate = False
        _quieted = True


def require_java() -> str:
    """The ``java`` executable to run (``$JAVA_HOME/bin/java`` or ``java`` on ``PATH``).

    Raises :class:`EnvError` naming what to install when there is none.
    """
    java_home = os.environ.get("JAVA_HOME")
    if java_home:
        candidate = Path(java_home) / "bin" / "java"
        if os.access(candidate, os.X_OK):
            return str(candidate)
    found = shutil.which("java")
    if found is None:
        raise EnvError(
            "no Java runtime found (need `java` on PATH or $JAVA_HOME): install a JRE >= 11, "
            "e.g. `apt-get install openjdk-17-jre-headless`"
        )
    return found


class JavaProcess:
    """One JVM and the py4j gateway to it. Create with :meth:`start`; always :meth:`close`."""

    def __init__(self, process: subprocess.Popen[bytes], gateway: Any) -> None:
        self._process = process
        self._gateway = gateway
        self._lock = threading.Lock()
        self._closed = False

    @classmethod
    def start(
        cls, classpath: str, *, cwd: str | None = None, java_options: Sequence[str] = ()
    ) -> JavaProcess:
        """Launch a JVM with ``classpath`` (plus py4j's own jar) and connect to it."""
        java = require_java()
        quiet_py4j()
        from py4j.java_gateway import (  # type: ignore[import-untyped]
            GatewayParameters,
            JavaGateway,
            launch_gateway,
        )

        try:
            port, process = launch_gateway(
                classpath=classpath,
                die_on_exit=True,
                cwd=cwd,
                return_proc=True,
                java_path=java,
                javaopts=list(java_options),
            )
        except (OSError, ValueError) as exc:  # ValueError: the JVM exited before its port
            raise EnvError(f"the JVM ({java}) failed to start: {exc!r}") from exc
        try:
            gateway = JavaGateway(
                gateway_parameters=GatewayParameters(port=port, auto_field=True),
                java_process=process,
            )
        except BaseException:
            _kill(process)
            raise
        _log.debug("jvm started", pid=process.pid, port=port)
        return cls(process, gateway)

    @property
    def pid(self) -> int:
        return self._process.pid

    @property
    def jvm(self) -> Any:
        """The gateway's ``jvm`` view (``.jvm.some.package.Class()``)."""
        return self._gateway.jvm

    def exit_code(self, timeout: float = 0.5) -> int | None:
        """The JVM's exit code, waiting up to ``timeout`` s for it to exit; ``None`` if alive.

        (``Popen.poll`` can answer ``None`` for a dead process while py4j's reaper thread
        holds the wait lock, hence the short wait.)
        """
        try:
            return self._process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            return None

    def alive(self, timeout: float = 0.5) -> bool:
        return self.exit_code(timeout) is None

    @property
    def closed(self) -> bool:
        return self._closed

    def close(self) -> None:
        """Kill the JVM and release the gateway's sockets; idempotent and thread-safe."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
        _kill(self._process)
        try:
            # Close the Python side's sockets. Marking the client disconnected stops py4j's
            # finalizers from trying to reach the dead JVM when proxies are collected.
            client = self._gateway._gateway_client
            client.is_connected = False
            client.close()
        except Exception as exc:  # pragma: no cover - py4j cleanup is best effort
            _log.debug("py4j gateway close failed", error=repr(exc))
        _log.debug("jvm closed", pid=self._process.pid)


def _kill(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        with contextlib.suppress(ProcessLookupError):  # exited between poll and kill
            process.kill()
    process.wait()
    # py4j's consumer threads close stdout/stderr once the process has exited.
    if process.stdin is not None:
        with contextlib.suppress(OSError):  # broken pipe to the dead JVM
            process.stdin.close()


def java_processes(marker: str, *, parent: int | None = None) -> list[int]:
    """Pids of live (non-zombie) processes whose command line contains ``marker``.

    With ``parent``, only that process's children. Reads ``/proc``; returns an empty list
    where there is none (non-Linux systems).
    """
    pids: list[int] = []
    proc = Path("/proc")
    if not proc.is_dir():
        return pids
    for entry in proc.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        # the fields after the parenthesised command name: state (Z = zombie), ppid, ...
        fields = stat.rsplit(")", 1)[-1].split()
        if marker not in cmdline or len(fields) < 2 or fields[0] == "Z":
            continue
        if parent is None or int(fields[1]) == parent:
            pids.append(int(entry.name))
    return sorted(pids)
