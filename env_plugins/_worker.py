"""Entry point of an environment worker process: ``python -m gymux.env_plugins._worker``.

It serves one :class:`~gymux.env_plugins.SyncEnv` instance over stdin/stdout. The
protocol uses a private duplicate of the original stdout; file descriptor 1 is pointed at
stderr so that whatever the environment prints cannot corrupt the framing.
"""

from __future__ import annotations

import os
import sys
from typing import BinaryIO

from gymux.env_plugins import _wire as w
from gymux.env_plugins.protocol import EnvError, StepResult, TransientEnvError
from gymux.env_plugins.registry import import_ref


def _read_exact(stream: BinaryIO, n: int) -> bytes | None:
    chunks = bytearray()
    while len(chunks) < n:
        chunk = stream.read(n - len(chunks))
        if not chunk:
            return None
        chunks += chunk
    return bytes(chunks)


def _failure(exc: BaseException) -> w.Failed:
    kind: str = "transient" if isinstance(exc, TransientEnvError) else "env"
    return w.Failed(kind=kind, message=f"{type(exc).__name__}: {exc}")  # type: ignore[arg-type]


def serve(inp: BinaryIO, out: BinaryIO) -> None:
    env = None
    while True:
        header = _read_exact(inp, w.HEADER.size)
        if header is None:
            break
        (size,) = w.HEADER.unpack(header)
        payload = _read_exact(inp, size)
        if payload is None:
            break
        req = w.request_decoder.decode(payload)
        reply: w.Reply
        try:
            if isinstance(req, w.Init):
                env = import_ref(req.factory)()
                reply = w.Ready(pid=os.getpid())
            elif env is None:
                reply = w.Failed(kind="protocol", message="worker not initialised")
            elif isinstance(req, w.Reset):
                reply = w.ResetDone(observation=env.reset(req.task))
            elif isinstance(req, w.Step):
                result = env.step(req.action)
                if not isinstance(result, StepResult):
                    raise EnvError(f"step returned {type(result).__name__}, not StepResult")
                reply = w.StepDone(result=result)
            else:
                env.close()
                reply = w.Closed()
        except Exception as exc:
            reply = _failure(exc)
        out.write(w.frame(w.request_encoder.encode(reply)))
        out.flush()
        if isinstance(reply, w.Closed):
            break


def main() -> None:
    proto_out = os.fdopen(os.dup(1), "wb", buffering=0)
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    serve(sys.stdin.buffer, proto_out)


if __name__ == "__main__":
    main()
