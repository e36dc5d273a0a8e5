"""Push: Firebase Cloud Messaging HTTP v1, and Web Push (RFC 8291 encryption, VAPID)."""

from __future__ import annotations

import asyncio
import base64
import json
import time
from typing import Any
from urllib.parse import urlsplit

import aiohttp
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from py_vapid import Vapid  # type: ignore[import-untyped]
from pywebpush import WebPusher  # type: ignore[import-untyped]

from cairn_dispatcher import egress
from cairn_dispatcher.documents import DocumentError
from cairn_dispatcher.providers.base import (
    Failed,
    Job,
    PermanentError,
    SendOutcome,
    http_outcome,
    read_bounded,
)
from cairn_dispatcher.providers.http import HttpProvider, HttpRequest

FCM_SCOPE = "https://www.googleapis.com/auth/firebase.messaging"


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


class Fcm(HttpProvider):
    """``POST /v1/projects/{project}/messages:send`` with an OAuth2 bearer token, from
    ``settings.access_token`` or minted from ``settings.service_account`` (JWT bearer grant)."""

    name = "fcm"
    id_field = "name"
    _token: tuple[str, float] | None = None
    _token_lock: asyncio.Lock | None = None

    async def build(self, job: Job) -> HttpRequest:
        if not job.address:
            raise PermanentError("no device token")
        rendered = job.rendered
        notification: dict[str, Any] = {}
        if rendered is not None:
            notification = {"title": rendered.title, "body": rendered.body}
            if rendered.image:
                notification["image"] = rendered.image
        data = {
            **(rendered.data if rendered else {}),
            "delivery_id": job.idempotency_key,
            "journey": job.request.journey,
            "step_id": job.request.step_id,
        }
        message: dict[str, Any] = {"token": job.address, "notification": notification, "data": data}
        if rendered is not None and rendered.url:
            message["webpush"] = {"fcm_options": {"link": rendered.url}}
        project = self.target.require("project_id")
        url = f"{self.base_url('https://fcm.googleapis.com')}/v1/projects/{project}/messages:send"
        token = await self._access_token()
        return HttpRequest(
            method="POST",
            url=url,
            json={"message": message},
            headers={"Authorization": f"Bearer {token}"},
        )

    async def outcome(self, response: aiohttp.ClientResponse) -> SendOutcome:
        result = await http_outcome(response, self.name, self.id_field)
        if isinstance(result, Failed) and response.status == 404:
            # UNREGISTERED: the app was uninstalled; the token will never work again.
            return Failed(reason=result.reason, retryable=False, bounced=True)
        return result

    async def _access_token(self) -> str:
        direct = self.target.secret("access_token", required=False)
        if direct:
            return direct
        if self._token_lock is None:
            self._token_lock = asyncio.Lock()
        async with self._token_lock:
            if self._token is None or self._token[1] < time.time() + 60:
                self._token = await self._mint_token()
            return self._token[0]

    async def _mint_token(self) -> tuple[str, float]:
        raw = self.target.secret("service_account", required=False)
        if not raw:
            raise DocumentError(f"{self.target.key}: settings.access_token or service_account")
        account = json.loads(raw)
        token_uri = str(self.target.setting("token_uri") or account["token_uri"])
        now = int(time.time())
        claims = {
            "iss": account["client_email"],
            "scope": FCM_SCOPE,
            "aud": token_uri,
            "iat": now,
            "exp": now + 3600,
        }
        assertion = _rs256_jwt(claims, account["private_key"])
        form = {"grant_type": "urn:ietf:params:oauth:grant-type:jwt-bearer", "assertion": assertion}
        if refused := egress.check_url(token_uri):
            raise PermanentError(f"token_uri: {refused}")
        async with self._client().post(token_uri, data=form, allow_redirects=False) as response:
            text = (await read_bounded(response)).decode("utf-8", "replace")
            if response.status != 200:
                raise PermanentError(
                    f"token exchange failed: {response.status} {egress.sanitise(text)}"
                )
        body = json.loads(text)
        return str(body["access_token"]), now + float(body.get("expires_in", 3600))


def _rs256_jwt(claims: dict[str, Any], private_key_pem: str) -> str:
    key = serialization.load_pem_private_key(private_key_pem.encode(), password=None)
    if not isinstance(key, rsa.RSAPrivateKey):
        raise PermanentError("service account key is not an RSA key")
    header = _b64url(json.dumps({"alg": "RS256", "typ": "JWT"}).encode())
    payload = _b64url(json.dumps(claims).encode())
    signing_input = f"{header}.{payload}".encode()
    signature = key.sign(signing_input, padding.PKCS1v15(), hashes.SHA256())
    return f"{header}.{payload}.{_b64url(signature)}"


class WebPush(HttpProvider):
    """Web Push: the address is the browser's subscription JSON (endpoint, keys.p256dh,
    keys.auth); the payload is encrypted per RFC 8291 (aes128gcm) and signed with VAPID."""

    name = "webpush"

    async def build(self, job: Job) -> HttpRequest:
        subscription = _subscription(job.address)
        rendered = job.rendered
        payload = {
            "title": rendered.title if rendered else None,
            "body": rendered.body if rendered else None,
            "url": rendered.url if rendered else None,
            "icon": rendered.icon if rendered else None,
            "data": rendered.data if rendered else {},
            "delivery_id": job.idempotency_key,
        }
        body = WebPusher(subscription).encode(json.dumps(payload).encode(), "aes128gcm")["body"]
        endpoint = str(subscription["endpoint"])
        parts = urlsplit(endpoint)
        vapid = Vapid.from_string(private_key=self.target.secret("vapid_private_key"))
        claims = {
            "sub": str(self.target.require("vapid_subject")),
            "aud": f"{parts.scheme}://{parts.netloc}",
            "exp": int(time.time()) + 12 * 3600,
        }
        headers = {str(k): str(v) for k, v in vapid.sign(claims).items()}
        headers.update(
            {
                "Content-Encoding": "aes128gcm",
                "Content-Type": "application/octet-stream",
                "TTL": str(int(self.target.setting("ttl", 86400))),
                "Urgency": str(self.target.setting("urgency", "normal")),
            }
        )
        return HttpRequest(method="POST", url=endpoint, headers=headers, data=bytes(body))

    async def outcome(self, response: aiohttp.ClientResponse) -> SendOutcome:
        result = await http_outcome(response, self.name)
        if isinstance(result, Failed) and response.status in (404, 410):
            return Failed(reason=result.reason, retryable=False, bounced=True)
        return result


def _subscription(address: str | None) -> dict[str, Any]:
    if not address:
        raise PermanentError("no push subscription")
    try:
        sub = json.loads(address)
    except ValueError:
        raise PermanentError("the address is not a Web Push subscription (JSON)") from None
    if not isinstance(sub, dict) or "endpoint" not in sub or "keys" not in sub:
        raise PermanentError("subscription needs endpoint and keys (p256dh, auth)")
    return sub
