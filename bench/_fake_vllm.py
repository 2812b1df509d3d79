"""A fake vLLM OpenAI-compatible server for client-CPU benchmarks (no model, run it as a
SUBPROCESS so its CPU is not the client's).

Serves what the ``vllm`` and ``openai`` policies call, with answers shaped like real vLLM's
(vLLM 0.x ``CompletionResponse`` / ``ChatCompletionResponse``; ``logprobs: 0`` and
``return_tokens_as_token_ids`` give ``"token_id:N"`` tokens, one ``text_offset`` and one
one-entry ``top_logprobs`` dict per token, as vLLM's ``_create_completion_logprobs`` does):

* ``GET /health`` -> 200, empty body;
* ``GET /v1/models`` -> ``{"object": "list", "data": [{"id": MODEL, ..., "max_model_len": N}]}``;
* ``POST /v1/completions`` (prompt: a list of token ids) -> ``max_tokens`` generated tokens
  (ids cycle through ``--tokens``), ``finish_reason: "length"``;
* ``POST /v1/chat/completions`` -> the same, as a chat completion (``logprobs.content``).

``--delay-s`` holds each answer that long (a model's generation time), so a client is not
driven flat out.

An HTTP 400 shaped like vLLM's answers a prompt that does not fit ``max_model_len``.

Usage: ``python bench/_fake_vllm.py [--max-model-len N]``; prints ``PORT <n>`` on stdout
once it listens on 127.0.0.1 (an ephemeral port).
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from typing import Any

import msgspec
from aiohttp import web

MODEL = "tiny"


class _Completion(msgspec.Struct):
    prompt: list[int] | str
    max_tokens: int = 16
    logprobs: int | None = None
    return_tokens_as_token_ids: bool = False


class _Chat(msgspec.Struct):
    messages: list[dict[str, Any]]
    max_tokens: int | None = None
    max_completion_tokens: int | None = None
    logprobs: bool = False


_COMPLETION = msgspec.json.Decoder(_Completion)
_CHAT = msgspec.json.Decoder(_Chat)
_ENC = msgspec.json.Encoder()


class FakeVLLM:
    def __init__(
        self, *, max_model_len: int, tokens: list[int], word: str, delay_s: float = 0.0
    ) -> None:
        self.max_model_len = max_model_len
        self.delay_s = delay_s
        self.tokens = tokens
        self.word = word
        self.requests = 0

    def _gen(self, n: int) -> tuple[list[int], list[float], str]:
        ids = [self.tokens[i % len(self.tokens)] for i in range(n)]
        logprobs = [-0.5 - 0.01 * i for i in range(n)]
        return ids, logprobs, self.word * n

    def _too_long(self, prompt_len: int, max_tokens: int) -> web.Response | None:
        if prompt_len + max_tokens <= self.max_model_len:
            return None
        message = (
            f"This model's maximum context length is {self.max_model_len} tokens. However, you "
            f"requested {prompt_len + max_tokens} tokens ({prompt_len} in the messages, "
            f"{max_tokens} in the completion). Please reduce the length of the messages or "
            "completion."
        )
        body = {
            "error": {"message": message, "type": "BadRequestError", "param": None, "code": 400}
        }
        return web.Response(status=400, body=_ENC.encode(body), content_type="application/json")

    async def health(self, request: web.Request) -> web.Response:
        return web.Response(status=200)

    async def models(self, request: web.Request) -> web.Response:
        card = {
            "id": MODEL,
            "object": "model",
            "created": int(time.time()),
            "owned_by": "vllm",
            "root": MODEL,
            "parent": None,
            "max_model_len": self.max_model_len,
            "permission": [],
        }
        return web.json_response({"object": "list", "data": [card]})

    async def completions(self, request: web.Request) -> web.Response:
        req = _COMPLETION.decode(await request.read())
        self.requests += 1
        prompt_len = len(req.prompt) if isinstance(req.prompt, list) else len(req.prompt.split())
        bad = self._too_long(prompt_len, req.max_tokens)
        if bad is not None:
            return bad
        if self.delay_s:
            await asyncio.sleep(self.delay_s)
        ids, lps, text = self._gen(req.max_tokens)
        logprobs: dict[str, Any] | None = None
        if req.logprobs is not None:
            names = [f"token_id:{i}" if req.return_tokens_as_token_ids else self.word for i in ids]
            offsets = []
            at = 0
            for name in names:
                offsets.append(at)
                at += len(name)
            logprobs = {
                "text_offset": offsets,
                "token_logprobs": lps,
                "tokens": names,
                "top_logprobs": [{name: lp} for name, lp in zip(names, lps, strict=True)],
            }
        body = {
            "id": f"cmpl-{self.requests:032x}",
            "object": "text_completion",
            "created": int(time.time()),
            "model": MODEL,
            "choices": [
                {
                    "index": 0,
                    "text": text,
                    "logprobs": logprobs,
                    "finish_reason": "length",
                    "stop_reason": None,
                    "prompt_logprobs": None,
                }
            ],
            "service_tier": None,
            "system_fingerprint": None,
            "usage": {
                "prompt_tokens": prompt_len,
                "total_tokens": prompt_len + len(ids),
                "completion_tokens": len(ids),
                "prompt_tokens_details": None,
            },
            "kv_transfer_params": None,
        }
        return web.Response(body=_ENC.encode(body), content_type="application/json")

    async def chat(self, request: web.Request) -> web.Response:
        req = _CHAT.decode(await request.read())
        self.requests += 1
        chars = sum(len(str(m.get("content", ""))) for m in req.messages)
        prompt_len = chars // 4 + 4 * len(req.messages)  # a rough token count
        n = req.max_completion_tokens or req.max_tokens or 16
        bad = self._too_long(prompt_len, n)
        if bad is not None:
            return bad
        if self.delay_s:
            await asyncio.sleep(self.delay_s)
        _, lps, text = self._gen(n)
        logprobs = None
        if req.logprobs:
            logprobs = {
                "content": [
                    {
                        "token": self.word,
                        "logprob": lp,
                        "bytes": list(self.word.encode()),
                        "top_logprobs": [],
                    }
                    for lp in lps
                ]
            }
        body = {
            "id": f"chatcmpl-{self.requests:032x}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": MODEL,
            "choices": [
                {
                    "index": 0,
                    "message": {
                        "role": "assistant",
                        "content": text,
                        "refusal": None,
                        "annotations": None,
                        "audio": None,
                        "function_call": None,
                        "tool_calls": [],
                        "reasoning_content": None,
                    },
                    "logprobs": logprobs,
                    "finish_reason": "length",
                    "stop_reason": None,
                }
            ],
            "service_tier": None,
            "system_fingerprint": None,
            "usage": {
                "prompt_tokens": prompt_len,
                "total_tokens": prompt_len + n,
                "completion_tokens": n,
                "prompt_tokens_details": None,
            },
            "prompt_logprobs": None,
            "kv_transfer_params": None,
        }
        return web.Response(body=_ENC.encode(body), content_type="application/json")


async def _serve(args: argparse.Namespace) -> None:
    tokens = [int(t) for t in args.tokens.split(",")]
    fake = FakeVLLM(
        max_model_len=args.max_model_len, tokens=tokens, word=args.word, delay_s=args.delay_s
    )
    app = web.Application(client_max_size=64 * 1024 * 1024)
    app.router.add_get("/health", fake.health)
    app.router.add_get("/v1/models", fake.models)
    app.router.add_post("/v1/completions", fake.completions)
    app.router.add_post("/v1/chat/completions", fake.chat)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0, backlog=4096)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    print(f"PORT {port}", flush=True)
    await asyncio.Event().wait()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--max-model-len", type=int, default=2048)
    p.add_argument("--tokens", default="100,101,102,103", help="generated ids, cycled")
    p.add_argument("--delay-s", type=float, default=0.0, help="answer after this long")
    p.add_argument("--word", default="go", help="the text of each generated token")
    args = p.parse_args()
    try:
        asyncio.run(_serve(args))
    except KeyboardInterrupt:
        sys.exit(0)


if __name__ == "__main__":
    main()
