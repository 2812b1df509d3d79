"""``gymux serve-env`` against hostile clients, over real sockets to a real subprocess:
absurd numbers and deep nesting are 400s, a client that disconnects costs one log line,
a client that stalls mid-request is timed out; a port in use is one line, exit 1."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import pytest

from doubles.procs import REPO_ROOT, clean_env, run_child


class Server:
    def __init__(self, proc: subprocess.Popen[str], port: int) -> None:
        self.proc = proc
        self.port = port

    def request(self, raw: bytes) -> tuple[int, bytes]:
        with socket.create_connection(("127.0.0.1", self.port), timeout=120) as sock:
            sock.sendall(raw)
            data = b""
            while chunk := sock.recv(65536):
                data += chunk
        head, _, body = data.partition(b"\r\n\r\n")
        return int(head.split()[1]), body

    def post(self, path: str, body: bytes) -> tuple[int, Any]:
        raw = (
            f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
        ).encode() + body
        status, reply = self.request(raw)
        return status, json.loads(reply)


def _start(*extra: str) -> tuple[subprocess.Popen[str], int]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "gymux", "serve-env", "maze", "--port", "0", *extra],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=REPO_ROOT,
        env=clean_env(),
    )
    assert proc.stdout is not None
    line = proc.stdout.readline()  # readiness: the listening line
    assert "listening on http://127.0.0.1:" in line, line
    port = int(line.split("127.0.0.1:")[1].split("/")[0])
    return proc, port


@pytest.fixture
def server() -> Iterator[Server]:
    proc, port = _start("--read-timeout", "1")
    try:
        yield Server(proc, port)
    finally:
        proc.terminate()
        proc.wait(timeout=60)


def _stderr_after_stop(server: Server) -> str:
    server.proc.terminate()
    _, err = server.proc.communicate(timeout=60)
    return err


def test_absurd_numbers_and_deep_nesting_are_400(server: Server) -> None:
    status, body = server.post("/maze/create", b"{}")
    assert status == 200
    instance = body["id"]
    digits = "9" * 5000
    cases = [
        f'{{"id": {instance}, "game": {digits}}}'.encode(),
        f'{{"id": {instance}, "game": "{digits}"}}'.encode(),
        f'{{"id": "{digits}", "game": 0}}'.encode(),
        b'{"id": 0, "game": 0, "x": ' + b"[" * 100_000 + b"]" * 100_000 + b"}",
        b"[" * 100_000 + b"]" * 100_000,
        b'{"id": 0, "game": ' + b"[" * 100_000 + b"]" * 100_000 + b"}",
    ]
    for case in cases:
        status, reply = server.post("/maze/reset", case)
        assert status == 400, (status, reply, case[:60])
        assert isinstance(reply["error"], str) and len(reply["error"]) < 300
    # the server is fine afterwards
    status, reply = server.post("/maze/reset", f'{{"id": {instance}, "game": 0}}'.encode())
    assert status == 200, reply
    err = _stderr_after_stop(server)
    assert "Traceback" not in err, err[-3000:]


def test_disconnecting_clients_cost_one_line_each(server: Server) -> None:
    head = (
        b"POST /maze/create HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b"Content-Length: 1000\r\n\r\n{"
    )
    clients = 50
    for _ in range(clients):
        with socket.create_connection(("127.0.0.1", server.port), timeout=120) as sock:
            sock.sendall(head)
    # a full request after them: answered once every disconnect before it was handled
    assert server.post("/maze/create", b"{}")[0] == 200
    err = _stderr_after_stop(server)
    assert "Traceback" not in err, err[-3000:]
    assert len(err.splitlines()) <= clients + 5, err[-3000:]


def test_a_stalled_client_is_timed_out(server: Server) -> None:
    # headers and a partial body, then silence: the server answers 408 and closes
    status, body = server.request(
        b"POST /maze/create HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{"
    )
    assert status == 408, body
    assert b"1 s" in body or b"1.0 s" in body
    # the server still serves others
    assert server.post("/maze/create", b"{}")[0] == 200


def test_read_timeout_flag_is_checked(
    capsys: pytest.CaptureFixture[str], fresh_structlog: None
) -> None:
    from gymux.cli.main import main

    assert main(["serve-env", "maze", "--read-timeout", "0"]) == 2
    assert "--read-timeout" in capsys.readouterr().err


def test_a_port_in_use_is_one_line() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        proc = run_child(
            [sys.executable, "-m", "gymux", "serve-env", "maze", "--port", str(port)], timeout=120
        )
    assert proc.returncode == 1, proc.stderr
    (line,) = proc.stderr.splitlines()
    assert line.startswith("gymux: error: ") and str(port) in line and "in use" in line, line
