"""Destination functions: user JavaScript with Segment's handler signatures, sandboxed in V8.

``async function onTrack(event, settings)`` (and onIdentify, onPage, onScreen, onGroup, onAlias)
run in a V8 isolate (mini-racer; docs/decisions/0006-function-sandbox.md) inside a worker process
of their own (``cairn_dispatcher.function_worker``; decision 0054), with:

- a time limit (``CAIRN_FUNCTION_TIMEOUT_SECONDS``) on loading the source (its top-level code)
  and on each call, kept by the dispatcher: a worker that does not answer in time is killed, so
  an endless loop anywhere never reaches the dispatcher's event loop;
- a memory limit (``CAIRN_FUNCTION_MEMORY_MB``): V8's heap limit, and the worker's
  ``RLIMIT_DATA`` for what lives outside the heap (ArrayBuffers); either way the function fails
  with "exceeded its memory limit" and the dispatcher's own memory is untouched;
- no filesystem, no network except ``fetch`` to the hosts in ``settings.allowed_hosts``, made by
  the dispatcher through the egress policy (``cairn_dispatcher.egress``: no loopback, metadata or
  private addresses unless ``allow_networks`` lists them), redirects followed by hand (at most
  ``MAX_REDIRECTS``) with every hop checked again, answers cut at ``MAX_FETCH_BYTES``;
- only function secrets: a setting may reference an environment variable named
  ``CAIRN_FUNCTION_SECRET_*`` or a file under ``CAIRN_FUNCTION_SECRETS_DIR``, never the
  dispatcher's own (admin token, database URL, tracking secret, other destinations' keys);
- reasons scrubbed: the function's secret values never reach the ledger or the logs.

Throwing ``RetryError`` retries the delivery; ``EventNotSupported`` and ``ValidationError`` (and
any other error) fail it permanently with the message. A worker that hit a limit is killed and
a fresh one started, so one bad call never poisons the next.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any
from urllib.parse import urljoin, urlsplit

import aiohttp
import msgspec
import structlog

from cairn_dispatcher import egress, function_worker
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
MEMORY_REASON = "function exceeded its memory limit"
WORKER_START_SECONDS = 30.0
STDERR_TAIL = 8192
OOM_WORDS = ("out of memory", "MemoryError", "Allocation failed")

HANDLERS = {
    "track": "onTrack",
    "identify": "onIdentify",
    "page": "onPage",
    "screen": "onScreen",
    "group": "onGroup",
    "alias": "onAlias",
}


class WorkerGone(Exception):
    """The worker died or sent what is not a frame (``out_of_memory`` when V8 said so on its
    way out, or the kernel killed it)."""

    def __init__(self, message: str, *, out_of_memory: bool = False) -> None:
        super().__init__(message)
        self.out_of_memory = out_of_memory


class WorkerTimeout(Exception):
    """The worker did not answer within the time limit."""


class _Worker:
    """One worker process (``cairn_dispatcher.function_worker``) and the frames to and from it.
    Only the dispatcher's loop waits on it, never on V8: the worker can hang, loop or die and
    the worst it costs is a kill and a fresh one."""

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self._proc = proc
        self._stderr = bytearray()
        self._tail = asyncio.get_running_loop().create_task(self._read_stderr())

    @classmethod
    async def start(cls, memory_bytes: int) -> _Worker:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-I", "-m", "cairn_dispatcher.function_worker",
            str(memory_bytes), str(os.getpid()),
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE, env={}, start_new_session=True,
            limit=function_worker.MAX_FRAME,
        )  # fmt: skip
        worker = cls(proc)
        try:
            await worker.request(None, timeout=WORKER_START_SECONDS)
        except BaseException:
            await worker.kill()
            raise
        return worker

    async def _read_stderr(self) -> None:
        assert self._proc.stderr is not None
        while chunk := await self._proc.stderr.read(4096):
            self._stderr = (self._stderr + chunk)[-STDERR_TAIL:]

    async def request(
        self,
        frame: function_worker.Frame | None,
        *,
        timeout: float,
        fetch: Callable[[str, str], Awaitable[str]] | None = None,
    ) -> function_worker.Frame:
        """Send ``frame`` and wait up to ``timeout`` for its answer, serving the worker's
        ``Fetch`` frames meanwhile; ``WorkerTimeout`` or ``WorkerGone`` otherwise."""
        stdin, stdout = self._proc.stdin, self._proc.stdout
        assert stdin is not None
        assert stdout is not None
        fetches: set[asyncio.Task[None]] = set()

        async def serve(ask: function_worker.Fetch) -> None:
            reply = await fetch(ask.url, ask.init) if fetch else '{"error": "no fetch here"}'
            stdin.write(function_worker.encode(function_worker.Fetched(ask.id, reply)))

        async def answer() -> function_worker.Frame:
            while True:
                got = await function_worker.read_frame(stdout)
                if not isinstance(got, function_worker.Fetch):
                    return got
                task = asyncio.get_running_loop().create_task(serve(got))
                fetches.add(task)
                task.add_done_callback(fetches.discard)

        try:
            if frame is not None:
                stdin.write(function_worker.encode(frame))
                await stdin.drain()
            return await asyncio.wait_for(answer(), timeout=timeout)
        except TimeoutError:
            raise WorkerTimeout from None
        except (asyncio.IncompleteReadError, ConnectionError, ValueError, msgspec.DecodeError):
            raise await self._gone() from None
        finally:
            for task in fetches:
                task.cancel()

    async def _gone(self) -> WorkerGone:
        code = await self._wait(5)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.shield(self._tail), timeout=1)
        tail = self._stderr.decode("utf-8", "replace")
        oom = any(words in tail for words in OOM_WORDS)
        log.warning("a function worker stopped", code=code, stderr=tail[-500:])
        return WorkerGone(f"worker exited with {code}", out_of_memory=oom or code == -9)

    async def _wait(self, timeout: float) -> int | None:
        with contextlib.suppress(TimeoutError):
            return await asyncio.wait_for(self._proc.wait(), timeout=timeout)
        return None

    async def kill(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            self._proc.kill()
        await self._wait(5)
        self._tail.cancel()


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
        self._worker: _Worker | None = None
        self._session: aiohttp.ClientSession | None = None
        self._secrets: list[str] = []
        self._fetches = 0

    async def _ensure(self) -> _Worker:
        """The worker with the function loaded; its top-level code runs under the time limit."""
        if self._worker is None:
            worker = await _Worker.start(self._memory)
            self._worker = worker
            load = function_worker.Load(PRELUDE, self.target.code or "")
            loaded = await worker.request(load, timeout=self._timeout, fetch=self._fetch)
            if isinstance(loaded, function_worker.Error):
                raise FunctionRefused(loaded)
        return self._worker

    async def _discard(self) -> None:
        """Kill the worker: whatever it was running, looping or allocating stops with it."""
        worker, self._worker = self._worker, None
        if worker is not None:
            await worker.kill()

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
        call = function_worker.Call(
            HANDLERS[event["type"]], json.dumps(event), json.dumps(settings)
        )
        async with self._lock:
            self._fetches = 0
            try:
                worker = await self._ensure()
                reply = await worker.request(call, timeout=self._timeout, fetch=self._fetch)
                if isinstance(reply, function_worker.Error):
                    raise FunctionRefused(reply)
                raw = reply.raw if isinstance(reply, function_worker.Result) else ""
                outcome = _outcome(raw)
            except WorkerTimeout:
                await self._discard()
                limit = f"{self._timeout:g}s"
                return Failed(reason=f"function exceeded its {limit} time limit", retryable=False)
            except WorkerGone as exc:
                await self._discard()
                if exc.out_of_memory:
                    return Failed(reason=MEMORY_REASON, retryable=False)
                return Failed(reason=f"function worker failed: {exc}", retryable=True)
            except FunctionRefused as exc:
                await self._discard()
                return Failed(reason=exc.reason, retryable=False)
            if isinstance(outcome, Failed) and outcome.reason == MEMORY_REASON:
                await self._discard()  # an allocation was refused: start the next call clean
        return outcome

    async def _fetch(self, url: str, raw_init: str) -> str:
        """``fetch`` for the function, made here in the dispatcher (the worker has no network):
        each hop to an allowed host only, through the egress policy, redirects followed here
        (never by aiohttp) so every hop is checked again."""
        try:
            init = json.loads(raw_init) or {}
        except ValueError:
            init = {}
        if not isinstance(init, dict):
            init = {}
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
        async with self._lock:
            await self._discard()
        if self._session is not None:
            await self._session.close()


class FunctionRefused(Exception):
    """The worker answered that the function cannot run: its source does not evaluate, or
    V8's heap limit stopped it."""

    def __init__(self, error: function_worker.Error) -> None:
        super().__init__(error.message)
        if error.kind == "memory":
            self.reason = MEMORY_REASON
        else:
            self.reason = f"function error: {error.message}"


def _outcome(raw: str) -> Failed | Sent:
    try:
        result = json.loads(raw)
    except ValueError:
        return Failed(reason="function worker answered something unreadable", retryable=True)
    if result.get("ok"):
        return Sent(None)
    name, message = str(result.get("name", "Error")), str(result.get("message", ""))
    if name == "RangeError" and "allocation failed" in message:
        return Failed(reason=MEMORY_REASON, retryable=False)  # the data limit refused a buffer
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
