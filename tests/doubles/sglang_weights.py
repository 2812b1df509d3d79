"""Stand-ins of the weight-update routes of SGLang and vLLM servers (``policies/weights.py``).

The SGLang stand-in (``doubles.sglang_double``) builds its routes inside ``start()``, so
these routes live on a server of their own: :class:`WeightsDouble` answers SGLang's
``/pause_generation``, ``/abort_request``, ``/update_weights_from_disk``, ``/flush_cache``,
``/continue_generation`` and ``/get_weight_version`` (``flavour="sglang"``), or vLLM 0.32's
``/pause``, ``/resume``, ``/is_paused``, ``/collective_rpc``, ``/update_weight_version``,
``/reset_prefix_cache`` and ``/weight_info`` (``flavour="vllm"``). It records every call,
checks the bodies against the fields those servers accept, keeps the paused state and the
weight version, and can be linked to an ``SGLangDouble`` whose answers then report the new
``weight_version``. ``fail(path)`` makes the next call of ``path`` fail.
"""

from __future__ import annotations

from typing import Any

from aiohttp import web

#: Fields SGLang's ``UpdateWeightFromDiskReqInput`` accepts (0.5.x).
SGLANG_UPDATE_FIELDS = {
    "model_path",
    "load_format",
    "abort_all_requests",
    "weight_version",
    "is_async",
    "torch_empty_cache",
    "keep_pause",
    "recapture_cuda_graph",
    "token_step",
    "flush_cache",
}
SGLANG_PAUSE_MODES = {"abort", "retract", "in_place"}
VLLM_PAUSE_MODES = {"abort", "wait", "keep"}


class WeightsDouble:
    """``await start()``, ``url``, ``await stop()``; ``calls``: ``(path, body or query)``."""

    def __init__(self, flavour: str = "sglang", *, linked: Any = None, version: str = "0") -> None:
        assert flavour in ("sglang", "vllm")
        self.flavour = flavour
        self.linked = linked
        self.version = version
        self.paused = False
        self.pause_modes: list[str] = []
        self.loaded: list[str] = []
        self.calls: list[tuple[str, dict[str, Any]]] = []
        self._fail: set[str] = set()
        self._runner: web.AppRunner | None = None
        self.port = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def fail(self, path: str) -> None:
        self._fail.add(path)

    async def start(self) -> None:
        app = web.Application()
        if self.flavour == "sglang":
            app.router.add_post("/pause_generation", self._sglang_pause)
            app.router.add_post("/continue_generation", self._sglang_continue)
            app.router.add_post("/abort_request", self._sglang_abort)
            app.router.add_post("/update_weights_from_disk", self._sglang_update)
            app.router.add_post("/flush_cache", self._sglang_flush)
            app.router.add_get("/get_weight_version", self._version)
        else:
            app.router.add_post("/pause", self._vllm_pause)
            app.router.add_post("/resume", self._vllm_resume)
            app.router.add_get("/is_paused", self._vllm_is_paused)
            app.router.add_post("/collective_rpc", self._vllm_rpc)
            app.router.add_post("/update_weight_version", self._vllm_version)
            app.router.add_post("/reset_prefix_cache", self._vllm_reset)
            app.router.add_get("/weight_info", self._version)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        server = site._server
        assert server is not None
        self.port = server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        self._runner = runner

    async def stop(self) -> None:
        runner, self._runner = self._runner, None
        if runner is not None:
            await runner.cleanup()

    # -- helpers ---------------------------------------------------------------------------

    async def _record(self, request: web.Request) -> dict[str, Any]:
        body: dict[str, Any] = dict(request.query)
        if request.can_read_body:
            data = await request.json()
            assert isinstance(data, dict), data
            body.update(data)
        self.calls.append((request.path, body))
        return body

    def _failing(self, request: web.Request) -> web.Response | None:
        if request.path in self._fail:
            self._fail.discard(request.path)
            return web.json_response({"error": "injected failure"}, status=500)
        return None

    def _set_version(self, version: str) -> None:
        self.version = version
        if self.linked is not None:
            self.linked.weight_version = version

    async def _version(self, request: web.Request) -> web.Response:
        await self._record(request)
        return web.json_response({"weight_version": self.version})

    # -- SGLang ----------------------------------------------------------------------------

    async def _sglang_pause(self, request: web.Request) -> web.Response:
        body = await self._record(request)
        mode = body.get("mode", "abort")
        if mode not in SGLANG_PAUSE_MODES:
            return web.json_response({"error": f"bad mode {mode!r}"}, status=400)
        self.paused = True
        self.pause_modes.append(mode)
        return self._failing(request) or web.json_response({"success": True})

    async def _sglang_continue(self, request: web.Request) -> web.Response:
        await self._record(request)
        self.paused = False
        return self._failing(request) or web.json_response({"success": True})

    async def _sglang_abort(self, request: web.Request) -> web.Response:
        body = await self._record(request)
        if set(body) - {"rid", "abort_all", "finished_reason", "abort_message"}:
            return web.json_response({"error": f"unknown fields {sorted(body)}"}, status=400)
        return self._failing(request) or web.Response()

    async def _sglang_update(self, request: web.Request) -> web.Response:
        body = await self._record(request)
        unknown = set(body) - SGLANG_UPDATE_FIELDS
        if unknown or "model_path" not in body:
            return web.json_response({"error": f"bad fields {sorted(unknown)}"}, status=400)
        failing = self._failing(request)
        if failing is not None:
            return web.json_response(
                {"success": False, "message": "cannot load", "num_paused_requests": 0}
            )
        self.loaded.append(body["model_path"])
        if body.get("weight_version") is not None:
            self._set_version(str(body["weight_version"]))
        return web.json_response({"success": True, "message": "ok", "num_paused_requests": 0})

    async def _sglang_flush(self, request: web.Request) -> web.Response:
        await self._record(request)
        return self._failing(request) or web.Response(text="Cache flushed.")

    # -- vLLM ------------------------------------------------------------------------------

    async def _vllm_pause(self, request: web.Request) -> web.Response:
        body = await self._record(request)
        mode = body.get("mode", "abort")
        if mode not in VLLM_PAUSE_MODES:
            return web.json_response({"error": f"bad mode {mode!r}"}, status=400)
        self.paused = True
        self.pause_modes.append(mode)
        return self._failing(request) or web.json_response({"status": "paused"})

    async def _vllm_resume(self, request: web.Request) -> web.Response:
        await self._record(request)
        self.paused = False
        return self._failing(request) or web.json_response({"status": "resumed"})

    async def _vllm_is_paused(self, request: web.Request) -> web.Response:
        await self._record(request)
        return web.json_response({"is_paused": self.paused})

    async def _vllm_rpc(self, request: web.Request) -> web.Response:
        body = await self._record(request)
        if body.get("method") != "reload_weights":
            return web.json_response({"error": "unexpected method"}, status=400)
        kwargs = body.get("kwargs", {})
        if not all(isinstance(v, str) for v in kwargs.values()):
            return web.json_response({"error": "kwargs must be strings"}, status=400)
        failing = self._failing(request)
        if failing is not None:
            return failing
        self.loaded.append(kwargs["weights_path"])
        return web.json_response({"results": [None]})

    async def _vllm_version(self, request: web.Request) -> web.Response:
        body = await self._record(request)
        self._set_version(str(body["new_version"]))
        return web.json_response({"success": True, "new_version": body["new_version"]})

    async def _vllm_reset(self, request: web.Request) -> web.Response:
        await self._record(request)
        return web.json_response({"success": True})
