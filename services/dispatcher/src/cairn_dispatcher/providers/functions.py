"""Destination functions: user JavaScript with Segment's handler signatures, sandboxed in V8.

``async function onTrack(event, settings)`` (and onIdentify, onPage, onScreen, onGroup, onAlias)
run in an embedded V8 isolate (mini-racer; see docs/decisions/0006-function-sandbox.md) with:

- a time limit per call (``CAIRN_FUNCTION_TIMEOUT_SECONDS``): an endless loop is terminated;
- a hard heap limit (``CAIRN_FUNCTION_MEMORY_MB``): a memory hog is terminated;
- no filesystem, no network except ``fetch`` to the hosts in ``settings.allowed_hosts``.

Throwing ``RetryError`` retries the delivery; ``EventNotSupported`` and ``ValidationError`` (and
any other error) fail it permanently with the message. An isolate that hit a limit is thrown
away and a fresh one built, so one bad call never poisons the next.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import structlog
from py_mini_racer import JSEvalException, JSOOMException, JSTimeoutException, MiniRacer

from cairn_dispatcher.documents import DocumentError, Target, is_secret_ref, read_secret
from cairn_dispatcher.providers.base import Failed, Job, SendOutcome, Sent

log = structlog.get_logger(__name__)

PRELUDE = r"""
class EventNotSupported extends Error {
  constructor(m) { super(m); this.name = 'EventNotSupported'; }
}
class ValidationError extends Error {
  constructor(m) { super(m); this.name = 'ValidationError'; }
}
class RetryError extends Error {
  constructor(m) { super(m); this.name = 'RetryError'; }
}
globalThis.fetch = async function (url, init) {
  const raw = JSON.parse(await __cairn_fetch(String(url), JSON.stringify(init || {})));
  if (raw.error) { throw new Error(raw.error); }
  return {
    ok: raw.status >= 200 && raw.status < 300, status: raw.status, headers: raw.headers,
    text: async () => raw.body, json: async () => JSON.parse(raw.body),
  };
};
globalThis.__cairn_run = async function (handler, event, settings) {
  try {
    const fn = globalThis[handler];
    if (typeof fn !== 'function') { throw new EventNotSupported(handler + ' is not defined'); }
    const result = await fn(JSON.parse(event), JSON.parse(settings));
    return JSON.stringify({ok: true, result: result === undefined ? null : result});
  } catch (e) {
    const name = (e && e.name) || 'Error';
    return JSON.stringify({ok: false, name: name, message: String((e && e.message) || e)});
  }
};
"""

HANDLERS = {
    "track": "onTrack",
    "identify": "onIdentify",
    "page": "onPage",
    "screen": "onScreen",
    "group": "onGroup",
    "alias": "onAlias",
}


class DestinationFunction:
    name = "function"

    def __init__(
        self, target: Target, *, timeout: float, memory_mb: int, http_timeout: float
    ) -> None:
        if not target.code:
            raise DocumentError(f"{target.key}: a function destination needs its `function` source")
        self.target = target
        self._timeout = timeout
        self._memory = memory_mb * 1024 * 1024
        self._http_timeout = aiohttp.ClientTimeout(total=http_timeout)
        self._allowed = {str(h).lower() for h in target.setting("allowed_hosts", []) or []}
        self._lock = asyncio.Lock()
        self._isolate: MiniRacer | None = None
        self._stack = contextlib.AsyncExitStack()
        self._session: aiohttp.ClientSession | None = None
        self._result: asyncio.Future[str] | None = None

    async def _ensure(self) -> MiniRacer:
        if self._isolate is None:
            mr = MiniRacer()
            mr.set_hard_memory_limit(self._memory)
            fetch = await self._stack.enter_async_context(mr.wrap_py_function(self._fetch))
            done = await self._stack.enter_async_context(mr.wrap_py_function(self._done))
            install = mr.eval(
                "(f, d) => { globalThis.__cairn_fetch = f; globalThis.__cairn_done = d; }"
            )
            install(fetch, done)  # type: ignore[operator,misc]
            mr.eval(PRELUDE)
            mr.eval(self.target.code or "")
            self._isolate = mr
        return self._isolate

    async def _done(self, *args: Any) -> None:
        """Called from JavaScript when a handler settles (never a blocking call into V8)."""
        if self._result is not None and not self._result.done():
            self._result.set_result(str(args[0]) if args else "")

    async def _discard(self) -> None:
        """Throw the isolate away. Closing terminates any script still running in it, even one
        looping in a promise continuation; it runs in a thread so it can never stall the loop."""
        mr, self._isolate = self._isolate, None
        await self._stack.aclose()
        self._stack = contextlib.AsyncExitStack()
        if mr is not None:
            closing = asyncio.get_running_loop().run_in_executor(None, mr.close)
            try:
                await asyncio.wait_for(asyncio.shield(closing), timeout=5)
            except TimeoutError:
                log.error(
                    "a function isolate did not close; it is abandoned", target=self.target.key
                )

    def _settings(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for key, value in self.target.settings.items():
            ref = is_secret_ref(value)
            out[key] = read_secret(value, f"{self.target.key}: {key}") if ref else value
        return out

    @staticmethod
    def event(job: Job, event_name: str) -> dict[str, Any]:
        req = job.request
        trigger = req.event if isinstance(req.event, dict) else {}
        props = trigger.get("properties")
        return {
            "type": "track",
            "event": event_name,
            "userId": req.profile_id,
            "messageId": req.delivery_id,
            "timestamp": req.requested_at.isoformat(),
            "properties": {**(props if isinstance(props, dict) else {}), **job.journey_context()},
            "context": {"traits": req.profile},
        }

    async def send(self, job: Job) -> SendOutcome:
        try:
            settings = self._settings()
        except DocumentError as exc:
            return Failed(reason=f"function: {exc}", retryable=False)
        event = self.event(job, str(settings.get("event", "Journey Step Entered")))
        args = [HANDLERS[event["type"]], json.dumps(event), json.dumps(settings)]
        call = f"__cairn_run({', '.join(json.dumps(a) for a in args)})"
        async with self._lock:
            try:
                mr = await self._ensure()
                raw = await asyncio.wait_for(self._run(mr, call), timeout=self._timeout)
            except (TimeoutError, JSTimeoutException):
                await self._discard()
                limit = f"{self._timeout:g}s"
                return Failed(reason=f"function exceeded its {limit} time limit", retryable=False)
            except JSOOMException:
                await self._discard()
                return Failed(reason="function exceeded its memory limit", retryable=False)
            except JSEvalException as exc:
                await self._discard()
                return Failed(reason=f"function error: {str(exc).splitlines()[0]}", retryable=False)
            finally:
                self._result = None
        return _outcome(raw)

    async def _run(self, mr: MiniRacer, call: str) -> str:
        """Start the handler with a cancelable eval (a synchronous endless loop is terminated by
        cancelling it) and wait for ``__cairn_done``; nothing here blocks on the isolate."""
        self._result = asyncio.get_running_loop().create_future()
        await mr.eval_cancelable(f"{call}.then(__cairn_done); 0")
        return await self._result

    async def _fetch(self, *args: Any) -> str:
        url = str(args[0]) if args else ""
        init = json.loads(str(args[1])) if len(args) > 1 else {}
        host = (urlsplit(url).hostname or "").lower()
        if host not in self._allowed:
            return json.dumps({"error": f"fetch to {host or url!r} is not allowed"})
        if self._session is None:
            self._session = aiohttp.ClientSession(timeout=self._http_timeout)
        try:
            async with self._session.request(
                str(init.get("method", "GET")),
                url,
                headers={str(k): str(v) for k, v in (init.get("headers") or {}).items()},
                data=init.get("body"),
            ) as resp:
                body = await resp.text()
                return json.dumps(
                    {"status": resp.status, "headers": dict(resp.headers), "body": body}
                )
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            return json.dumps({"error": f"fetch failed: {type(exc).__name__}: {exc}"})

    async def close(self) -> None:
        await self._discard()
        if self._session is not None:
            await self._session.close()


def _outcome(raw: str) -> SendOutcome:
    result = json.loads(raw)
    if result.get("ok"):
        return Sent(None)
    name, message = result.get("name", "Error"), result.get("message", "")
    return Failed(reason=f"function {name}: {message}", retryable=name == "RetryError")
