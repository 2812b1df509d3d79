"""Checks before a run starts: every server a run needs (the model servers of ``--policy
openai/sglang/vllm``, the AgentGym servers) answers, and what the model servers say about the
model they serve (the eval manifest pins it).

A server that does not answer is one line naming its URL (:class:`ServerUnreachableError`,
exit 1) before any store or manifest is written. Any HTTP answer counts as reachable: what
the server then does with real requests is the run's business. The probes are plain
blocking HTTP requests made before the event loop starts, without proxies (as the policies'
own clients).
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence
from typing import Any

from gymux.errors import GymuxError

__all__ = ["ServerUnreachableError", "check_servers", "model_server_urls", "probe"]

#: Seconds each probe may take to connect and answer.
PROBE_TIMEOUT_S = 5.0


class ServerUnreachableError(GymuxError):
    """A server the run needs did not answer."""


_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def openai_api_base(url: str) -> str:
    """``http://h:8000`` / ``.../v1`` / ``.../v1/chat/completions`` -> ``http://h:8000/v1``."""
    url = url.rstrip("/")
    if url.endswith("/chat/completions"):
        url = url[: -len("/chat/completions")]
    return url if url.endswith("/v1") else url + "/v1"


def probe(url: str, what: str, *, timeout: float = PROBE_TIMEOUT_S) -> Any:
    """GET ``url``: its JSON answer (``None`` when the answer is not JSON or not 200).
    :class:`ServerUnreachableError` when nothing answers."""
    try:
        with _OPENER.open(url, timeout=timeout) as answer:
            body = answer.read(1 << 20)
    except urllib.error.HTTPError:
        return None  # an answer: the server is there
    except (urllib.error.URLError, OSError, ValueError) as exc:
        reason = getattr(exc, "reason", exc)
        raise ServerUnreachableError(f"cannot reach the {what} at {url}: {reason}") from None
    try:
        return json.loads(body)
    except ValueError:
        return None


def model_server_urls(policy: str, options: Mapping[str, Any]) -> list[str]:
    """The model servers ``policy`` with ``options`` would call."""
    if policy == "openai" and options.get("base_url"):
        return [str(options["base_url"])]
    if policy in ("sglang", "vllm"):
        urls = options.get("urls") or []
        return [str(u) for u in ([urls] if isinstance(urls, str) else urls)]
    return []


def check_servers(
    policy: str, options: Mapping[str, Any], agentgym_urls: Sequence[str] = ()
) -> dict[str, str]:
    """Probe every server the run needs; returns what the model servers report about the
    model (``model_path``, ``weight_version``; empty where they say nothing).

    Raises :class:`ServerUnreachableError` naming the first server that does not answer."""
    for url in dict.fromkeys(agentgym_urls):
        probe(url.rstrip("/") + "/", "AgentGym server")
    reported: dict[str, str] = {}
    if policy == "openai" and options.get("base_url"):
        answer = probe(openai_api_base(str(options["base_url"])) + "/models", "openai server")
        for entry in _list(answer, "data"):
            named = isinstance(entry, dict) and entry.get("id") == options.get("model")
            if named and isinstance(entry.get("root"), str):
                reported["model_path"] = entry["root"]
    elif policy == "sglang":
        for url in model_server_urls(policy, options):
            answer = probe(url.rstrip("/") + "/model_info", "sglang server")
            if isinstance(answer, dict):
                for key in ("model_path", "weight_version"):
                    value = answer.get(key)
                    if isinstance(value, str | int) and key not in reported:
                        reported[key] = str(value)
    elif policy == "vllm":
        for url in model_server_urls(policy, options):
            answer = probe(url.rstrip("/") + "/v1/models", "vllm server")
            for entry in _list(answer, "data"):
                if isinstance(entry, dict) and isinstance(entry.get("root"), str):
                    reported.setdefault("model_path", entry["root"])
    return reported


def _list(answer: Any, key: str) -> list[Any]:
    value = answer.get(key) if isinstance(answer, dict) else None
    return value if isinstance(value, list) else []
