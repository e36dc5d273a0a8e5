"""Providers reached over HTTP: one aiohttp session and one concurrency bound per provider.

Every request goes out through the target's egress policy (``cairn_dispatcher.egress``): the
addresses its host resolves to are checked at connect time, and redirects are never followed (a
3xx is the outcome), so a URL taken from data cannot reach loopback, cloud metadata or the
private network, directly or by a hop."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import time
from abc import ABC, abstractmethod
from typing import Any

import aiohttp
import msgspec
from opentelemetry import propagate
from yarl import URL

from cairn_dispatcher import egress
from cairn_dispatcher.documents import DocumentError, Target
from cairn_dispatcher.providers.base import (
    Failed,
    Job,
    PermanentError,
    SendOutcome,
    client_span,
    connection_failed,
    http_outcome,
    mark_outcome,
)


class HttpRequest(msgspec.Struct, frozen=True, kw_only=True):
    method: str
    url: str
    headers: dict[str, str] = msgspec.field(default_factory=dict)
    json: Any = None
    data: bytes | dict[str, str] | None = None
    auth: tuple[str, str] | None = None


class HttpProvider(ABC):
    """Builds the provider's request for a job; sending, bounding and classifying are shared."""

    name = "http"
    id_field: str | None = None

    def __init__(self, target: Target, *, timeout: float, concurrency: int) -> None:
        self.target = target
        self._timeout = aiohttp.ClientTimeout(total=timeout)
        self._limit = asyncio.Semaphore(concurrency)
        self._concurrency = concurrency
        self._session: aiohttp.ClientSession | None = None

    def _client(self) -> aiohttp.ClientSession:
        if self._session is None:
            self._session = egress.session(
                self.target.egress, timeout=self._timeout, limit=self._concurrency
            )
        return self._session

    def base_url(self, default: str) -> str:
        return str(self.target.setting("base_url") or default).rstrip("/")

    @abstractmethod
    async def build(self, job: Job) -> HttpRequest: ...

    async def send(self, job: Job) -> SendOutcome:
        try:
            request = await self.build(job)
        except (PermanentError, DocumentError) as exc:
            return Failed(reason=f"{self.name}: {exc}", retryable=False)
        except egress.EgressRefused as exc:  # a request made while building (a token exchange)
            return Failed(reason=f"{self.name}: {exc.reason}", retryable=False)
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            return connection_failed(self.name, exc)
        if refused := egress.check_url(request.url):
            return Failed(reason=egress.sanitise(f"{self.name}: {refused}"), retryable=False)
        auth = aiohttp.BasicAuth(*request.auth) if request.auth else None
        url = URL(request.url)
        async with self._limit:
            with client_span(
                request.method,
                self.name,
                url.host,
                url.port,
                **{"http.request.method": request.method, "url.scheme": url.scheme or ""},
            ) as span:
                headers = dict(request.headers)
                propagate.inject(headers)  # the provider (or a webhook receiver) may trace on
                try:
                    async with self._client().request(
                        request.method,
                        request.url,
                        headers=headers,
                        json=request.json,
                        data=request.data,
                        auth=auth,
                        allow_redirects=False,
                    ) as response:
                        span.set_attribute("http.response.status_code", response.status)
                        outcome = await self.outcome(response)
                except egress.EgressRefused as exc:
                    span.set_attribute("error.type", "EgressRefused")
                    outcome = Failed(reason=f"{self.name}: {exc.reason}", retryable=False)
                except (aiohttp.ClientError, TimeoutError, OSError) as exc:
                    span.set_attribute("error.type", type(exc).__name__)
                    outcome = connection_failed(self.name, exc)
                mark_outcome(span, outcome)
                return outcome

    async def outcome(self, response: aiohttp.ClientResponse) -> SendOutcome:
        return await http_outcome(response, self.name, self.id_field)

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()


def _require_address(job: Job) -> str:
    if not job.address:
        raise PermanentError("no address")
    return job.address


