"""Destination functions: user JavaScript with Segment's handler signatures, sandboxed in V8.

``async function onTrack(event, settings)`` (and onIdentify, onPage, onScreen, onGroup, onAlias)
run in an embedded V8 isolate (mini-racer; see docs/decisions/0006-function-sandbox.md) with:

- a time limit per call (``CAIRN_FUNCTION_TIMEOUT_SECONDS``): an endless loop is terminated;
- a hard heap limit (``CAIRN_FUNCTION_MEMORY_MB``): a memory hog is terminated;
- no filesystem, no network except ``fetch`` to the hosts in ``settings.allowed_hosts``, made by
  the dispatcher through the egress policy (``cairn_dispatcher.egress``: no loopback, metadata or
  private addresses unless ``allow_networks`` lists them), redirects followed by hand (at most
  ``MAX_REDIRECTS``) with every hop checked again, answers cut at ``MAX_FETCH_BYTES``;
- only function secrets: a setting may reference an environment variable named
  ``CAIRN_FUNCTION_SECRET_*`` or a file under ``CAIRN_FUNCTION_SECRETS_DIR``, never the
  dispatcher's own (admin token, database URL, tracking secret, other destinations' keys);
- reasons scrubbed: the function's secret values never reach the ledger or the logs.

Throwing ``RetryError`` retries the delivery; ``EventNotSupported`` and ``ValidationError`` (and
any other error) fail it permanently with the message. An isolate that hit a limit is thrown
away and a fresh one built, so one bad call never poisons the next.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
from pathlib import Path
from typing import Any
from urllib.parse import urljoin, urlsplit

import aiohttp
import structlog
from py_mini_racer import JSEvalException, JSOOMException, JSTimeoutException, MiniRacer

from cairn_dispatcher import egress
from cairn_dispatcher.documents import DocumentError, Target, is_secret_ref, read_secret
from cairn_dispatcher.providers.base import Failed, Job, SendOutcome, Sent, read_bounded

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

SECRET_ENV_PREFIX = "CAIRN_FUNCTION_SECRET_"
SECRETS_DIR_ENV = "CAIRN_FUNCTION_SECRETS_DIR"
MAX_REDIRECTS = 5
MAX_FETCH_BYTES = 1 << 20
MAX_FETCHES_PER_CALL = 50
REDIRECTS = frozenset({301, 302, 303, 307, 308})
REDACTED = "[redacted]"

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
        self._secrets: list[str] = []
        self._fetches = 0

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
        """The settings the function sees, function secrets read; ``self._secrets`` their values
        (to scrub from reasons). A reference to anything but a function secret is refused."""
        out: dict[str, Any] = {}
        secrets: list[str] = []
        for key, value in self.target.settings.items():
            if is_secret_ref(value):
                where = f"{self.target.key}: {key}"
                out[key] = read_secret(_function_secret(value, where), where)
                secrets.append(out[key])
            else:
                out[key] = value
        self._secrets = [v for v in secrets if len(v) >= 4]
        return out

    def scrub(self, text: str) -> str:
        """``text`` fit for the ledger and the logs: the function's secrets redacted, one line."""
        for secret in sorted(self._secrets, key=len, reverse=True):
            text = text.replace(secret, REDACTED)
        return egress.sanitise(text, limit=300)

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
        outcome = await self._call(job, settings)
        if isinstance(outcome, Failed):
            return Failed(reason=self.scrub(outcome.reason), retryable=outcome.retryable)
        return outcome

    async def _call(self, job: Job, settings: dict[str, Any]) -> SendOutcome:
        event = self.event(job, str(settings.get("event", "Journey Step Entered")))
        args = [HANDLERS[event["type"]], json.dumps(event), json.dumps(settings)]
        call = f"__cairn_run({', '.join(json.dumps(a) for a in args)})"
        async with self._lock:
            self._fetches = 0
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
        """``fetch`` for the function: each hop to an allowed host only, through the egress
        policy, redirects followed here (never by aiohttp) so every hop is checked again."""
        url = str(args[0]) if args else ""
        init = json.loads(str(args[1])) if len(args) > 1 else {}
        self._fetches += 1
        if self._fetches > MAX_FETCHES_PER_CALL:
            return json.dumps({"error": f"more than {MAX_FETCHES_PER_CALL} fetches in one call"})
        method = str(init.get("method", "GET")).upper()
        headers = {str(k): str(v) for k, v in (init.get("headers") or {}).items()}
        body = init.get("body")
        follow = str(init.get("redirect", "follow"))
        if self._session is None:
            self._session = egress.session(self.target.egress, timeout=self._http_timeout)
        origin = _origin(url)
        for _hop in range(MAX_REDIRECTS + 1):
            host = (urlsplit(url).hostname or "").lower()
            if host not in self._allowed:
                return json.dumps({"error": f"fetch to {host or url!r} is not allowed"})
            if refused := egress.check_url(url):
                return json.dumps({"error": f"fetch refused: {refused}"})
            try:
                async with self._session.request(
                    method, url, headers=headers, data=body, allow_redirects=False
                ) as resp:
                    location = resp.headers.get("Location")
                    if resp.status in REDIRECTS and location and follow == "follow":
                        url = urljoin(url, location)
                        if resp.status == 303 or (resp.status in (301, 302) and method == "POST"):
                            method, body = "GET", None
                        if _origin(url) != origin:  # credentials stay with their origin
                            headers = {
                                k: v
                                for k, v in headers.items()
                                if k.lower() not in ("authorization", "cookie")
                            }
                        continue
                    if resp.status in REDIRECTS and follow == "error":
                        return json.dumps({"error": f"fetch to {host} was redirected"})
                    text = (await read_bounded(resp, MAX_FETCH_BYTES)).decode("utf-8", "replace")
                    return json.dumps(
                        {"status": resp.status, "headers": dict(resp.headers), "body": text}
                    )
            except egress.EgressRefused as exc:
                return json.dumps({"error": f"fetch to {host} is not allowed: {exc.reason}"})
            except (aiohttp.ClientError, TimeoutError, OSError) as exc:
                return json.dumps({"error": f"fetch failed: {type(exc).__name__}: {exc}"})
        return json.dumps({"error": f"fetch followed more than {MAX_REDIRECTS} redirects"})

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


def _origin(url: str) -> tuple[str, str, int | None]:
    parts = urlsplit(url)
    try:
        port = parts.port
    except ValueError:
        port = None
    return parts.scheme, (parts.hostname or "").lower(), port


def _function_secret(ref: Any, where: str) -> dict[str, str]:
    """``ref`` if it names a secret meant for functions (a file by its resolved path, so what is
    read is what was checked), never one of the dispatcher's own."""
    env, file = ref.get("env"), ref.get("file")
    if env:
        if not str(env).startswith(SECRET_ENV_PREFIX):
            raise DocumentError(
                f"{where}: a function may read only environment variables named "
                f"{SECRET_ENV_PREFIX}*, not {env}"
            )
        return {"env": str(env)}
    root = os.environ.get(SECRETS_DIR_ENV)
    if not root:
        raise DocumentError(f"{where}: function secret files need {SECRETS_DIR_ENV} set")
    base = Path(root).resolve()
    path = Path(str(file)).resolve()  # symlinks and `..` resolved before the check
    if not path.is_relative_to(base):
        raise DocumentError(f"{where}: a function may read only files under {SECRETS_DIR_ENV}")
    return {"file": str(path)}
