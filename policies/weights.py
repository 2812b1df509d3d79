"""Weight updates on model servers: the calls that load a new checkpoint into running
SGLang and vLLM servers without restarting them (``Runtime.update_policy`` drives them).

SGLang (native API)::

    POST /pause_generation {"mode": "abort" | "retract" | "in_place"}
    POST /abort_request {"abort_all": true}            (fanned out to worker URLs too)
    POST /update_weights_from_disk {"model_path", "weight_version", "flush_cache", ...}
    POST /flush_cache
    POST /continue_generation

vLLM (0.32; the server needs ``VLLM_SERVER_DEV_MODE=1`` for these routes)::

    POST /pause?mode=abort|wait|keep
    POST /collective_rpc {"method": "reload_weights", "kwargs": {"weights_path": ...}}
    POST /update_weight_version {"new_version": ...}
    POST /reset_prefix_cache
    POST /resume

Each call goes to every server at once; any failure raises :class:`WeightUpdateError`
naming the server and the call. ``resume`` is always attempted on every server.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import aiohttp
import anyio
import msgspec
import structlog

from gymux.errors import PolicyError
from gymux.policies.protocol import UpdateMode, WeightLoader

__all__ = ["SGLangWeights", "VLLMWeights", "WeightUpdateError", "loader_for"]

_log = structlog.get_logger("gymux.policies.weights")

#: SGLang's ``/pause_generation`` mode for each update mode: ``abort`` drops what is in
#: flight; ``retract`` (continue) moves running requests back to the queue, so their KV is
#: recomputed under the new weights (and ``/flush_cache`` can succeed); after ``wait`` the
#: server is idle, so ``in_place`` has nothing to keep.
SGLANG_PAUSE: dict[str, str] = {"abort": "abort", "wait": "in_place", "continue": "retract"}
#: vLLM's ``/pause`` mode for each update mode.
VLLM_PAUSE: dict[str, str] = {"abort": "abort", "wait": "wait", "continue": "keep"}


class WeightUpdateError(PolicyError):
    """A model server refused or failed a weight-update call."""


class _Reply(msgspec.Struct):
    """The parts of a control reply that say it failed (SGLang: ``success``)."""

    success: bool = True
    message: str = ""


class _Servers:
    """POSTs to a set of servers at once, one short-lived session per operation."""

    def __init__(self, urls: Sequence[str], *, timeout_s: float) -> None:
        if not urls:
            raise WeightUpdateError("no server URLs to update")
        self.urls = [u.rstrip("/") for u in urls]
        self.timeout_s = timeout_s
        #: Every call made: ``(url, path)``, in order (for logs and tests).
        self.calls: list[tuple[str, str]] = []

    async def _post(
        self,
        session: aiohttp.ClientSession,
        url: str,
        path: str,
        body: Mapping[str, Any] | None = None,
        params: Mapping[str, str] | None = None,
    ) -> bytes:
        self.calls.append((url, path))
        try:
            async with session.post(url + path, json=body, params=params) as resp:
                data = await resp.read()
                if resp.status >= 400:
                    text = data.decode(errors="replace")[:300]
                    raise WeightUpdateError(f"{url}{path}: HTTP {resp.status}: {text}")
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise WeightUpdateError(f"{url}{path}: {type(exc).__name__}: {exc}") from exc
        if data.strip().startswith(b"{"):
            try:
                reply = msgspec.json.decode(data, type=_Reply)
            except msgspec.ValidationError:
                return data
            if not reply.success:
                raise WeightUpdateError(f"{url}{path}: {reply.message or 'failed'}")
        return data

    async def _all(
        self,
        urls: Sequence[str],
        path: str,
        body: Mapping[str, Any] | None = None,
        params: Mapping[str, str] | None = None,
    ) -> None:
        errors: list[BaseException] = []
        timeout = aiohttp.ClientTimeout(total=self.timeout_s)
        async with aiohttp.ClientSession(timeout=timeout) as session:

            async def one(url: str) -> None:
                try:
                    await self._post(session, url, path, body, params)
                except WeightUpdateError as exc:
                    errors.append(exc)

            async with anyio.create_task_group() as tg:
                for url in urls:
                    tg.start_soon(one, url)
        if errors:
            raise errors[0]


class SGLangWeights(_Servers):
    """Weight updates on SGLang servers (``urls``: the servers or the router a policy
    sends to; ``worker_urls``: the workers behind a router, which get the aborts too)."""

    def __init__(
        self,
        urls: Sequence[str],
        *,
        worker_urls: Sequence[str] = (),
        load_format: str | None = None,
        timeout_s: float = 600.0,
    ) -> None:
        super().__init__(urls, timeout_s=timeout_s)
        self.worker_urls = [u.rstrip("/") for u in worker_urls]
        self.load_format = load_format

    async def pause(self, mode: UpdateMode) -> None:
        await self._all(self.urls, "/pause_generation", {"mode": SGLANG_PAUSE[mode]})
        if mode == "abort":
            targets = list(dict.fromkeys([*self.urls, *self.worker_urls]))
            await self._all(targets, "/abort_request", {"rid": "", "abort_all": True})

    async def load(self, source: str, *, version: str) -> None:
        body: dict[str, Any] = {
            "model_path": str(source),
            "weight_version": version,
            "flush_cache": True,
        }
        if self.load_format is not None:
            body["load_format"] = self.load_format
        await self._all(self.urls, "/update_weights_from_disk", body)

    async def resume(self) -> None:
        try:
            await self._all(self.urls, "/flush_cache")
        except WeightUpdateError as exc:
            # update_weights_from_disk already flushed; a refused flush (requests kept in
            # place) must not keep the servers paused.
            _log.warning("flush_cache failed after a weight update", error=str(exc))
        await self._all(self.urls, "/continue_generation")


class VLLMWeights(_Servers):
    """Weight updates on vLLM servers started with ``VLLM_SERVER_DEV_MODE=1``."""

    def __init__(self, urls: Sequence[str], *, timeout_s: float = 600.0) -> None:
        super().__init__(urls, timeout_s=timeout_s)

    async def pause(self, mode: UpdateMode) -> None:
        await self._all(self.urls, "/pause", params={"mode": VLLM_PAUSE[mode]})

    async def load(self, source: str, *, version: str) -> None:
        rpc = {"method": "reload_weights", "kwargs": {"weights_path": str(source)}}
        await self._all(self.urls, "/collective_rpc", rpc)
        await self._all(self.urls, "/update_weight_version", {"new_version": version})
        await self._all(self.urls, "/reset_prefix_cache")

    async def resume(self) -> None:
        await self._all(self.urls, "/resume")


def loader_for(policy: object) -> WeightLoader | None:
    """The server loader of a ``sglang`` or ``vllm`` policy object (its servers' URLs), or
    ``None`` for any other policy."""
    name = getattr(policy, "name", "")
    servers = getattr(policy, "servers", None)
    if name not in ("sglang", "vllm") or not servers:
        return None
    urls = [str(server.url) for server in servers]
    if name == "sglang":
        return SGLangWeights(urls, worker_urls=list(getattr(policy, "worker_urls", []) or []))
    return VLLMWeights(urls)