class Webhook(HttpProvider):
    """Standard Webhooks: ``webhook-id`` = delivery id, ``webhook-timestamp``, and
    ``webhook-signature: v1,<base64 HMAC-SHA256(secret, "{id}.{timestamp}.{body}")>``."""

    name = "webhook"

    async def build(self, job: Job) -> HttpRequest:
        url = self.target.setting("url") or job.address
        if not url:
            raise PermanentError("no url: set settings.url or give the send a `to`")
        if job.rendered is not None and job.rendered.body:
            body = job.rendered.body.encode()
        else:
            body = json.dumps(self.default_payload(job), separators=(",", ":")).encode()
        timestamp = str(int(time.time()))
        headers = {
            "content-type": "application/json",
            **{str(k): str(v) for k, v in (self.target.setting("headers") or {}).items()},
            **(job.rendered.headers if job.rendered else {}),
            "webhook-id": job.idempotency_key,
            "webhook-timestamp": timestamp,
        }
        secret = self.target.secret("secret", required=False)
        if secret:
            headers["webhook-signature"] = sign_webhook(
                secret, job.idempotency_key, timestamp, body
            )
        return HttpRequest(method="POST", url=str(url), headers=headers, data=body)

    @staticmethod
    def default_payload(job: Job) -> dict[str, Any]:
        req = job.request
        return {
            "type": "journey.message",
            "timestamp": req.requested_at.isoformat(),
            "data": {
                "profile_id": req.profile_id,
                "address": job.address,
                "profile": req.profile,
                **job.journey_context(),
            },
        }


def _twilio_code(reason: str) -> int | None:
    """Twilio's error ``code`` from the body quoted in ``reason``."""
    _, _, body = reason.partition(": ")
    try:
        code = json.loads(body).get("code")
    except (ValueError, AttributeError):
        return None
    return code if isinstance(code, int) else None


def sign_webhook(secret: str, msg_id: str, timestamp: str, body: bytes) -> str:
    key = base64.b64decode(secret.removeprefix("whsec_"))
    signed = f"{msg_id}.{timestamp}.".encode() + body
    return "v1," + base64.b64encode(hmac.new(key, signed, hashlib.sha256).digest()).decode()


TWILIO_OPTED_OUT = frozenset({21610})  # the recipient replied STOP
TWILIO_DEAD_NUMBER = frozenset({21211, 21614})  # not a valid / not a mobile number


class Twilio(HttpProvider):
    """SMS through the Twilio Messages API (form-encoded, HTTP Basic with the account SID)."""

    name = "twilio"
    id_field = "sid"

    async def outcome(self, response: aiohttp.ClientResponse) -> SendOutcome:
        result = await http_outcome(response, self.name, self.id_field)
        if isinstance(result, Failed) and response.status == 400:
            code = _twilio_code(result.reason)
            if code in TWILIO_OPTED_OUT:
                return Failed(
                    reason=f"twilio {code}: recipient opted out", retryable=False, unsubscribed=True
                )
            if code in TWILIO_DEAD_NUMBER:
                return Failed(reason=result.reason, retryable=False, bounced=True)
        return result

    async def build(self, job: Job) -> HttpRequest:
        sid = str(self.target.require("account_sid"))
        token = self.target.secret("auth_token") or ""
        form = {
            "To": _require_address(job),
            "Body": (job.rendered.body if job.rendered else None) or "",
        }
        if service := self.target.setting("messaging_service_sid"):
            form["MessagingServiceSid"] = str(service)
        else:
            form["From"] = str(self.target.require("from"))
        if callback := self.target.setting("status_callback"):
            form["StatusCallback"] = str(callback)
        url = f"{self.base_url('https://api.twilio.com')}/2010-04-01/Accounts/{sid}/Messages.json"
        # Twilio's Messages API takes no idempotency key; the delivery id travels in a header
        # (as in every Cairn send) so a repeated SMS can be traced to the delivery it repeats.
        return HttpRequest(
            method="POST",
            url=url,
            headers={"X-Cairn-Delivery-Id": job.idempotency_key},
            data=form,
            auth=(sid, token),
        )
