"""Messages between the runtime and an environment worker process (length-prefixed msgpack)."""

from __future__ import annotations

import struct
from typing import Literal

import msgspec

from gymux.env_plugins.protocol import Observation, StepResult, Task

WIRE_VERSION = 1
HEADER = struct.Struct(">I")
MAX_FRAME = 64 * 1024 * 1024


class Init(msgspec.Struct, frozen=True, tag="init"):
    factory: str
    version: int = WIRE_VERSION


class Reset(msgspec.Struct, frozen=True, tag="reset"):
    task: Task


class Step(msgspec.Struct, frozen=True, tag="step"):
    action: str


class Close(msgspec.Struct, frozen=True, tag="close"):
    pass


Request = Init | Reset | Step | Close


class Ready(msgspec.Struct, frozen=True, tag="ready"):
    pid: int


class ResetDone(msgspec.Struct, frozen=True, tag="reset_done"):
    observation: Observation


class StepDone(msgspec.Struct, frozen=True, tag="step_done"):
    result: StepResult


class Closed(msgspec.Struct, frozen=True, tag="closed"):
    pass


class Failed(msgspec.Struct, frozen=True, tag="failed"):
    kind: Literal["env", "transient", "protocol"]
    message: str


Reply = Ready | ResetDone | StepDone | Closed | Failed

request_encoder = msgspec.msgpack.Encoder()
request_decoder = msgspec.msgpack.Decoder(Request)
reply_decoder = msgspec.msgpack.Decoder(Reply)


def frame(payload: bytes) -> bytes:
    return HEADER.pack(len(payload)) + payload
