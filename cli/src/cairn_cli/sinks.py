"""Local message sinks for `cairn up`: see what your journeys send without any provider account.

- an SMTP server (real protocol, aiosmtpd) that accepts every email;
- an HTTP server that accepts any POST (webhooks, and Twilio/FCM-shaped requests pointed at it).

Each message arrives on the console as ``sink | ...`` and is kept (the newest 1,000) for
``GET /messages`` on the HTTP sink, so a tour or a script can read what was sent.
"""

from __future__ import annotations

import html as html_lib
import json
import re
from collections import deque
from collections.abc import Callable
from datetime import UTC, datetime
from email import message_from_bytes, policy
from email.message import EmailMessage
from typing import Any

from aiohttp import web
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, Envelope, Session

Say = Callable[[str], None]


class SinkLog:
    def __init__(self, say: Say, keep: int = 1000) -> None:
        self.say = say
        self.messages: deque[dict[str, Any]] = deque(maxlen=keep)

    def record(self, kind: str, summary: str, detail: dict[str, Any]) -> None:
        entry = {"kind": kind, "at": datetime.now(UTC).isoformat(), **detail}
        self.messages.append(entry)
        self.say(f"{kind:<7} {summary}")


_OPEN_PIXEL = re.compile(r'<img[^>]+src="([^"]+/t/o/[^"]+)"')


def _part(msg: EmailMessage, subtype: str) -> str:
    body = msg.get_body(preferencelist=(subtype,))
    return str(body.get_content()) if body is not None else ""


class _EmailHandler:
    def __init__(self, log: SinkLog) -> None:
        self._log = log

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        raw = envelope.content if isinstance(envelope.content, bytes) else b""
        msg = message_from_bytes(raw, policy=policy.default)
        assert isinstance(msg, EmailMessage)
        text, html = _part(msg, "plain"), _part(msg, "html")
        pixel = _OPEN_PIXEL.search(html)
        open_url = html_lib.unescape(pixel[1]) if pixel else None
        self._log.record(
            "email",
            f"to {', '.join(envelope.rcpt_tos)}: {msg['Subject']!s}"
            + (f"  (open it: curl -s {open_url} >/dev/null)" if open_url else ""),
            {
                "from": envelope.mail_from,
                "to": list(envelope.rcpt_tos),
                "subject": str(msg["Subject"] or ""),
                "text": text,
                "html": html,
                "open_url": open_url,
                "headers": {k: str(v) for k, v in msg.items()},
            },
        )
        return "250 Message accepted for delivery"


class Sinks:
    def __init__(self, say: Say, *, smtp_port: int, http_port: int) -> None:
        self.log = SinkLog(say)
        self.smtp_port = smtp_port
        self.http_port = http_port
        self._smtp: Controller | None = None
        self._http: web.AppRunner | None = None

    async def start(self) -> None:
        self._smtp = Controller(
            _EmailHandler(self.log), hostname="127.0.0.1", port=self.smtp_port, ready_timeout=10
        )
        self._smtp.start()
        app = web.Application()
        app.router.add_get("/messages", self._list)
        app.router.add_post("/{path:.*}", self._receive)
        self._http = web.AppRunner(app, access_log=None, handle_signals=False)
        await self._http.setup()
        await web.TCPSite(self._http, "127.0.0.1", self.http_port).start()

    async def stop(self) -> None:
        if self._smtp is not None:
            self._smtp.stop()
        if self._http is not None:
            await self._http.cleanup()

    async def _list(self, _: web.Request) -> web.Response:
        return web.json_response(list(self.log.messages))

    async def _receive(self, request: web.Request) -> web.Response:
        raw = await request.read()
        try:
            body: Any = json.loads(raw) if raw else None
        except json.JSONDecodeError:
            form = await request.post()
            body = dict(form) if form else raw.decode(errors="replace")
        self.log.record(
            "http",
            f"POST {request.path} {json.dumps(body)[:160]}",
            {"path": request.path, "headers": dict(request.headers), "body": body},
        )
        return web.json_response({"sid": f"SM{len(self.log.messages):032d}", "ok": True})
